"""Progress events of a job: stage, step, ETA over the whole job, latest preview; warnings; cancellation checks.

The stages call `Reporter.step` once per optimisation step; the reporter decides when an event is worth sending
(a few per second at most, plus every stage's first and last step) and hands it to a sink: the CLI's progress
bar or the server's protocol writer. Warnings (`JobWarning`) go to the same sink at once.
"""
from __future__ import annotations

import dataclasses
import math
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
    eta_s: float | None  # seconds left for the whole job; None until a step time has been measured (2 steps)
    preview: str | None = None  # newest preview PNG not yet reported

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class JobWarning:
    code: str  # e.g. unknown_words, nothing_to_resume
    message: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


Sink = Callable[[Progress | JobWarning], None]


@dataclass(frozen=True)
class Phase:
    """Steps [start, end) of one stage that cost about the same each: a stage, or the part of stage 1 at one
    rendering resolution. `resolution` is the side of the images a step renders."""
    stage: str
    start: int
    end: int
    resolution: int


# Step cost of a stage relative to a NeRF step at the same rendering resolution, for stages not yet started
# (a started one is priced at its own measured step time): rough geometric means of the H100/H200 figures at
# 512 px (NeRF 1294 ms, geometry 65 ms, texture 290 ms) and the demo preset on a 2-core CPU at 64 px (NeRF
# 1.02 s, geometry ~0.25x, texture 60 steps and the export 47 s, issue 10). The export counts as one step.
STAGE_COST = {"nerf": 1.0, "geometry": 0.1, "texture": 0.35, "export": 10.0}
# A step's time grows slower than its pixel count, since the prior's part is fixed: NeRF 64 -> 512 px took 4.5x
# on the H200 (288 -> 1294 ms), 32 -> 64 px 1.85x on a 2-core CPU (0.55 -> 1.02 s); side^0.8 gives 5.3x, 1.74x.
RESOLUTION_EXPONENT = 0.8


class StepTimes:
    """Seconds per step of each phase: measured, leaving out a phase's first step (it includes the set-up:
    allocations, CUDA graph capture, the LoRA), else predicted from the measured phases (of the same stage when
    there are any) through STAGE_COST and RESOLUTION_EXPONENT."""

    smoothing = 0.05  # EMA weight once past the first samples: about the last 20 steps

    def __init__(self, phases: list[Phase]):
        self.phases = phases
        self.started: set[Phase] = set()
        self.samples: dict[Phase, list] = {}  # phase -> [count, seconds per step]
        self.count = 0  # measured steps of the whole job

    def phase_of(self, stage: str, step: int) -> Phase | None:
        """The phase holding `step` (the step just finished: steps are counted from 1 as they end)."""
        inside = [p for p in self.phases if p.stage == stage and p.start < step <= p.end]
        return inside[0] if inside else None

    def measure(self, phase: Phase, seconds_per_step: float) -> None:
        if phase not in self.started:
            self.started.add(phase)
            return
        count, estimate = self.samples.get(phase, (0, seconds_per_step))
        count += 1
        weight = max(self.smoothing, 1.0 / count)  # a plain mean at first, then an EMA that follows drift
        self.samples[phase] = [count, (1 - weight) * estimate + weight * seconds_per_step]
        self.count += 1

    @staticmethod
    def cost(phase: Phase) -> float:
        return STAGE_COST[phase.stage] * max(phase.resolution, 1) ** RESOLUTION_EXPONENT

    def seconds_per_step(self, phase: Phase) -> float | None:
        if phase in self.samples:
            return self.samples[phase][1]
        measured = [q for q in self.samples if q.stage == phase.stage] or list(self.samples)
        if not measured:
            return None
        # Each measured phase's seconds per unit of cost, one vote each: one stage that the table prices wrongly
        # (or that a busy machine slowed down) moves the prediction only part of the way.
        unit = sum(self.samples[q][1] / self.cost(q) for q in measured) / len(measured)
        return unit * self.cost(phase)

    def remaining_s(self, stage: str, step: int) -> float | None:
        """Seconds left after `stage` has finished `step`: its remaining steps and all of every later stage."""
        order = [p.stage for p in self.phases]
        if stage not in order:
            return None
        total = 0.0
        for p in self.phases:
            if order.index(p.stage) < order.index(stage):
                continue
            left = p.end - max(p.start, step) if p.stage == stage else p.end - p.start
            if left <= 0:
                continue
            per_step = self.seconds_per_step(p)
            if per_step is None:
                return None
            total += left * per_step
        return total


class Reporter:
    """Turns per-step calls into throttled `Progress` events and raises `Cancelled` once `cancel` is set.

    `phases` lists what the job runs, in order, so the ETA covers the remaining steps of the current stage and
    of every later one (StepTimes). The shown ETA counts down with the clock and moves toward the estimate with
    a time constant of a tenth of the estimate (at least `settle_s`), so step-time noise, a stage priced wrongly
    before it started and a stage's first measured steps do not make it jump back and forth.
    """

    min_interval_s = 0.25  # between events, except a stage's first and last step
    settle_s = 10.0

    def __init__(self, sink: Sink | None = None, cancel: threading.Event | None = None,
                 phases: list[Phase] | None = None, min_interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.sink = sink
        self.cancel = cancel or threading.Event()
        self.times = StepTimes(list(phases or []))
        if min_interval_s is not None:
            self.min_interval_s = min_interval_s
        self.clock = clock
        self.last: tuple[str, int, int] | None = None  # stage, step, total of the latest call
        self._last_at = 0.0
        self._last_emit = -float("inf")
        self._pending_preview: str | None = None
        self._shown: tuple[float, float] | None = None  # shown ETA and when

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            if self.last is None:
                raise Cancelled("Cancelled before the first step.")
            stage, step, total = self.last
            raise Cancelled(f"Cancelled after {stage} step {step} of {total}.", stage, step, total)

    def warn(self, code: str, message: str) -> None:
        if self.sink is not None:
            self.sink(JobWarning(code, message))

    def step(self, stage: str, step: int, total: int, preview: Path | str | None = None) -> None:
        """Record that `stage` has finished `step` of `total` steps (and maybe saved a preview); raises Cancelled
        naming this step when the job was cancelled."""
        now = self.clock()
        first_of_stage = self.last is None or self.last[0] != stage
        if not first_of_stage and step > self.last[1]:
            phase = self.times.phase_of(stage, step)
            if phase is not None:
                self.times.measure(phase, (now - self._last_at) / (step - self.last[1]))
        self.last, self._last_at = (stage, step, total), now
        self.check_cancel()
        if preview is not None:
            self._pending_preview = str(preview)
        eta = self._smoothed_eta(self.times.remaining_s(stage, step), now)
        if first_of_stage or step >= total or now - self._last_emit >= self.min_interval_s:
            self._emit(Progress(stage, step, total, eta, self._pending_preview), now)

    def _smoothed_eta(self, estimate: float | None, now: float) -> float | None:
        if estimate is None:
            return None
        # Over the job's first steps the estimate itself is still a mean of few samples: follow it closely.
        settle = max(self.settle_s, 0.1 * estimate) * min(1.0, self.times.count / 20)
        if self._shown is None or estimate == 0.0 or settle == 0.0:
            shown = estimate
        else:
            previous, at = self._shown
            countdown = max(previous - (now - at), 0.0)
            shown = countdown + (1.0 - math.exp(-(now - at) / settle)) * (estimate - countdown)
        self._shown = (shown, now)
        return round(shown, 1)

    def _emit(self, event: Progress, now: float) -> None:
        self._last_emit = now
        self._pending_preview = None
        if self.sink is not None:
            self.sink(event)
