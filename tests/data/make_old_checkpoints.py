"""Writes tests/data/checkpoints_c87ba52.tar.xz: checkpoints of cancelled test-preset jobs on the tiny SD model, made
with the backend at commit c87ba52 (before issue 14's stage runner), plus what that backend's resume of them ended
with. Run from the repository root at that commit:

    git worktree add /tmp/old c87ba52 && cp tests/data/make_old_checkpoints.py /tmp/old/tests/data/
    cd /tmp/old && PYTHONPATH=backend:tests python tests/data/make_old_checkpoints.py ARCHIVE

test_checkpoint_compat.py resumes them with the current backend and compares the ends.
"""
from __future__ import annotations

import json
import lzma
import shutil
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import torch

from prolific.config import make_config
from prolific.errors import Cancelled
from prolific.events import Reporter
from prolific.pipeline import run_job
from tiny_models import build_tiny_sd

# Small enough to commit: SDS (no LoRA estimator to save), a 2^8 hash table, an 8³ occupancy grid, a 8-cell tet grid.
OVERRIDES = {"prior": {"guidance": "sds"}, "texture": {"guidance": "sds"},
             "nerf": {"hash_log2_size": 8, "occupancy_res": 8}, "geometry": {"tet_res": 8}}
JOBS = {"nerf_at_2": ("nerf", 2), "texture_at_1": ("texture", 1)}


def config(model: Path, stages: list[str]):
    return make_config("a red teapot", "test", {**OVERRIDES, "prior": {**OVERRIDES["prior"], "model": str(model)}, "stages": stages})


def stages_of(job: str) -> list[str]:
    return ["nerf"] if job == "nerf_at_2" else ["nerf", "geometry", "texture"]


def weights_summary(job_dir: Path) -> dict:
    """Per saved tensor of each stage's finished checkpoint: its norm (what the resumed run ended with)."""
    out = {}
    for path in sorted((job_dir / "checkpoints").glob("*.pt")):
        particle = torch.load(path, weights_only=True)["particles"][0]
        tensors = {**{f"nerf.{k}": v for k, v in particle.get("nerf", {}).items()},
                   **{f"field.{k}": v for k, v in particle.get("field", {}).items()},
                   **{k: particle[k] for k in ("sdf", "deform") if k in particle}}
        out[path.stem] = {k: float(v.float().norm()) for k, v in tensors.items() if v.is_floating_point()}
    return out


def main(archive: Path) -> None:
    Reporter.min_interval_s = 0.0  # every step reported, so the cancel lands on an exact step (a one-off script)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_sd(Path(tmp) / "model")
        out, ends = Path(tmp) / "archive", {}
        for job, (stage, step) in JOBS.items():
            cancel = threading.Event()

            def stop_at(event, stage=stage, step=step, cancel=cancel):
                if getattr(event, "stage", None) == stage and event.step == step:
                    cancel.set()

            try:
                run_job(config(model, stages_of(job)), Path(tmp) / "jobs", job, sink=stop_at, cancel=cancel)
                raise SystemExit(f"{job} was not cancelled")
            except Cancelled:
                pass
            shutil.copytree(Path(tmp) / "jobs" / job / "checkpoints", out / job / "checkpoints")
            run_job(config(model, stages_of(job)), Path(tmp) / "jobs", job, resume=True)
            ends[job] = weights_summary(Path(tmp) / "jobs" / job)
        (out / "resumed_ends.json").write_text(json.dumps(ends, indent=1, sort_keys=True))
        with tarfile.open(archive, "w:xz", preset=9 | lzma.PRESET_EXTREME) as tar:  # ~175 kB, half the files' size
            tar.add(out, arcname=".")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
