"""`prolific bench hashgrid`: the hash encoding alone, per implementation and point count.

The grid is the standard preset's (16 levels × 2 features, 2^19 table, resolutions 16 → 2048) unless --preset
names another; points are uniform in the unit cube. Timed: forward without gradients, forward + backward to the
table, forward + backward to table and points (ms, median of --steps after --warmup). `--layout rays` orders
the points as a render's samples come instead: ray by ray, one march step (√3/512 of the unit cube) apart
(`--samples-per-ray` of them: a 512 px render of an opaque object keeps ~9 per ray), so runs of consecutive
points share coarse cells, the case the Triton backward merges before its atomics; `--merge-max-res` times the
Triton grid once per choice of the finest level resolution that merges, `--pair-rows off,on` with and without
its backward adding aligned pairs of rows as one atomic (each with each).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ..config import make_config
from ..errors import BadRequest
from ..field.hashgrid import MERGE_MAX_RES, PAIR_ROWS, make_hash_encoding, tcnn_available
from ..kernels import triton_available
from ..prior.speed import log
from . import common

GPU_POINTS = "1M,4M"
MODES = ("forward", "forward_backward_table", "forward_backward_table_points")
LAYOUTS = ("uniform", "rays")
SAMPLES_PER_RAY = 64  # the `rays` layout's default: a ray's stretch through the object, one march step apart
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
    parser.add_argument("--samples-per-ray", type=int, default=SAMPLES_PER_RAY,
                        help=f"consecutive samples of a ray in the rays layout (default {SAMPLES_PER_RAY})")
    parser.add_argument("--merge-max-res", default=None, metavar="R,R,...",
                        help="time the triton grid once per value: the finest level resolution whose backward "
                             f"merges runs of points in one cell (default: the grid's, {MERGE_MAX_RES}; 0 merges none)")
    parser.add_argument("--pair-rows", default=None, metavar="off,on",
                        help="time the triton grid once per value: whether its backward adds aligned pairs of rows "
                             f"as one atomic (default: the grid's, {'on' if PAIR_ROWS else 'off'})")
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


def parse_merges(text: str | None, impls: list[str]) -> list[int | None]:
    """--merge-max-res as a list of resolutions (None: the grid's own), refused without the triton grid."""
    if text is None:
        return [None]
    if "triton" not in impls:
        raise BadRequest("--merge-max-res is a setting of the triton hash grid: add triton to --impl.")
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadRequest(f"--merge-max-res must be comma-separated resolutions such as 0,160,512, got '{text}'.") from None
    if not values or min(values) < 0:
        raise BadRequest("--merge-max-res must be resolutions of 0 or more.")
    return values


def parse_pairs(text: str | None, impls: list[str]) -> list[bool | None]:
    """--pair-rows as a list of on/off (None: the grid's own), refused without the triton grid."""
    if text is None:
        return [None]
    if "triton" not in impls:
        raise BadRequest("--pair-rows is a setting of the triton hash grid: add triton to --impl.")
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("off", "on") for v in values):
        raise BadRequest(f"--pair-rows must be off, on or off,on, got '{text}'.")
    return [v == "on" for v in values]


def default_impls(device: torch.device) -> list[str]:
    if device.type != "cuda":
        return ["torch"]
    return [name for name, ok in (("triton", triton_available()), ("torch", True), ("tcnn", tcnn_available()))
            if ok]


def bench_points(n: int, layout: str, generator: torch.Generator, device: torch.device,
                 samples_per_ray: int = SAMPLES_PER_RAY) -> torch.Tensor:
    """n points [n,3] in the unit cube: uniform, or ray by ray (random rays from inside the cube, samples_per_ray
    samples each, clamped to the cube)."""
    if layout == "uniform":
        return torch.rand(n, 3, device=device, generator=generator)
    rays = -(-n // samples_per_ray)
    origin = torch.rand(rays, 1, 3, device=device, generator=generator)
    direction = torch.nn.functional.normalize(torch.randn(rays, 1, 3, device=device, generator=generator), dim=-1)
    steps = torch.arange(samples_per_ray, device=device, dtype=torch.float32)[:, None] * STEP
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


def measure(impl: str, gcfg, device: torch.device, points: list[int], args, merge_max_res: int | None = None,
            pair_rows: bool | None = None) -> dict:
    torch.manual_seed(args.seed)
    grid = make_hash_encoding(gcfg.hash_levels, gcfg.hash_features, gcfg.hash_log2_size, gcfg.hash_base_res,
                              gcfg.hash_max_res, device=device, impl=impl,
                              merge_max_res=MERGE_MAX_RES if merge_max_res is None else merge_max_res,
                              pair_rows=PAIR_ROWS if pair_rows is None else pair_rows)
    out = {"impl": impl, "points": {}}
    label = impl
    if merge_max_res is not None:
        out["merge_max_res"] = merge_max_res
        label += f", merge up to {merge_max_res}"
    if pair_rows is not None:
        out["pair_rows"] = pair_rows
        label += f", pairs {'on' if pair_rows else 'off'}"
    for n in points:
        common.free_memory(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        x = bench_points(n, args.layout, torch.Generator(device).manual_seed(args.seed), device, args.samples_per_ray)
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
        log(f"bench hashgrid [{label}] {n} points: " + ", ".join(f"{k}={v}" for k, v in entry.items()))
    return out


def run(argv: list[str]) -> dict:
    args = build_parser().parse_args(argv)
    device = common.resolve_device(args.device)
    gcfg = make_config("a bench object", args.preset, {"device": str(device)}).hash_grid
    points = parse_points(args.points or (GPU_POINTS if device.type == "cuda" else "64K"))
    impls = [s.strip() for s in args.impl.split(",") if s.strip()] if args.impl else default_impls(device)
    merges = parse_merges(args.merge_max_res, impls)
    pairs = parse_pairs(args.pair_rows, impls)
    if args.samples_per_ray < 1:
        raise BadRequest("--samples-per-ray must be at least 1.")
    result = {"bench": "hashgrid", **common.environment(device), "preset": args.preset, "layout": args.layout,
              "grid": {"levels": gcfg.hash_levels, "features": gcfg.hash_features, "log2_size": gcfg.hash_log2_size,
                       "base_res": gcfg.hash_base_res, "max_res": gcfg.hash_max_res},
              "steps": args.steps, "warmup": args.warmup, "results": []}
    if args.layout == "rays":
        result["samples_per_ray"] = args.samples_per_ray
    for impl in impls:
        for merge, pair in ([(m, p) for m in merges for p in pairs] if impl == "triton" else [(None, None)]):
            result["results"].append(measure(impl, gcfg, device, points, args, merge, pair))
    common.emit(result, args.out / "hashgrid.json" if args.out is not None else None)
    return result
