"""Where the estimator's update runs: inline, or on its own CUDA stream beside the particles' next step
(`prior.speed=overlap`; `ScoreDistillation` picks one when it is built).

VSD alternates a particle step, which reads ε_φ, and an estimator step, which trains ε_φ on that step's renders.
Nothing of what follows the estimator step up to the next ε_φ call (the backward through the renders, the fields'
optimizers, the next render and encode) reads what it writes, so on a side stream its kernels run while the main
stream does that work, and the main stream waits for them (`wait`) only where the estimator is used next: before
the UNet runs, before its state is read or written (checkpoints) and before it is released. The same kernels run
on the same inputs either way, so the numbers are the same (tests/test_graphs.py compares them on a GPU).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch


class InlineUpdates:
    """The update runs where it is called, on the current stream (and on the CPU)."""

    name = "inline"

    def run(self, update: Callable[[], torch.Tensor], reads: Iterable[torch.Tensor] = ()) -> torch.Tensor:
        return update()

    def wait(self) -> None:
        """Nothing is in flight."""


class SideStreamUpdates:
    """The update runs on a stream of its own, after the work queued so far on the current one."""

    name = "side stream"

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)
        self.done: torch.cuda.Event | None = None

    def run(self, update: Callable[[], torch.Tensor], reads: Iterable[torch.Tensor] = ()) -> torch.Tensor:
        """update() on the side stream; `reads` are the tensors of the current stream's that it reads (the
        allocator must not hand their memory out again before the side stream is done with them). Its result
        may be read once `wait` has run."""
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        for tensor in reads:
            tensor.record_stream(self.stream)
        with torch.cuda.stream(self.stream):
            out = update()
        self.done = torch.cuda.Event()
        self.done.record(self.stream)
        return out

    def wait(self) -> None:
        """Make the current stream wait for the update in flight (the host does not wait)."""
        if self.done is not None:
            torch.cuda.current_stream(self.device).wait_event(self.done)
            self.done = None


def make_updates(overlap: bool, device: torch.device) -> InlineUpdates | SideStreamUpdates:
    """A side stream where asked for on CUDA, else inline."""
    if overlap and torch.device(device).type == "cuda":
        return SideStreamUpdates(device)
    return InlineUpdates()
