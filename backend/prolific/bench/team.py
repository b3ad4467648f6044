"""`prolific bench stage1 --gpus 1,2,4`: how stage 1 scales with the particles spread over K processes (one GPU
each; gloo processes on a CPU). Each K runs a real job (pipeline.run_job with gpus K: spawn, model loading,
collectives and all) at each render resolution, and the time per iteration of all particles is read from rank
0's progress events between the end of the warm-up and the last step (the final checkpoint write excluded).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from ..config import make_config
from ..errors import BadRequest
from ..prior.speed import log
from . import common


def parse_counts(text: str, particles: int, device: torch.device) -> list[int]:
    """The process counts of --gpus, each at most the particles and, on CUDA, the visible GPUs."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BadRequest(f"--gpus takes comma-separated process counts such as 1,2,4 (got '{text}').") from None
    if not counts or min(counts) < 1:
        raise BadRequest(f"--gpus takes process counts of at least 1 (got '{text}').")
    visible = torch.cuda.device_count() if device.type == "cuda" else None
    for k in counts:
        if visible is not None and k > visible:
            raise BadRequest(f"--gpus {k} needs {k} GPUs but {visible} are visible: leave out the counts above "
                             f"{visible}.")
        if k > particles:
            raise BadRequest(f"--gpus {k} needs at least {k} particles (--particles {particles}): each process "
                             "owns a particle.")
    return counts


def ms_per_iteration(marks: list[tuple[float, int]], warmup: int, total: int) -> float | None:
    """Milliseconds per step between the first progress mark at or after `warmup` and the last before `total`."""
    inside = [(t, s) for t, s in marks if warmup <= s < total]
    if len(inside) < 2 or inside[-1][1] == inside[0][1]:
        return None
    (t0, s0), (t1, s1) = inside[0], inside[-1]
    return round(1000 * (t1 - t0) / (s1 - s0), 2)


def run(args, device: torch.device, preset: str, resolutions: list[int]) -> dict:
    counts = parse_counts(args.gpus, args.particles, device)
    model = common.prepare_model(args, device)
    result = {"bench": "stage1_gpus", **common.environment(device), "model": args.model, "preset": preset,
              "particles": args.particles, "steps": args.steps, "warmup": args.warmup, "runs": []}
    total = args.warmup + args.steps
    for res in resolutions:
        for k in counts:
            cfg = make_config(common.PROMPT, preset, {
                "device": "cpu" if device.type == "cpu" else "auto", "particles": args.particles, "gpus": k,
                "seed": args.seed, "stages": ["nerf"], "prior": {"model": model},
                "nerf": {"steps": total, "resolutions": [res], "resolution_milestones": [],
                         "checkpoint_every": total, "preview_every": total}})
            marks: list[tuple[float, int]] = []
            started = time.monotonic()
            from ..pipeline import run_job

            with tempfile.TemporaryDirectory(prefix="prolific-bench-team-") as folder:
                run_job(cfg, Path(folder), "job", sink=lambda e: marks.append((time.monotonic(), e.step))
                        if getattr(e, "stage", None) == "nerf" else None)
            ms = ms_per_iteration(marks, args.warmup, total)
            log(f"bench stage1: {k} process(es), {res}px: {ms} ms per iteration of {args.particles} particles")
            result["runs"].append({"gpus": k, "resolution": res, "ms_per_iteration": ms,
                                   "job_s": round(time.monotonic() - started, 2)})
    base = {r["resolution"]: r["ms_per_iteration"] for r in result["runs"] if r["gpus"] == counts[0]}
    for r in result["runs"]:
        if base.get(r["resolution"]) and r["ms_per_iteration"]:
            r[f"speedup_vs_{counts[0]}"] = round(base[r["resolution"]] / r["ms_per_iteration"], 2)
    return result
