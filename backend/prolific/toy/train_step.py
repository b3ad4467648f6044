"""One optimisation step of the toy prior (forward, loss, backward, clipping, AdamW), eager or from a CUDA graph.

The toy UNet is small, so an eager step is bound by kernel launches, not by arithmetic; `GraphedStep` records the
whole step once into a `torch.cuda.CUDAGraph` and replays it. Both take the same inputs (drawn by the caller from
the job's generator, outside the graph, so a run stays reproducible) and compute the same function; a GPU test
compares them. `make_step` picks one when training starts.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

MAX_GRAD_NORM = 1.0
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture (lazy state such as Adam's moments exists then)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW whose learning rate is a tensor on CUDA, so a captured step reads the scheduled value at replay."""
    if device.type == "cuda":
        return torch.optim.AdamW(params, lr=torch.tensor(lr, device=device), betas=(0.9, 0.99), weight_decay=0.01,
                                 capturable=True, foreach=True)
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


class EagerStep:
    """`step(x_t, t, ids, target) -> loss`: the plain PyTorch step."""

    name = "eager"

    def __init__(self, loss_fn: Callable[..., torch.Tensor], params: list[torch.nn.Parameter],
                 optimizer: torch.optim.Optimizer):
        self.loss_fn, self.params, self.optimizer = loss_fn, params, optimizer

    def _run(self, x_t, t, ids, target) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(x_t, t, ids, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.optimizer.step()
        return loss.detach()

    def __call__(self, x_t, t, ids, target) -> torch.Tensor:
        return self._run(x_t, t, ids, target)


class GraphedStep(EagerStep):
    """The same step captured once into a CUDA graph and replayed; inputs are copied into static buffers.

    Shapes must stay fixed (one batch size). If capturing fails, the step says so once through `log` and
    keeps running eagerly."""

    name = "cuda-graph"

    def __init__(self, loss_fn, params, optimizer, log: Callable[[str], None] = print):
        super().__init__(loss_fn, params, optimizer)
        self.log = log
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False
        self.static: tuple[torch.Tensor, ...] | None = None
        self.static_loss: torch.Tensor | None = None
        self.capture_seconds: float | None = None

    def __call__(self, x_t, t, ids, target) -> torch.Tensor:
        self.calls += 1
        if self.failed:
            return self._run(x_t, t, ids, target)
        if self.calls <= GRAPH_WARMUP_STEPS:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self._run(x_t, t, ids, target)
            torch.cuda.current_stream().wait_stream(side)
            return loss
        if self.graph is None and not self._capture(x_t, t, ids, target):
            return self._run(x_t, t, ids, target)
        for buffer, value in zip(self.static, (x_t, t, ids, target)):
            buffer.copy_(value)
        self.graph.replay()
        return self.static_loss.clone()

    def _capture(self, x_t, t, ids, target) -> bool:
        start = time.perf_counter()
        self.static = tuple(v.clone() for v in (x_t, t, ids, target))
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                self.static_loss = self._graph_body(*self.static)
        except Exception as err:  # noqa: BLE001 - an op that cannot be captured: train eagerly instead
            self.failed = True
            self.static = self.static_loss = None
            self.optimizer.zero_grad(set_to_none=True)
            self.log(f"CUDA graph capture failed ({type(err).__name__}: {err}); training eagerly")
            return False
        torch.cuda.synchronize()
        self.graph = graph
        self.capture_seconds = time.perf_counter() - start
        self.log(f"training step captured in a CUDA graph in {self.capture_seconds:.2f} s")
        return True

    def _graph_body(self, x_t, t, ids, target) -> torch.Tensor:
        # Grads start as None, so backward allocates them in the graph's pool and every replay overwrites them.
        loss = self.loss_fn(x_t, t, ids, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.optimizer.step()
        return loss.detach()


def make_step(kind: str, loss_fn, params, optimizer, device: torch.device, log=print) -> EagerStep:
    """`kind`: "graph" (a CUDA graph where the device is CUDA, else eager) or "eager"."""
    if kind == "graph" and device.type == "cuda":
        return GraphedStep(loss_fn, params, optimizer, log)
    return EagerStep(loss_fn, params, optimizer)
