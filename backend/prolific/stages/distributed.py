"""A job's particles spread over K processes with torch.distributed (NCCL on GPUs, gloo on the CPU).

Rank r owns a contiguous block of the particles (`Team.share`) and runs every stage for them on its own device;
the score estimator ε_φ is replicated, and its gradients are summed over the ranks weighted by each rank's
renders before every optimizer step, so each replica takes the single-process step over all particles and they
stay identical. Random numbers are drawn per particle (stages/randomness.py), so a seed gives the same particles
whatever K. Rank 0 writes the checkpoints (gathered from every rank), the previews and meta.json, and its
progress events are the job's; a cancel is agreed on at each step boundary, so every rank stops at the same step.

`run_team` is the parent's side: it spawns the workers (torch.multiprocessing), relays rank 0's events, turns a
cancel into the workers' stop flag, and ends the job with a clear error, stopping the others, when one fails.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..errors import Cancelled, ProlificError

# The workers' environment: NVLink multicast off (NVLS and symmetric-memory multicast; KINDS.md of the GPU hosts).
WORKER_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
# After one worker fails, how long the others get to end on their own before they are stopped.
GRACE_S = 10.0


@dataclass
class Team:
    """This process's place among the job's processes; the single-process job is `Team()` (no collectives)."""
    rank: int = 0
    size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))  # collectives' tensors
    objects: Any = None  # the process group for Python objects (gloo), None = the default group
    stop: Any = None  # the parent's stop flag (a multiprocessing Event)

    def share(self, n: int) -> range:
        """The global indices of this rank's particles: contiguous blocks, the first n % size ranks one more."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def check_cancel(self, reporter) -> None:
        """`reporter.check_cancel()` once the ranks agree that a stop was asked for (any rank saw it): call it
        where every rank passes in step (step and stage boundaries)."""
        if self.size > 1 and not reporter.cancel.is_set():
            flag = torch.tensor([float(self.stop.is_set())], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0:
                reporter.cancel.set()
        reporter.check_cancel()

    def total(self, value: float) -> float:
        """The sum of `value` over the ranks."""
        if self.size == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def reduce_grads(self, params: list, rows: int) -> None:
        """Each parameter's gradient (of a mean over this rank's `rows` samples) becomes the mean over all ranks'
        samples, the gradient of the single-process loss: Σ_r rows_r · grad_r / Σ_r rows_r, in one all-reduce."""
        if self.size == 1:
            return
        params = [p for p in params if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1).float() for p in params] + [torch.ones(1, device=params[0].device)])
        flat.mul_(rows)
        dist.all_reduce(flat)
        flat = flat[:-1] / flat[-1]
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def gather(self, obj: Any) -> list | None:
        """Every rank's `obj` (tensors moved to the CPU) in rank order on rank 0, None elsewhere."""
        if self.size == 1:
            return [obj]
        parts = [None] * self.size if self.rank == 0 else None
        dist.gather_object(to_cpu(obj), parts, dst=0, group=self.objects)
        return parts

    def everyone(self, obj: Any) -> list:
        """Every rank's `obj` in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        parts = [None] * self.size
        dist.all_gather_object(parts, to_cpu(obj), group=self.objects)
        return parts


def to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def particle_label(team_share: range) -> str:
    ids = list(team_share)
    return f"particle {ids[0]}" if len(ids) == 1 else f"particles {ids[0]}-{ids[-1]}"


# -- the workers -------------------------------------------------------------------------------------------------

def _exit_with_parent() -> None:
    """End this worker when the process that spawned it ends (e.g. a second Ctrl-C, or it was killed), so no
    worker outlives its job; the parent's sentinel works on every platform."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="prolific-parent-watch", daemon=True).start()


def _worker(rank: int, size: int, store: str, job: dict, messages, stop) -> None:
    """One rank of a job: `job` holds run_team's target and its arguments; the outcome goes to `messages` as
    ("result" | "error" | "crash", rank, payload), rank 0's progress events before it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    _exit_with_parent()
    os.environ.update(WORKER_ENV)
    from ..device import pick_device
    from ..events import Reporter

    cfg = job["cfg"]
    device = pick_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))  # the workers share the cores
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=Path(store).as_uri(), rank=rank, world_size=size)
    objects = dist.new_group(backend="gloo") if backend == "nccl" else None
    team = Team(rank, size, device, objects, stop)
    reporter = Reporter(messages.put if rank == 0 else None, threading.Event(), job["phases"])
    try:
        result = job["target"](cfg, job["job_dir"], job["continuing"], job["resume"], reporter, team, device)
    except ProlificError as err:
        messages.put(("error", rank, (type(err), err.message, getattr(err, "stage", None),
                                      getattr(err, "step", None), getattr(err, "total", None))))
    except BaseException as err:
        messages.put(("crash", rank, f"{type(err).__name__}: {err}"))
        raise
    else:
        if rank == 0:
            messages.put(("result", rank, result))
    dist.destroy_process_group()
    _exit_now(messages)


def _exit_now(messages) -> None:
    """End a worker whose outcome is sent without the interpreter's finalization: there, C++ threads that the
    collectives leave holding Python objects can abort the process (SIGABRT, "terminate called without an active
    exception", seen once with gloo in CI), which would report a worker that finished as died. Its files are
    written and closed by now; only the queue and the standard streams are flushed first."""
    messages.close()
    messages.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -- the parent --------------------------------------------------------------------------------------------------

def run_team(cfg, job_dir: Path, continuing: bool, resume: bool, reporter, target) -> dict:
    """Run `target(cfg, job_dir, continuing, resume, reporter, team, device)` (the job's stages: a module-level
    function, which the workers import) on cfg.gpus worker processes and return rank 0's result; raises the
    workers' error (Cancelled, BadRequest, ...) or, when a worker fails, ProlificError naming it."""
    import torch.multiprocessing as tmp

    size = cfg.gpus
    context = multiprocessing.get_context("spawn")
    messages, stop = context.Queue(), context.Event()
    job = {"target": target, "cfg": cfg, "job_dir": job_dir, "continuing": continuing, "resume": resume,
           "phases": reporter.times.phases}
    outcomes: list[tuple[str, int, Any]] = []
    with tempfile.TemporaryDirectory(prefix="prolific-team-") as folder:
        procs = tmp.start_processes(_worker, args=(size, str(Path(folder) / "store"), job, messages, stop),
                                    nprocs=size, join=False, start_method="spawn")
        died = None
        try:
            failed_at = None
            while True:
                if reporter.cancel.is_set():
                    stop.set()
                _relay(messages, reporter, outcomes, timeout=0.1)
                try:
                    if procs.join(timeout=0):
                        break
                except (tmp.ProcessRaisedException, tmp.ProcessExitedException) as err:
                    died = err  # join has stopped the other workers
                    break
                if failed_at is None and any(kind != "result" and not _cancelled_elsewhere(kind, rank, payload)
                                             for kind, rank, payload in outcomes):
                    failed_at = time.monotonic()
                if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
                    break
        finally:
            for p in procs.processes:
                if p.is_alive():
                    p.kill()
            for p in procs.processes:
                p.join()
        _relay(messages, reporter, outcomes, timeout=0.05, until_empty=True)
    return _outcome(outcomes, died, cfg, size)


def _cancelled_elsewhere(kind: str, rank: int, payload) -> bool:
    """A rank other than 0 that stopped on the agreed cancel: rank 0 is still writing the checkpoint."""
    return kind == "error" and rank != 0 and payload[0] is Cancelled


def _relay(messages, reporter, outcomes: list, timeout: float, until_empty: bool = False) -> None:
    while True:
        try:
            item = messages.get(timeout=timeout)
        except queue.Empty:
            return
        if isinstance(item, tuple):
            outcomes.append(item)
        elif reporter.sink is not None:
            reporter.sink(item)
        if not until_empty:
            timeout = 0


def _outcome(outcomes: list, died, cfg, size: int) -> dict:
    def who(rank: int) -> str:
        return f"Worker {rank} of {size} ({particle_label(Team(rank, size).share(cfg.particles))})"

    kept = "the other workers were stopped; the checkpoints saved so far are kept (resume to continue)."
    crashes = [(rank, text) for kind, rank, text in outcomes if kind == "crash"]
    if crashes:
        rank, text = crashes[0]
        raise ProlificError(f"{who(rank)} failed: {text}; {kept}")
    errors = sorted((rank, payload) for kind, rank, payload in outcomes if kind == "error")
    if errors:
        rank, (cls, message, stage, step, total) = errors[0]
        if cls is Cancelled:
            raise Cancelled(message, stage, step, total)
        try:
            error = cls(message)
        except TypeError:  # an error class with other arguments: its sentence is what matters
            error = ProlificError(message)
        raise error
    results = [payload for kind, rank, payload in outcomes if kind == "result"]
    if results and died is None:
        return results[0]
    if died is not None:
        rank = getattr(died, "error_index", 0)
        reason = f"signal {died.signal_name}" if getattr(died, "signal_name", None) else f"exit code {died.exit_code}"
        raise ProlificError(f"{who(rank)} died ({reason}); {kept}")
    raise ProlificError(f"The workers ended without a result; {kept}")
