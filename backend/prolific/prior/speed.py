"""Speed switches for the distillation step, applied from outside to a loaded prior and its estimator.

Each switch is separate so the bench can measure it alone (`--opt`): bf16 weights, TF32 matmuls, SDPA attention,
channels-last convolutions, torch.compile of the UNet and VAE encoder (optionally with CUDA graphs), fused Adam,
and batching: the pretrained CFG pair and the LoRA branch ε_φ run in ONE no-grad UNet call. The LoRA delta of
every peft layer is then gated per sample by a boolean mask (`SampleMask`), and so is the camera embedding that
the estimator adds to the time embedding, so each sample sees exactly the network it would see in its own call.
"""
from __future__ import annotations

import contextlib
import sys
import types

import torch

from ..speed_options import SpeedOptions

def job_options(text: str, device: torch.device | str) -> SpeedOptions:
    """The options a generation runs with (`prior.speed`). "auto" keeps what the H100 bench showed to help or
    to save memory without changing results (tests/test_speed.py); torch.compile stays opt-in until it has been
    measured on a GPU. Anything else is parsed like the bench's --opt. A job's weights are in prior.dtype (fp16
    on a GPU), so auto leaves bf16 off."""
    if text != "auto":
        return SpeedOptions.parse(text)
    if torch.device(device).type == "cuda":
        return SpeedOptions(tf32=True, sdpa=True, channels_last=True, batch=True, fused_adam=True,
                            occupancy=True, tcnn=True)
    return SpeedOptions(sdpa=True, batch=True, occupancy=True)


def reference_options() -> SpeedOptions:
    """How the reference implementations run: fp16 eager, diffusers' default attention (SDPA on torch 2), the
    PyTorch hash grid, every sample along every ray evaluated."""
    return SpeedOptions(sdpa=True)


def prior_dtype(options: SpeedOptions, device: torch.device) -> torch.dtype:
    if torch.device(device).type == "cpu":
        return torch.float32
    return torch.bfloat16 if options.bf16 else torch.float16


# -- global backend flags ------------------------------------------------------------------------------------

def set_matmul_precision(tf32: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


# -- attention and memory format -----------------------------------------------------------------------------

def set_attention(unet: torch.nn.Module, sdpa: bool) -> str:
    """Put SDPA (flash / memory-efficient kernels) or the classic matmul-softmax processor on every attention
    layer; returns the processor class in use."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0() if sdpa else AttnProcessor())
    kinds = {type(p).__name__ for p in unet.attn_processors.values()}
    return ",".join(sorted(kinds))


def set_channels_last(prior) -> None:
    prior.unet.to(memory_format=torch.channels_last)
    if prior.vae is not None:
        prior.vae.to(memory_format=torch.channels_last)


# -- per-sample LoRA gating ----------------------------------------------------------------------------------

class SampleMask:
    """A per-sample boolean gate shared by every LoRA layer of one UNet (see `install_sample_mask`).

    Outside `active(...)` the patched layers behave exactly as peft's own forward."""

    def __init__(self):
        self.value: torch.Tensor | None = None

    @contextlib.contextmanager
    def active(self, mask: torch.Tensor):
        previous, self.value = self.value, mask.bool()
        try:
            yield self
        finally:
            self.value = previous


def _lora_layers(module: torch.nn.Module):
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer) and len(m.lora_A) > 0]


def _masked_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's vanilla-LoRA forward, with the summed LoRA deltas kept only on samples where the mask is True.

    Rows with the mask set compute `base + B(A(x)) * scaling` with the very operations peft uses; the others
    get `base` untouched, so a masked batch reproduces separate adapter-on and adapter-off calls."""
    mask = self._prolific_mask.value
    if mask is None or self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
        return self._prolific_peft_forward(x, *args, **kwargs)
    if x.shape[0] != mask.shape[0]:
        raise ValueError(f"LoRA sample mask of {mask.shape[0]} entries applied to a batch of {x.shape[0]}.")
    base = self.base_layer(x, *args, **kwargs)
    result = base
    for name in self.active_adapters:
        if name not in self.lora_A.keys():
            continue
        if name in self.lora_variant:
            raise NotImplementedError(f"Per-sample masking of the LoRA variant of adapter '{name}'.")
        lora_A, lora_B = self.lora_A[name], self.lora_B[name]
        if self._prolific_casts_input:  # peft's Linear casts activations to the LoRA weights' dtype
            x = self._cast_input_dtype(x, lora_A.weight.dtype)
        result = result + lora_B(lora_A(self.lora_dropout[name](x))) * self.scaling[name]
    keep = mask.view(-1, *([1] * (result.dim() - 1)))
    return torch.where(keep, result, base).to(base.dtype)


def install_sample_mask(unet: torch.nn.Module) -> SampleMask:
    """Patch every peft LoRA layer of `unet` (instance-level, idempotent) to honour one shared `SampleMask`."""
    from peft.tuners.lora import Linear

    existing = getattr(unet, "_prolific_sample_mask", None)
    mask = existing or SampleMask()
    layers = _lora_layers(unet)
    if not layers:
        raise ValueError("The UNet has no LoRA layers to mask; add the estimator's adapter first.")
    for layer in layers:
        if getattr(layer, "_prolific_mask", None) is mask:
            continue
        layer._prolific_mask = mask
        layer._prolific_casts_input = isinstance(layer, Linear)
        layer._prolific_peft_forward = layer.forward
        layer.forward = types.MethodType(_masked_lora_forward, layer)
    unet._prolific_sample_mask = mask
    return mask


# -- torch.compile -------------------------------------------------------------------------------------------

def compile_prior(prior, mode: str) -> list[str]:
    """torch.compile the UNet and the VAE encoder in place (static shapes: every call site keeps its batch).
    Compilation itself happens at the first call; `uncompile_prior` undoes this if that fails."""
    done = []
    prior.unet.compile(mode=mode, dynamic=False)
    done.append("unet")
    if prior.vae is not None:
        prior.vae.encoder.compile(mode=mode, dynamic=False)
        done.append("vae.encoder")
    return done


def uncompile_prior(prior) -> None:
    """Back to eager, releasing compiled code and any CUDA-graph memory pools."""
    for module in (prior.unet, getattr(prior.vae, "encoder", None)):
        if module is not None:
            module._compiled_call_impl = None
    torch._dynamo.reset()
    if prior.device.type == "cuda":
        from torch._inductor import cudagraph_trees

        cudagraph_trees.reset_cudagraph_trees()


def mark_step() -> None:
    """Tell CUDA-graph trees a new iteration begins, so outputs of the previous one may be overwritten."""
    torch.compiler.cudagraph_mark_step_begin()


# -- optimizers ----------------------------------------------------------------------------------------------

def fused_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same Adam/AdamW (hyper-parameters, param groups and state) as one fused CUDA kernel per step.
    Returned unchanged when its parameters are not all on CUDA or it is another kind of optimizer."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return optimizer
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not params or any(p.device.type != "cuda" for p in params):
        return optimizer
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in optimizer.param_groups]
    fused = type(optimizer)(groups, fused=True)
    fused.load_state_dict(optimizer.state_dict())
    for g in fused.param_groups:
        g["fused"], g["foreach"] = True, None
        for p in g["params"]:
            state = fused.state.get(p, {})
            if torch.is_tensor(state.get("step")):  # the fused kernel reads step counts on the device
                state["step"] = state["step"].to(p.device, torch.float32)
    return fused


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- one UNet call for the pretrained CFG pair and the LoRA branch ---------------------------------------------

class _BatchedBranches:
    """Instance-level patches of one ScoreDistillation and its prior: while `loss` runs, the prior's
    `predict_noise` evaluates [cond, uncond, ε_φ's text] in one masked UNet call and keeps ε_φ, which the
    following `eps_phi` call on the same x_t, t and text returns instead of running the UNet again. Every other
    call (the estimator's own training step, previews, tests) goes to the original methods."""

    def __init__(self, distill, mask: SampleMask):
        self.distill, self.mask = distill, mask
        self.prior = distill.prior
        self.c2w: torch.Tensor | None = None
        self.phi_cond: torch.Tensor | None = None  # ε_φ's text embedding; None = the pretrained branch's
        self.kept: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.loss = distill.loss
        self.predict_noise = self.prior.predict_noise
        self.eps_phi = distill.eps_phi

    def patched_loss(self, images, c2w, directions, prompt, *args, **kwargs):
        self.c2w = c2w
        self.phi_cond = self.distill.estimator_cond(prompt, directions)
        try:
            return self.loss(images, c2w, directions, prompt, *args, **kwargs)
        finally:
            self.c2w, self.phi_cond, self.kept = None, None, None

    @torch.no_grad()
    def patched_predict_noise(self, x_t, t, cond, uncond, guidance_scale):
        if self.c2w is None:
            return self.predict_noise(x_t, t, cond, uncond, guidance_scale)
        n = x_t.shape[0]
        guided = uncond is not None and guidance_scale != 1.0
        phi_cond = cond if self.phi_cond is None else self.phi_cond
        embs = [cond, uncond, phi_cond] if guided else [cond, phi_cond]
        k = len(embs)
        mask = torch.zeros(k * n, dtype=torch.bool, device=x_t.device)
        mask[(k - 1) * n:] = True
        distill = self.distill
        with distill._estimator(self.c2w), self.mask.active(mask):
            if distill._camera_emb is not None:
                # Zero rows add exactly nothing to the pretrained samples' time embedding.
                cam = distill._camera_emb
                distill._camera_emb = torch.cat([torch.zeros_like(cam).repeat(k - 1, 1), cam])
            eps = self.prior.unet_eps(torch.cat([x_t] * k), torch.cat([t] * k), torch.cat(embs)).chunk(k)
        self.kept = (x_t, t, phi_cond, eps[-1])
        if not guided:
            return eps[0]
        eps_c, eps_u = eps[0], eps[1]
        return eps_u + guidance_scale * (eps_c - eps_u)

    def patched_eps_phi(self, x_t, t, cond, c2w):
        kept = self.kept
        if (kept is not None and kept[0] is x_t and kept[1] is t and torch.equal(kept[2], cond)
                and not torch.is_grad_enabled()):
            self.kept = None
            return kept[3]
        return self.eps_phi(x_t, t, cond, c2w)


def batch_branches(distill) -> bool:
    """Run VSD's pretrained CFG pair and ε_φ in one UNet call (see `_BatchedBranches`). Returns False when
    there is nothing to batch (SDS, or no estimator)."""
    if distill.guidance != "vsd" or not distill.lora_params:
        return False
    patch = _BatchedBranches(distill, install_sample_mask(distill.prior.unet))
    distill.loss = patch.patched_loss
    distill.eps_phi = patch.patched_eps_phi
    distill.prior.predict_noise = patch.patched_predict_noise
    distill._prolific_batched = patch
    return True


def unbatch_branches(distill) -> None:
    patch = getattr(distill, "_prolific_batched", None)
    if patch is None:
        return
    for obj, name in ((distill, "loss"), (distill, "eps_phi"), (distill.prior, "predict_noise")):
        obj.__dict__.pop(name, None)
    del distill._prolific_batched


# -- the reference implementations' layout ---------------------------------------------------------------------

def separate_estimator_prior(prior):
    """A view of `prior` whose UNet is a deep copy (the reference implementations keep a second UNet for the
    LoRA branch) while `predict_noise` still runs the original, adapter-free UNet. Give it to
    ScoreDistillation to reproduce that layout; the VAE, text encoder and embeddings stay shared."""
    import copy
    import dataclasses

    twin = dataclasses.replace(prior, unet=copy.deepcopy(prior.unet))
    twin.predict_noise = prior.predict_noise
    return twin


# -- everything at once ----------------------------------------------------------------------------------------

def accelerate(prior, distill, options: SpeedOptions, optimizers: list | None = None) -> dict:
    """Apply `options` to a loaded prior and its ScoreDistillation (None for SDS-only uses). Optimizers in
    `optimizers` are replaced in place by fused ones. Returns {option: what was done or why not}; bf16 is
    chosen at load time (`prior_dtype`), so it is only reported here."""
    report: dict[str, str] = {"dtype": str(prior.dtype).replace("torch.", "")}
    cuda = prior.device.type == "cuda"
    if cuda:
        set_matmul_precision(options.tf32)
        report["tf32"] = "on" if options.tf32 else "off"
    report["attention"] = set_attention(prior.unet, options.sdpa)
    if options.channels_last:
        set_channels_last(prior)
        report["channels_last"] = "on"
    if options.batch and distill is not None:
        report["batch"] = "cfg+lora in one call" if batch_branches(distill) else "nothing to batch (sds)"
    if options.fused_adam:
        if not cuda:
            report["fused_adam"] = "skipped: needs CUDA"
        else:
            if distill is not None and distill.optimizer is not None:
                distill.optimizer = fused_optimizer(distill.optimizer)
            for i, opt in enumerate(optimizers or []):
                optimizers[i] = fused_optimizer(opt)
            report["fused_adam"] = "on"
    if options.compile:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
        report["compile"] = f"{options.compile}: " + "+".join(compile_prior(prior, options.compile))
    return report
