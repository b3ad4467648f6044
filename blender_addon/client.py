"""The backend process and the protocol spoken with it (DESIGN.md, protocol v1). Imports no bpy.

One `BackendClient` owns one `python -m prolific serve` child. Requests are written to the child's stdin; a
reader thread turns its stdout lines into event dicts on a queue that the UI drains with `poll()` from a timer,
so Blender never waits on the pipe. Requests made before the hello handshake has checked the protocol version
wait in an outbox. When the child dies unexpectedly, every unfinished job gets an `error` event saying so, and
the next request starts a fresh child.
"""
from __future__ import annotations

import atexit
import collections
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Iterable

PROTOCOL_VERSION = 1
SERVE_ARGS = ("-m", "prolific", "serve")
TERMINAL_EVENTS = ("result", "error", "cancelled")
# Client-side error codes, beside the backend's own (bad_request, model_not_found, ...).
BACKEND_CRASHED = "backend_crashed"
BACKEND_UNAVAILABLE = "backend_unavailable"
PROTOCOL_MISMATCH = "protocol_mismatch"
LOG_TAIL_LINES = 40
LOG_MAX_BYTES = 10_000_000  # then the log moves to <name>.old and starts afresh


class BackendError(Exception):
    """A failure the user can read: `code` as in the protocol's error codes, `str(err)` a sentence."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class BackendClient:
    """Talks to one backend child process; safe to call from the UI thread, never blocks it unless asked."""

    def __init__(self, python: str | os.PathLike, args: Iterable[str] = SERVE_ARGS, env: dict | None = None,
                 cwd: str | os.PathLike | None = None, log_path: str | os.PathLike | None = None):
        self.python = str(python)
        self.args = list(args)
        self.env = env
        self.cwd = cwd
        self.log_path = Path(log_path) if log_path else None
        self.hello: dict | None = None  # the backend's hello event once the handshake passed
        self._proc: subprocess.Popen | None = None
        self._events: queue.Queue[dict] = queue.Queue()
        self._backlog: list[dict] = []  # events taken off the queue by wait_job() for other requests
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        # Generate requests without a terminal event yet → the child they went to (a crash ends only its own jobs).
        self._pending: dict[str, subprocess.Popen | None] = {}
        self._outbox: list[dict] = []
        self._hello_id: str | None = None
        self._ready = threading.Event()  # set when the handshake passed or failed
        self._failure: BackendError | None = None
        self._closing = False
        self._log_tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._readers: list[threading.Thread] = []
        _LIVE.add(self)

    # ----- lifecycle -----
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def ready(self) -> bool:
        """True once the running child answered hello with our protocol version."""
        return self.alive and self.hello is not None

    @property
    def failure(self) -> BackendError | None:
        """Why the current child cannot serve (failed start, wrong protocol, crash); None while all is well."""
        return self._failure

    def start(self) -> None:
        """Start the child (if not running) and send hello; returns at once. Requests queue until it answers."""
        with self._lock:
            if self.alive:
                return
            self._reset()
            self._rotate_log()
            kwargs: dict[str, Any] = {}
            if sys.platform == "win32":
                kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW
            env = dict(os.environ if self.env is None else self.env)
            env["PYTHONUNBUFFERED"] = "1"
            env["PYTHONIOENCODING"] = "utf-8"
            try:
                self._proc = subprocess.Popen([self.python, *self.args], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                              cwd=self.cwd, **kwargs)
            except OSError as exc:
                self._proc = None
                self._fail(BackendError(BACKEND_UNAVAILABLE,
                                        f"Cannot start the backend with Python '{self.python}': {exc.strerror or exc}. "
                                        "Set the backend Python in the add-on preferences or press Set up backend."))
                return
            proc = self._proc
            log_reader = threading.Thread(target=self._read_stderr, args=(proc,), name="prolific-log", daemon=True)
            self._readers = [log_reader,
                             threading.Thread(target=self._read_stdout, args=(proc, log_reader),
                                              name="prolific-events", daemon=True)]
            for reader in self._readers:
                reader.start()
            self._hello_id = self._new_id("hello")
            self._send({"op": "hello", "id": self._hello_id})

    def wait_ready(self, timeout: float = 300.0) -> dict:
        """Start if needed and block until the handshake passed; returns the hello event or raises BackendError."""
        self.start()
        if not self._ready.wait(timeout):
            raise BackendError(BACKEND_UNAVAILABLE, f"The backend did not answer hello within {timeout:.0f} s."
                               + self._log_hint())
        if self._failure is not None:
            raise self._failure
        return dict(self.hello or {})

    def close(self, timeout: float = 5.0) -> None:
        """Ask the child to shut down, then terminate and finally kill it; always reaps it. Jobs it still had
        end with `cancelled`."""
        with self._lock:
            proc, self._closing = self._proc, True
            self._outbox.clear()
        if proc is None:
            self._end_pending(None)
            return
        if proc.poll() is None:
            try:
                self._write(proc, {"op": "shutdown", "id": self._new_id("shutdown")})
                proc.stdin.close()
            except (OSError, ValueError):
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for reader in self._readers:  # they end at EOF, after handing over the child's last events
            reader.join(timeout)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass  # stdin's last flush into a dead child
        self._end_pending(proc)
        _LIVE.discard(self)

    def _end_pending(self, proc: subprocess.Popen | None) -> None:
        with self._lock:
            for rid in [rid for rid, owner in self._pending.items() if owner is proc]:
                del self._pending[rid]
                self._events.put({"event": "cancelled", "id": rid, "message": "The backend was stopped."})

    # ----- requests -----
    def request(self, op: str, **fields: Any) -> str:
        """Send a request (starting or restarting the backend if needed); returns its id."""
        with self._lock:
            self._closing = False
            _LIVE.add(self)
            if not self.alive:
                self.start()
            rid = fields.pop("id", None) or self._new_id(op)
            message = {"op": op, "id": rid, **fields}
            if op == "generate":
                self._pending[rid] = self._proc
            if self._failure is not None:
                self._finish_with_error(rid, self._failure)
            elif self.hello is None:
                self._outbox.append(message)
            else:
                self._send(message)
            return rid

    def generate(self, prompt: str, preset: str = "standard", seed: int = 0, particles: int = 1,
                 out_dir: str | os.PathLike | None = None, **overrides: Any) -> str:
        """Queue a job; returns the job id that its events carry."""
        fields: dict[str, Any] = {"prompt": prompt, "preset": preset, "seed": int(seed), "particles": int(particles)}
        if out_dir is not None:
            fields["out_dir"] = str(out_dir)
        fields.update(overrides)
        return self.request("generate", **fields)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            queued = [m for m in self._outbox if m.get("id") == job_id]
            if queued:  # never reached the backend: drop it here
                self._outbox.remove(queued[0])
                self._pending.pop(job_id, None)
                self._events.put({"event": "cancelled", "id": job_id})
                return
        if self.alive and job_id in self._pending:
            self.request("cancel", job=job_id)

    @property
    def pending(self) -> set[str]:
        with self._lock:
            return set(self._pending)

    # ----- events -----
    def poll(self) -> list[dict]:
        """All events that arrived since the last call, oldest first."""
        out, self._backlog = self._backlog, []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def wait_job(self, job_id: str, timeout: float | None = None) -> list[dict]:
        """Block until `job_id` ends; returns its events (the last one terminal). Others stay for poll()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        mine: list[dict] = []
        others: list[dict] = []
        try:
            while True:
                if self._backlog:
                    event = self._backlog.pop(0)
                else:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"Job {job_id} did not finish within {timeout} s.")
                    try:
                        event = self._events.get(timeout=0.2 if left is None else min(left, 0.2))
                    except queue.Empty:
                        continue
                if event.get("id") != job_id:
                    others.append(event)
                    continue
                mine.append(event)
                if event.get("event") in TERMINAL_EVENTS:
                    return mine
        finally:
            self._backlog = others + self._backlog

    def log_tail(self) -> list[str]:
        return list(self._log_tail)

    # ----- internals -----
    def _reset(self) -> None:
        self.hello = None
        self._hello_id = None
        self._ready.clear()
        self._failure = None
        self._closing = False
        self._log_tail.clear()

    def _new_id(self, op: str) -> str:
        # The backend names the job's result folder after the id: keep ids unique across sessions too.
        return f"{op}-{time.strftime('%Y%m%d-%H%M%S')}-{next(self._ids)}"

    def _write(self, proc: subprocess.Popen, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode("utf-8")
        proc.stdin.write(data)
        proc.stdin.flush()

    def _send(self, message: dict) -> None:
        try:
            self._write(self._proc, message)
        except (OSError, ValueError):
            pass  # the child is gone: the stdout reader reports the crash to every pending job

    def _read_stdout(self, proc: subprocess.Popen, log_reader: threading.Thread) -> None:
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self._log(f"[stdout] {line}")  # stray prints from libraries: keep them for the log only
                continue
            if isinstance(event, dict):
                self._dispatch(proc, event)
        proc.wait()
        log_reader.join(timeout=2.0)  # the exit report quotes the child's last stderr lines: let them arrive first
        self._on_exit(proc)

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        for raw in proc.stderr:
            self._log(raw.decode("utf-8", errors="replace").rstrip())

    def _rotate_log(self) -> None:
        try:
            if self.log_path is not None and self.log_path.stat().st_size > LOG_MAX_BYTES:
                self.log_path.replace(self.log_path.with_name(self.log_path.name + ".old"))
        except OSError:
            pass  # no log yet

    def _log(self, line: str) -> None:
        self._log_tail.append(line)
        if self.log_path is not None:
            try:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.log_path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
            except OSError:
                pass

    def _dispatch(self, proc: subprocess.Popen, event: dict) -> None:
        with self._lock:
            if proc is not self._proc:
                return
            if event.get("id") == self._hello_id and self._hello_id is not None:
                if event.get("event") == "hello":
                    self._on_hello(event)
                else:
                    self._fail(BackendError(PROTOCOL_MISMATCH, "The backend refused the hello handshake: "
                                            f"{event.get('message', event)}"))
                    self._proc.terminate()
                return
            if event.get("event") in TERMINAL_EVENTS:
                self._pending.pop(event.get("id"), None)
        self._events.put(event)

    def _on_hello(self, event: dict) -> None:
        version = event.get("protocol")
        if version != PROTOCOL_VERSION:
            backend = event.get("backend", "unknown")
            self._fail(BackendError(
                PROTOCOL_MISMATCH,
                f"The backend (version {backend}) speaks protocol {version}, but this add-on speaks protocol "
                f"{PROTOCOL_VERSION}. Install matching versions: press Set up backend in the add-on preferences, "
                "or update the add-on."))
            self._proc.terminate()
            return
        self.hello = event
        self._ready.set()
        self._events.put(event)
        outbox, self._outbox = self._outbox, []
        for message in outbox:
            self._send(message)

    def _fail(self, error: BackendError) -> None:
        """The current child cannot serve: every request waiting on it ends with `error`."""
        self._failure = error
        self._ready.set()
        self._outbox.clear()
        for rid in [rid for rid, owner in self._pending.items() if owner is self._proc]:
            self._finish_with_error(rid, error)

    def _finish_with_error(self, rid: str, error: BackendError) -> None:
        self._pending.pop(rid, None)
        self._events.put({"event": "error", "id": rid, "code": error.code, "message": error.message})

    def _on_exit(self, proc: subprocess.Popen) -> None:
        with self._lock:
            if self._closing and proc is self._proc:
                return  # close() ends the jobs
            if proc is self._proc and self._failure is not None:
                return  # already reported (wrong protocol)
            code = proc.returncode
            if self.hello is None:
                error = BackendError(BACKEND_UNAVAILABLE,
                                     f"The backend exited (code {code}) before answering hello. Check the backend "
                                     "Python in the add-on preferences or press Set up backend." + self._log_hint())
            else:
                error = BackendError(BACKEND_CRASHED,
                                     f"The backend stopped unexpectedly (exit code {code}). It will restart on the "
                                     "next request." + self._log_hint())
            if proc is self._proc:
                self._fail(error)
            else:  # a newer child already replaced it: end only the jobs this one had
                for rid in [rid for rid, owner in self._pending.items() if owner is proc]:
                    self._finish_with_error(rid, error)

    def _log_hint(self) -> str:
        lines = [line for line in self._log_tail if line.strip()][-3:]
        return (" Last backend log lines: " + " | ".join(lines)) if lines else ""


# Children must not outlive Blender: close every live client at interpreter exit.
_LIVE: "weakref.WeakSet[BackendClient]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for client in list(_LIVE):
        client.close(timeout=2.0)
