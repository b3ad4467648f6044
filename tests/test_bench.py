"""`prolific bench ...` on the CPU with tiny models: the JSON a user (or the lead on a GPU) reads."""
from __future__ import annotations

import json

import pytest
import torch

from prolific.cli import main
from prolific.bench import sd_shapes
from prolific.bench.profiling import kernel_summary

PARTS = {"render", "encode", "prior", "backward", "optimizer", "lora_update"}


def _bench(capsys, *args) -> tuple[int, dict]:
    code = main(["bench", *args])
    out = capsys.readouterr().out
    return code, json.loads(out) if code == 0 else {}


def test_stage1_compare_reports_reference_and_optimised(capsys, tmp_path):
    code, result = _bench(capsys, "stage1", "--model", "tiny", "--model-cache", str(tmp_path / "models"),
                          "--resolutions", "16,24", "--steps", "2", "--warmup", "1", "--compare",
                          "--opt", "sdpa,batch", "--json", str(tmp_path / "out.json"),
                          "--device", "cpu")
    assert code == 0
    assert json.loads((tmp_path / "out.json").read_text()) == result
    assert result["device"] == "cpu" and result["torch"] == torch.__version__
    ref, opt = result["variants"]
    assert ref["reference"] and ref["name"] == "reference" and not opt["reference"]
    assert opt["applied"]["batch"] == "cfg+lora in one call"
    for variant in (ref, opt):
        assert variant["errors"] == {}
        # pretrained CFG pair + ε_φ + LoRA training forward and backward
        assert variant["flops"]["unet_sample_forwards"] == 5
        for res in ("16", "24"):
            r = variant["resolutions"][res]
            assert r["ms_per_step"] > 0 and len(r["ms_per_step_all"]) == 2
            assert PARTS <= set(r["breakdown_ms"])
            assert sum(r["breakdown_ms"].values()) == pytest.approx(r["ms_per_step"], rel=0.05)
            # The update timed on its own stream: inline on a CPU, inside the step's lora_update part.
            assert 0 < r["update_ms"] <= r["breakdown_ms"]["lora_update"]
            assert r["render_finite"]
    # The reference runs ε_φ as its own UNet call; batched, it rides along with the pretrained one.
    assert ref["resolutions"]["16"]["breakdown_ms"]["estimator"] > 0
    assert "occupied_fraction" in opt["resolutions"]["16"] and "occupied_fraction" not in ref["resolutions"]["16"]
    assert set(result["speedup_vs_reference"]["sdpa,batch"]) == {"16", "24"}


def test_stage1_on_the_opaque_ball_renders_it(capsys, tmp_path):
    """--field solid starts the particle as the opaque ball: its occupancy grid holds far fewer cells than the
    soft initialisation blob's, and the JSON says which field ran; --gpus (whole jobs) refuses it."""
    fractions = {}
    for field in ("blob", "solid"):
        code, result = _bench(capsys, "stage1", "--model", "tiny", "--model-cache", str(tmp_path / "models"),
                              "--resolutions", "16", "--steps", "1", "--warmup", "0", "--opt", "sdpa,batch",
                              "--field", field, "--device", "cpu")
        assert code == 0 and result["field"] == field
        fractions[field] = result["variants"][0]["resolutions"]["16"]["occupied_fraction"]
    assert 0 < fractions["solid"] < 0.7 * fractions["blob"]
    assert main(["bench", "stage1", "--model", "tiny", "--model-cache", str(tmp_path / "models"), "--device", "cpu",
                 "--particles", "2", "--gpus", "1,2", "--field", "solid"]) == 2
    assert "--field is for the speed variants" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["stage2", "stage3"])
def test_mesh_stage_benches(capsys, tiny_sd_model, stage):
    code, result = _bench(capsys, stage, "--model", str(tiny_sd_model), "--resolutions", "32", "--steps", "2",
                          "--warmup", "1", "--compare")
    assert code == 0
    ref, opt = result["variants"]
    parts = {"render", "encode", "prior", "backward", "optimizer"}
    parts |= {"mesh", "regularisers"} if stage == "stage2" else {"estimator", "lora_update"}
    for variant in (ref, opt):
        r = variant["resolutions"]["32"]
        assert "error" not in r and r["ms_per_step"] > 0 and len(r["ms_per_step_all"]) == 2
        # Batched (the CPU default), ε_φ rides in the pretrained branch's call: no estimator part of its own.
        assert parts - ({"estimator"} if variant is opt else set()) <= set(r["breakdown_ms"])
        assert variant["faces"][0] > 0
        # Only texture (VSD) has an estimator update to time on its own stream.
        assert (0 < r["update_ms"] <= r["breakdown_ms"]["lora_update"]) if stage == "stage3" else "update_ms" not in r
    # Geometry is SDS: only the pretrained CFG pair runs; texture is VSD.
    assert ref["flops"]["unet_sample_forwards"] == (2 if stage == "stage2" else 5)


def test_bad_arguments_are_clear_errors(capsys):
    assert main(["bench", "stage1", "--opt", "bf16,warp", "--model", "tiny"]) == 2
    assert "Unknown speed option 'warp'" in capsys.readouterr().err
    assert main(["bench", "stage1", "--resolutions", "4"]) == 2
    assert "8..2048" in capsys.readouterr().err
    assert main(["bench", "stage9"]) == 2
    assert "unknown bench 'stage9'" in capsys.readouterr().err


def test_quality_passes_its_arguments(capsys, monkeypatch, tmp_path):
    import prolific.bench.toy_quality as quality

    seen = {}

    def fake_run_quality(**kwargs):
        seen.update(kwargs)
        return {"benchmark": "quality", "summary": {}}

    monkeypatch.setattr(quality, "run_quality", fake_run_quality)
    code, result = _bench(capsys, "quality", "--prompts", "a red cube; a blue torus", "--guidances", "vsd",
                          "--preset", "test", "--diversity-prompt", "", "--out", str(tmp_path),
                          "--set", '{"nerf": {"steps": 4}}')
    assert code == 0 and result["benchmark"] == "quality"
    assert seen["prompts"] == ["a red cube", "a blue torus"] and seen["guidances"] == ("vsd",)
    assert seen["preset"] == "test" and seen["diversity_prompt"] is None
    assert seen["overrides"] == {"nerf": {"steps": 4}} and seen["out_dir"] == tmp_path


def test_sd21_shapes_cost_what_stable_diffusion_costs():
    """The bench's random model must cost what SD 2.1 base costs: 866 M UNet parameters, 804 GFLOP per
    64×64-latent sample (the figure measured on the real model), the 340 M-parameter OpenCLIP-H text tower."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd_shapes.SD21_UNET)
        text = CLIPTextModel(CLIPTextConfig(**sd_shapes.SD21_TEXT))
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(865.9e6, rel=1e-3)
    assert sum(p.numel() for p in text.parameters()) == pytest.approx(340.4e6, rel=1e-2)
    assert sd_shapes.unet_flops(sd_shapes.SD21_UNET) / 1e9 == pytest.approx(804.3, rel=1e-3)


def test_render_bench_compares_the_packed_renderer_with_the_dense_one(capsys, tmp_path):
    code, result = _bench(capsys, "render", "--compare", "--resolutions", "16,24", "--steps", "1", "--warmup", "1",
                          "--out", str(tmp_path), "--device", "cpu")
    assert code == 0
    assert json.loads((tmp_path / "render_blob.json").read_text()) == result and result["field"] == "blob"
    fast, dense = result["variants"]  # on a CPU the plain-PyTorch packed variant is `fast` itself
    assert (fast["renderer"], fast["hash_grid"]) == ("packed", "torch")
    assert (dense["renderer"], dense["hash_grid"]) == ("dense", "torch")
    for variant in (fast, dense):
        assert 0 < variant["occupied_fraction"] < 1
        for res in ("16", "24"):
            r = variant["resolutions"][res]
            assert r["ms"] > 0 and r["samples"] > 0
            assert r["samples_per_ray"] == round(r["samples"] / int(res) ** 2, 2)
    assert set(result["speedup_vs_dense"]["fast"]) == {"16", "24"}
    # The opaque ball: rays stop inside its surface, so fewer samples reach the field than in the soft blob.
    code, solid = _bench(capsys, "render", "--field", "solid", "--resolutions", "24", "--steps", "1", "--warmup", "0",
                         "--out", str(tmp_path), "--device", "cpu")
    assert code == 0 and (tmp_path / "render_solid.json").exists()
    assert 0 < solid["variants"][0]["resolutions"]["24"]["samples"] < 0.7 * fast["resolutions"]["24"]["samples"]


def test_hashgrid_bench_times_forward_and_both_backwards(capsys, tmp_path):
    code, result = _bench(capsys, "hashgrid", "--points", "2K,3000", "--preset", "test", "--steps", "1",
                          "--warmup", "0", "--out", str(tmp_path), "--device", "cpu")
    assert code == 0
    assert json.loads((tmp_path / "hashgrid.json").read_text()) == result
    assert result["grid"]["levels"] == 4
    (torch_grid,) = result["results"]
    assert torch_grid["impl"] == "torch" and set(torch_grid["points"]) == {"2048", "3000"}
    for entry in torch_grid["points"].values():
        assert all(entry[mode] > 0 for mode in ("forward", "forward_backward_table", "forward_backward_table_points"))


def test_hashgrid_bench_rays_layout_orders_points_as_a_render_does(capsys):
    from prolific.bench.hashgrid import SAMPLES_PER_RAY, STEP, bench_points

    x = bench_points(1000, "rays", torch.Generator().manual_seed(0), torch.device("cpu"))
    assert x.shape == (1000, 3) and float(x.min()) >= 0 and float(x.max()) <= 1
    gaps = (x[1:] - x[:-1]).norm(dim=1)
    within_ray = torch.arange(1, 1000) % SAMPLES_PER_RAY != 0
    assert float((gaps[within_ray] <= STEP * 1.001).float().mean()) > 0.9  # a step apart but where clamped
    code, result = _bench(capsys, "hashgrid", "--points", "2K", "--preset", "test", "--steps", "1", "--warmup",
                          "0", "--layout", "rays", "--device", "cpu")
    assert code == 0 and result["layout"] == "rays" and result["samples_per_ray"] == SAMPLES_PER_RAY
    # As a 512 px render keeps them on an opaque object: 9 samples a ray.
    x = bench_points(1000, "rays", torch.Generator().manual_seed(0), torch.device("cpu"), samples_per_ray=9)
    gaps = (x[1:] - x[:-1]).norm(dim=1)
    starts = torch.arange(1, 1000) % 9 == 0
    assert float((gaps[~starts] <= STEP * 1.001).float().mean()) > 0.9 and float(gaps[starts].median()) > 10 * STEP
    code, result = _bench(capsys, "hashgrid", "--points", "2K", "--preset", "test", "--steps", "1", "--warmup",
                          "0", "--layout", "rays", "--samples-per-ray", "9", "--device", "cpu")
    assert code == 0 and result["samples_per_ray"] == 9


def test_bench_render_and_hashgrid_reject_bad_arguments(capsys):
    assert main(["bench", "hashgrid", "--points", "many"]) == 2
    assert "error: --points" in capsys.readouterr().err
    assert main(["bench", "hashgrid", "--impl", "torch", "--merge-max-res", "0,512", "--device", "cpu"]) == 2
    assert "--merge-max-res is a setting of the triton hash grid" in capsys.readouterr().err
    assert main(["bench", "hashgrid", "--impl", "triton", "--merge-max-res", "half", "--device", "cpu"]) == 2
    assert "--merge-max-res must be comma-separated resolutions" in capsys.readouterr().err
    assert main(["bench", "hashgrid", "--impl", "torch", "--pair-rows", "on", "--device", "cpu"]) == 2
    assert "--pair-rows is a setting of the triton hash grid" in capsys.readouterr().err
    assert main(["bench", "hashgrid", "--impl", "triton", "--pair-rows", "yes", "--device", "cpu"]) == 2
    assert "--pair-rows must be off, on or off,on" in capsys.readouterr().err
    assert main(["bench", "hashgrid", "--impl", "triton", "--merge-max-res", "0,512", "--device", "cpu"]) == 2
    assert "The triton hash grid needs a CUDA device" in capsys.readouterr().err
    assert main(["bench", "hashgrid", "--layout", "rays", "--samples-per-ray", "0", "--device", "cpu"]) == 2
    assert "--samples-per-ray must be at least 1" in capsys.readouterr().err
    assert main(["bench", "render", "--set", "march_stepz=4"]) == 2
    assert "error: Unknown setting 'nerf.march_stepz'" in capsys.readouterr().err


def test_the_profile_adds_up_a_traces_kernels_per_step():
    """Two steps' kernels on a main and a side stream: busy time is their union, a stream's time alone is what
    no other stream covers, kinds and the longest kernels are per step; CPU events are not kernels."""
    def kernel(name, ts, dur, stream):
        return {"cat": "kernel", "name": name, "ts": ts, "dur": dur, "args": {"stream": stream}}

    events = [kernel("_hashgrid_bwd", 0, 100, 7), kernel("sm90_xmma_fprop_implicit_gemm", 150, 50, 7),
              kernel("_bwd_h", 120, 60, 17), kernel("_hashgrid_bwd", 400, 100, 7),
              kernel("void at::native::vectorized_elementwise_kernel<4>", 600, 20, 17),
              {"cat": "cpu_op", "name": "aten::add", "ts": 0, "dur": 999}]
    out = kernel_summary(events, steps=2, wall_ms=1.0)
    assert out["wall_ms"] == 0.5 and out["kernel_ms"] == 0.165
    assert out["gpu_busy_ms"] == 0.15  # 0-100, 120-200, 400-500, 600-620 µs over two steps
    assert out["streams"]["7"] == {"kernel_ms": 0.125, "alone_ms": 0.11}
    assert out["streams"]["17"] == {"kernel_ms": 0.04, "alone_ms": 0.025}  # 150-180 overlaps the main stream
    assert out["kinds_ms"] == {"hash grid": 0.1, "lora": 0.03, "conv / gemm": 0.025, "elementwise": 0.01}
    assert out["top_kernels"][0] == {"name": "_hashgrid_bwd", "ms": 0.1, "calls": 1.0}


def test_stage1_profile_needs_cuda_and_the_speed_variants(capsys, tmp_path):
    code, result = _bench(capsys, "stage1", "--model", "tiny", "--model-cache", str(tmp_path / "models"),
                          "--resolutions", "16", "--steps", "1", "--warmup", "0", "--opt", "sdpa,batch",
                          "--profile", "--device", "cpu")
    assert code == 0
    assert result["variants"][0]["resolutions"]["16"]["profile"] == {
        "skipped": "needs CUDA: the profile reads the GPU's kernels"}
    assert main(["bench", "stage1", "--model", "tiny", "--model-cache", str(tmp_path / "models"), "--device", "cpu",
                 "--particles", "2", "--gpus", "1,2", "--profile"]) == 2
    assert "--profile is for the speed variants" in capsys.readouterr().err


def test_stage1_over_processes_refuses_more_processes_than_particles(capsys, tmp_path):
    code = main(["bench", "stage1", "--model", "tiny", "--model-cache", str(tmp_path / "models"), "--device", "cpu",
                 "--particles", "2", "--gpus", "1,3"])
    assert code == 2 and "--gpus 3 needs at least 3 particles" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()  # refused before any work


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts the visible GPUs")
def test_stage1_over_processes_refuses_more_processes_than_gpus(capsys, tmp_path):
    k = torch.cuda.device_count() + 1
    code = main(["bench", "stage1", "--model-cache", str(tmp_path / "models"), "--particles", str(k),
                 "--gpus", f"1,{k}"])
    assert code == 2 and f"--gpus {k} needs {k} GPUs but {k - 1} are visible" in capsys.readouterr().err
