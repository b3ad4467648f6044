"""Per-part timing of one training step without changing what it runs.

Methods of the step's objects are wrapped (instance attributes, undone afterwards) so that entering and leaving
each marks a transition; the time between consecutive transitions belongs to the innermost part running, so the
parts are exclusive and add up to the step. On CUDA every transition records an event and nothing synchronises
until the steps are read (`summary`), so the host runs ahead of the GPU across steps as in a job; on the CPU it
reads the clock. The events are on the current stream: work on another stream (the estimator's update with
`overlap`) counts only where the current stream waits for it; `wrap_update` times that work on its own stream
(`update_ms`: from its first kernel to its last, waits for SMs the step holds included).
"""
from __future__ import annotations

import contextlib
import statistics
import time

import torch

# A part entered inside one of these keeps counting as it (the estimator's training forward is lora_update).
ABSORBING = ("lora_update",)


class PartTimer:
    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.stack: list[str] = []
        self.base = "other"
        self.marks: list[tuple[str, object]] = []
        self.ended: list[list[tuple[str, object]]] = []  # each ended step's marks, read by `steps`
        self.updates: list[tuple[object, object]] = []  # (start, end) of each update, on its own stream

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _current(self) -> str:
        return self.stack[-1] if self.stack else self.base

    def _mark(self) -> None:
        """A transition: from now until the next mark, the current part runs."""
        self.marks.append((self._current(), self._now()))

    def push(self, part: str) -> None:
        if self.stack and self.stack[-1] in ABSORBING:
            part = self.stack[-1]
        self.stack.append(part)
        self._mark()

    def pop(self, base: str | None = None) -> None:
        """Leave the innermost part; `base` renames the time outside any wrapped call from now on (e.g.
        "backward" once the loss has returned)."""
        self.stack.pop()
        if base is not None:
            self.base = base
        self._mark()

    def begin(self) -> None:
        self.stack, self.base, self.marks = [], "other", []
        self._mark()

    def end(self) -> None:
        """Close the step begun last (its times are read later, without waiting for the GPU now)."""
        if not self.marks:
            return
        self._mark()
        self.ended.append(self.marks)
        self.marks = []

    def reset(self) -> None:
        """Forget every step, ended or open."""
        self.marks, self.ended, self.updates = [], [], []

    def drop_last(self) -> None:
        """Forget the last ended step (and its update)."""
        self.ended.pop()
        if len(self.updates) > len(self.ended):
            self.updates.pop()

    @property
    def steps(self) -> list[dict[str, float]]:
        """Each ended step's ms per part and in total (waits for the GPU once)."""
        if self.cuda and self.ended:
            torch.cuda.synchronize()
        steps = []
        for marks in self.ended:
            parts: dict[str, float] = {}
            for (part, start), (_, end) in zip(marks, marks[1:]):
                parts[part] = parts.get(part, 0.0) + self._elapsed(start, end)
            parts["total"] = sum(parts.values())
            steps.append(parts)
        return steps

    @contextlib.contextmanager
    def step(self):
        self.begin()
        yield
        self.end()

    def wrap(self, obj, name: str, part: str, after: str | None = None):
        """Wrap obj.name so its calls count as `part`; `after` renames the base once the call returns."""
        inner = getattr(obj, name)
        timer = self

        def timed(*args, **kwargs):
            timer.push(part)
            try:
                return inner(*args, **kwargs)
            finally:
                timer.pop(after)

        return _Patch(obj, name, timed)

    def wrap_update(self, updates):
        """Time the work `updates.run` (prior/update_stream.py) is given, on the stream it runs it on."""
        inner = updates.run
        timer = self

        def run(update, reads=()):
            def spanned():
                start = timer._now()
                out = update()
                timer.updates.append((start, timer._now()))
                return out

            return inner(spanned, reads)

        return _Patch(updates, "run", run)

    def _elapsed(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3

    def summary(self, skip: int = 0) -> dict:
        """Median over the steps after the first `skip` (warm-up) ones: ms per step and per part, and of the
        updates timed by `wrap_update` (one per step) after as many."""
        steps = self.steps[skip:]
        if not steps:
            return {}
        names = sorted({k for s in steps for k in s if k != "total"})
        out = {
            "ms_per_step": statistics.median(s["total"] for s in steps),
            "ms_per_step_all": [round(s["total"], 3) for s in steps],
            "breakdown_ms": {k: round(statistics.median(s.get(k, 0.0) for s in steps), 3) for k in names},
        }
        updates = [self._elapsed(a, b) for a, b in self.updates[skip:]]
        if updates:
            out["update_ms"] = round(statistics.median(updates), 3)
        return out


class _Patch:
    """An instance-attribute replacement, undone by `undo` (restores a shadowed instance attribute too)."""

    def __init__(self, obj, name: str, value):
        self.obj, self.name = obj, name
        self.had = name in getattr(obj, "__dict__", {})
        self.old = obj.__dict__.get(name) if self.had else None
        setattr(obj, name, value)

    def undo(self) -> None:
        if self.had:
            setattr(self.obj, self.name, self.old)
        else:
            delattr(self.obj, self.name)


@contextlib.contextmanager
def patched(patches: list):
    try:
        yield
    finally:
        for p in reversed(patches):
            p.undo()
