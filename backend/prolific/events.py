"""Progress events of a job: stage, step, ETA over the whole job, latest preview; cancellation checks.

The stages call `Reporter.step` once per optimisation step; the reporter decides when an event is worth sending
(a few per second at most, plus every stage's first and last step) and hands it to a sink: the CLI's progress
bar or the server's protocol writer.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import Cancelled


@dataclass
class Progress:
    stage: str
    step: int
    total: int
    eta_s: float | None  # seconds left for the whole job; None until a step time has been measured
    preview: str | None = None  # newest preview PNG not yet reported

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


Sink = Callable[[Progress], None]


class Reporter:
    """Turns per-step calls into throttled `Progress` events and raises `Cancelled` once `cancel` is set.

    `totals` maps each stage the job runs, in order, to its step count, so the ETA covers the remaining steps of
    the current stage and of every later one, priced at a moving average of the measured step times.
    """

    min_interval_s = 0.25  # between events, except a stage's first and last step

    def __init__(self, sink: Sink | None = None, cancel: threading.Event | None = None,
                 totals: dict[str, int] | None = None, min_interval_s: float | None = None, smoothing: float = 0.1,
                 clock: Callable[[], float] = time.monotonic):
        self.sink = sink
        self.cancel = cancel or threading.Event()
        self.totals = dict(totals or {})
        if min_interval_s is not None:
            self.min_interval_s = min_interval_s
        self.smoothing = smoothing
        self.clock = clock
        self.step_time_s: float | None = None
        self._samples = 0
        self._last: tuple[str, int, float] | None = None  # stage, step, time of the previous call
        self._last_emit = -float("inf")
        self._pending_preview: str | None = None

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("The job was cancelled.")

    def step(self, stage: str, step: int, total: int, preview: Path | str | None = None) -> None:
        """Record that `stage` has finished `step` of `total` steps (and maybe saved a preview)."""
        self.check_cancel()
        now = self.clock()
        first_of_stage = self._last is None or self._last[0] != stage
        if not first_of_stage and step > self._last[1]:
            self._measure((now - self._last[2]) / (step - self._last[1]))
        self._last = (stage, step, now)
        if preview is not None:
            self._pending_preview = str(preview)
        if first_of_stage or step >= total or now - self._last_emit >= self.min_interval_s:
            self._emit(Progress(stage, step, total, self.eta_s(stage, step, total), self._pending_preview), now)

    def _measure(self, seconds_per_step: float) -> None:
        # A plain mean for the first samples (no start-up bias), an exponential moving average afterwards so the
        # estimate follows changes such as the switch to a higher rendering resolution.
        self._samples += 1
        weight = max(self.smoothing, 1.0 / self._samples)
        prev = self.step_time_s if self.step_time_s is not None else seconds_per_step
        self.step_time_s = (1 - weight) * prev + weight * seconds_per_step

    def remaining_steps(self, stage: str, step: int, total: int) -> int:
        remaining = max(total - step, 0)
        stages = list(self.totals)
        if stage in stages:
            remaining += sum(self.totals[s] for s in stages[stages.index(stage) + 1:])
        return remaining

    def eta_s(self, stage: str, step: int, total: int) -> float | None:
        if self.step_time_s is None:
            return None
        return round(self.step_time_s * self.remaining_steps(stage, step, total), 1)

    def _emit(self, event: Progress, now: float) -> None:
        self._last_emit = now
        self._pending_preview = None
        if self.sink is not None:
            self.sink(event)
