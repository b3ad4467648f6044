"""The pretrained prior: loading (folders, HF cache, refusals), prompt embeddings, CFG noise prediction."""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch

from prolific.errors import ModelNotFound
from prolific.prior.diffusion import load_prior
from prolific.prior.prompts import VIEW_SUFFIXES
from prolific.toy.tokenizer import build_word_tokenizer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sd_prior(tiny_sd_model):
    return load_prior(str(tiny_sd_model), CPU, torch.float32)


@pytest.fixture(scope="module")
def pixel_prior(tiny_pixel_model):
    return load_prior(str(tiny_pixel_model), CPU, torch.float32)


def test_tokenizer_spells_given_words_whole_and_others_by_letters(tmp_path):
    tok = build_word_tokenizer(["a red teapot"], tmp_path / "tok")
    tokens = tok.convert_ids_to_tokens(tok("A red teapot, overhead view").input_ids)
    assert tokens == ["<|startoftext|>", "a</w>", "red</w>", "teapot</w>", ",</w>", "overhead</w>", "view</w>",
                      "<|endoftext|>"]
    letters = tok("zebra").input_ids[1:-1]  # CLIP's unknown token is its end token
    assert len(letters) == 5 and tok.unk_token_id not in letters
    assert tok.decode(tok("zebra teapot").input_ids, skip_special_tokens=True) == "zebra teapot"
    assert (tmp_path / "tok" / "tokenizer_config.json").is_file()


def test_latent_model_loads_frozen_with_sd_geometry(sd_prior):
    p = sd_prior
    assert not p.pixel_space and p.image_size == 64 and p.num_train_timesteps == 1000
    assert p.alphas_cumprod.shape == (1000,) and p.alphas_cumprod.dtype == torch.float32
    for module in (p.unet, p.vae, p.text_encoder):
        assert not module.training
        assert not any(q.requires_grad for q in module.parameters())
    rgb = torch.rand(2, 3, 24, 24, requires_grad=True)
    x0 = p.encode_images(rgb)
    assert x0.shape == (2, 4, 8, 8) and x0.dtype == torch.float32
    x0.sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    out = p.decode(x0.detach())
    assert out.shape == (2, 3, 64, 64) and 0 <= out.min() and out.max() <= 1


def test_pixel_model_round_trips_images(pixel_prior):
    p = pixel_prior
    assert p.pixel_space and p.vae is None and p.image_size == 32
    rgb = torch.rand(1, 3, 32, 32)
    x0 = p.encode_images(rgb)
    assert x0.shape == (1, 3, 32, 32) and x0.min() >= -1 and x0.max() <= 1
    assert torch.allclose(p.decode(x0), rgb, atol=1e-6)
    assert p.encode_images(torch.rand(1, 3, 16, 16)).shape == (1, 3, 32, 32)


def test_missing_folder_names_the_folder(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ModelNotFound) as err:
        load_prior(str(missing), CPU, torch.float32)
    assert str(missing) in str(err.value) and err.value.code == "model_not_found"


def test_unknown_hub_id_offline_names_every_place_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFound) as err:
        load_prior("nobody/no-such-model", CPU, torch.float32)
    msg = str(err.value)
    assert "nobody/no-such-model" in msg
    assert "local folder" in msg and str(tmp_path / "hub") in msg and "Hub" in msg and "HF_HUB_OFFLINE" in msg


def test_hub_id_loads_from_the_cache_without_network(tiny_sd_model, tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--acme--tiny-sd"
    shutil.copytree(tiny_sd_model, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    prior = load_prior("acme/tiny-sd", CPU, torch.float32)
    assert prior.image_size == 64 and not prior.pixel_space


def test_download_is_announced_and_its_failure_reported(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def fake_snapshot(repo_id, local_files_only=False, **kw):
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        raise ConnectionError("no route to host")

    info = SimpleNamespace(siblings=[
        SimpleNamespace(rfilename="unet/diffusion_pytorch_model.safetensors", size=3_400_000_000),
        SimpleNamespace(rfilename="unet/diffusion_pytorch_model.bin", size=3_400_000_000)])
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo_id, **kw: info)
    with pytest.raises(ModelNotFound) as err:
        load_prior("acme/big-model", CPU, torch.float32)
    assert "Downloading model 'acme/big-model' (about 3.4 GB)" in capsys.readouterr().err
    assert "no route to host" in str(err.value) and "not cached" in str(err.value)


def test_pickle_only_weights_are_refused(tiny_sd_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd_model, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not a pickle: must never be opened")
    with pytest.raises(ModelNotFound) as err:
        load_prior(str(folder), CPU, torch.float32)
    assert "safetensors" in str(err.value) and "diffusion_pytorch_model.bin" in str(err.value)


def test_view_suffixes_pick_the_direction_prompt(sd_prior):
    emb = sd_prior.embed_prompt("a red teapot", negative_prompt="blurry")
    cond, uncond = emb.get(["front", "back", "front"])
    assert cond.shape[0] == 3 and uncond.shape[0] == 3
    expected = sd_prior._encode_text(["a red teapot" + VIEW_SUFFIXES["back"], "blurry"])
    assert torch.allclose(cond[1], expected[0], atol=1e-6)
    assert torch.allclose(uncond[0], expected[1], atol=1e-6)
    assert torch.equal(cond[0], cond[2]) and not torch.allclose(cond[0], cond[1])
    plain = sd_prior.embed_prompt("a red teapot", view_dependent=False)
    c, _ = plain.get(["front", "back", "overhead", "side"])
    assert all(torch.equal(c[0], c[i]) for i in range(4))
    with pytest.raises(ValueError):
        emb.get(["below"])


def test_prompt_is_encoded_once(sd_prior):
    calls = []
    handle = sd_prior.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = sd_prior.embed_prompt("a blue chair")
        assert sd_prior.embed_prompt("a blue chair") is first
    finally:
        handle.remove()
    assert len(calls) == 1


def test_cfg_is_one_unet_call_equal_to_the_manual_combination(sd_prior):
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([100, 700])
    cond, uncond = sd_prior.embed_prompt("a red teapot", "ugly").get(["front", "side"])
    calls = []
    handle = sd_prior.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        eps = sd_prior.predict_noise(x_t, t, cond, uncond, 7.5)
    finally:
        handle.remove()
    assert calls == [4]
    with torch.no_grad():
        eps_c = sd_prior.unet_eps(x_t, t, cond)
        eps_u = sd_prior.unet_eps(x_t, t, uncond)
    assert torch.allclose(eps, eps_u + 7.5 * (eps_c - eps_u), atol=1e-4)
    assert not torch.allclose(eps, eps_c, atol=1e-3)


def test_v_prediction_models_are_converted_to_epsilon(pixel_prior, monkeypatch):
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(1, 3, 32, 32, generator=g)
    t = torch.tensor([400])
    cond, _ = pixel_prior.embed_prompt("a teapot").get(["front"])
    with torch.no_grad():
        raw = pixel_prior.unet_eps(x_t, t, cond)
        monkeypatch.setattr(pixel_prior, "prediction_type", "v_prediction")
        eps = pixel_prior.unet_eps(x_t, t, cond)
    ab = pixel_prior.alphas_cumprod[400]
    assert torch.allclose(eps, ab.sqrt() * raw + (1 - ab).sqrt() * x_t, atol=1e-5)


def test_half_precision_load_keeps_fp32_outputs(tiny_pixel_model):
    prior = load_prior(str(tiny_pixel_model), CPU, torch.bfloat16)
    assert next(prior.unet.parameters()).dtype == torch.bfloat16
    cond, uncond = prior.embed_prompt("a teapot").get(["front"])
    eps = prior.predict_noise(torch.randn(1, 3, 32, 32), torch.tensor([10]), cond, uncond, 3.0)
    assert eps.dtype == torch.float32 and torch.isfinite(eps).all()


def test_bundled_model_is_the_default(monkeypatch, tiny_pixel_model):
    import sys
    monkeypatch.setitem(sys.modules, "prolific.prior.bundled", SimpleNamespace(BUNDLED_MODEL_DIR=tiny_pixel_model))
    assert load_prior(None, CPU, torch.float32).source == str(tiny_pixel_model)
