"""`prolific generate` on the tiny SD model: results, checkpoints, resume, and one-line errors for bad input."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prolific.cli import main

BACKEND = Path(__file__).resolve().parents[1] / "backend"
JOB = "a_red_teapot_seed0"


def generate(out, *extra, model=None):
    args = ["generate", "a red teapot", "-o", str(out), "--preset", "test", "--stages", "nerf", *extra]
    return main(args + (["--model", str(model)] if model else []))


def checkpoint_step(job_dir):
    state = torch.load(job_dir / "checkpoints" / "nerf.pt", weights_only=True)
    return state["step"], state["done"]


def test_generate_writes_checkpoint_previews_and_turntable(tmp_path, tiny_sd_model, capsys):
    assert generate(tmp_path, model=tiny_sd_model) == 0
    out, err = capsys.readouterr()
    job = tmp_path / JOB
    assert f"Result: {job}" in out
    assert "6/6" in err, "the progress bar reaches the last step"
    assert checkpoint_step(job) == (6, True)
    assert sorted(p.name for p in (job / "previews").iterdir()) == [
        "nerf_000002.png", "nerf_000004.png", "nerf_000006.png"]
    assert sorted(p.name for p in (job / "object_0").iterdir()) == [f"turntable_{i}.png" for i in range(8)]
    assert (job / "meta.json").exists()


def test_generate_all_stages_writes_the_result_folder_and_resume_redoes_no_step(tmp_path, tiny_sd_model, capsys):
    args = ["generate", "a red teapot", "-o", str(tmp_path), "--preset", "test", "--model", str(tiny_sd_model),
            "--formats", "glb"]
    assert main(args) == 0
    job = tmp_path / JOB
    out, err = capsys.readouterr()
    assert f"object 0: {job / 'object_0' / 'mesh.npz'}" in out
    assert all(f"{stage}" in err for stage in ("nerf", "geometry", "texture", "export"))
    mesh = np.load(job / "object_0" / "mesh.npz")
    assert mesh["positions"].shape[1] == 3 and mesh["faces"].shape[0] > 0
    assert (job / "object_0" / "albedo.png").exists() and (job / "object_0" / "mesh.glb").exists()
    checkpoints = {p: p.stat().st_mtime_ns for p in (job / "checkpoints").iterdir()}
    assert {p.name for p in checkpoints} == {"nerf.pt", "geometry.pt", "texture.pt"}
    assert main(args + ["--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints


def test_resume_of_a_finished_run_redoes_no_step(tmp_path, tiny_sd_model, capsys):
    assert generate(tmp_path, model=tiny_sd_model) == 0
    job = tmp_path / JOB
    before = {p: p.stat().st_mtime_ns for p in [job / "checkpoints" / "nerf.pt", *(job / "previews").iterdir()]}
    assert generate(tmp_path, "--resume", model=tiny_sd_model) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert f"Result: {job}" in capsys.readouterr().out


def test_resume_continues_from_the_saved_step(tmp_path, tiny_sd_model):
    assert generate(tmp_path, "--steps-nerf", "3", model=tiny_sd_model) == 0
    job = tmp_path / JOB
    assert checkpoint_step(job) == (3, True)
    early = (job / "previews" / "nerf_000002.png").stat().st_mtime_ns
    assert generate(tmp_path, "--resume", model=tiny_sd_model) == 0
    assert checkpoint_step(job) == (6, True)
    assert (job / "previews" / "nerf_000002.png").stat().st_mtime_ns == early, "steps 1-3 were not redone"
    assert (job / "previews" / "nerf_000004.png").exists() and (job / "previews" / "nerf_000006.png").exists()


def test_fresh_run_replaces_an_earlier_run(tmp_path, tiny_sd_model):
    assert generate(tmp_path, model=tiny_sd_model) == 0
    assert generate(tmp_path, "--steps-nerf", "2", model=tiny_sd_model) == 0
    job = tmp_path / JOB
    assert checkpoint_step(job) == (2, True)
    assert [p.name for p in (job / "previews").iterdir()] == ["nerf_000002.png"]


@pytest.mark.parametrize("args, message", [
    (["--preset", "ultra"], "Unknown preset 'ultra'"),
    (["--steps-nerf", "-1"], "nerf.steps must be a whole number >= 0"),
    (["--guidance", "magic"], "Unknown guidance 'magic'"),
    (["--stages", "texture,nerf"], "order nerf, geometry, texture"),
    (["--set", "nerf.bogus=1"], "nerf.bogus"),
    (["--set", "nerf.lr=abc"], "nerf.lr must be a number such as 0.01 (got 'abc')."),
    (["--set", "nerf.resolutions=[16,abc]"], "nerf.resolutions must be a list of whole numbers"),
    (["--set", "prior.camera_condition=1"], "prior.camera_condition must be true or false (got 1)."),
    (["--name", "../elsewhere"], "must be a plain folder name"),
    (["--name", "c:teapot"], "must be a plain folder name"),
])
def test_bad_settings_exit_2_with_one_clear_line(tmp_path, tiny_sd_model, capsys, args, message):
    assert generate(tmp_path, *args, model=tiny_sd_model) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_missing_model_names_the_places_tried(tmp_path, capsys):
    missing = tmp_path / "no_such_model"
    assert generate(tmp_path / "out", model=missing) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "no_such_model" in err and "not found" in err


def test_unwritable_output_folder_is_named(tmp_path, tiny_sd_model, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file, not a folder")
    assert generate(blocker / "sub", model=tiny_sd_model) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: Cannot write to the output folder") and str(blocker) in err


def test_without_model_it_says_it_uses_the_bundled_toy_prior(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    generate(blocker / "sub")  # fails early on the folder, after the note
    err = capsys.readouterr().err
    assert "bundled toy prior" in err and "--model stabilityai/stable-diffusion-2-1-base" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_gpu_without_one_exits_2(tmp_path, tiny_sd_model, capsys):
    assert generate(tmp_path, "--device", "cuda", model=tiny_sd_model) == 2
    assert "no usable CUDA GPU" in capsys.readouterr().err.strip().splitlines()[-1]


def test_bench_is_dispatched_to_the_bench_package(capsys):
    assert main(["bench", "--help"]) == 0
    assert "stage1" in capsys.readouterr().out


def test_entry_point_rejects_an_empty_prompt(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(BACKEND), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "prolific", "generate", "", "-o", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: The prompt is empty: type what to make."
    assert proc.stdout == ""
