"""`prolific bench hashgrid`: the hash encoding alone, per implementation and point count.

The grid is the standard preset's (16 levels × 2 features, 2^19 table, resolutions 16 → 2048) unless --preset
names another; points are uniform in the unit cube. Timed: forward without gradients, forward + backward to the
table, forward + backward to table and points (ms, median of --steps after --warmup). `--layout rays` orders
the points as a render's samples come instead: ray by ray, one march step (√3/512 of the unit cube) apart, so
runs of consecutive points share coarse cells, the case the Triton backward merges before its atomics.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ..config import make_config
from ..errors import BadRequest
from ..field.hashgrid import make_hash_encoding, tcnn_available
from ..kernels import triton_available
from ..prior.speed import log
from . import common

GPU_POINTS = "1M,4M"
MODES = ("forward", "forward_backward_table", "forward_backward_table_points")
LAYOUTS = ("uniform", "rays")
SAMPLES_PER_RAY = 64  # the `rays` layout: a ray's stretch through the object, one march step apart
STEP = 3 ** 0.5 / 512  # the standard preset's march step in unit-cube coordinates (512 over the diagonal)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prolific bench hashgrid", description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", default=None,
                        help=f"comma-separated point counts, K/M suffixes allowed (default: {GPU_POINTS} on a "
                             "GPU, 64K on a CPU)")
    parser.add_argument("--impl", default=None,
                        help="comma-separated implementations: torch, triton, tcnn (default: all that run here)")
    parser.add_argument("--preset", default="standard", help="config preset whose hash grid is timed")
    parser.add_argument("--layout", choices=LAYOUTS, default="uniform",
                        help="uniform random points, or rays (ray by ray in march steps, as a render's samples)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder to write hashgrid.json into")
    return parser


def parse_points(text: str) -> list[int]:
    scale = {"K": 1 << 10, "M": 1 << 20}
    try:
        values = [int(v[:-1]) * scale[v[-1].upper()] if v[-1].upper() in scale else int(v)
                  for v in (s.strip() for s in text.split(",")) if v]
    except ValueError:
        raise BadRequest(f"--points must be comma-separated counts such as 1M,4M, got '{text}'.") from None
    if not values or min(values) < 1:
        raise BadRequest("--points must be positive counts.")
    return values


def default_impls(device: torch.device) -> list[str]:
    if device.type != "cuda":
        return ["torch"]
    return [name for name, ok in (("triton", triton_available()), ("torch", True), ("tcnn", tcnn_available()))
            if ok]


def bench_points(n: int, layout: str, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """n points [n,3] in the unit cube: uniform, or ray by ray (random rays from inside the cube, SAMPLES_PER_RAY
    samples each, clamped to the cube)."""
    if layout == "uniform":
        return torch.rand(n, 3, device=device, generator=generator)
    rays = -(-n // SAMPLES_PER_RAY)
    origin = torch.rand(rays, 1, 3, device=device, generator=generator)
    direction = torch.nn.functional.normalize(torch.randn(rays, 1, 3, device=device, generator=generator), dim=-1)
    steps = torch.arange(SAMPLES_PER_RAY, device=device, dtype=torch.float32)[:, None] * STEP
    return (origin + direction * steps).reshape(-1, 3)[:n].clamp(0.0, 1.0).contiguous()


def time_ms(fn, device: torch.device, steps: int, warmup: int) -> float:
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 3)


def measure(impl: str, gcfg, device: torch.device, points: list[int], args) -> dict:
    torch.manual_seed(args.seed)
    grid = make_hash_encoding(gcfg.hash_levels, gcfg.hash_features, gcfg.hash_log2_size, gcfg.hash_base_res,
                              gcfg.hash_max_res, device=device, impl=impl)
    out = {"impl": impl, "points": {}}
    for n in points:
        common.free_memory(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        x = bench_points(n, args.layout, torch.Generator(device).manual_seed(args.seed), device)
        g = torch.randn(n, grid.out_dim, device=device)
        xg = x.clone().requires_grad_()

        def forward():
            with torch.no_grad():
                grid(x)

        def table():
            grid.zero_grad(set_to_none=True)
            grid(x).backward(g)

        def table_points():
            grid.zero_grad(set_to_none=True)
            xg.grad = None
            grid(xg).backward(g)

        try:
            entry = {mode: time_ms(fn, device, args.steps, args.warmup)
                     for mode, fn in zip(MODES, (forward, table, table_points))}
        except Exception as err:  # noqa: BLE001 - report it and go on
            entry = common.record_failure({}, err, device)
        entry.update(common.memory_block(device))
        out["points"][str(n)] = entry
        log(f"bench hashgrid [{impl}] {n} points: " + ", ".join(f"{k}={v}" for k, v in entry.items()))
    return out


def run(argv: list[str]) -> dict:
    args = build_parser().parse_args(argv)
    device = common.resolve_device(args.device)
    gcfg = make_config("a bench object", args.preset, {"device": str(device)}).hash_grid
    points = parse_points(args.points or (GPU_POINTS if device.type == "cuda" else "64K"))
    impls = [s.strip() for s in args.impl.split(",") if s.strip()] if args.impl else default_impls(device)
    result = {"bench": "hashgrid", **common.environment(device), "preset": args.preset,
              "layout": args.layout, "grid": {"levels": gcfg.hash_levels, "features": gcfg.hash_features, "log2_size": gcfg.hash_log2_size,
                       "base_res": gcfg.hash_base_res, "max_res": gcfg.hash_max_res},
              "steps": args.steps, "warmup": args.warmup, "results": []}
    for impl in impls:
        result["results"].append(measure(impl, gcfg, device, points, args))
    common.emit(result, args.out / "hashgrid.json" if args.out is not None else None)
    return result
