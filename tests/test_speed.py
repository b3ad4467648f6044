"""The speed switches (prior/speed.py, the estimator's modes in prior/vsd.py) on the CPU, in fp32: each is really
used when asked for, plain eager when not, leaves nothing changed after a job, and changes no result.

The optimised layout (one UNet; the pretrained CFG pair and the LoRA branch in one gated call; channels-last)
must compute what the reference layout (a separate UNet copy for the LoRA branch, one call per branch) computes.
In fp32 they differ only by the kernels' summation order: even a deep copy of the same UNet changes its fp32
output by ~1e-6 relative on the CPU (oneDNN picks paths by batch size, memory layout and alignment). Through the
VAE encoder's backward, and in the second step through Adam's per-entry normalisation of near-zero hash-grid
gradients (eps 1e-15), that floor grows to a few 1e-5 of the gradient's norm; REL_TOL = 1e-4 sits above it. A
real mistake (LoRA applied to the pretrained samples, a lost camera embedding) changes ε_pretrained − ε_φ by
O(1): `test_a_wrong_mask_is_caught` checks that such a bug moves the gradient far beyond the bound.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from prolific import pipeline
from prolific.bench.stage1 import bench_context, build_variant, particle_parameters
from prolific.config import make_config
from prolific.device import job_dtype
from prolific.errors import BadRequest
from prolific.prior import speed
from prolific.prior.diffusion import load_prior
from prolific.prior.speed import SpeedOptions
from prolific.prior.lora_layers import LoraSampleGate, kernel_lora_linear, lora_config
from prolific.prior.vsd import ScoreDistillation
from prolific.speed_options import best_options
from prolific.stages import nerf as nerf_stage

REL_TOL = 1e-4


def _config():
    return make_config("a red teapot", "test", {"nerf": {"shading": (1.0, 0.0, 0.0)}})


def _perturb_estimator(distill, seed: int) -> None:
    """Fresh LoRA B matrices and camera output layer are zero (ε_φ = ε_pretrained, a zero VSD gradient):
    give them the same random values in both layouts so the comparison means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in sorted(distill.lora_params):
            p = distill.lora_params[name]
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for p in distill.camera.net[2].parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


def _run_steps(model, options: SpeedOptions, reference: bool, steps: int = 2):
    """Two real stage-1 steps; returns each step's gradients on the NeRF/background parameters (taken just
    before the particle's optimizer step) and the LoRA weights at the end."""
    cfg = _config()
    variant = build_variant(options, reference, cfg, str(model), torch.device("cpu"), seed=0, n_particles=1)
    _perturb_estimator(variant.distill, seed=5)
    prior, particle = variant.prior, variant.particles[0]
    prompt = prior.embed_prompt(cfg.prompt)
    ctx = bench_context(cfg, 16, torch.device("cpu"), torch.Generator().manual_seed(3), prompt)
    grads = []
    optimizer = variant.optimizers[0]
    step = optimizer.step

    def record_then_step(*args, **kwargs):
        grads.append([p.grad.clone() for p in particle_parameters(particle) if p.grad is not None])
        return step(*args, **kwargs)

    optimizer.step = record_then_step
    torch.manual_seed(7)  # update_estimator draws its t and noise from the global generator
    for i in range(steps):
        nerf_stage.train_step(ctx, variant.particles, variant.optimizers, variant.distill, i)
    lora = {k: v.detach().clone() for k, v in variant.distill.lora_params.items()}
    variant.close()
    return grads, lora


def test_optimised_step_matches_reference_gradients(tiny_sd_model):
    ref_grads, ref_lora = _run_steps(tiny_sd_model, speed.reference_options(), reference=True)
    opt = SpeedOptions(sdpa=True, channels_last=True, vae_matmul=True, batch=True, fused_adam=True)
    opt_grads, opt_lora = _run_steps(tiny_sd_model, opt, reference=False)
    assert len(ref_grads) == len(opt_grads) == 2
    for step_ref, step_opt in zip(ref_grads, opt_grads):
        assert _flat(step_ref).norm() > 0, "the VSD gradient vanished: the comparison would be vacuous"
        assert _rel(_flat(step_opt), _flat(step_ref)) < REL_TOL
    assert ref_lora.keys() == opt_lora.keys()
    # The estimator's own training step (with grad, unbatched) moved its weights identically.
    for name in ref_lora:
        assert _rel(opt_lora[name], ref_lora[name]) < REL_TOL


def test_a_wrong_mask_is_caught(tiny_sd_model, monkeypatch):
    """The tolerance above can fail: LoRA leaking into the pretrained samples is a gradient change of O(1)."""
    ref_grads, _ = _run_steps(tiny_sd_model, speed.reference_options(), reference=True, steps=1)
    only = LoraSampleGate.only
    monkeypatch.setattr(LoraSampleGate, "only", lambda self, mask: only(self, torch.ones_like(mask)))
    bad_grads, _ = _run_steps(tiny_sd_model, SpeedOptions(sdpa=True, batch=True), reference=False, steps=1)
    assert _rel(_flat(bad_grads[0]), _flat(ref_grads[0])) > 100 * REL_TOL


def _branch_inputs(prior, n: int = 2):
    g = torch.Generator().manual_seed(0)
    size = prior.unet.config.sample_size
    x_t = torch.randn(n, prior.unet.config.in_channels, size, size, generator=g)
    t = torch.tensor([100, 700])
    cond, uncond = prior.embed_prompt("a red teapot").get(["front", "side"])
    c2w = torch.eye(4).repeat(n, 1, 1) + 0.3 * torch.randn(n, 4, 4, generator=g)
    return x_t, t, cond, uncond, c2w


def test_batched_branches_equal_separate_calls(tiny_sd_model):
    cfg = _config()
    variant = build_variant(SpeedOptions(sdpa=True, batch=True), False, cfg, str(tiny_sd_model),
                            torch.device("cpu"), seed=0, n_particles=1)
    prior, distill = variant.prior, variant.distill
    _perturb_estimator(distill, seed=11)
    x_t, t, cond, uncond, c2w = _branch_inputs(prior)
    with torch.no_grad():
        separate_pre = prior.predict_noise(x_t, t, cond, uncond, 7.5)
        separate_phi = distill.eps_phi(x_t, t, cond, c2w)
        plain_pre = prior.unet_eps(x_t, t, cond)  # adapter off outside the estimator
    batched_pre, batched_phi = distill.both_branches(x_t, t, cond, uncond, cond, c2w, 7.5)
    # The LoRA branch really differs from the pretrained one, and the batch reproduces both.
    assert _rel(separate_phi, plain_pre) > 1e-2
    # fp32 summation order differs between a batch of 6 and calls of 4 and 2 (oneDNN picks its convolution
    # kernels by batch size; 7.8e-6 absolute on the GPU machine's CPU): an error that scales with the
    # activations, so a bound relative to the norm. The gate leaking LoRA into the pretrained rows is O(1).
    assert _rel(batched_pre, separate_pre) < 1e-5
    assert _rel(batched_phi, separate_phi) < 1e-5
    # After the batched call the shared UNet is the pretrained model again, bit for bit.
    with torch.no_grad():
        torch.testing.assert_close(prior.predict_noise(x_t, t, cond, uncond, 7.5), separate_pre, rtol=0, atol=0)
    variant.close()


def _unet_calls(unet) -> list:
    calls: list = []
    hook = unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    return calls, hook


@pytest.mark.parametrize("batched", [True, False])
def test_the_chosen_branch_layout_is_what_runs(tiny_sd_model, batched):
    """batch: the loss makes ONE UNet call of 3 x particles samples (CFG pair + ε_φ); without it, the CFG pair
    and ε_φ are two calls."""
    cfg = _config()
    variant = build_variant(SpeedOptions(sdpa=True, batch=batched), False, cfg, str(tiny_sd_model),
                            torch.device("cpu"), seed=0, n_particles=1)
    prior, distill = variant.prior, variant.distill
    assert distill.batched == batched
    prompt = prior.embed_prompt(cfg.prompt)
    images = torch.rand(2, 3, 32, 32)
    calls, hook = _unet_calls(prior.unet)
    try:
        distill.loss(images, torch.eye(4).repeat(2, 1, 1), ["front", "side"], prompt, 0, 10,
                     torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert calls == ([6] if batched else [4, 2])
    variant.close()


def test_sample_gate_keeps_lora_on_the_masked_samples_only(tiny_sd_model):
    cfg = _config()
    variant = build_variant(SpeedOptions(), False, cfg, str(tiny_sd_model), torch.device("cpu"), seed=0,
                            n_particles=1)
    distill = variant.distill
    _perturb_estimator(distill, seed=2)
    from peft.tuners.lora import LoraLayer

    layer = next(m for m in variant.prior.unet.modules() if isinstance(m, LoraLayer) and m.lora_A)
    assert layer.lora_dropout["vsd"] is distill.gate  # peft applies it to every LoRA input
    x = torch.randn(3, 5, layer.base_layer.in_features)
    distill._set_adapter(True)
    with torch.no_grad():
        on = layer(x)
        with distill.gate.only(torch.tensor([True, False, True])):
            mixed = layer(x)
    distill._set_adapter(False)
    with torch.no_grad():
        off = layer(x)
    assert torch.equal(mixed[0], on[0]) and torch.equal(mixed[2], on[2])
    assert torch.equal(mixed[1], off[1])
    assert not torch.allclose(on[1], off[1])
    distill._set_adapter(True)
    with pytest.raises(ValueError, match="mask of 2 entries applied to a batch of 3"):
        with torch.no_grad(), distill.gate.only(torch.tensor([True, False])):
            layer(x)
    distill._set_adapter(False)
    variant.close()


def test_the_lora_kernels_layers_are_pefts_layers_built_in_their_place(tiny_sd_model):
    """lora_config(kernels=True) builds the adapter with KernelLoraLinear (peft's custom-module dispatch): the same
    parameters and state_dict keys as peft's own layers, and on a CPU input peft's own forward, bit for bit. An
    estimator asks for them on CUDA only."""
    from peft.tuners.lora import LoraLayer

    unets = []
    for kernels in (True, False):
        prior = load_prior(str(tiny_sd_model), torch.device("cpu"), torch.float32)
        prior.unet.add_adapter(lora_config(4, kernels), adapter_name="vsd")
        unets.append(prior.unet)
    layers = [[m for m in unet.modules() if isinstance(m, LoraLayer)] for unet in unets]
    assert len(layers[0]) == len(layers[1]) > 0
    assert all(type(m) is kernel_lora_linear() for m in layers[0])
    assert not any(isinstance(m, kernel_lora_linear()) for m in layers[1])
    assert list(unets[0].state_dict()) == list(unets[1].state_dict())
    g = torch.Generator().manual_seed(0)
    for layer in layers[1]:
        layer.lora_B["vsd"].weight.data.normal_(generator=g)
    unets[0].load_state_dict(unets[1].state_dict())
    x = torch.randn(2, 5, layers[0][0].base_layer.in_features)
    assert torch.equal(layers[0][0](x), layers[1][0](x))
    assert not torch.equal(layers[0][0](x), layers[0][0].base_layer(x))
    distill = ScoreDistillation(load_prior(str(tiny_sd_model), torch.device("cpu"), torch.float32), _config().prior,
                                "vsd", lora_kernels=True)
    assert not distill.lora_kernels
    assert not any(isinstance(m, kernel_lora_linear()) for m in distill.unet.modules())
    distill.close()


def test_settings_hold_inside_and_are_restored_after(tiny_sd_model):
    prior = load_prior(str(tiny_sd_model), torch.device("cpu"), torch.float32)
    before = {k: type(v) for k, v in prior.unet.attn_processors.items()}
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    vae_before = {k: type(v) for k, v in prior.vae.attn_processors.items()}
    assert set(vae_before.values()) == {AttnProcessor2_0}  # diffusers' default, which vae-matmul replaces
    conv = next(m for m in prior.unet.modules() if isinstance(m, torch.nn.Conv2d))
    vae_conv = next(m for m in prior.vae.modules() if isinstance(m, torch.nn.Conv2d))
    options = SpeedOptions(tf32=True, sdpa=False, channels_last=True, vae_matmul=True)
    with speed.applied(prior, options) as report:
        assert {type(p) for p in prior.unet.attn_processors.values()} == {AttnProcessor}
        assert {type(p) for p in prior.vae.attn_processors.values()} == {AttnProcessor}
        assert report["attention"] == "AttnProcessor" and report["channels_last"].startswith("on")
        assert report["vae_attention"] == "AttnProcessor"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
        assert vae_conv.weight.is_contiguous()  # the VAE's convolutions stay NCHW (faster there)
    assert {k: type(v) for k, v in prior.unet.attn_processors.items()} == before
    assert {k: type(v) for k, v in prior.vae.attn_processors.items()} == vae_before
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
    assert conv.weight.is_contiguous()
    with speed.applied(prior, SpeedOptions(sdpa=True)):
        assert {type(p) for p in prior.unet.attn_processors.values()} == {AttnProcessor2_0}
        assert {k: type(v) for k, v in prior.vae.attn_processors.items()} == vae_before
        assert not torch.backends.cuda.matmul.allow_tf32


def test_a_job_leaves_no_flag_changed(tmp_path, tiny_sd_model):
    """The long-lived server runs job after job in one process: TF32 is on during a tf32 job's steps only."""
    prior = load_prior(str(tiny_sd_model), torch.device("cpu"), torch.float32)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    during = []
    cfg = make_config("a red teapot", "test", {"stages": ["nerf"], "nerf": {"steps": 2},
                                               "prior": {"speed": "tf32,sdpa"}})
    pipeline.run_job(cfg, tmp_path, "job", prior=prior,
                     sink=lambda event: during.append(torch.backends.cuda.matmul.allow_tf32))
    assert True in during
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_none_is_plain_eager(tiny_sd_model):
    options = speed.job_options("none", "cuda")
    assert options == SpeedOptions(sdpa=False)
    prior = load_prior(str(tiny_sd_model), torch.device("cpu"), torch.float32)
    with speed.applied(prior, options):
        distill = ScoreDistillation(prior, _config().prior, "vsd", **speed.estimator_kwargs(options))
        assert not distill.batched and not distill.fused_adam
        assert {type(p) for p in prior.unet.attn_processors.values()} == {AttnProcessor}
        distill.close()


def test_bf16_chooses_the_job_dtype():
    cuda = torch.device("cuda")
    assert job_dtype(cuda, "auto", "bf16,batch") == torch.bfloat16
    assert job_dtype(cuda, "auto", "best") == torch.bfloat16
    assert job_dtype(cuda, "auto", "auto") == torch.float16
    assert job_dtype(cuda, "auto", "batch") == torch.float16
    assert job_dtype(torch.device("cpu"), "auto", "bf16") == torch.float32  # half precision is slow there
    with pytest.raises(BadRequest, match="prior.speed asks for bf16 but prior.dtype is fp16"):
        make_config("a red teapot", "test", {"prior": {"speed": "bf16", "dtype": "fp16"}})


def test_option_parsing():
    opts = SpeedOptions.parse("bf16,batch,fused-adam")
    assert opts.bf16 and opts.batch and opts.fused_adam
    assert not opts.tf32 and not opts.sdpa
    assert SpeedOptions.parse("best") == best_options()
    assert SpeedOptions.parse("lora-kernels").lora_kernels
    assert best_options().geglu and best_options().lora_kernels
    # A GPU job's auto is best in the default fp16 precision: every measured switch, geglu included.
    assert speed.job_options("auto", "cuda") == dataclasses.replace(best_options(), bf16=False)
    assert SpeedOptions.parse(opts.label()) == opts
    with pytest.raises(BadRequest, match="Unknown speed option 'warp'"):
        SpeedOptions.parse("bf16,warp")


def test_retired_options_are_ignored_with_a_warning():
    said = []
    cfg = make_config("a red teapot", "test", {"prior": {"speed": "batch,occupancy,tcnn,cudagraphs,priority"}},
                      said.append)
    assert len(said) == 4 and "'occupancy' no longer exists" in said[0] and "hash_grid.impl" in said[1]
    assert "torch.compile" in said[2] and "no faster" in said[3]
    assert speed.job_options(cfg.prior.speed, "cpu") == SpeedOptions(sdpa=False, batch=True)
    with pytest.warns(FutureWarning, match="'compile' no longer exists"):
        make_config("a red teapot", "test", {"prior": {"speed": "compile"}})


def _field_and_optimizer(fused: bool):
    from prolific.field.nerf import NeRF
    from prolific.stages.optimizers import field_optimizer

    torch.manual_seed(0)
    cfg = _config()
    nerf = NeRF(cfg.nerf, cfg.hash_grid)
    return nerf, field_optimizer(nerf, None, 1e-2, 1e-3, 1e-3, fused=fused)


def _adam_steps(nerf, optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        x = torch.rand(256, 3, generator=g) * 2 - 1
        nerf.density(x).square().mean().backward()
        optimizer.step()


@pytest.mark.parametrize("saved_fused", [True, False])
def test_a_checkpoint_resumes_with_this_jobs_adam_kernel(saved_fused, tmp_path):
    """A stage-1 checkpoint of a job with other speed options (fused Adam or not) continues with the kernel this
    job built, and the same numbers: fused and plain Adam agree to fp32 rounding."""
    from prolific.stages.optimizers import load_optimizer_state

    nerf, optimizer = _field_and_optimizer(fused=saved_fused)
    _adam_steps(nerf, optimizer, 3, seed=1)
    path = tmp_path / "nerf.pt"
    torch.save({"nerf": nerf.state_dict(), "optimizer": optimizer.state_dict()}, path)
    state = torch.load(path, weights_only=True)
    resumed, resumed_opt = _field_and_optimizer(fused=not saved_fused)
    resumed.load_state_dict(state["nerf"])
    load_optimizer_state(resumed_opt, state["optimizer"], path)
    assert all(bool(g["fused"]) is not saved_fused for g in resumed_opt.param_groups)
    _adam_steps(nerf, optimizer, 2, seed=2)
    _adam_steps(resumed, resumed_opt, 2, seed=2)
    for a, b in zip(nerf.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_stages_build_fused_adam_only_where_asked_on_cuda():
    assert speed.fused_adam(speed.job_options("auto", "cuda"), "cuda")
    assert not speed.fused_adam(speed.job_options("auto", "cuda"), "cpu")
    assert not speed.fused_adam(speed.job_options("none", "cuda"), "cuda")
    assert not speed.fused_adam(speed.job_options("best", "cpu"), "cpu")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_stage1_builds_fused_adam_on_cuda_only(tmp_path, device):
    from prolific.events import Reporter
    from prolific.stages.context import StageContext

    cfg = make_config("a red teapot", "test", {"device": device})
    dev = torch.device(device)
    ctx = StageContext(cfg, dev, None, None, tmp_path, Reporter(), None, torch.Generator(dev).manual_seed(0))
    kernels = {bool(g["fused"]) for opt in nerf_stage.NerfStage(ctx).optimizers for g in opt.param_groups}
    assert kernels == {device == "cuda"}
