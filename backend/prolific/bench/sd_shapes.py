"""Stable-Diffusion-2.1-base-shaped models with random weights, saved as a diffusers folder.

The bench needs the real model's cost (866 M-parameter UNet, SD VAE, OpenCLIP ViT-H text tower) without
downloading 5 GB, and it must go through the real loader (`load_prior`) so it measures what users run. Random
weights cost exactly what trained ones do; only the pictures are meaningless. The "tiny" shape is the same
architecture at toy width, for CPU tests of the bench itself.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

# The config.json values of stabilityai/stable-diffusion-2-1-base, component by component.
SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    only_cross_attention=False, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), dual_cross_attention=False,
    use_linear_projection=True, upcast_attention=False, num_class_embeds=None,
)
SD21_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512, act_fn="silu", layers_per_block=2,
    norm_num_groups=32, block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
# OpenCLIP ViT-H/14 text tower as diffusers ships it for SD 2.x: 23 of 24 layers (SD uses the penultimate one).
SD21_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=512,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
SD21_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, steps_offset=1, prediction_type="epsilon",
)

# Same block structure at toy width: 8x8 latents (64 px images), seconds to build and run on a CPU.
TINY_UNET = dict(SD21_UNET, sample_size=8, block_out_channels=(32, 64, 64, 64), attention_head_dim=(2, 4, 4, 4),
                 cross_attention_dim=32, norm_num_groups=8, layers_per_block=1)
TINY_VAE = dict(SD21_VAE, sample_size=64, block_out_channels=(8, 16, 16, 16), norm_num_groups=8, layers_per_block=1)
TINY_TEXT = dict(SD21_TEXT, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 projection_dim=16)

SHAPES = {
    "sd21": (SD21_UNET, SD21_VAE, SD21_TEXT),
    "tiny": (TINY_UNET, TINY_VAE, TINY_TEXT),
}
# The bench's prompts, spelled as whole tokens by the small tokenizer (the token count, not the words, sets cost).
BENCH_WORDS = ["a", "dslr", "photo", "of", "delicious", "hamburger", "zoomed", "out", "view"]


def unet_flops(unet_config: dict, batch: int = 1, text_len: int = 77) -> float:
    """Forward FLOPs (2 per multiply-add) of a UNet2DConditionModel of this config at its own latent size,
    counted on the meta device with torch's FLOP counter (convolutions, linears, attention matmuls)."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = {k: v for k, v in unet_config.items() if not k.startswith("_")}  # a loaded model's metadata
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        size = unet.config.sample_size
        x = torch.zeros(batch, unet.config.in_channels, size, size)
        ctx = torch.zeros(batch, text_len, unet.config.cross_attention_dim)
        t = torch.zeros(batch, dtype=torch.long)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            unet(x, t, encoder_hidden_states=ctx)
    return float(counter.get_total_flops())


def build_sd_shaped_model(folder: Path, shape: str = "sd21", device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """Create random-weight UNet, VAE, CLIP text encoder, tokenizer and DDPM scheduler of `shape` ("sd21" or
    "tiny") on `device`, save them in `dtype` as a diffusers folder (safetensors) and return the folder.

    Building on the GPU keeps the 1.3 B-parameter initialisation to seconds. A folder that already holds a
    complete model of the same shape and dtype is reused.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..toy.tokenizer import build_word_tokenizer

    if shape not in SHAPES:
        raise ValueError(f"Unknown model shape '{shape}': use one of {', '.join(SHAPES)}.")
    folder = Path(folder)
    stamp = {"shape": shape, "dtype": str(dtype), "seed": seed}
    marker = folder / "prolific_shape.json"
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return folder
    unet_cfg, vae_cfg, text_cfg = SHAPES[shape]
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with torch.device(device):
        parts = {
            "unet": UNet2DConditionModel(**unet_cfg),
            "vae": AutoencoderKL(**vae_cfg),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**text_cfg)),
        }
    quiet = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # .to(dtype) warns about fp32-kept modules; these models have none
    try:
        for name, module in parts.items():
            module.to(dtype).save_pretrained(str(folder / name), safe_serialization=True)
    finally:
        diffusers_logging.set_verbosity(quiet)
    parts.clear()
    DDPMScheduler(**SD21_SCHEDULER).save_pretrained(str(folder / "scheduler"))
    build_word_tokenizer(BENCH_WORDS, folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }, indent=2))
    marker.write_text(json.dumps(stamp))
    print(f"built {shape}-shaped random model in {folder} ({time.perf_counter() - start:.1f}s)", file=sys.stderr)
    return folder
