"""What every stage gets from the pipeline (`StageContext`: the job, the shared prior, the job folder's files,
the reporter, the job's generators and this process's share of the particles) and the file helpers the stages
and the export share."""
from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..config import CameraConfig, JobConfig
from ..events import Reporter
from ..prior import speed
from ..render.cameras import Cameras, sample_cameras
from .distributed import Team
from .randomness import particle_generators


@dataclass
class StageContext:
    cfg: JobConfig
    device: torch.device
    prior: Any  # prior.diffusion.DiffusionPrior
    prompt_emb: Any  # prior.diffusion.PromptEmbeddings
    job_dir: Path
    reporter: Reporter
    cancel: threading.Event
    generator: torch.Generator  # on `device`; seeded from cfg.seed, its state travels in the checkpoints
    team: Team = field(default_factory=Team)  # this process among the job's (stages/distributed.py)
    # One per particle of this process (stages/randomness.py); their states travel in the checkpoints too.
    generators: list[torch.Generator] | None = None

    def __post_init__(self) -> None:
        if self.generators is None:
            self.generators = particle_generators(self.cfg.seed, self.particles, self.device)

    @property
    def fused_adam(self) -> bool:
        """Whether the stages build their Adam optimizers fused (prior.speed's fused-adam, on CUDA only)."""
        return speed.fused_adam(speed.job_options(self.cfg.prior.speed, self.device), self.device)

    @property
    def particles(self) -> range:
        """The global indices of this process's particles (all of them in a single-process job)."""
        return self.team.share(self.cfg.particles)

    def particle_index(self, i: int) -> int:
        """The global index of this process's i-th particle."""
        return self.particles.start + i

    def checkpoint_path(self, stage: str) -> Path:
        return self.job_dir / "checkpoints" / f"{stage}.pt"

    def preview_path(self, stage: str, step: int) -> Path:
        return self.job_dir / "previews" / f"{stage}_{step:06d}.png"

    def object_dir(self, k: int) -> Path:
        return self.job_dir / f"object_{k}"

    def save_checkpoint(self, stage: str, state: dict) -> Path:
        # Write then rename, so a job killed mid-save leaves the previous checkpoint intact.
        path = self.checkpoint_path(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        return path

    def stage_done(self, stage: str) -> bool:
        return checkpoint_done(self.checkpoint_path(stage))


def particle_cameras(ctx: StageContext, cfg: CameraConfig) -> Cameras:
    """One random training camera per particle of this process, each from its particle's generator."""
    cams = [sample_cameras(1, cfg, g, ctx.device) for g in ctx.generators]
    return Cameras(*(torch.cat([getattr(c, f.name) for c in cams]) for f in dataclasses.fields(Cameras)))


def checkpoint_done(path: Path) -> bool:
    if not path.exists():
        return False
    # mmap: only the small "done" entry is read, not the weights.
    return bool(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("done", False))


def save_png(image: torch.Tensor, path: Path) -> Path:
    """Save one float image [3,H,W] or [1,3,H,W] in [0,1] as an 8-bit RGB PNG."""
    if image.dim() == 4:
        image = image[0]
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy())).save(path)
    return path
