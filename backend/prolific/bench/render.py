"""`prolific bench render`: stage 1's NeRF render + backward alone, per resolution and renderer.

The field (--field, bench/common.FIELDS) is object-sized, behind its updated occupancy grid: `blob` is stage 1's
initialisation, a soft ball, `solid` the same ball with a sharp opaque surface, as on a trained object. Each step
renders one random training camera with the particle's renderer, back-propagates a loss on rgb and opacity and
zeroes the gradients. Reported: ms per step (median), samples the field evaluated with gradients, samples per
ray, peak memory. The variant names: `fast` is the config's choice (auto: packed renderer, Triton hash grid,
marching and compositing on CUDA), `packed-torch` the packed renderer in plain PyTorch (CUDA only: on a CPU it is
`fast`), `dense` the dense renderer with the PyTorch hash grid (before the fast path); `--compare` runs them all
in one process and gives dense / variant ratios.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from ..config import make_config
from ..errors import BadRequest
from ..prior.speed import log
from . import common

GPU_RESOLUTIONS = "64,256,512"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prolific bench render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", default=None,
                        help=f"comma-separated render resolutions (default: {GPU_RESOLUTIONS} on a GPU, the "
                             "preset's on a CPU)")
    parser.add_argument("--preset", default=None, help="config preset of the field (default: standard on a GPU, "
                                                       "test on a CPU)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a nerf setting for every variant, e.g. --set march_steps=256 (repeatable)")
    parser.add_argument("--field", choices=sorted(common.FIELDS), default="blob",
                        help="the field rendered: blob (stage 1's initialisation) or solid (an opaque ball)")
    parser.add_argument("--compare", action="store_true", help="also run packed-torch (CUDA) and dense")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per resolution")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (kernels compile here)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder to write render_<field>.json into")
    return parser


def nerf_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"--set wants KEY=VALUE (a nerf setting), got '{item}'.")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def variant_configs(ncfg, grid, device: torch.device, compare: bool) -> list[tuple[str, object, object]]:
    """(name, nerf settings, hash-grid settings) of each renderer to time."""
    runs = [("fast", ncfg, grid)]
    if compare:
        torch_grid = dataclasses.replace(grid, impl="torch")
        if device.type == "cuda":
            runs.append(("packed-torch", dataclasses.replace(ncfg, renderer="packed"), torch_grid))
        runs.append(("dense", dataclasses.replace(ncfg, renderer="dense"), torch_grid))
    return runs


def measure(name: str, ncfg, grid, cameras_cfg, device: torch.device, resolutions: list[int], args) -> dict:
    from ..render.cameras import sample_cameras
    from ..render.composite import composite as composite_torch
    from ..render.march import walk_lattice
    from ..stages import nerf as nerf_stage

    torch.manual_seed(args.seed)
    particle = nerf_stage.make_particle(ncfg, grid, device)
    common.set_field(particle.nerf, args.field)
    renderer = particle.renderer
    if name == "packed-torch":  # the same samples, marched and composited with PyTorch ops
        renderer = dataclasses.replace(renderer, composite=composite_torch, walk=walk_lattice)
    generator = torch.Generator(device).manual_seed(args.seed)
    nerf_stage.update_occupancy([particle], [generator])
    out = {"name": name, "renderer": renderer.name, "hash_grid": particle.nerf.encoding.impl,
           "kernels": getattr(renderer, "fused", False), "mlp_precision": ncfg.mlp_precision,
           "occupied_fraction": round(particle.occupancy.occupied_fraction, 4), "resolutions": {}}
    for res in resolutions:
        common.free_memory(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, samples = [], []
        try:
            for i in range(args.warmup + args.steps):
                cameras = sample_cameras(1, cameras_cfg, generator, device)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                render = renderer(particle.nerf, particle.background, cameras, res, res, shading="albedo",
                                  occupancy=particle.occupancy, generator=generator)
                (render["rgb"].mean() + render["opacity"].mean()).backward()
                particle.nerf.zero_grad(set_to_none=True)
                particle.background.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= args.warmup:
                    times.append((time.perf_counter() - start) * 1e3)
                    samples.append(render["n_samples"])
        except Exception as err:  # noqa: BLE001 - report it and go on with the next resolution
            out["resolutions"][str(res)] = common.record_failure({}, err, device)
            continue
        n = statistics.median(samples)
        out["resolutions"][str(res)] = {"ms": round(statistics.median(times), 3),
                                        "ms_all": [round(t, 3) for t in times], "samples": int(n),
                                        "samples_per_ray": round(n / (res * res), 2), **common.memory_block(device)}
        log(f"bench render [{name}] {res}px: {statistics.median(times):.2f} ms, {int(n)} samples")
    return out


def run(argv: list[str]) -> dict:
    args = build_parser().parse_args(argv)
    device = common.resolve_device(args.device)
    preset = args.preset or ("standard" if device.type == "cuda" else "test")
    cfg = make_config("a bench object", preset, {"device": str(device), "nerf": nerf_overrides(args.set)})
    resolutions = common.parse_resolutions(args.resolutions, device, GPU_RESOLUTIONS, cfg.nerf.resolutions)
    result = {"bench": "render", **common.environment(device), "preset": preset, "field": args.field,
              "steps": args.steps,
              "warmup": args.warmup, "march_steps": cfg.nerf.march_steps, "early_stop": cfg.nerf.early_stop,
              "variants": []}
    for name, ncfg, grid in variant_configs(cfg.nerf, cfg.hash_grid, device, args.compare):
        log(f"bench render [{name}]")
        result["variants"].append(measure(name, ncfg, grid, cfg.cameras, device, resolutions, args))
    dense = next((v for v in result["variants"] if v["name"] == "dense"), None)
    if dense is not None:
        result["speedup_vs_dense"] = {
            v["name"]: {res: round(dense["resolutions"][res]["ms"] / r["ms"], 2)
                        for res, r in v["resolutions"].items() if "ms" in r and "ms" in dense["resolutions"][res]}
            for v in result["variants"] if v is not dense}
    common.emit(result, args.out / f"render_{args.field}.json" if args.out is not None else None)
    return result
