"""Model FLOPs of the diffusion work in one step, counted once with torch's FLOP counter on the meta device.

Counted: convolutions, linears and attention matmuls (2 FLOPs per multiply-add). A backward that only needs
gradients w.r.t. activations (frozen weights) costs about one forward; a full backward about two. The
achieved TFLOP/s of a step is these FLOPs over its wall time (the renderer's work is not counted), so it is
a lower bound of what the GPU did.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .sd_shapes import unet_flops


def vae_encoder_flops(vae, size: int) -> float:
    """FLOPs of the VAE encoder (with its quant conv) for one image of size×size."""
    if vae is None:
        return 0.0
    from diffusers import AutoencoderKL

    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    with torch.device("meta"):
        model = AutoencoderKL(**config)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.encode(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def vsd_step_flops(prior, particles: int, guidance: str, guidance_scale: float) -> dict:
    """Diffusion FLOPs of one distillation step with `particles` renders: VAE encoder forward and input-gradient
    backward; the pretrained branch (2 samples with CFG); under VSD ε_φ (1 sample) and the LoRA training step
    (forward + input-gradient backward through the frozen UNet; the rank-r weight gradients are negligible)."""
    unet = unet_flops(dict(prior.unet.config))
    vae = vae_encoder_flops(prior.vae, prior.image_size)
    pretrained = 2 if guidance_scale != 1.0 else 1
    samples = pretrained + (3 if guidance == "vsd" else 0)  # ε_φ, training forward, its backward
    total = particles * (samples * unet + 2 * vae)
    return {"unet_gflop_per_sample": unet / 1e9, "vae_encoder_gflop": vae / 1e9,
            "unet_sample_forwards": particles * samples, "tflop_per_step": total / 1e12}
