"""Where the estimator's update runs: inline, or on its own CUDA stream beside the particles' next step
(`prior.speed=overlap`; `ScoreDistillation` picks one when it is built), and with `priority` the particles' work
on a stream that CUDA serves first (`ahead_of_updates`).

VSD alternates a particle step, which reads ε_φ, and an estimator step, which trains ε_φ on that step's renders.
Nothing of what follows the estimator step up to the next ε_φ call (the backward through the renders, the fields'
optimizers, the next render and encode) reads what it writes, so on a side stream its kernels run while the main
stream does that work, and the main stream waits for them (`wait`) only where the estimator is used next: before
the UNet runs, before its state is read or written (checkpoints) and before it is released. The same kernels run
on the same inputs either way, so the numbers are the same (tests/test_graphs.py compares them on a GPU).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterable

import torch

# Stream priorities: 0 is PyTorch's default and the lowest; lower numbers are served first.
UPDATE_PRIORITY = 0
AHEAD_PRIORITY = -1


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
        self.stream = torch.cuda.Stream(self.device, priority=UPDATE_PRIORITY)
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


@functools.cache
def _ahead_stream(device: torch.device) -> torch.cuda.Stream:
    """One per device for the process: the caching allocator keeps freed memory per stream, so every job
    reuses what the ones before it left on this stream."""
    return torch.cuda.Stream(device, priority=AHEAD_PRIORITY)


@contextlib.contextmanager
def ahead_of_updates(device: torch.device):
    """While inside, the current stream of CUDA `device` is one of higher priority than the update's: where both
    have thread blocks waiting, the GPU starts the particles' first, so the update's kernels fill the SMs the
    particles' step leaves idle (its small NeRF kernels, the gaps where the host waits for a sample count)
    instead of holding them while the next render waits. Work queued before entering runs before the stream's,
    and the previous stream waits for the stream's work on exit. Yields the stream."""
    device = torch.device(device)
    if device.index is None:  # "cuda" and "cuda:0" share one stream
        device = torch.device("cuda", torch.cuda.current_device())
    before = torch.cuda.current_stream(device)
    ahead = _ahead_stream(device)
    ahead.wait_stream(before)
    try:
        with torch.cuda.stream(ahead):
            yield ahead
    finally:
        before.wait_stream(ahead)
