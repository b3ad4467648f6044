"""blender_addon/client.py against a real `prolific serve` (tiny model, CPU) and a fake peer for version checks.

client.py imports no bpy, so it is loaded here straight from its file.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backend_env import backend_env

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("prolific_addon_client", ROOT / "blender_addon" / "client.py")
client_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(client_mod)
BackendClient, BackendError = client_mod.BackendClient, client_mod.BackendError

QUICK = {"stages": ["nerf"]}  # stage 1 only: the fastest real job
SLOW = {"stages": ["nerf"], "nerf": {"steps": 400, "checkpoint_every": 1000}}  # long enough to be interrupted


@pytest.fixture(scope="module")
def backend(tiny_sd_model, tmp_path_factory):
    """One backend for the module's tests, in file order, as the add-on keeps one per Blender session."""
    client = BackendClient(sys.executable, [*client_mod.SERVE_ARGS, "--model", str(tiny_sd_model), "--device", "cpu"],
                           env=backend_env(), log_path=tmp_path_factory.mktemp("log") / "backend.log")
    yield client
    client.close()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def first_progress(client, job: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in client.poll():
            assert event.get("event") not in client_mod.TERMINAL_EVENTS, event
            if event.get("id") == job and event.get("event") == "progress":
                return event
        time.sleep(0.05)
    raise AssertionError("no progress event")


def test_a_job_sent_before_the_handshake_streams_progress_and_a_result(backend, tmp_path):
    job = backend.generate("a red teapot", preset="test", seed=3, out_dir=tmp_path / "out", **QUICK)
    assert backend.pending == {job}
    hello = backend.wait_ready(timeout=120)
    assert hello["protocol"] == 1 and hello["device"].startswith("cpu")
    events = backend.wait_job(job, timeout=300)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "queued" and "progress" in kinds and kinds[-1] == "result", kinds
    assert Path(events[-1]["job_dir"]).is_dir() and events[-1]["objects"]
    assert backend.pending == set()


def test_backend_error_reaches_the_job_with_its_message(backend, tmp_path):
    job = backend.generate("a red teapot", preset="no-such-preset", out_dir=tmp_path / "out")
    last = backend.wait_job(job, timeout=120)[-1]
    assert last["event"] == "error" and last["code"] == "bad_request" and "no-such-preset" in last["message"]


def test_cancel_stops_the_running_job(backend, tmp_path):
    job = backend.generate("a red chair", preset="test", out_dir=tmp_path / "out", **SLOW)
    first_progress(backend, job)
    backend.cancel(job)
    assert backend.wait_job(job, timeout=120)[-1]["event"] == "cancelled"
    assert backend.alive  # the backend keeps serving


def test_backend_killed_mid_job_gives_an_error_and_the_next_job_restarts_it(backend, tmp_path):
    job = backend.generate("a red teapot", preset="test", out_dir=tmp_path / "out", **SLOW)
    first_progress(backend, job)
    old_pid = backend.pid
    os.kill(old_pid, signal.SIGKILL)
    last = backend.wait_job(job, timeout=60)[-1]
    assert last["event"] == "error" and last["code"] == client_mod.BACKEND_CRASHED
    assert "stopped unexpectedly" in last["message"] and "restart" in last["message"]
    again = backend.generate("a red teapot", preset="test", out_dir=tmp_path / "out", **QUICK)
    assert backend.wait_job(again, timeout=300)[-1]["event"] == "result"
    assert backend.pid != old_pid


def test_close_ends_the_running_job_and_leaves_no_process(backend, tmp_path):
    job = backend.generate("a blue chair", preset="test", out_dir=tmp_path / "out", **SLOW)
    first_progress(backend, job)
    pid = backend.pid
    backend.close()
    assert gone(pid)
    assert backend.wait_job(job, timeout=5)[-1]["event"] == "cancelled"
    assert backend.pending == set()


FAKE_PEER = """
    import json, sys
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "hello":
            print(json.dumps({"event": "hello", "id": request["id"], "protocol": 99, "backend": "9.9.9"}), flush=True)
"""


def test_wrong_protocol_version_is_refused_with_a_clear_message(tmp_path):
    peer = tmp_path / "peer.py"
    peer.write_text(textwrap.dedent(FAKE_PEER))
    client = BackendClient(sys.executable, [str(peer)])
    try:
        job = client.generate("a teapot", out_dir=tmp_path)  # queued behind the handshake, never sent
        with pytest.raises(BackendError) as err:
            client.wait_ready(timeout=30)
        assert err.value.code == client_mod.PROTOCOL_MISMATCH
        assert "protocol 99" in err.value.message and "protocol 1" in err.value.message
        last = client.wait_job(job, timeout=10)[-1]
        assert last["event"] == "error" and "protocol 99" in last["message"]
    finally:
        client.close()


def test_a_python_without_the_backend_is_reported(tmp_path):
    client = BackendClient(sys.executable, ["-c", "import sys; sys.exit('No module named prolific')"])
    try:
        with pytest.raises(BackendError) as err:
            client.wait_ready(timeout=30)
        assert "before answering hello" in err.value.message and "No module named prolific" in err.value.message
    finally:
        client.close()
    missing = BackendClient(tmp_path / "no-python-here")
    with pytest.raises(BackendError) as err:
        missing.wait_ready(timeout=5)
    assert "Cannot start the backend" in err.value.message


SLEEPY_PEER = """
    import json, sys, time
    request = json.loads(sys.stdin.readline())
    print(json.dumps({"event": "hello", "id": request["id"], "protocol": 1, "backend": "test"}), flush=True)
    time.sleep(600)  # deaf from now on: only a signal ends it
"""

FORGETFUL_PARENT = """
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("client", sys.argv[1])
    client_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client_mod)
    client = client_mod.BackendClient(sys.executable, [sys.argv[2]])
    client.wait_ready(timeout=30)
    print(client.pid, flush=True)
    # exits without close(): the atexit hook must still end the child
"""


def test_the_child_ends_when_the_parent_exits_without_closing(tmp_path):
    peer, parent = tmp_path / "peer.py", tmp_path / "parent.py"
    peer.write_text(textwrap.dedent(SLEEPY_PEER))
    parent.write_text(textwrap.dedent(FORGETFUL_PARENT))
    done = subprocess.run([sys.executable, str(parent), str(ROOT / "blender_addon" / "client.py"), str(peer)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert gone(int(done.stdout.strip()))
