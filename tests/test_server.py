"""`python -m prolific serve` as the add-on runs it: JSON lines in, events out, jobs, cancel, bad requests."""
import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from backend_env import backend_env
from prolific import __version__
from prolific.config import PRESETS, make_config
from prolific.device import device_description

TIMEOUT_S = 60


class Backend:
    """The server process; every stdout line must be a JSON event (anything else fails the test)."""

    def __init__(self, *args):
        env = backend_env()
        self.proc = subprocess.Popen([sys.executable, "-m", "prolific", "serve", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.events.put(line)

    def send(self, request):
        self.proc.stdin.write((request if isinstance(request, str) else json.dumps(request)) + "\n")
        self.proc.stdin.flush()

    def next(self):
        line = self.events.get(timeout=TIMEOUT_S)
        return json.loads(line)

    def until(self, job_id, *kinds):
        """Events of job_id up to and including the first whose kind is one of `kinds`."""
        seen = []
        while True:
            event = self.next()
            if event["id"] == job_id:
                seen.append(event)
                if event["event"] in kinds:
                    return seen

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def backend(tiny_sd_model):
    server = Backend("--model", str(tiny_sd_model))
    yield server
    server.close()


def generate(job_id, out_dir, **fields):
    return {"op": "generate", "id": job_id, "prompt": "a red teapot", "preset": "test", "stages": ["nerf"],
            "out_dir": str(out_dir), **fields}


def test_hello_names_protocol_backend_device_and_model(backend, tiny_sd_model):
    backend.send({"op": "hello", "id": "h"})
    hello = backend.next()
    assert hello == {"event": "hello", "id": "h", "protocol": 1, "backend": __version__, "device": device_description(),
                     "model": str(tiny_sd_model), "presets": hello["presets"]}
    # Every preset, in the CLI's order, with the step counts the add-on's menu shows.
    assert [p["name"] for p in hello["presets"]] == list(PRESETS)
    test = make_config("x", "test")
    assert hello["presets"][0]["steps"] == {s: getattr(test, s).steps for s in ("nerf", "geometry", "texture")}


def test_generate_streams_progress_then_the_result(backend, tmp_path):
    backend.send(generate("job-1", tmp_path, seed=1, stages=["nerf", "geometry", "texture"]))
    events = backend.until("job-1", "result", "error", "cancelled")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "result" and "progress" in kinds
    progress = [e for e in events if e["event"] == "progress"]
    stages = [e["stage"] for e in progress]
    assert sorted(set(stages), key=stages.index) == ["nerf", "geometry", "texture", "export"]
    assert all(e["step"] <= e["total"] for e in progress) and progress[-1]["step"] == progress[-1]["total"]
    previews = [e["preview"] for e in progress if e["preview"]]
    assert previews and all(Path(p).exists() for p in previews)
    [obj] = events[-1]["objects"]
    assert Path(obj["mesh"]).exists() and Path(obj["albedo"]).exists()
    assert Path(events[-1]["job_dir"]) == tmp_path / "job-1"


def test_nerf_only_job_returns_the_checkpoint_and_turntable(backend, tmp_path):
    backend.send(generate(7, tmp_path))
    result = backend.until(7, "result", "error", "cancelled")[-1]
    assert result["event"] == "result", result
    [obj] = result["objects"]
    assert Path(obj["checkpoint"]).exists() and len(obj["turntable"]) == 8
    assert Path(result["job_dir"]) == tmp_path / "7"


def test_cancel_stops_running_and_queued_jobs_and_the_server_keeps_serving(backend, tmp_path):
    backend.send(generate("long", tmp_path, nerf={"steps": 500}))  # sections at top level, as the add-on sends
    backend.send(generate("waiting", tmp_path))
    backend.until("long", "progress")
    backend.send({"op": "cancel", "id": "c1", "job": "waiting"})
    assert backend.until("waiting", "cancelled")[-1]["event"] == "cancelled"
    backend.send({"op": "cancel", "id": "c2", "job": "long"})
    events = backend.until("long", "cancelled", "result", "error")
    assert events[-1]["event"] == "cancelled"
    assert not (tmp_path / "waiting").exists(), "a job cancelled in the queue never starts"
    backend.send({"op": "hello", "id": "after"})
    assert backend.until("after", "hello")[-1]["protocol"] == 1


def test_a_cancelled_job_saves_a_checkpoint_and_resumes_in_its_folder_from_exactly_there(backend, tmp_path):
    backend.send(generate("first", tmp_path, nerf={"steps": 400, "checkpoint_every": 100000}))
    while not any(e["event"] == "progress" and e["step"] >= 2 for e in backend.until("first", "progress")):
        pass
    backend.send({"op": "cancel", "id": "c3", "job": "first"})
    stopped = backend.until("first", "cancelled", "result", "error")[-1]
    assert stopped["event"] == "cancelled" and stopped["stage"] == "nerf" and stopped["step"] >= 2
    assert stopped["message"] == f"Cancelled after nerf step {stopped['step']} of 400."
    saved = torch.load(tmp_path / "first" / "checkpoints" / "nerf.pt", weights_only=True)
    assert (saved["step"], saved["done"]) == (stopped["step"], False), "the checkpoint is the one written at cancel"
    backend.send(generate("again", tmp_path, nerf={"steps": 400, "checkpoint_every": 100000}, job="first",
                          resume=True))
    events = backend.until("again", "progress", "error")
    assert events[-1]["event"] == "progress" and (events[-1]["stage"], events[-1]["step"]) == ("nerf", saved["step"])
    backend.send({"op": "cancel", "id": "c4", "job": "again"})
    backend.until("again", "cancelled", "result", "error")
    assert not (tmp_path / "again").exists(), "the resumed job writes into the first job's folder"
    backend.send(generate("bad-name", tmp_path, job="../elsewhere", resume=True))
    event = backend.until("bad-name", "error", "queued")[-1]
    assert event["code"] == "bad_request" and "'job'" in event["message"]


def test_a_new_job_never_replaces_an_earlier_jobs_checkpoints(backend, tmp_path):
    backend.send(generate("kept", tmp_path, nerf={"steps": 1}))
    assert backend.until("kept", "result", "error")[-1]["event"] == "result"
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "kept").rglob("*")}
    backend.send(generate("over", tmp_path, nerf={"steps": 1}, job="kept"))
    event = backend.until("over", "error", "result")[-1]
    assert event["code"] == "bad_request" and "already holds a job" in event["message"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "kept").rglob("*")} == before
    backend.send(generate("ghost", tmp_path, job="never-ran", resume=True))
    event = backend.until("ghost", "error", "result")[-1]
    assert event["code"] == "bad_request" and "Nothing to resume" in event["message"]


def test_the_bundled_prior_warns_about_words_it_does_not_know(backend, tmp_path):
    request = generate("teapot", tmp_path, prompt="a ceramic teapot", model=None, nerf={"steps": 1})
    del request["preset"]  # the bundled prior then gets the demo preset
    backend.send(request)
    events = backend.until("teapot", "result", "error", "cancelled")
    assert events[-1]["event"] == "result", events[-1]
    [warning] = [e for e in events if e["event"] == "warning"]
    assert warning["code"] == "unknown_words" and "'ceramic', 'teapot'" in warning["message"]
    assert [e["event"] for e in events].index("warning") < [e["event"] for e in events].index("progress")
    assert json.loads((tmp_path / "teapot" / "meta.json").read_text())["preset"] == "demo"


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_ctrl_c_ends_the_server_after_the_running_job_saved_its_checkpoint(tiny_sd_model, tmp_path):
    server = Backend("--model", str(tiny_sd_model))
    try:
        server.send(generate("long", tmp_path, nerf={"steps": 400, "checkpoint_every": 100000}))
        while not any(e["event"] == "progress" and e["step"] >= 2 for e in server.until("long", "progress")):
            pass
        server.proc.send_signal(signal.SIGINT)
        stopped = server.until("long", "cancelled", "result", "error")[-1]
        assert stopped["event"] == "cancelled"
        assert server.proc.wait(timeout=TIMEOUT_S) == 130
    finally:
        server.close()
    saved = torch.load(tmp_path / "long" / "checkpoints" / "nerf.pt", weights_only=True)
    assert (saved["step"], saved["done"]) == (stopped["step"], False)


def test_bad_requests_get_bad_request_and_the_server_keeps_serving(backend, tmp_path):
    for line in ["{not json", "[1, 2]", json.dumps({"op": "hello"}), json.dumps({"op": "dance", "id": "d"}),
                 json.dumps({"op": "cancel", "id": "c", "job": "nobody"}),
                 json.dumps(generate("bad", tmp_path, preset="ultra")),
                 json.dumps(generate("bad2", tmp_path, overrides={"nerf": {"steps": -1}})),
                 json.dumps(generate("bad3", tmp_path, nerf={"lr": "fast"}))]:
        backend.send(line)
        event = backend.next()
        assert event["event"] == "error" and event["code"] == "bad_request" and event["message"]
    assert event["message"] == "nerf.lr must be a number such as 0.01 (got 'fast')."
    backend.send({"op": "hello", "id": "still"})
    assert backend.next()["event"] == "hello"


def test_missing_model_is_reported_for_the_job(backend, tmp_path):
    backend.send(generate("nomodel", tmp_path, model=str(tmp_path / "no_such_model")))
    event = backend.until("nomodel", "error", "result")[-1]
    assert event["code"] == "model_not_found" and "no_such_model" in event["message"]


def test_shutdown_exits_cleanly():
    server = Backend()
    try:
        server.send({"op": "hello", "id": 1})
        assert server.next()["id"] == 1
        server.send({"op": "shutdown", "id": 2})
        assert server.proc.wait(timeout=TIMEOUT_S) == 0
    finally:
        server.close()
