"""The speed switches a job or the bench asks for (`prior.speed`, `prolific bench --opt`), parsed without torch so
that config.py can check them; prior/speed.py says where each takes effect."""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields
from typing import Callable

from .errors import BadRequest

# Names that once were speed options, each with why it no longer is one: still accepted, with a warning.
RETIRED = {
    "occupancy": "empty-space skipping belongs to the renderer and is always on (nerf.renderer picks it)",
    "tcnn": "the hash grid is chosen by hash_grid.impl (auto, torch, triton or tcnn)",
    **{name: "torch.compile was dropped: it did not finish compiling a stage-1 step on an H200 within 280 s"
       for name in ("compile", "compile-max", "cudagraphs")},
    "priority": "the steps on a CUDA stream served before the LoRA update's were no faster: stage 1 at 512 px "
                "54.3 vs 55.7 ms (opaque ball), 90.9 vs 90.0 (blob), side by side on an H100 "
                "(bench_results/2026-12-08_h100_priority_geglu/)",
}


@dataclass
class SpeedOptions:
    bf16: bool = False  # bf16 weights and activations (fp16 when off, on a GPU; fp32 on a CPU)
    tf32: bool = False  # TF32 tensor cores for fp32 matmuls/convs (the NeRF MLPs, fp32 parts of the loss)
    sdpa: bool = True  # scaled_dot_product_attention (flash) processors on the UNet's attention layers
    channels_last: bool = False  # NHWC for the UNet's convolutions (the VAE's stay NCHW: NHWC measured no faster)
    vae_matmul: bool = False  # the VAE's attention as plain matmul-softmax (no flash kernel fits its 512-wide head)
    vae_norm: bool = False  # the VAE's group norms as Triton kernels (PyTorch's use 32 thread blocks at 512 px)
    unet_norm: bool = False  # the UNet's group norms as Triton kernels, in its memory format (channels-last)
    geglu: bool = False  # the UNet's feed-forward GEGLUs as one Triton kernel each way
    batch: bool = False  # CFG pair + LoRA branch in one UNet call, the LoRA gated per sample
    fused_adam: bool = False  # fused (single-kernel) Adam for LoRA and field optimizers on CUDA
    graphs: bool = False  # CUDA graphs of the VAE encoder, the batched branches and the LoRA step (else eager)
    overlap: bool = False  # the estimator's update on its own CUDA stream, beside the particles' backward and render
    lora_kernels: bool = False  # the estimator's LoRA branches as Triton kernels (fp32 products, as peft's layers)

    @classmethod
    def parse(cls, text: str, warn: Callable[[str], None] | None = None) -> "SpeedOptions":
        """"bf16,tf32,batch" → options; "none" = plain eager; "best" = everything that should help on a GPU.
        A retired name (RETIRED) is ignored and `warn` (default: a FutureWarning) gets one sentence saying so."""
        opts = cls(sdpa=False)
        flags = {f.name.replace("_", "-"): f.name for f in fields(cls)}
        for item in (s.strip().replace("_", "-") for s in text.split(",")):
            if not item or item == "none":
                continue
            if item == "best":
                opts = best_options()
            elif item in flags:
                setattr(opts, flags[item], True)
            elif item in RETIRED:
                message = f"The speed option '{item}' no longer exists and is ignored: {RETIRED[item]}."
                if warn is None:
                    warnings.warn(message, FutureWarning, stacklevel=2)
                else:
                    warn(message)
            else:
                known = sorted(flags) + ["best", "none"]
                raise BadRequest(f"Unknown speed option '{item}'. Known: {', '.join(known)}.")
        return opts

    def to_dict(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        return ",".join(f.name.replace("_", "-") for f in fields(self) if getattr(self, f.name)) or "none"


def already_told(message: str) -> None:
    """The `warn` of parses after a job's config was made: make_config told its retired names then."""


def best_options() -> SpeedOptions:
    # lora-kernels: a stage-1 step 7-8 ms faster at 64 and 512 px, on both bench fields, side by side on an H100
    # (bench_results/2026-12-07_h100_lora_kernels/). geglu: the UNet calls' part 12.0 -> 11.4 ms on both fields
    # (bench_results/2026-12-08_h100_priority_geglu/).
    return SpeedOptions(bf16=True, tf32=True, sdpa=True, channels_last=True, vae_matmul=True, vae_norm=True,
                        unet_norm=True, geglu=True, batch=True, fused_adam=True, graphs=True, overlap=True,
                        lora_kernels=True)
