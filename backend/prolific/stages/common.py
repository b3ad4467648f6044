"""What every stage gets from the pipeline (`StageContext`) and the file helpers the stages share.

A stage module exposes `run(ctx, inputs) -> outputs`. It saves `<job_dir>/checkpoints/<stage>.pt` every
`checkpoint_every` steps and when done (with `"done": True`); when `ctx.resume` is set it continues from that
file, and a stage whose checkpoint says done only reloads its outputs.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from ..config import JobConfig
from ..errors import BadRequest, Cancelled
from ..events import Reporter
from ..prior import speed
from ..prior.vsd import ScoreDistillation


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
    resume: bool = True

    def checkpoint_path(self, stage: str) -> Path:
        return self.job_dir / "checkpoints" / f"{stage}.pt"

    def preview_path(self, stage: str, step: int) -> Path:
        return self.job_dir / "previews" / f"{stage}_{step:06d}.png"

    def object_dir(self, k: int) -> Path:
        return self.job_dir / f"object_{k}"

    def load_checkpoint(self, stage: str) -> dict | None:
        """The stage's saved state when resuming and one exists, else None (a fresh start)."""
        path = self.checkpoint_path(stage)
        if not self.resume or not path.exists():
            return None
        return torch.load(path, map_location=self.device, weights_only=True)

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


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, path: Path) -> None:
    """Restore an optimizer from a checkpoint, with a sentence naming the file when its layout differs (a
    checkpoint written by an older version, whose parameter groups were different)."""
    try:
        optimizer.load_state_dict(state)
    except ValueError as err:
        raise BadRequest(f"The checkpoint {path} was written by an older version of the backend ({err}): "
                         "start again in a new output folder.") from None


def field_optimizer(field: torch.nn.Module, background: Any, lr: float, mlp_lr: float,
                    background_lr: float) -> torch.optim.Optimizer:
    """Adam over a hash-grid field's table (lr), its MLP (mlp_lr) and the background when it is trained (a
    module; background_lr), with a tiny eps as Instant-NGP uses for hash tables (rarely touched entries still
    move) and the betas of both references."""
    groups = [{"params": list(field.encoding.parameters()), "lr": lr},
              {"params": list(field.mlp.parameters()), "lr": mlp_lr}]
    if isinstance(background, torch.nn.Module):
        groups.append({"params": list(background.parameters()), "lr": background_lr})
    return torch.optim.Adam([g for g in groups if g["params"]], betas=(0.9, 0.99), eps=1e-15)


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


def rng_state(generator: torch.Generator) -> dict:
    """The job generator's state and the global CPU one (module initialisation draws from it)."""
    return {"generator": generator.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(generator: torch.Generator, state: dict) -> None:
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch"].cpu())


@contextlib.contextmanager
def score_distillation(ctx: StageContext, prior_cfg, guidance: str, optimizers: list, state: dict | None = None):
    """A ScoreDistillation on the shared prior, restored from `state` when given, with the job's speed options
    (prior.speed) applied; Adam optimizers in `optimizers` may be replaced in place by fused ones. On exit the
    estimator and every patch come off the shared UNet, which the next stage and the next job reuse."""
    distill = ScoreDistillation(ctx.prior, prior_cfg, guidance)
    try:
        if state is not None:
            distill.load_state_dict(state)
        speed.accelerate(ctx.prior, distill, speed.job_options(ctx.cfg.prior.speed, ctx.device), optimizers)
        yield distill
    finally:
        speed.unbatch_branches(distill)
        distill.close()


def run_steps(ctx: StageContext, stage: str, stage_cfg, start: int, step_fn: Callable[[int], torch.Tensor],
              save_fn: Callable[[int], Any]) -> None:
    """The loop every stage shares. step_fn(step) runs one step and returns the images it rendered (the first
    is the preview); save_fn(done) writes the checkpoint. Previews every `preview_every`, checkpoints every
    `checkpoint_every` and at the end, a progress event per step; on cancel the finished steps are saved first
    so that --resume continues from there. Zero steps left still write the final (done) checkpoint."""
    total, done = stage_cfg.steps, start
    try:
        for step in range(start, total):
            ctx.reporter.check_cancel()
            images = step_fn(step)
            done = step + 1
            preview = None
            if done % stage_cfg.preview_every == 0 or done == total:
                preview = save_png(images[0], ctx.preview_path(stage, done))
            if done % stage_cfg.checkpoint_every == 0 or done == total:
                save_fn(done)
            ctx.reporter.step(stage, done, total, preview)
        if total == start:
            save_fn(total)
    except Cancelled:
        if done > start and done % stage_cfg.checkpoint_every != 0 and done != total:
            save_fn(done)
        raise
