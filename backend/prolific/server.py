"""`prolific serve`: protocol version 1 of DESIGN.md, newline-delimited JSON on stdin/stdout.

Requests are read on the main thread; jobs run one at a time, in queue order, on one worker thread that keeps
the prior loaded between jobs (reloaded only when a job asks for another model, device or dtype). Events are
the only thing on stdout; logs and any stray prints go to stderr.
"""
from __future__ import annotations

import collections
import copy
import gc
import io
import json
import os
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from . import __version__
from .config import PRESETS, SECTIONS, STAGES, JobConfig, check_job_name, make_config
from .device import device_description, job_dtype, pick_device
from .errors import BadRequest, Cancelled, ProlificError
from .events import JobWarning
from .interrupt import EXIT_INTERRUPTED, on_ctrl_c
from .job_request import job_config, request_overrides

PROTOCOL = 1
# Request fields of `generate` beside op and id; the flat ones job_request translates into settings.
FLAT_GENERATE_FIELDS = ("model", "guidance", "negative_prompt", "seed", "particles", "gpus", "stages", "device")
GENERATE_FIELDS = {"prompt", "preset", "out_dir", "overrides", "resume", "job", *FLAT_GENERATE_FIELDS, *SECTIONS}


@dataclass
class Job:
    id: str | int  # as the client sent it, so that events echo it unchanged
    cfg: JobConfig
    out_dir: Path
    resume: bool
    name: str  # the result folder in out_dir: the request id, or `job` to continue an earlier job's folder
    cancel: threading.Event = field(default_factory=threading.Event)


def preset_list() -> list[dict]:
    """The presets in config.PRESETS' order with their step counts, for the add-on's preset menu."""
    return [{"name": name, "steps": {s: getattr(make_config("-", name), s).steps for s in STAGES}}
            for name in PRESETS]


def log(message: str) -> None:
    print(f"[prolific] {message}", file=sys.stderr, flush=True)


class Server:
    """Protocol state: the job queue, the running job and the loaded prior. `write` sends one event."""

    def __init__(self, write: Callable[[dict], None], model: str | None = None, device: str = "auto"):
        self.write = write
        self.model = model
        self.device = device
        self.queue: collections.deque[Job] = collections.deque()
        self.current: Job | None = None
        self.stopping = False
        self.cond = threading.Condition()
        self.prior = None
        self.prior_key: tuple | None = None
        self.worker = threading.Thread(target=self._work, name="prolific-worker", daemon=True)

    # Main thread: requests.

    def serve(self, lines: TextIO) -> int:
        self.worker.start()
        for line in lines:
            if not line.strip():
                continue
            if not self.handle_line(line):
                break
        self.stop()
        return 0

    def handle_line(self, line: str) -> bool:
        """Answer one request line; False once the server should stop."""
        try:
            request = json.loads(line)
        except ValueError as err:
            self.write({"event": "error", "id": None, "code": "bad_request", "message": f"Malformed JSON: {err}."})
            return True
        if not isinstance(request, dict):
            self.write({"event": "error", "id": None, "code": "bad_request",
                        "message": "Each request must be a JSON object."})
            return True
        req_id = request.get("id")
        try:
            if not isinstance(req_id, (str, int)) or isinstance(req_id, bool) or req_id == "":
                raise BadRequest("Every request needs an 'id' (a string or a number).")
            op = request.get("op")
            if op == "hello":
                self.write({"event": "hello", "id": req_id, "protocol": PROTOCOL, "backend": __version__,
                            "device": device_description(pick_device(self.device)), "model": self.model,
                            "presets": preset_list()})
            elif op == "generate":
                self.enqueue(self.parse_generate(request))
            elif op == "cancel":
                self.cancel(request.get("job", req_id))
            elif op == "shutdown":
                return False
            else:
                raise BadRequest(f"Unknown op {op!r}: use hello, generate, cancel or shutdown.")
        except ProlificError as err:
            self.write({"event": "error", "id": req_id, "code": err.code, "message": err.message})
        return True

    def parse_generate(self, request: dict) -> Job:
        unknown = sorted(set(request) - GENERATE_FIELDS - {"op", "id"})
        if unknown:
            raise BadRequest(f"Unknown generate field(s): {', '.join(unknown)}.")
        out_dir = request.get("out_dir")
        if not isinstance(out_dir, str) or not out_dir:
            raise BadRequest("generate needs 'out_dir', the folder the job's results go to.")
        overrides = request.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise BadRequest("'overrides' must be an object of settings such as {\"nerf\": {\"steps\": 100}}.")
        overrides = copy.deepcopy(overrides)
        for section in SECTIONS:
            if section in request:
                overrides.setdefault(section, {})
                if not isinstance(request[section], dict) or not isinstance(overrides[section], dict):
                    raise BadRequest(f"Setting '{section}' must be an object of its fields.")
                overrides[section].update(request[section])
        defaults = {"model": self.model, **({"device": self.device} if self.device != "auto" else {})}
        overrides = request_overrides({k: request[k] for k in FLAT_GENERATE_FIELDS if k in request}, overrides,
                                      defaults)
        resume = request.get("resume", False)
        if not isinstance(resume, bool):
            raise BadRequest("'resume' must be true or false.")
        try:  # checked here too, so that a bad name is refused before the job queues
            name = check_job_name(request.get("job", str(request["id"])))
        except BadRequest as err:
            raise BadRequest(f"'job': {err.message}") from None
        def deprecated(message: str) -> None:
            self.write({"event": "warning", "id": request["id"], "code": "deprecated_setting", "message": message})

        try:
            cfg, _ = job_config(request.get("prompt", ""), request.get("preset"), overrides, deprecated)
        except (TypeError, ValueError) as err:
            raise BadRequest(f"Invalid settings: {err}.") from None
        return Job(request["id"], cfg, Path(out_dir), resume, name)

    def enqueue(self, job: Job) -> None:
        with self.cond:
            if self.stopping:
                raise BadRequest("The backend is shutting down.")
            if self._find(job.id) is not None:
                raise BadRequest(f"A job with id '{job.id}' is already queued or running.")
            position = len(self.queue) + (self.current is not None)
            self.queue.append(job)
            self.write({"event": "queued", "id": job.id, "position": position})
            self.cond.notify()

    def _find(self, job_id: Any) -> Job | None:
        """The queued or running job with this id (ids 7 and "7" name the same job folder, so they match)."""
        jobs = list(self.queue) + ([self.current] if self.current is not None else [])
        return next((j for j in jobs if str(j.id) == str(job_id)), None)

    def cancel(self, job_id: Any) -> None:
        with self.cond:
            job = self._find(job_id)
            if job is None:
                raise BadRequest(f"No queued or running job '{job_id}' to cancel.")
            if job is self.current:
                job.cancel.set()  # the worker sends `cancelled` once the job stops at a step boundary
            else:
                self.queue.remove(job)
                self.write({"event": "cancelled", "id": job.id})

    def stop(self) -> None:
        """Shutdown or end of input: drop the queue, cancel the running job, wait for the worker."""
        with self.cond:
            self.stopping = True
            while self.queue:
                self.write({"event": "cancelled", "id": self.queue.popleft().id})
            if self.current is not None:
                self.current.cancel.set()
            self.cond.notify_all()
        self.worker.join()

    # Worker thread: jobs.

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.stopping:
                    self.cond.wait()
                if not self.queue:
                    return
                job = self.current = self.queue.popleft()
            try:
                self.run(job)
            finally:
                with self.cond:
                    self.current = None

    def run(self, job: Job) -> None:
        import torch

        from .pipeline import OUT_OF_MEMORY_ADVICE, run_job

        log(f"job {job.id}: '{job.cfg.prompt}' preset {job.cfg.preset}, stages {','.join(job.cfg.stages)}")

        def progress(event) -> None:
            kind = "warning" if isinstance(event, JobWarning) else "progress"
            self.write({"event": kind, "id": job.id, **event.to_dict()})

        try:
            prior = self.load_prior(job.cfg) if job.cfg.gpus == 1 else None  # each worker loads its own
            result = run_job(job.cfg, job.out_dir, job.name, sink=progress, cancel=job.cancel, resume=job.resume,
                             prior=prior)
        except Cancelled as err:
            log(f"job {job.id}: {err.message}")
            where = {"stage": err.stage, "step": err.step} if err.stage is not None else {}
            self.write({"event": "cancelled", "id": job.id, "message": err.message, **where})
        except ProlificError as err:
            log(f"job {job.id}: {err.code}: {err.message}")
            self.write({"event": "error", "id": job.id, "code": err.code, "message": err.message})
        except torch.cuda.OutOfMemoryError:  # loading the model (run_job maps its own)
            self.prior = self.prior_key = None
            torch.cuda.empty_cache()
            self.write({"event": "error", "id": job.id, "code": "out_of_memory", "message": OUT_OF_MEMORY_ADVICE})
        except Exception as err:
            traceback.print_exc(file=sys.stderr)
            self.write({"event": "error", "id": job.id, "code": "internal",
                        "message": f"Internal error ({type(err).__name__}: {err}); the backend log has details."})
        else:
            log(f"job {job.id}: done in {result['job_dir']}")
            self.write({"event": "result", "id": job.id, **result})

    def load_prior(self, cfg: JobConfig):
        """The loaded prior, reloaded only when the job needs another model, device or dtype."""
        from .pipeline import load_job_prior

        device = pick_device(cfg.device)
        key = (cfg.prior.model, str(device), job_dtype(device, cfg.prior.dtype, cfg.prior.speed))
        if key != self.prior_key:
            self.prior = self.prior_key = None
            gc.collect()  # free the old model before loading the next one
            log(f"loading model {cfg.prior.model or '(bundled toy prior)'} on {device}")
            self.prior = load_job_prior(cfg, device)
            self.prior_key = key
        return self.prior


def serve_stdio(model: str | None = None, device: str = "auto") -> int:
    """Serve on the process's stdin/stdout. Protocol lines go to a private copy of the stdout descriptor; the
    descriptor itself and sys.stdout are pointed at stderr, so no print or library output can corrupt them."""
    pick_device(device)  # a bad --device fails at start, not at the first job
    sys.stdout.flush()
    protocol_out = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def write(event: dict) -> None:
        line = json.dumps(event, default=str)
        with lock:
            protocol_out.write(line + "\n")
            protocol_out.flush()

    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    log(f"serving protocol {PROTOCOL} (backend {__version__}) on {device_description(pick_device(device))}")
    server = Server(write, model, device)

    def interrupted() -> None:  # leaves the blocking read of stdin
        raise KeyboardInterrupt

    # Ctrl-C in the terminal (it reaches Blender's backend child too) ends the server like shutdown: the running
    # job stops at a step boundary and saves its checkpoint; a second Ctrl-C ends it at once.
    with on_ctrl_c(interrupted, lambda: log("aborted")):
        try:
            return server.serve(stdin)
        except KeyboardInterrupt:
            log("interrupted: cancelling the running job after its current step (Ctrl-C again to abort at once)")
            server.stop()
            return EXIT_INTERRUPTED
