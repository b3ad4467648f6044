"""The toy prior's model folder and training script: loads through the real loader, fits the size limit, resumes."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from prolific.prior import bundled
from prolific.prior.diffusion import load_prior
from prolific.toy import train
from prolific.toy.model import SIZE_LIMIT_BYTES, build_models, build_tokenizer, fp16_bytes, save_model

CPU = torch.device("cpu")


def test_full_model_fits_the_bundle_limit_in_fp16(tmp_path):
    unet, text = build_models(build_tokenizer(tmp_path / "tok"), "full")
    assert unet.config.sample_size == 64 and unet.config.in_channels == 3
    assert 5_000_000 < fp16_bytes(unet, text) <= SIZE_LIMIT_BYTES


def test_saved_folder_loads_through_the_prior_loader_as_pixel_space_fp16(tmp_path):
    tok = build_tokenizer(tmp_path / "tok")
    unet, text = build_models(tok, "tiny")
    folder = save_model(tmp_path / "toy", unet, text, tok, {"steps": 0})
    assert not (folder / "vae").exists()
    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    prior = load_prior(str(folder), CPU, torch.float32)
    assert prior.pixel_space and prior.image_size == 16 and prior.num_train_timesteps == 1000
    emb = prior.embed_prompt("a red cube")
    cond, uncond = emb.get(["front", "side"])
    eps = prior.predict_noise(torch.randn(2, 3, 16, 16), torch.tensor([10, 900]), cond, uncond, 5.0)
    assert eps.shape == (2, 3, 16, 16) and torch.isfinite(eps).all()
    assert json.loads((folder / "toy.json").read_text())["held_out"]


def test_training_runs_on_cpu_and_resumes_where_it_stopped(tmp_path):
    out, work = tmp_path / "toy", tmp_path / "work"
    common = ["--out", str(out), "--work", str(work), "--size", "tiny", "--batch", "2", "--pool", "4",
              "--chunk", "4", "--device", "cpu", "--log-every", "1"]
    first = train.main(common + ["--steps", "3"])
    assert first["steps"] == 3
    saved = torch.load(work / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert saved["step"] == 3 and {"unet", "ema_unet", "opt"} <= saved.keys()
    second = train.main(common + ["--steps", "5", "--resume"])
    assert second["steps"] == 5
    prior = load_prior(str(out), CPU, torch.float32)
    assert prior.image_size == 16
    ema = torch.load(work / "checkpoint.pt", map_location="cpu", weights_only=False)["ema_unet"]
    key = next(k for k in ema if k.endswith("conv_in.weight"))
    assert torch.allclose(prior.unet.state_dict()[key], ema[key].half().float())


def test_bundled_model_dir_is_the_package_models_folder():
    assert bundled.BUNDLED_MODEL_DIR.parts[-3:] == ("prolific", "models", "toy")
    assert bundled.bundled_available() == (bundled.BUNDLED_MODEL_DIR / "unet").is_dir()
    assert "red cube" in bundled.vocabulary_hint()


def _tiny_args(tmp_path):
    return ["--out", str(tmp_path / "toy"), "--work", str(tmp_path / "work"), "--size", "tiny", "--batch", "2",
            "--pool", "4", "--chunk", "4", "--device", "cpu", "--log-every", "1"]


def test_trained_model_predicts_v_and_a_resume_must_keep_the_target(tmp_path):
    train.main(_tiny_args(tmp_path) + ["--steps", "1"])
    assert load_prior(str(tmp_path / "toy"), CPU, torch.float32).prediction_type == "v_prediction"
    with pytest.raises(SystemExit, match="--prediction v_prediction"):
        train.main(_tiny_args(tmp_path) + ["--steps", "2", "--resume", "--prediction", "epsilon"])


def test_a_failing_compile_falls_back_to_eager_training(tmp_path, monkeypatch, capsys):
    def broken_compile(module, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler")
        module._compiled_call_impl = fail

    monkeypatch.setattr(torch.nn.Module, "compile", broken_compile)
    info = train.main(_tiny_args(tmp_path) + ["--steps", "2", "--compile"])
    assert info["steps"] == 2
    assert "torch.compile failed (RuntimeError: no C++ compiler); training eagerly" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_training_step_follows_the_eager_one(tmp_path):
    from prolific.toy.train_step import GRAPH_WARMUP_STEPS, EagerStep, GraphedStep, make_optimizer, set_lr

    cuda = torch.device("cuda")
    tok = build_tokenizer(tmp_path / "tok")

    def build(kind):
        torch.manual_seed(0)
        unet, text = (m.to(cuda) for m in build_models(tok, "tiny"))
        params = [p for m in (unet, text) for p in m.parameters()]

        def loss_fn(x_t, t, ids, target):
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                pred = unet(x_t, t, encoder_hidden_states=text(ids)[0]).sample
            return (pred.float() - target).square().mean()

        opt = make_optimizer(params, 1e-3, cuda)
        return (GraphedStep if kind == "graph" else EagerStep)(loss_fn, params, opt), params, opt

    (graphed, g_params, g_opt), (eager, e_params, e_opt) = build("graph"), build("eager")
    g = torch.Generator(cuda).manual_seed(1)
    for k in range(GRAPH_WARMUP_STEPS + 4):  # warm-up, capture, then replays with new inputs and learning rates
        x_t = torch.randn(4, 3, 16, 16, device=cuda, generator=g)
        target = torch.randn(4, 3, 16, 16, device=cuda, generator=g)
        t = torch.randint(0, 1000, (4,), device=cuda, generator=g)
        ids = torch.randint(0, len(tok), (4, tok.model_max_length), device=cuda, generator=g)
        for opt in (g_opt, e_opt):
            set_lr(opt, 1e-3 * (k + 1))
        loss_g, loss_e = graphed(x_t, t, ids, target), eager(x_t, t, ids, target)
        assert torch.allclose(loss_g, loss_e, rtol=2e-2), (k, loss_g.item(), loss_e.item())
    assert graphed.graph is not None and not graphed.failed
    # bf16 autocast and atomics in the convolution backward make the two differ by rounding, far below one step
    moved = max((p - q).abs().max().item() for p, q in zip(e_params, build("eager")[1]))
    diff = max((p - q).abs().max().item() for p, q in zip(g_params, e_params))
    assert diff < 0.05 * moved, (diff, moved)


def test_a_run_can_start_from_an_exported_model_folder(tmp_path):
    first = train.main(_tiny_args(tmp_path) + ["--steps", "2"])
    exported = load_prior(str(tmp_path / "toy"), CPU, torch.float32).unet.state_dict()
    again = ["--out", str(tmp_path / "toy2"), "--work", str(tmp_path / "work2"), "--size", "tiny", "--batch", "2",
             "--pool", "4", "--chunk", "4", "--device", "cpu", "--init-from", str(tmp_path / "toy")]
    second = train.main(again + ["--steps", "3", "--lr", "1e-12"])  # one step that barely moves the weights
    assert first["steps"] == 2 and second["steps"] == 3
    continued = load_prior(str(tmp_path / "toy2"), CPU, torch.float32).unet.state_dict()
    key = next(k for k in exported if k.endswith("conv_in.weight"))
    assert torch.allclose(continued[key], exported[key], atol=1e-3)


def test_training_leaves_the_process_math_flags_as_it_found_them():
    """A CUDA run turns on TF32 and cuDNN autotuning for itself only (a server or the tests go on after it)."""
    flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,  # noqa: E731
                     torch.backends.cudnn.benchmark)
    before = flags()
    with train.fast_cuda_math(True):
        assert flags() == (True, True, True)
    assert flags() == before
    with pytest.raises(RuntimeError), train.fast_cuda_math(True):
        raise RuntimeError("a run that fails")
    assert flags() == before
    with train.fast_cuda_math(False):
        assert flags() == before
