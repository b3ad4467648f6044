"""`prolific generate` on the tiny SD model: results, checkpoints, resume, Ctrl-C, and one-line errors for bad
input."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from backend_env import backend_env
from prolific.cli import main

JOB = "a_red_teapot_seed0"
TIMEOUT_S = 600  # per wait: a loaded 2-core CI machine is slow to import torch and load a model


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
    assert f"Result: {job} (finished in 0:" in out, "the result line says how long the job took"
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


def files_of(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_a_new_run_into_a_finished_job_changes_nothing_and_says_how_to_go_on(tmp_path, tiny_sd_model, capsys):
    assert generate(tmp_path, model=tiny_sd_model) == 0
    job = tmp_path / JOB
    before = files_of(job)
    assert any(p.name == "nerf.pt" for p in before) and any(p.name == "meta.json" for p in before)
    capsys.readouterr()
    for model in (tmp_path / "mistyped_model", tiny_sd_model):
        assert generate(tmp_path, "--steps-nerf", "2", model=model) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"error: {job} already holds a job") and "--resume" in err and "--name" in err
        assert files_of(job) == before, "no file of the earlier job was removed or rewritten"


def test_a_new_run_after_an_attempt_without_checkpoints_replaces_its_previews(tmp_path, tiny_sd_model):
    stale = tmp_path / JOB / "previews" / "nerf_000004.png"  # left by a run aborted before its first checkpoint
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    assert generate(tmp_path, "--steps-nerf", "2", model=tiny_sd_model) == 0
    assert [p.name for p in (tmp_path / JOB / "previews").iterdir()] == ["nerf_000002.png"]


def test_resume_of_a_job_that_does_not_exist_is_refused(tmp_path, tiny_sd_model, capsys):
    assert generate(tmp_path, "--resume", "--name", "never_ran", model=tiny_sd_model) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: Nothing to resume: there is no job folder {tmp_path / 'never_ran'}. Check the output "
                   "folder and the job name, or start a new job without resume.")
    assert not (tmp_path / "never_ran").exists()


def test_resume_of_a_job_without_checkpoints_says_it_starts_from_the_beginning(tmp_path, tiny_sd_model, capsys):
    (tmp_path / JOB).mkdir()  # e.g. a run cancelled while its model loaded
    assert generate(tmp_path, "--resume", "--steps-nerf", "2", model=tiny_sd_model) == 0
    err = capsys.readouterr().err
    assert f"warning: Nothing to resume in {tmp_path / JOB}: no checkpoint was saved there. Starting the job from " \
           "the beginning." in err
    assert checkpoint_step(tmp_path / JOB) == (2, True)


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
    env = backend_env()
    proc = subprocess.run([sys.executable, "-m", "prolific", "generate", "", "-o", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: The prompt is empty: type what to make."
    assert proc.stdout == ""


class Cli:
    """`python -m prolific ARGS` in a subprocess, as a terminal runs it; its stderr is collected as it comes."""

    def __init__(self, args, cwd):
        env = backend_env()
        self.proc = subprocess.Popen([sys.executable, "-m", "prolific", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=cwd)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while chunk := os.read(self.proc.stderr.fileno(), 65536):
            self.chunks.append(chunk)

    @property
    def stderr(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")

    def wait_for(self, pattern, accept=lambda match: True):
        """The first match of `pattern` in stderr that `accept`s, waiting for it as long as the process runs."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.stderr
            found = next((m for m in re.finditer(pattern, text) if accept(m)), None)
            if found:
                return found
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.05)
        self.proc.kill()
        pytest.fail(f"no {pattern!r} on stderr; it ends: {self.stderr[-2000:]}")

    def interrupt(self):
        self.proc.send_signal(signal.SIGINT)

    def finish(self) -> int:
        code = self.proc.wait(timeout=TIMEOUT_S)
        self.reader.join(timeout=TIMEOUT_S)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


def long_nerf_args(out, model, *extra):
    # Many steps and no periodic checkpoint: a checkpoint in the job folder can only be the one written at cancel.
    return ["generate", "a red teapot", "-o", str(out), "--model", str(model), "--preset", "test", "--stages",
            "nerf", "--steps-nerf", "2000", "--set", "nerf.checkpoint_every=100000", *extra]


def last_line(text):
    return text.strip().splitlines()[-1]


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_ctrl_c_saves_a_checkpoint_at_the_step_it_stopped_and_resume_continues_from_exactly_there(tmp_path,
                                                                                                  tiny_sd_model):
    first = Cli(long_nerf_args(tmp_path, tiny_sd_model), tmp_path)
    first.wait_for(r"nerf .*?(\d+)/2000", accept=lambda m: int(m.group(1)) >= 2)  # mid-NeRF
    first.interrupt()
    assert first.finish() == 130
    assert "Traceback" not in first.stderr and "Cancelling after the current step" in first.stderr
    stopped = re.fullmatch(r"error: Cancelled after nerf step (\d+) of 2000\. To continue from its checkpoint, "
                           r"run: (.+)", last_line(first.stderr))
    assert stopped, last_line(first.stderr)
    step = int(stopped.group(1))
    assert 2 <= step < 2000 and checkpoint_step(tmp_path / JOB) == (step, False)

    command = shlex.split(stopped.group(2))
    assert command[0] == "prolific" and command[-1] == "--resume"
    again = Cli(command[1:], tmp_path)
    again.wait_for(rf"Continuing nerf from its checkpoint at step {step} of 2000\.")
    again.interrupt()  # stop it again: the test needs no 2000 steps to see where it started
    assert again.finish() == 130 and "Traceback" not in again.stderr
    later = re.match(r"error: Cancelled after nerf step (\d+) of 2000\.", last_line(again.stderr))
    assert later and int(later.group(1)) >= step
    assert checkpoint_step(tmp_path / JOB) == (int(later.group(1)), False)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe")
def test_a_second_ctrl_c_aborts_at_once_without_a_traceback(tmp_path, tiny_sd_model):
    # A step that cannot finish: its checkpoint write goes into a pipe that nobody reads (like a hung network
    # drive), so the first Ctrl-C's "finish the step" never comes and only the second one can end the run.
    pipe = tmp_path / JOB / "checkpoints" / "nerf.tmp"
    pipe.parent.mkdir(parents=True)
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
    try:
        cli = Cli(long_nerf_args(tmp_path, tiny_sd_model, "--set", "nerf.checkpoint_every=2"), tmp_path)
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and cli.proc.poll() is None:
            try:
                if os.read(reader, 1):  # the step-2 checkpoint is being written: the step is stuck
                    break
            except BlockingIOError:
                pass
            time.sleep(0.05)
        cli.interrupt()
        cli.wait_for(r"Cancelling after the current step")
        cli.interrupt()
        assert cli.finish() == 130
    finally:
        os.close(reader)
    assert "Traceback" not in cli.stderr
    assert last_line(cli.stderr).startswith("error: Aborted. The checkpoints saved so far are kept; to continue "
                                            "from them, run: prolific generate")
    assert not (tmp_path / JOB / "checkpoints" / "nerf.pt").exists()


def test_without_a_preset_the_bundled_prior_gets_the_demo_preset(tmp_path, capsys):
    assert main(["generate", "a red cube", "-o", str(tmp_path), "--stages", "nerf", "--steps-nerf", "1", "--name",
                 "cube"]) == 0
    err = capsys.readouterr().err
    assert "No --preset given: using demo, the preset made for the bundled toy prior." in err
    assert "warning" not in err, "the toy prior knows every word of 'a red cube'"
    assert json.loads((tmp_path / "cube" / "meta.json").read_text())["preset"] == "demo"


def test_the_bundled_prior_names_the_prompt_words_it_does_not_know(tmp_path, capsys):
    assert main(["generate", "a ceramic teapot", "-o", str(tmp_path), "--preset", "test", "--stages", "nerf",
                 "--steps-nerf", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning: The bundled toy prior does not know the words 'ceramic', 'teapot', so the result will not " \
           "follow them" in err
