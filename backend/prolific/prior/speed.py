"""What a job's (or a bench variant's) speed options mean for the prior, each applied in one explicit place.

- bf16: the dtype the prior is loaded in (`prior_dtype`; a job gets it through device.job_dtype).
- batch, fused-adam, graphs, overlap, lora-kernels: arguments of the estimator (`estimator_kwargs` →
  prior/vsd.ScoreDistillation), which then runs the pretrained CFG pair and ε_φ in one UNet call / its AdamW as
  one fused kernel / its diffusion work as replayed CUDA graphs (prior/graphs.py) / its update on a CUDA stream
  of its own (prior/update_stream.py) / its LoRA branches as Triton kernels (prior/lora_layers.py).
- tf32, sdpa, channels-last, vae-matmul, vae-norm, unet-norm, geglu: settings of the process and of the shared
  UNet/VAE, set by `applied` for the span of a job's steps and put back as they were on exit, so the long-lived
  server carries none into the next job.
- fused-adam for the stages' own Adam optimizers: `fused_adam`, which the stages read when they build them
  (StageContext.fused_adam).
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys

import torch

from ..kernels import triton_available
from ..speed_options import SpeedOptions, already_told, best_options
from .channels_last import channels_last_unet
from .geglu import fused_geglus
from .group_norms import triton_group_norms


def job_options(text: str, device: torch.device | str) -> SpeedOptions:
    """The options a generation runs with (`prior.speed`). "auto" keeps what the bench showed to help or to save
    memory without changing results (tests/test_speed.py, tests/test_graphs.py); anything else is parsed like
    the bench's --opt. On CUDA that is `best` in the default fp16 precision: graphs joined it after end-to-end
    demo jobs on an H200 (bench_results/2026-12-02_h200_e2e_demo.txt), overlap after a stage-1 step at 64 px took
    53.4 ms with it and 68.4 without, side by side (bench_results/2026-12-02_h200_stage1_overlap.json); vae-norm
    and unet-norm after stage 2 took 33.9 ms with them and 44.6 without (..._h200_group_norm_kernels/);
    lora-kernels after a stage-1 step took 6-8 ms less with them at 64 and 512 px on an H100, side by side
    (..._h100_lora_kernels/), and their GPU tests passed in fp16 and bf16 (..._h100_take/call1_tests.txt); geglu
    after the UNet calls' part of a stage-1 step took 11.4 ms with it and 12.0 without on both bench fields
    (..._h100_priority_geglu/), its accuracy test passing in fp16 and bf16 (there, call2_tests.txt)."""
    if text != "auto":
        return SpeedOptions.parse(text, already_told)
    if torch.device(device).type == "cuda":
        return dataclasses.replace(best_options(), bf16=False)
    return SpeedOptions(sdpa=True, batch=True)


def reference_options() -> SpeedOptions:
    """How the reference implementations run: fp16 eager, diffusers' default attention (SDPA on torch 2), one
    UNet call per branch (on a separate LoRA copy of the UNet: `ScoreDistillation(separate_estimator=True)`)."""
    return SpeedOptions(sdpa=True)


def prior_dtype(options: SpeedOptions, device: torch.device) -> torch.dtype:
    if torch.device(device).type == "cpu":
        return torch.float32
    return torch.bfloat16 if options.bf16 else torch.float16


def estimator_kwargs(options: SpeedOptions) -> dict:
    """The ScoreDistillation arguments that `options` choose."""
    return {"batched": options.batch, "fused_adam": options.fused_adam, "graphs": options.graphs,
            "overlap": options.overlap, "lora_kernels": options.lora_kernels}


# -- process-wide flags and the shared modules' layout, for the span of a job ----------------------------------

@contextlib.contextmanager
def backend_flags(options: SpeedOptions):
    """TF32 tensor cores for fp32 matmuls and convolutions (CUDA only) while inside; the previous values after.
    cuDNN's timed choice of convolution algorithms (`torch.backends.cudnn.benchmark`) is left off: stage 1 at 512
    px took 96.0 vs 95.8 ms with it (blob), 58.9 vs 59.4 (solid ball), stage 3 42.2 vs 42.3, side by side on an
    H100 (bench_results/2026-12-08_h100_unet_layout/)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = options.tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def attention_processor(sdpa: bool):
    """SDPA (flash / memory-efficient kernels) or the classic matmul-softmax attention, as diffusers names them."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    return AttnProcessor2_0() if sdpa else AttnProcessor()


@contextlib.contextmanager
def module_layout(prior, options: SpeedOptions):
    """The attention processors (diffusers' `set_attn_processor`) of the UNet and, with vae-matmul, of the VAE,
    with channels-last the UNet's memory format (prior/channels_last.py), with vae-norm / unet-norm the VAE's /
    the UNet's group norms (prior/group_norms.py), and with geglu the UNet's feed-forward activations
    (prior/geglu.py), while inside; all back as they were after. Yields what was applied.

    The VAE is left in NCHW, and with vae-matmul its one attention layer (the mid block's single 512-wide head
    over 64x64 latents: SDPA has no flash kernel that wide, and its memory-efficient fallback's backward is
    slow) runs as plain matmuls. Encode forward + backward at 512, bf16, on an H200 (issue 12's diagnosis):
    31.5 ms as NHWC with SDPA, 23.9 as NCHW with SDPA, 18.1 as NCHW with matmuls. With vae-norm's Triton norms
    (which keep either layout) an NHWC VAE was no faster: stage 1 at 512 px 98.1 vs 98.1 ms on the blob, 62.0 vs
    60.2 on the opaque ball, stage 3 44.3 vs 44.9, side by side on an H100 (bench_results/2026-12-07_h100_take/)."""
    unet, vae = prior.unet, prior.vae
    processors = dict(unet.attn_processors)
    unet.set_attn_processor(attention_processor(options.sdpa))
    report = {"attention": ",".join(sorted({type(p).__name__ for p in unet.attn_processors.values()}))}
    vae_processors = dict(vae.attn_processors) if options.vae_matmul and vae is not None else {}
    if vae_processors:
        vae.set_attn_processor(attention_processor(False))
        report["vae_attention"] = "AttnProcessor"
    try:
        with contextlib.ExitStack() as stack:
            if options.channels_last:
                blocks = stack.enter_context(channels_last_unet(unet))
                report["channels_last"] = f"on, {blocks} transformer blocks keeping NHWC"
            kernels = prior.device.type == "cuda" and triton_available()
            for name, wanted, module in (("vae_norm", options.vae_norm, vae), ("unet_norm", options.unet_norm, unet)):
                if not wanted or module is None:
                    continue
                if kernels:
                    stack.enter_context(triton_group_norms(module))
                    report[name] = "triton"
                else:
                    report[name] = "skipped: needs CUDA and triton"
            if options.geglu:
                if kernels:
                    report["geglu"] = f"triton, {stack.enter_context(fused_geglus(unet))} feed-forwards"
                else:
                    report["geglu"] = "skipped: needs CUDA and triton"
            yield report
    finally:
        unet.set_attn_processor(processors)
        if vae_processors:
            vae.set_attn_processor(vae_processors)


@contextlib.contextmanager
def applied(prior, options: SpeedOptions):
    """`backend_flags` and `module_layout` together: what a job's steps run inside. Yields a report of what is
    on (the bench's JSON)."""
    with backend_flags(options), module_layout(prior, options) as report:
        report = {"dtype": str(prior.dtype).replace("torch.", ""), **report}
        if prior.device.type == "cuda":
            report["tf32"] = "on" if options.tf32 else "off"
        yield report


# -- optimizers ----------------------------------------------------------------------------------------------

def fused_adam(options: SpeedOptions, device: torch.device | str) -> bool:
    """Whether Adam optimizers built for `device` run fused (one CUDA kernel per step): fused-adam, on CUDA."""
    return options.fused_adam and torch.device(device).type == "cuda"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
