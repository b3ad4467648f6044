"""Numerical safety of the speed switches (prior/speed.py) on the CPU, in fp32.

The optimised layout (one UNet; the pretrained CFG pair and the LoRA branch in one masked call; channels-last)
must compute what the reference layout (a separate UNet copy for the LoRA branch, one call per branch) computes.
In fp32 they differ only by the kernels' summation order: even a deep copy of the same UNet changes its fp32
output by ~1e-6 relative on the CPU (oneDNN picks paths by batch size, memory layout and alignment). Through the
VAE encoder's backward, and in the second step through Adam's per-entry normalisation of near-zero hash-grid
gradients (eps 1e-15), that floor grows to a few 1e-5 of the gradient's norm; REL_TOL = 1e-4 sits above it. A
real mistake (LoRA applied to the pretrained samples, a lost camera embedding) changes ε_pretrained − ε_φ by
O(1): `test_a_wrong_mask_is_caught` checks that such a bug moves the gradient far beyond the bound.
"""
from __future__ import annotations

import torch

from prolific.bench.stage1 import bench_context, build_variant, particle_parameters
from prolific.config import make_config
from prolific.prior import speed
from prolific.prior.speed import SpeedOptions
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
    opt = SpeedOptions(sdpa=True, channels_last=True, batch=True, fused_adam=True)
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
    active = speed.SampleMask.active
    monkeypatch.setattr(speed.SampleMask, "active", lambda self, mask: active(self, torch.ones_like(mask)))
    bad_grads, _ = _run_steps(tiny_sd_model, SpeedOptions(sdpa=True, batch=True), reference=False, steps=1)
    assert _rel(_flat(bad_grads[0]), _flat(ref_grads[0])) > 100 * REL_TOL


def test_masked_batch_equals_separate_calls(tiny_sd_model):
    cfg = _config()
    variant = build_variant(SpeedOptions(sdpa=True), False, cfg, str(tiny_sd_model), torch.device("cpu"),
                            seed=0, n_particles=1)
    prior, distill = variant.prior, variant.distill
    _perturb_estimator(distill, seed=11)
    g = torch.Generator().manual_seed(0)
    n = 2
    size = prior.unet.config.sample_size
    x_t = torch.randn(n, prior.unet.config.in_channels, size, size, generator=g)
    t = torch.tensor([100, 700])
    cond, uncond = prior.embed_prompt("a red teapot").get(["front", "side"])
    c2w = torch.eye(4).repeat(n, 1, 1) + 0.3 * torch.randn(n, 4, 4, generator=g)
    with torch.no_grad():
        separate_pre = prior.predict_noise(x_t, t, cond, uncond, 7.5)
        separate_phi = distill.eps_phi(x_t, t, cond, c2w)
        plain_pre = prior.unet_eps(x_t, t, cond)  # adapter off outside the estimator
    assert speed.batch_branches(distill)
    patch = distill._prolific_batched
    patch.c2w = c2w
    with torch.no_grad():
        batched_pre = prior.predict_noise(x_t, t, cond, uncond, 7.5)
        batched_phi = distill.eps_phi(x_t, t, cond, c2w)
    patch.c2w = None
    # The LoRA branch really differs from the pretrained one, and the batch reproduces both.
    assert _rel(separate_phi, plain_pre) > 1e-2
    torch.testing.assert_close(batched_pre, separate_pre, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(batched_phi, separate_phi, rtol=1e-6, atol=1e-6)
    # Outside a loss call the patched methods are the originals: the estimator's training path is untouched.
    with torch.no_grad():
        torch.testing.assert_close(prior.predict_noise(x_t, t, cond, uncond, 7.5), separate_pre, rtol=0, atol=0)
    variant.close()


def test_masked_lora_layer_gates_each_sample(tiny_sd_model):
    cfg = _config()
    variant = build_variant(SpeedOptions(), False, cfg, str(tiny_sd_model), torch.device("cpu"), seed=0,
                            n_particles=1)
    _perturb_estimator(variant.distill, seed=2)
    unet = variant.prior.unet
    mask = speed.install_sample_mask(unet)
    layer = next(m for m in unet.modules() if getattr(m, "_prolific_mask", None) is mask)
    x = torch.randn(3, 5, layer.base_layer.in_features)
    variant.distill._set_adapter(True)
    with torch.no_grad():
        on = layer(x)
        with mask.active(torch.tensor([True, False, True])):
            mixed = layer(x)
    variant.distill._set_adapter(False)
    with torch.no_grad():
        off = layer(x)
    assert torch.equal(mixed[0], on[0]) and torch.equal(mixed[2], on[2])
    assert torch.equal(mixed[1], off[1])
    assert not torch.allclose(on[1], off[1])
    variant.close()


def test_option_parsing():
    opts = SpeedOptions.parse("bf16,cudagraphs,batch,fused-adam")
    assert opts.bf16 and opts.batch and opts.fused_adam and opts.compile == "reduce-overhead"
    assert not opts.tf32 and not opts.sdpa
    assert SpeedOptions.parse("best") == best_options()
    assert SpeedOptions.parse(opts.label()) == opts
    import pytest

    from prolific.errors import BadRequest

    with pytest.raises(BadRequest, match="Unknown speed option 'warp'"):
        SpeedOptions.parse("bf16,warp")
