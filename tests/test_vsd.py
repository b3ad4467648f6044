"""Score distillation: the annealed t schedule, the VSD/SDS gradients, the LoRA + camera estimator."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from prolific.config import PriorConfig, make_config
from prolific.prior.diffusion import load_prior
from prolific.prior.vsd import ScoreDistillation, time_range, vsd_gradient

CPU = torch.device("cpu")


def _cfg(**kw) -> PriorConfig:
    return dataclasses.replace(make_config("a red teapot", "test").prior, **kw)


def _cameras(n: int) -> torch.Tensor:
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, 3] = torch.tensor([0.0, -2.0, 0.5]) + torch.arange(n).view(-1, 1) * 0.3
    return c2w


def _step(sd, prior, images, seed=0, step=0, directions=("front", "side"), view_dependent=True):
    emb = prior.embed_prompt("a red teapot", "blurry", view_dependent)
    images = images.clone().requires_grad_(True)
    loss, info = sd.loss(images, _cameras(len(directions)), list(directions), emb, step, 100,
                         torch.Generator().manual_seed(seed))
    loss.backward()
    return images.grad, info


@pytest.fixture
def sd_prior(tiny_sd_model):
    return load_prior(str(tiny_sd_model), CPU, torch.float32)


@pytest.fixture
def pixel_prior(tiny_pixel_model):
    return load_prior(str(tiny_pixel_model), CPU, torch.float32)


def test_time_range_anneals_after_the_wide_phase():
    cfg = PriorConfig(t_min=0.02, t_max=0.98, t_max_annealed=0.5, anneal_fraction=0.2)
    assert time_range(cfg, 0, 25000) == (0.02, 0.98)
    assert time_range(cfg, 4999, 25000) == (0.02, 0.98)
    assert time_range(cfg, 5000, 25000) == (0.02, 0.5)


def test_vsd_gradient_is_weighted_difference_and_finite():
    eps = torch.randn(2, 4, 8, 8)
    w = torch.tensor([0.5, 0.9]).view(-1, 1, 1, 1)
    assert torch.equal(vsd_gradient(eps, eps.clone(), w), torch.zeros_like(eps))
    other = torch.randn(2, 4, 8, 8)
    assert torch.allclose(vsd_gradient(eps, other, w), w * (eps - other))
    eps[0, 0, 0, 0] = float("nan")
    assert torch.isfinite(vsd_gradient(eps, other, w)).all()


def test_vsd_gradient_is_exactly_zero_while_the_estimator_equals_the_prior(sd_prior):
    # Fresh estimator (LoRA B = 0, camera MLP output 0), CFG 1 on the pretrained branch and the same text on
    # both branches: ε_φ ≡ ε_pretrained.
    sd = ScoreDistillation(sd_prior, _cfg(guidance_scale=1.0, lora_view_prompt=True), "vsd")
    grad, info = _step(sd, sd_prior, torch.rand(2, 3, 24, 24))
    assert torch.equal(grad, torch.zeros_like(grad)) and info["grad_norm"] == 0.0
    # With real guidance the two branches differ and the renders get a gradient.
    sd.cfg = _cfg(guidance_scale=7.5, lora_view_prompt=True)
    grad, info = _step(sd, sd_prior, torch.rand(2, 3, 24, 24))
    assert grad.abs().sum() > 0 and info["grad_norm"] > 0


def test_the_estimator_reads_the_bare_prompt_and_the_pretrained_branch_the_view_suffix(sd_prior):
    """Both references give ε_φ the prompt without its view suffix: at CFG 1 with a fresh estimator the only
    difference left between the branches is the suffix, and it vanishes when the prompt has none."""
    sd = ScoreDistillation(sd_prior, _cfg(guidance_scale=1.0), "vsd")
    grad, _ = _step(sd, sd_prior, torch.rand(2, 3, 24, 24))
    assert grad.abs().sum() > 0
    grad, _ = _step(sd, sd_prior, torch.rand(2, 3, 24, 24), view_dependent=False)
    assert torch.equal(grad, torch.zeros_like(grad))
    # The estimator also trains on the bare prompt.
    emb = sd_prior.embed_prompt("a red teapot", "blurry")
    assert torch.equal(sd._batch[-1][2], emb.get_bare(2))
    assert not torch.equal(emb.get_bare(1), emb.get(["front"])[0])


def test_the_estimator_trains_on_all_times_and_sometimes_without_the_camera(sd_prior):
    """t ~ U[0, 1000) for ε_φ's own steps and the camera zeroed on ~10% of them (both references)."""
    sd = ScoreDistillation(sd_prior, _cfg(), "vsd")
    times, cameras = [], []
    unet_hook = sd_prior.unet.register_forward_pre_hook(lambda m, args: times.append(args[1].clone()))
    camera_hook = sd.camera.register_forward_pre_hook(lambda m, args: cameras.append(args[0].clone()))
    g = torch.Generator().manual_seed(0)
    try:
        _step(sd, sd_prior, torch.rand(2, 3, 24, 24))
        times.clear(), cameras.clear()
        for _ in range(150):
            sd.update_estimator(g)
    finally:
        unet_hook.remove(), camera_hook.remove()
    t = torch.cat(times)
    assert t.min() >= 0 and t.max() <= 999 and t.min() < 20 and t.max() > 980  # beyond the VSD range [20, 980]
    dropped = sum(bool((c == 0).all()) for c in cameras)
    assert len(cameras) == 150 and 5 <= dropped <= 30
    sd.cfg = _cfg(camera_dropout=0.0)
    cameras.clear()
    camera_hook = sd.camera.register_forward_pre_hook(lambda m, args: cameras.append(args[0].clone()))
    try:
        for _ in range(30):
            sd.update_estimator(g)
    finally:
        camera_hook.remove()
    assert not any(bool((c == 0).all()) for c in cameras)


def test_sds_gradient_matches_its_formula(pixel_prior):
    cfg = _cfg(sds_guidance_scale=20.0)
    sd = ScoreDistillation(pixel_prior, cfg, "sds")
    images = torch.rand(2, 3, 32, 32)
    grad, info = _step(sd, pixel_prior, images, seed=3, step=0)
    # Replay the draws: t first, then the noise, from the same generator.
    g = torch.Generator().manual_seed(3)
    t = torch.randint(int(0.02 * 1000), int(0.98 * 1000) + 1, (2,), generator=g)
    noise = torch.randn(2, 3, 32, 32, generator=g)
    x0 = images * 2 - 1
    ab = pixel_prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    cond, uncond = pixel_prior.embed_prompt("a red teapot", "blurry").get(["front", "side"])
    eps = pixel_prior.predict_noise(x_t, t, cond, uncond, 20.0)
    expected = (1 - ab) * (eps - noise) / 2 * 2  # / B for the batch mean, * 2 for d x0 / d rgb
    assert info["t"] == t.float().mean().item()
    assert torch.allclose(grad, expected, atol=1e-5)
    assert sd.update_estimator() == 0.0 and not getattr(pixel_prior.unet, "peft_config", None)


def test_estimator_update_trains_only_lora_and_camera(sd_prior):
    base = {n: p.detach().clone() for n, p in sd_prior.unet.named_parameters()}
    sd = ScoreDistillation(sd_prior, _cfg(), "vsd")
    camera = [p.detach().clone() for p in sd.camera.parameters()]
    lora = {n: p.detach().clone() for n, p in sd.lora_params.items()}
    assert lora and all(".lora_" in n for n in lora)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} >= {"to_q", "to_k", "to_v", "0"}

    x_t = torch.randn(2, 4, 8, 8)
    t = torch.tensor([300, 600])
    cond, uncond = sd_prior.embed_prompt("a red teapot").get(["front", "side"])
    before = sd_prior.predict_noise(x_t, t, cond, uncond, 7.5)
    _step(sd, sd_prior, torch.rand(2, 3, 24, 24))
    losses = [sd.update_estimator(torch.Generator().manual_seed(i)) for i in range(3)]
    assert all(l > 0 and l == l for l in losses)

    for name, p in sd_prior.unet.named_parameters():
        if name in lora:
            continue
        original = name.replace(".base_layer", "")
        assert torch.equal(p, base[original]), name
    assert any(not torch.equal(p, lora[n]) for n, p in sd.lora_params.items())
    assert any(not torch.equal(p, q) for p, q in zip(sd.camera.parameters(), camera))
    # The pretrained branch ignores the trained adapter and the camera; ε_φ no longer equals it.
    assert torch.equal(sd_prior.predict_noise(x_t, t, cond, uncond, 7.5), before)
    with torch.no_grad():
        phi = sd.eps_phi(x_t, t, cond, _cameras(2))
        assert not torch.allclose(phi, sd_prior.predict_noise(x_t, t, cond, uncond, 1.0), atol=1e-6)
        assert not torch.allclose(phi, sd.eps_phi(x_t, t, cond, _cameras(2).flip(0)), atol=1e-7)


def test_estimator_trains_on_every_particle_since_the_last_update(sd_prior):
    sd = ScoreDistillation(sd_prior, _cfg(), "vsd")
    seen = []
    handle = sd_prior.unet.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        _step(sd, sd_prior, torch.rand(1, 3, 24, 24), directions=("front",))
        _step(sd, sd_prior, torch.rand(1, 3, 24, 24), directions=("back",))
        seen.clear()
        sd.update_estimator()
        sd.update_estimator()  # lora_steps_per_iter > 1 reuses the same renders
        assert seen == [2, 2]
        _step(sd, sd_prior, torch.rand(1, 3, 24, 24), directions=("side",))
        seen.clear()
        sd.update_estimator()
        assert seen == [1]
    finally:
        handle.remove()


def test_state_dict_round_trip_restores_the_estimator(tiny_sd_model, sd_prior):
    sd = ScoreDistillation(sd_prior, _cfg(), "vsd")
    for i in range(2):
        _step(sd, sd_prior, torch.rand(2, 3, 24, 24), seed=i)
        sd.update_estimator(torch.Generator().manual_seed(i))
    state = sd.state_dict()

    fresh_prior = load_prior(str(tiny_sd_model), CPU, torch.float32)
    restored = ScoreDistillation(fresh_prior, _cfg(), "vsd")
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([200, 800])
    cond, _ = sd_prior.embed_prompt("a red teapot").get(["front", "back"])
    with torch.no_grad():
        assert not torch.allclose(restored.eps_phi(x_t, t, cond, _cameras(2)), sd.eps_phi(x_t, t, cond, _cameras(2)))
        restored.load_state_dict(state)
        assert torch.allclose(restored.eps_phi(x_t, t, cond, _cameras(2)), sd.eps_phi(x_t, t, cond, _cameras(2)),
                              atol=1e-6)
    assert restored.optimizer.state_dict()["state"][0]["step"] == 2
    with pytest.raises(ValueError):
        restored.load_state_dict(ScoreDistillation(fresh_prior, _cfg(), "sds").state_dict())


def test_a_new_job_gets_a_fresh_estimator_on_the_same_loaded_model(sd_prior):
    first = ScoreDistillation(sd_prior, _cfg(guidance_scale=1.0, lora_view_prompt=True), "vsd")
    _step(first, sd_prior, torch.rand(2, 3, 24, 24))
    first.update_estimator()
    first.close()
    second = ScoreDistillation(sd_prior, _cfg(guidance_scale=1.0, lora_view_prompt=True), "vsd")
    grad, _ = _step(second, sd_prior, torch.rand(2, 3, 24, 24))
    assert torch.equal(grad, torch.zeros_like(grad))


def test_lora_steps_per_iter_sets_how_many_estimator_steps_each_update_takes(sd_prior):
    sd = ScoreDistillation(sd_prior, _cfg(lora_steps_per_iter=3), "vsd")
    seen = []
    handle = sd_prior.unet.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        _step(sd, sd_prior, torch.rand(1, 3, 24, 24), directions=("front",))
        seen.clear()
        sd.update_estimator()
    finally:
        handle.remove()
        sd.close()
    assert seen == [1, 1, 1]
    assert all(state["step"] == 3 for state in sd.optimizer.state.values())
