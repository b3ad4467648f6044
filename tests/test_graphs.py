"""Captured diffusion work (prior/graphs.py, `prior.speed=graphs`): the eager fallback on the CPU, and on a GPU
the same gradients from replayed graphs as from eager calls, across a resolution change; the estimator's update
on its own stream (prior/update_stream.py, `overlap`) gives the numbers of the inline one, and the LoRA branches
as Triton kernels (`lora-kernels`) those of peft's layers."""
from __future__ import annotations

import json

import pytest
import torch

from prolific import pipeline
from prolific.config import make_config
from prolific.events import JobWarning
from prolific.prior.diffusion import load_prior
from prolific.prior.graphs import WARMUP, Captures
from prolific.prior.vsd import ScoreDistillation


def _nerf_job(speed: str):
    return make_config("a red teapot", "test", {"stages": ["nerf"], "nerf": {"steps": 2},
                                               "prior": {"speed": speed}})


def test_graphs_on_the_cpu_run_eagerly_say_so_once_and_change_nothing(tmp_path, tiny_sd_model):
    prior = load_prior(str(tiny_sd_model), torch.device("cpu"), torch.float32)
    events: list = []
    graphed = pipeline.run_job(_nerf_job("sdpa,batch,graphs"), tmp_path, "graphs", sink=events.append,
                               prior=prior)
    plain = pipeline.run_job(_nerf_job("sdpa,batch"), tmp_path, "plain", prior=prior)
    said = [e for e in events if isinstance(e, JobWarning)]
    assert [e.code for e in said] == ["eager_fallback"]
    assert "CUDA graphs need a CUDA device" in said[0].message
    weights = [torch.load(r["objects"][0]["checkpoint"], weights_only=True) for r in (graphed, plain)]
    for part in ("nerf", "background"):
        for name, value in weights[1]["particles"][0][part].items():
            assert torch.equal(weights[0]["particles"][0][part][name], value), name
    lora = [w["guidance"]["lora"] for w in weights]
    assert all(torch.equal(lora[0][k], v) for k, v in lora[1].items())


def test_the_bench_says_how_the_diffusion_work_ran(capsys, tiny_sd_model):
    from prolific.cli import main

    assert main(["bench", "stage1", "--model", str(tiny_sd_model), "--resolutions", "16", "--steps", "1",
                 "--warmup", "1", "--opt", "sdpa,batch,graphs,overlap", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    (variant,) = json.loads(out.out)["variants"]
    assert variant["resolutions"]["16"]["graphs"] == "eager: CUDA graphs need a CUDA device"
    assert variant["applied"]["overlap"] == "inline"  # a side stream needs CUDA too
    assert out.err.count("CUDA graphs need a CUDA device") == 1


def test_captures_without_cuda_call_the_function():
    said: list = []
    captures = Captures("cpu", said.append)
    double = captures.call("doubling", lambda x, k: x * k)
    assert torch.equal(double(torch.ones(3), 2.0), torch.full((3,), 2.0))
    assert not captures.enabled and len(said) == 1 and captures.capture_s == 0.0


# -- on a GPU (the lead runs these on the device machine) -------------------------------------------------------

def _estimator(model, cfg, eager: bool, overlap: bool = False, lora_kernels: bool = False):
    """An estimator with graphs on its own copy of the prior (same weights, same seed); `eager` turns its
    captures off before the first step, so both run the very same code (capturable AdamW included)."""
    prior = load_prior(str(model), torch.device("cuda"), torch.float16)
    torch.manual_seed(0)
    said: list = []
    distill = ScoreDistillation(prior, cfg.prior, "vsd", batched=True, graphs=True, overlap=overlap,
                                lora_kernels=lora_kernels, say=said.append)
    with torch.no_grad():  # non-zero LoRA B and camera output, so ε_φ differs from the pretrained branch
        g = torch.Generator().manual_seed(5)
        for name in sorted(distill.lora_params):
            p = distill.lora_params[name]
            p.copy_((torch.randn(p.shape, generator=g) * 0.2).to(p.device))
        for p in distill.camera.net[2].parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.2).to(p.device))
    if eager:
        distill.captures.fall_back("the eager twin of a graphed test")
    return prior, distill, said


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def _same_gradients(runs, cfg, resolutions: list[int], tol: float = 1e-3) -> None:
    """The two estimators of `runs` step side by side on the same renders (one per entry of `resolutions`, at
    that size), each step's loss backward then update: the particle gradient (through the VAE backward) and
    the LoRA gradients must agree within `tol` of their norm, and be non-zero."""
    prompt = [prior.embed_prompt(cfg.prompt) for prior, _, _ in runs]
    gens = [torch.Generator("cuda").manual_seed(1) for _ in runs]
    image_gen = torch.Generator("cuda").manual_seed(2)
    c2w = (torch.eye(4) + 0.3 * torch.randn(4, 4, generator=torch.Generator().manual_seed(3))).cuda()[None]
    for step, res in enumerate(resolutions):
        pixels = torch.rand(1, 3, res, res, generator=image_gen, device="cuda")
        grads = []
        for (prior, distill, _), emb, gen in zip(runs, prompt, gens):
            images = pixels.clone().requires_grad_(True)
            loss, _ = distill.loss(images, c2w, ["front"], emb, step, 100, gen)
            loss.backward()
            distill.update_estimator(gen)
            lora = torch.cat([p.grad.flatten() for p in distill.lora_params.values()])
            grads.append((images.grad, lora))
        (img_a, lora_a), (img_b, lora_b) = grads
        assert img_b.norm() > 0 and lora_b.norm() > 0
        assert _rel(img_a, img_b) < tol, (step, res)
        assert _rel(lora_a, lora_b) < tol, (step, res)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_steps_give_the_eager_gradients_across_a_resolution_change(tiny_sd_model):
    """Replays launch the kernels the eager calls launched, on the same inputs: the particle gradient (through
    the captured VAE backward) and the LoRA gradients must agree. Bound 1e-3 of the norm: fp16 UNet, and cuBLAS
    may pick another split-K algorithm under capture (its workspace differs there), which reorders fp16/fp32
    sums; a stale input buffer or a graph of the other resolution replayed changes them by O(1)."""
    cfg = make_config("a red teapot", "test")
    runs = [_estimator(tiny_sd_model, cfg, eager) for eager in (False, True)]
    (_, graphed, said_graphed), (_, eager, said_eager) = runs
    _same_gradients(runs, cfg, [32] * (WARMUP + 2) + [64] * (WARMUP + 2) + [32] * 2)
    assert graphed.captures.enabled and said_graphed == [] and len(said_eager) == 1
    # One graph per shape: the encoder's per render resolution; the branches and the LoRA step see the
    # model's latent size whatever the render's (encode_images resizes to it).
    assert len(graphed._encoder.graphs) == 2
    assert len(graphed._branches.graphs) == 1 and len(graphed._train.graphs) == 1
    assert graphed.captures.capture_s > 0
    weights = [torch.cat([p.detach().flatten() for p in d.lora_params.values()]) for d in (graphed, eager)]
    assert _rel(weights[0], weights[1]) < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_function_that_cannot_be_captured_runs_eagerly_and_says_so_once():
    said: list = []
    captures = Captures("cuda", said.append)
    syncing = captures.call("a syncing function", lambda x: x * x.sum().item())  # .item() cannot be captured
    x = torch.arange(4.0, device="cuda")
    for _ in range(WARMUP + 3):
        assert torch.equal(syncing(x), x * 6.0)
    assert not captures.enabled and len(said) == 1 and "a syncing function" in said[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_update_on_its_own_stream_gives_the_inline_numbers(tiny_sd_model):
    """As the stages order a step: the loss, the estimator's update, then the particles' backward, which on the
    side stream runs while the update does. The same kernels on the same inputs: 1e-5 of the norm (nothing
    but summation order could differ); the main stream reading the LoRA mid-update, or the allocator handing
    out a render's memory the update still reads, changes them by O(1)."""
    cfg = make_config("a red teapot", "test")
    runs = [_estimator(tiny_sd_model, cfg, eager=False, overlap=overlap) for overlap in (True, False)]
    (_, side, _), (_, inline, _) = runs
    assert side.updates.name == "side stream" and inline.updates.name == "inline"
    prompt = [prior.embed_prompt(cfg.prompt) for prior, _, _ in runs]
    gens = [torch.Generator("cuda").manual_seed(1) for _ in runs]
    image_gen = torch.Generator("cuda").manual_seed(2)
    c2w = (torch.eye(4) + 0.3 * torch.randn(4, 4, generator=torch.Generator().manual_seed(3))).cuda()[None]
    before = inline.state_dict()["lora"]
    for step, res in enumerate([32] * (WARMUP + 3) + [64] * (WARMUP + 3)):
        pixels = torch.rand(1, 3, res, res, generator=image_gen, device="cuda")
        grads = []
        for (prior, distill, _), emb, gen in zip(runs, prompt, gens):
            images = pixels.clone().requires_grad_(True)
            loss, _ = distill.loss(images, c2w, ["front"], emb, step, 100, gen)
            distill.update_estimator(gen)
            loss.backward()
            grads.append(images.grad)
        assert grads[1].norm() > 0 and _rel(grads[0], grads[1]) < 1e-5, step
    states = [d.state_dict()["lora"] for d in (side, inline)]
    assert all(_rel(states[0][name], value) < 1e-5 for name, value in states[1].items())
    assert any(_rel(before[name], value) > 1e-3 for name, value in states[1].items())  # the updates did train


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_lora_kernels_give_the_gradients_of_pefts_layers(tiny_sd_model):
    """Replayed steps with the LoRA branches as kernels/lora.py's kernels against peft's layers: the batched
    branches (the pretrained samples gated off) and the LoRA step. The same fp32 products in another order
    (3xTF32 against cuBLAS's fp32), so a LoRA layer's fp16 output can round one ulp (2^-11) apart; over the
    UNet's layers and the difference of its two branches that reached 2.8e-3 of the norm on an H100: bound 1e-2.
    A branch left ungated, or a wrong LoRA gradient, changes them by O(1) (the LoRA here is far from zero)."""
    from prolific.prior.lora_layers import kernel_lora_linear

    cfg = make_config("a red teapot", "test")
    runs = [_estimator(tiny_sd_model, cfg, eager=False, lora_kernels=k) for k in (True, False)]
    (_, kernels, _), (_, plain, _) = runs
    assert kernels.lora_kernels and not plain.lora_kernels
    assert any(isinstance(m, kernel_lora_linear()) for m in kernels.unet.modules())
    _same_gradients(runs, cfg, [32] * (WARMUP + 3), tol=1e-2)
    assert kernels.captures.enabled
