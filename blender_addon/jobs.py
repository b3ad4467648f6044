"""The job queue: one backend client per Blender session, jobs fed by its events, results imported on arrival.

A `bpy.app.timers` timer calls `pump()` a few times a second; `wait()` pumps in a loop for headless scripts,
where timers do not run while a script executes. The queue is saved to the add-on's user folder whenever it
changes, so a job that Blender's exit (or a crash) interrupted comes back after a restart as "interrupted";
`resume()` continues any stopped job from its checkpoints, in its own result folder.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy

from . import installer, presets, scene_import
from .client import SERVE_ARGS, BackendClient, BackendError

KEEP_FINISHED = 20
JOBS_FILE = "jobs.json"
STOPPED = ("error", "cancelled", "interrupted")  # ended without a result: resumable while checkpoints exist
BUSY_INTERVAL_S = 0.1
IDLE_INTERVAL_S = 1.0


@dataclass
class Job:
    id: str
    prompt: str
    preset: str
    seed: int
    variations: int
    overrides: dict[str, Any] = field(default_factory=dict)  # the backend settings sent with the job
    out_dir: str = ""  # where the backend writes; the job's folder in it is `folder`
    folder: str = ""  # the result folder's name: the first request's id, kept when the job is resumed
    state: str = "starting"  # starting, queued, running, importing, done, error, cancelled, interrupted
    stage: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    preview: str = ""
    message: str = ""
    code: str = ""
    objects: list[str] = field(default_factory=list)  # names of the imported objects
    warnings: list[str] = field(default_factory=list)  # the backend's warning events, e.g. words a prior lacks
    result: dict[str, Any] = field(default_factory=dict)  # the backend's result event

    @property
    def settings(self) -> dict[str, Any]:
        """Everything the job was generated with (the objects' custom property)."""
        return {"preset": self.preset, "seed": self.seed, "particles": self.variations, **self.overrides}

    @property
    def finished(self) -> bool:
        return self.state == "done" or self.state in STOPPED

    @property
    def resumable(self) -> bool:
        """Stopped without a result, and some stage saved a checkpoint to continue from."""
        if self.state not in STOPPED or not self.folder or not self.out_dir:
            return False
        return any((Path(self.out_dir) / self.folder / "checkpoints").glob("*.pt"))

    def record(self) -> dict[str, Any]:
        keys = ("id", "prompt", "preset", "seed", "variations", "overrides", "out_dir", "folder", "state", "message",
                "code", "objects")
        return {key: getattr(self, key) for key in keys}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Job":
        job = cls(**{k: v for k, v in record.items() if k in cls.__dataclass_fields__})
        if not job.finished:  # it was running when Blender went away
            job.state, job.code = "interrupted", "interrupted"
            job.message = "Blender closed while this job ran."
        return job

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0


class JobQueue:
    """Jobs in submission order; applies the protocol's events to them."""

    def __init__(self):
        self.jobs: list[Job] = []

    def add(self, job: Job) -> Job:
        self.jobs.append(job)
        finished = [j for j in self.jobs if j.finished]
        for old in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            self.jobs.remove(old)
        return job

    def get(self, job_id: str) -> Job | None:
        return next((j for j in self.jobs if j.id == job_id), None)

    def active(self) -> Job | None:
        """The job the backend works on now, else the next one waiting."""
        running = [j for j in self.jobs if j.state in ("running", "importing")]
        waiting = [j for j in self.jobs if not j.finished]
        return (running or waiting or [None])[0]

    def clear_finished(self) -> None:
        self.jobs = [j for j in self.jobs if not j.finished]
        save_queue()

    def apply(self, event: dict) -> Job | None:
        job = self.get(event.get("id", ""))
        if job is None or job.finished:
            return None
        kind = event.get("event")
        if kind == "queued":
            job.state = "queued"
        elif kind == "progress":
            job.state = "running"
            job.stage = event.get("stage", job.stage)
            job.step = int(event.get("step", 0))
            job.total = int(event.get("total", 0))
            job.eta_s = event.get("eta_s")
            if event.get("preview"):
                job.preview = event["preview"]
        elif kind == "warning":
            job.warnings.append(event.get("message", ""))
        elif kind == "result":
            job.state = "importing"
        elif kind == "error":
            job.state, job.code = "error", event.get("code", "internal")
            job.message = event.get("message") or "The backend reported an error without a message."
        elif kind == "cancelled":
            job.state, job.message = "cancelled", "Cancelled."
        return job


QUEUE = JobQueue()
backend_status = {"state": "stopped", "text": "Backend not started."}
_client: BackendClient | None = None
_client_key: tuple | None = None
setup: installer.BackendInstaller | None = None


def prefs():
    return bpy.context.preferences.addons[__package__].preferences


def default_output_dir() -> Path:
    return Path(bpy.utils.extension_path_user(__package__, create=True)) / "results"


def output_dir() -> Path:
    chosen = prefs().output_dir.strip()
    return Path(bpy.path.abspath(chosen)) if chosen else default_output_dir()


def client() -> BackendClient:
    """The session's client. Model and device travel with each job, so changing them needs no restart while
    jobs run; a changed backend Python always restarts the backend (its jobs end as cancelled)."""
    global _client, _client_key
    p = prefs()
    python = bpy.path.abspath(p.backend_python.strip()) if p.backend_python.strip() else ""
    if not python:
        raise BackendError("backend_unavailable", "No backend Python is set: open Edit > Preferences > Add-ons > "
                           "Prolific Dreamer and press Set up backend, or choose an existing backend Python.")
    key = (python, model_setting(), p.device)
    if _client is not None and key != _client_key and (key[0] != _client_key[0] or not _client.pending):
        old, _client = _client, None
        old.close()
        for event in old.poll():
            QUEUE.apply(event)
    if _client is None:
        args = [*SERVE_ARGS, "--device", p.device]  # the serve defaults only show in hello: jobs name their own
        if model_setting():
            args += ["--model", model_setting()]
        env = dict(os.environ)
        if not bpy.app.online_access:
            env["HF_HUB_OFFLINE"] = "1"  # Blender's "Allow Online Access" is off: the backend must not download
        log = Path(bpy.utils.extension_path_user(__package__, create=True)) / "backend.log"
        _client, _client_key = BackendClient(python, args, env=env, log_path=log), key
    return _client


def model_setting() -> str | None:
    """The model preference as the backend wants it: an absolute folder, an HF id, or None (bundled model)."""
    model = prefs().model.strip()
    if not model:
        return None
    folder = bpy.path.abspath(model)
    return folder if os.path.isdir(folder) else model


def backend_pid() -> int | None:
    return _client.pid if _client is not None else None


def connect() -> None:
    """Start the backend (if needed) without waiting; the timer reports the handshake in backend_status."""
    c = client()
    backend_status.update(state="starting", text="Starting the backend...")
    c.start()
    _ensure_timer()


def submit(prompt: str, preset: str, seed: int, variations: int, overrides: dict[str, Any],
           resume_of: Job | None = None, negative_prompt: str = "") -> Job:
    """Queue a job; with `resume_of` (a stopped job) it continues that job's checkpoints in its folder and
    takes its place in the queue. A negative prompt travels in the overrides, so a resumed job keeps it."""
    overrides = copy.deepcopy(overrides)
    if negative_prompt.strip():
        overrides.setdefault("prior", {})["negative_prompt"] = negative_prompt
    job = Job(id="", prompt=prompt, preset=preset, seed=seed, variations=variations, overrides=overrides,
              out_dir=resume_of.out_dir if resume_of is not None else str(output_dir()),
              folder=resume_of.folder if resume_of is not None else "")
    try:
        c = client()
        if not c.ready:
            backend_status.update(state="starting", text="Starting the backend...")
        fields = {"model": model_setting(), "device": prefs().device, **overrides}  # a script's own win
        if resume_of is not None:
            fields.update(resume=True, job=job.folder)
        job.id = c.generate(prompt, preset=preset, seed=seed, particles=variations, out_dir=job.out_dir, **fields)
        job.folder = job.folder or job.id  # the backend names a new job's folder after its id
    except BackendError as err:
        job.id = f"failed-{time.monotonic_ns()}"
        job.state, job.code, job.message = "error", err.code, err.message
    if resume_of is not None and resume_of in QUEUE.jobs:
        QUEUE.jobs.remove(resume_of)
    QUEUE.add(job)
    save_queue()
    _ensure_timer()
    return job


def resume(job_id: str) -> Job:
    """Continue a stopped job (error, cancelled, interrupted) from its last checkpoints, with its settings."""
    old = QUEUE.get(job_id)
    if old is None or not old.resumable:
        raise ValueError("Only a job that stopped after saving a checkpoint can be resumed; this one has nothing "
                         "to continue from: generate it again.")
    return submit(old.prompt, old.preset, old.seed, old.variations, old.overrides, resume_of=old)


def jobs_file() -> Path:
    return Path(bpy.utils.extension_path_user(__package__, create=True)) / JOBS_FILE


_saved: list = []  # (id, state) pairs last written, so progress events alone do not rewrite the file


def save_queue() -> None:
    """Write the queue to the user folder (atomically); failing to write loses the list, never a result."""
    global _saved
    _saved = [(j.id, j.state) for j in QUEUE.jobs]
    try:
        path = jobs_file()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([j.record() for j in QUEUE.jobs], indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def restore_queue() -> None:
    """The last session's jobs (at register); those that were still running come back as interrupted."""
    try:
        records = json.loads(jobs_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    for record in records if isinstance(records, list) else []:
        try:
            job = Job.from_record(record)
        except TypeError:
            continue  # written by another version of the add-on
        if QUEUE.get(job.id) is None:
            QUEUE.jobs.append(job)


def cancel(job_id: str) -> None:
    job = QUEUE.get(job_id)
    if job is None or job.finished or _client is None:
        return
    _client.cancel(job_id)


def pump(undo: bool = True) -> bool:
    """Apply every event that arrived; import finished results. Returns whether anything changed."""
    changed = _pump_setup()
    if _client is None:
        return changed
    for event in _client.poll():
        changed = True
        if event.get("event") == "hello":
            _on_hello(event)
            continue
        job = QUEUE.apply(event)
        if job is not None and job.state == "importing":
            _import(job, event, undo)
    if backend_status["state"] in ("starting", "ready") and _client.failure is not None:
        backend_status.update(state="error", text=_client.failure.message)
    if changed:
        if _saved != [(j.id, j.state) for j in QUEUE.jobs]:
            save_queue()
        _redraw()
    return changed


def wait(job: Job, timeout: float | None = None) -> Job:
    """Block until the job ends, pumping events (for scripts and `--background`)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not job.finished:
        pump(undo=True)
        if job.finished:
            break
        if deadline is not None and time.monotonic() > deadline:
            cancel(job.id)
            job.state, job.code = "error", "timeout"
            job.message = f"The job did not finish within {timeout:.0f} s and was cancelled."
            break
        time.sleep(0.05)
    return job


def _on_hello(event: dict) -> None:
    presets.remember(event.get("presets"))
    backend_status.update(state="ready", text=(
        f"Backend {event.get('backend', '?')} (protocol {event.get('protocol')}) on {event.get('device', '?')}, "
        f"model: {event.get('model') or 'bundled toy prior'}"))


def _import(job: Job, event: dict, undo: bool) -> None:
    job.result = event
    try:
        objects = scene_import.import_result(event.get("objects", []), job.prompt, job.seed, job.settings,
                                             job_id=job.id, meta_path=event.get("meta"))
    except (scene_import.ResultError, OSError, RuntimeError, KeyError) as err:
        job.state, job.code, job.message = "error", "import_failed", f"Could not import the result: {err}"
        return
    job.objects = [obj.name for obj in objects]
    job.state = "done"
    job.message = f"Imported {len(objects)} object(s)."
    if undo:
        try:
            bpy.ops.ed.undo_push(message=f"Prolific: {scene_import.object_name(job.prompt)}")
        except RuntimeError:
            pass  # no window to hold an undo stack (background mode)


def _pump_setup() -> bool:
    """Follow a running set-up; once done, point the backend Python at the new venv. True while it changes."""
    global setup
    if setup is None or setup.status.state not in ("running", "done"):
        return False
    if setup.status.state == "done":
        prefs().backend_python = str(setup.python)
        backend_status.update(state="stopped", text=setup.status.message)
        setup = None
    return True


def start_setup(venv_dir: Path, package: str, pip_args: str) -> installer.BackendInstaller:
    global setup
    if setup is not None and setup.status.state == "running":
        return setup
    setup = installer.BackendInstaller(venv_dir, package, pip_args)
    setup.start()
    _ensure_timer()
    return setup


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows if wm else ():
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def _timer() -> float | None:
    pump(undo=True)
    busy = (any(not j.finished for j in QUEUE.jobs) or backend_status["state"] == "starting"
            or (setup is not None and setup.status.state == "running"))
    return BUSY_INTERVAL_S if busy else IDLE_INTERVAL_S


def _ensure_timer() -> None:
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=BUSY_INTERVAL_S, persistent=True)


def shutdown() -> None:
    """Stop the timer and the backend child (add-on disabled or Blender quitting)."""
    global _client, _client_key, setup
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    if setup is not None:
        setup.cancel()
        setup = None
    save_queue()  # before the backend goes: a job it still runs is saved as running, i.e. interrupted
    if _client is not None:
        _client.close()
    _client, _client_key = None, None
    QUEUE.jobs.clear()
    backend_status.update(state="stopped", text="Backend not started.")
