"""Tiny Stable-Diffusion-architecture models with random weights, saved like a diffusers model folder.

They exercise the real loading and inference code paths (UNet with cross-attention, VAE, CLIP text encoder,
CLIP BPE tokenizer, DDPM scheduler) in a fraction of a second on a CPU. `build_tiny_sd` gives a latent model
(8×8×4 latents ↔ 64×64 images); `build_tiny_pixel` a pixel-space one (no vae, 3-channel 32×32 UNet).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from prolific.toy.tokenizer import build_word_tokenizer

WORDS = ["a", "an", "the", "of", "red", "blue", "teapot", "hamburger", "chair", "photo", "DSLR", "blurry", "ugly"]
TEXT_DIM = 32


def _unet(channels: int, sample_size: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
        attention_head_dim=8, norm_num_groups=16)


def _common(folder: Path) -> None:
    tokenizer = build_word_tokenizer(WORDS, folder / "tokenizer")
    text_cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    CLIPTextModel(text_cfg).save_pretrained(folder / "text_encoder", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False).save_pretrained(folder / "scheduler")


def build_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """A latent model: UNet on 4×8×8 latents, a 3-level AutoencoderKL (64×64 images), CLIP text encoder."""
    folder = Path(folder)
    torch.manual_seed(seed)
    _unet(4, 8).save_pretrained(folder / "unet", safe_serialization=True)
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64, norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1,
    ).save_pretrained(folder / "vae", safe_serialization=True)
    _common(folder)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def build_tiny_pixel(folder: Path, seed: int = 0) -> Path:
    """A pixel-space model: no vae folder; the UNet denoises 3×32×32 images directly."""
    folder = Path(folder)
    torch.manual_seed(seed)
    _unet(3, 32).save_pretrained(folder / "unet", safe_serialization=True)
    _common(folder)
    return folder
