"""Captured diffusion work: one `torch.cuda.CUDAGraph` per static input signature, replayed; eager otherwise.

The eager SD-sized UNet is launch-bound (issue 12: a LoRA training step 177.6 ms eager, 30.3 ms replayed). A
`GraphedCall` wraps a function of tensors (plus constants): on CUDA the first WARMUP calls of a signature (the
tensors' shapes and dtypes, the constants' values) run eagerly on the capture stream (lazy initialisation: cuBLAS
workspaces, the optimizer's state), the next one captures the function on static copies of its inputs, and
every call from then on copies its inputs into those buffers and replays. `GraphedEncoder` does the same for a
differentiable function through `torch.cuda.make_graphed_callables` (a forward and a backward graph).

A replay launches the kernels the eager call launched, on the same inputs, so it computes the same numbers.
Random numbers are drawn by the caller from the job's generator before the call and passed in as inputs, so a
run stays reproducible from its seed and resumable from a checkpoint. When capture is impossible (no CUDA
device, an op that cannot be captured, too little memory) the function runs eagerly from then on, and the
`Captures` that made it says so once through `say`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

# Eager calls of a new signature before it is captured: the first initialises lazily created state (the
# optimizer's moments, cuBLAS handles), the second runs on it as every replay will (PyTorch's CUDA-graph notes
# warm up on the capture stream for the same reason).
WARMUP = 2


def _error_text(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"[:300]


class Captures:
    """The graphs of one estimator: one capture stream, the time spent capturing, one fallback message."""

    def __init__(self, device: torch.device | str, say: Callable[[str], None]):
        self.device = torch.device(device)
        self.say = say
        self.capture_s = 0.0
        self.eager_reason: str | None = None
        self.made: list = []  # the GraphedCalls and GraphedEncoders made here
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        if self.stream is None:
            self.fall_back("CUDA graphs need a CUDA device")

    @property
    def enabled(self) -> bool:
        return self.eager_reason is None

    def fall_back(self, why: str) -> None:
        """Everything made here runs eagerly from now on (their graphs are released); `say` hears why, once."""
        self.release()
        if self.eager_reason is None:
            self.eager_reason = why
            self.say(f"{why}: the diffusion work runs eagerly (same results, slower).")

    def release(self) -> None:
        """Drop every captured graph (and the memory pools they hold)."""
        for made in self.made:
            made.graphs.clear()

    def call(self, name: str, fn: Callable) -> "GraphedCall":
        self.made.append(GraphedCall(self, name, fn))
        return self.made[-1]

    def encoder(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> "GraphedEncoder":
        self.made.append(GraphedEncoder(self, name, fn))
        return self.made[-1]

    def timed_capture(self, capture: Callable[[], object]) -> object:
        torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        out = capture()
        torch.cuda.synchronize(self.device)
        self.capture_s += time.perf_counter() - start
        return out


@dataclass
class _Graph:
    seen: int = 0
    graph: torch.cuda.CUDAGraph | None = None
    single: bool = False  # fn returned one tensor, not a tuple
    inputs: list = field(default_factory=list)
    outputs: tuple = ()


def _signature(args) -> tuple:
    return tuple((tuple(a.shape), a.dtype, a.device) if torch.is_tensor(a) else ("const", a) for a in args)


class GraphedCall:
    """fn(*args) → a tensor or a tuple of tensors, captured per signature of `args` (see the module's text).
    Returns fresh tensors (copies of the graph's static outputs), so a result outlives the next replay."""

    def __init__(self, captures: Captures, name: str, fn: Callable):
        self.captures, self.name, self.fn = captures, name, fn
        self.graphs: dict[tuple, _Graph] = {}

    def __call__(self, *args):
        cap = self.captures
        if not cap.enabled:
            return self.fn(*args)
        entry = self.graphs.setdefault(_signature(args), _Graph())
        if entry.graph is None:
            if entry.seen < WARMUP:
                entry.seen += 1
                return self._on_capture_stream(args)
            try:
                cap.timed_capture(lambda: self._capture(entry, args))
            except Exception as err:  # noqa: BLE001 - any capture failure means: run eagerly
                cap.fall_back(f"Capturing {self.name} in a CUDA graph failed ({_error_text(err)})")
                return self.fn(*args)
        for static, arg in zip(entry.inputs, args):
            if torch.is_tensor(arg):
                static.copy_(arg)
        entry.graph.replay()
        outputs = tuple(o.clone() for o in entry.outputs)
        return outputs[0] if entry.single else outputs

    def _on_capture_stream(self, args):
        stream = self.captures.stream
        stream.wait_stream(torch.cuda.current_stream(self.captures.device))
        with torch.cuda.stream(stream):
            out = self.fn(*args)
        torch.cuda.current_stream(self.captures.device).wait_stream(stream)
        return out

    def _capture(self, entry: _Graph, args) -> None:
        static = [a.clone() if torch.is_tensor(a) else a for a in args]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.captures.stream):
            out = self.fn(*static)
        entry.single = torch.is_tensor(out)
        entry.outputs = (out,) if torch.is_tensor(out) else tuple(out)
        entry.inputs, entry.graph = static, graph


class GraphedEncoder:
    """A differentiable fn(x) → y captured per shape of x as a forward and a backward graph
    (`torch.cuda.make_graphed_callables`); inputs that do not require grad run eagerly (nothing to capture
    a backward of, and such calls are previews and tests, not steps)."""

    def __init__(self, captures: Captures, name: str, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.captures, self.name, self.fn = captures, name, fn
        self.graphs: dict[tuple, Callable] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        cap = self.captures
        if not cap.enabled or not x.requires_grad or not torch.is_grad_enabled():
            return self.fn(x)
        key = (tuple(x.shape), x.dtype)
        graphed = self.graphs.get(key)
        if graphed is None:
            sample = x.detach().clone().requires_grad_(True)
            try:
                graphed = cap.timed_capture(lambda: torch.cuda.make_graphed_callables(
                    self.fn, (sample,), num_warmup_iters=WARMUP))
            except Exception as err:  # noqa: BLE001 - any capture failure means: run eagerly
                cap.fall_back(f"Capturing {self.name} in a CUDA graph failed ({_error_text(err)})")
                return self.fn(x)
            self.graphs[key] = graphed
        return graphed(x).clone()  # the graph's static output is overwritten by the next replay
