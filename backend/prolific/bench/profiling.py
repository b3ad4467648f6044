"""Where a step's GPU time goes (`prolific bench stage1 --profile`): a few more steps under torch.profiler, read back
from its trace as the GPU's busy time (the union of every stream's kernels) against the wall, each stream's
kernel time, kernel time by kind and the longest kernels, all per step. The side stream's share of the busy time
that no other stream covers tells how much of the estimator's update overlaps the particles' step.
"""
from __future__ import annotations

import json
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch

PROFILED_STEPS = 3
TOP_KERNELS = 15

# Kernel names by what they do, first match wins (our Triton kernels by their function names).
KINDS = (
    ("hash grid", r"^_hashgrid"), ("fused MLP", r"^_mlp_"), ("march / composite", r"^_walk|^_composite"),
    ("group norm", r"^_gn_"), ("lora", r"^_down|^_up|^_bwd_h|^_bwd_x"), ("geglu", r"^_geglu"),
    ("layout conversion", r"nchwToNhwc|nhwcToNchw"), ("gather / index", r"gather|index|scatter"),
    ("attention", r"sdpa|flash|fmha|attention"),
    ("conv / gemm", r"gemm|xmma|cutlass|conv|wgmma|sm90|splitK|cublas|nvjet"), ("adam", r"adam|Adam|multi_tensor"),
    ("reduce / scan", r"reduce|scan|cumsum|Reduce"), ("copy", r"direct_copy|copy_kernel"),
    ("elementwise", r"elementwise|Functor"),
)


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, name)), "other")


def _union_us(spans: list[tuple[float, float]]) -> float:
    busy, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    return busy


def kernel_summary(events: list[dict], steps: int, wall_ms: float) -> dict:
    """The profile block of `steps` steps from a Chrome trace's events (`cat` "kernel": `ts`, `dur` in µs,
    args.stream) and their wall time: ms per step."""
    kernels = [e for e in events if e.get("cat") == "kernel"]
    per_step = 1e-3 / steps
    by_stream: dict = defaultdict(list)
    kinds: dict = defaultdict(float)
    named: dict = defaultdict(lambda: [0.0, 0])
    for e in kernels:
        span = (e["ts"], e["ts"] + e["dur"])
        by_stream[str(e.get("args", {}).get("stream", "?"))].append(span)
        kinds[kind_of(e["name"])] += e["dur"]
        named[e["name"]][0] += e["dur"]
        named[e["name"]][1] += 1
    everything = [span for spans in by_stream.values() for span in spans]
    busy = _union_us(everything)
    # Busy time only this stream covers: what the GPU would lose if it ran nothing else meanwhile.
    alone = {s: busy - _union_us([span for other, spans in by_stream.items() if other != s for span in spans])
             for s in by_stream}
    top = sorted(named.items(), key=lambda kv: -kv[1][0])[:TOP_KERNELS]
    return {
        "steps": steps,
        "wall_ms": round(wall_ms / steps, 3),
        "gpu_busy_ms": round(busy * per_step, 3),
        "kernel_ms": round(sum(e["dur"] for e in kernels) * per_step, 3),
        "streams": {s: {"kernel_ms": round(sum(b - a for a, b in spans) * per_step, 3),
                        "alone_ms": round(alone[s] * per_step, 3)} for s, spans in by_stream.items()},
        "kinds_ms": {k: round(v * per_step, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": name[:120], "ms": round(t * per_step, 3), "calls": round(n / steps, 2)}
                        for name, (t, n) in top],
    }


def profile_steps(step: Callable[[], None], device: torch.device, steps: int = PROFILED_STEPS) -> dict:
    """Run step() `steps` times under torch.profiler and summarise the GPU's kernels (`kernel_summary`)."""
    if torch.device(device).type != "cuda":
        return {"skipped": "needs CUDA: the profile reads the GPU's kernels"}
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        wall_ms = (time.perf_counter() - start) * 1e3
    with tempfile.TemporaryDirectory(prefix="prolific-profile-") as folder:
        trace = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    return kernel_summary(events, steps, wall_ms)
