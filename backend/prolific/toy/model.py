"""Architecture of the bundled toy prior and the folder it is saved as.

A pixel-space text-to-image diffusion model: a diffusers UNet2DConditionModel on 3×64×64 images in [-1,1]
(no VAE), a small CLIPTextModel trained from scratch with it, a CLIP BPE tokenizer spelling the toy vocabulary,
and a DDPM scheduler (1000 steps, linear betas; v prediction for new trainings, ε for the first bundled model).
The folder has the layout of a diffusers Stable Diffusion folder without `vae/`, so
`prolific.prior.diffusion.load_prior` loads it like any other model.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .tokenizer import build_word_tokenizer
from .shapes import HELD_OUT, PALETTE, SHAPES, vocabulary

MAX_TOKENS = 24  # the longest toy prompt with its view suffix is 8 tokens; longer prompts are truncated
SIZE_LIMIT_BYTES = 25_000_000

# "full" is the bundled model (~9 M parameters, ~19 MB in fp16); "tiny" is for CPU smoke tests.
CONFIGS: dict[str, dict] = {
    "full": {
        "unet": dict(sample_size=64, block_out_channels=(32, 64, 96, 128), layers_per_block=2,
                     down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
                     up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
                     attention_head_dim=(1, 2, 3, 4), norm_num_groups=16),  # heads per level: 32 channels each
        "text": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4),
    },
    "tiny": {
        "unet": dict(sample_size=16, block_out_channels=(16, 32), layers_per_block=1,
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(1, 2),
                     norm_num_groups=8),
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
    },
}


def build_tokenizer(folder: Path) -> CLIPTokenizer:
    """The toy tokenizer (deterministic: the same files every time)."""
    return build_word_tokenizer(vocabulary(), Path(folder), model_max_length=MAX_TOKENS)


def build_models(tokenizer: CLIPTokenizer, size: str = "full") -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Randomly initialised UNet and text encoder of the given size ("full" or "tiny")."""
    cfg = CONFIGS[size]
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **cfg["text"]))
    unet = UNet2DConditionModel(in_channels=3, out_channels=3, cross_attention_dim=cfg["text"]["hidden_size"],
                                **cfg["unet"])
    return unet, text


PREDICTION_TYPES = ("v_prediction", "epsilon")


def make_scheduler(prediction_type: str = "v_prediction") -> DDPMScheduler:
    """DDPM's pixel-space schedule: 1000 steps, betas linear from 1e-4 to 0.02; the UNet predicts v or ε."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                         prediction_type=prediction_type, clip_sample=True)


def tokenize(tokenizer: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids [N, MAX_TOKENS] padded exactly as DiffusionPrior._encode_text pads them."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def fp16_bytes(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters()) * 2


def _half(module: torch.nn.Module) -> torch.nn.Module:
    """An fp16 copy (floating tensors only), made without Module.to so diffusers' dtype warnings stay quiet."""
    module = copy.deepcopy(module)
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            t.data = t.data.to(torch.float16)
    if hasattr(module.config, "torch_dtype"):
        module.config.torch_dtype = torch.float16
    return module


def save_model(folder: Path, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
               info: dict | None = None, prediction_type: str = "v_prediction") -> Path:
    """Write the model folder (fp16 safetensors) plus toy.json describing its vocabulary and training."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _half(unet).save_pretrained(folder / "unet", safe_serialization=True)
    _half(text_encoder).save_pretrained(folder / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    make_scheduler(prediction_type).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "ProlificToyPrior", "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"]}, indent=2) + "\n")
    meta = {"image_size": int(unet.config.sample_size), "shapes": list(SHAPES), "colours": PALETTE,
            "held_out": [list(p) for p in HELD_OUT], **(info or {})}
    (folder / "toy.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder
