"""The one skeleton every stage runs in: the `Stage` protocol and `run_stage`, which owns checkpoint loading,
the compatibility check, the RNG state, the step loop with previews and cancel, saving, and upstream reloads.

A checkpoint `<job_dir>/checkpoints/<stage>.pt` holds {"stage", "step", "total", "done", "signature", "guidance"
(the score estimator), "rng" (the shared generator, one per particle, the global one)} plus the stage's own
`state_dict()` entries, lists over all particles. It is written every `checkpoint_every` steps, at the end (with
done), and on cancel; resuming continues from it, and a stage whose checkpoint is done only reloads its outputs
from it. In a job spread over processes rank 0 writes it with every rank's particles gathered, and each rank
resumes its own share of them, whatever the number of processes.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from ..config import PriorConfig
from ..errors import BadRequest, Cancelled
from ..prior import speed
from ..prior.vsd import ScoreDistillation
from .context import StageContext, save_png
from .randomness import ESTIMATOR_INIT, seeded_init, stage_key


@dataclass(frozen=True)
class Guidance:
    """What a stage distils from: the prior settings it runs with and "vsd" or "sds"."""
    prior: PriorConfig
    mode: str


class Stage(Protocol):
    """One stage's math. `name` is its config section and checkpoint file; `settings` that section (the runner
    reads steps, checkpoint_every and preview_every); `optimizers` the Adam optimizers `step` uses, built fused
    when StageContext.fused_adam says so."""

    name: str
    settings: Any
    optimizers: list

    def __init__(self, ctx: StageContext, upstream: dict | None) -> None:
        """Build the trainable parts from the job and the previous stage's outputs (None when that stage is not
        at hand: a stage resumed from its own checkpoint may not need it)."""

    def initialise(self) -> None:
        """A fresh start's initial state (e.g. the surface from the NeRF); not called when resuming."""

    def signature(self) -> dict:
        """The settings a checkpoint must share with the job to continue it (e.g. {"particles": 2})."""

    def guidance(self) -> Guidance:
        """The prior settings and the distillation mode of this stage's steps."""

    def step(self, step: int, guidance: ScoreDistillation) -> torch.Tensor:
        """One optimisation step; returns the images it rendered (the first is the preview)."""

    def state_dict(self) -> dict:
        """The stage's own checkpoint entries, each a list with one item per particle of this process (their
        parameters and optimizers)."""

    def load_state_dict(self, state: dict, path: Path) -> None:
        """Restore what `state_dict` saved; `path` names the file in errors."""

    def outputs(self, trained: bool) -> dict:
        """What the next stage and the export get; `trained` says whether any step ran in this job."""


def run_stage(ctx: StageContext, stage_cls: type[Stage], upstream: dict | None, resume: bool) -> dict:
    """Build the stage, continue its checkpoint when `resume` finds one (else initialise it), run the steps
    that are left and return its outputs."""
    stage = stage_cls(ctx, upstream)
    total = stage.settings.steps
    path = ctx.checkpoint_path(stage.name)
    state = read_checkpoint(path, ctx.device) if resume and path.exists() else None
    start = 0
    if state is None:
        stage.initialise()
    else:
        start = min(state["step"], total)
        check_signature(state["signature"], stage.signature(), start < total, path)
        state = own_share(ctx, stage, state)
        stage.load_state_dict(state, path)
        set_rng_state(ctx, state["rng"])
    ctx.reporter.step(stage.name, start, total)
    trained = state is None or start < total
    if trained:
        with score_distillation(ctx, stage.guidance(), state["guidance"] if state is not None else None,
                                stage.name) as guidance:
            run_steps(ctx, stage.name, stage.settings, start, lambda step: stage.step(step, guidance),
                      lambda done: save_checkpoint(ctx, stage, guidance, done))
    return stage.outputs(trained)


def reload_stage(ctx: StageContext, stages: Sequence[type[Stage]]) -> dict | None:
    """The outputs of the last of `stages` (a job's stages in order, up to it) from its finished checkpoint,
    with those before it reloaded the same way where they finished; None when it has no finished checkpoint
    (e.g. --stages geometry,texture continues an earlier nerf-only run in the same folder)."""
    *before, stage = stages
    if not ctx.stage_done(stage.name):
        return None
    upstream = reload_stage(ctx, before) if before else None
    return run_stage(ctx, stage, upstream, resume=True)


def read_checkpoint(path: Path, device: torch.device) -> dict:
    return upgrade_checkpoint(torch.load(path, map_location=device, weights_only=True))


def upgrade_checkpoint(state: dict) -> dict:
    """A checkpoint in today's layout. Those written before the runner (commit c87ba52 and earlier) named stage
    1's estimator "estimator" and saved no signature: theirs follows from what they hold."""
    state = dict(state)
    if "estimator" in state:
        state["guidance"] = state.pop("estimator")
    if "signature" not in state:
        state["signature"] = {"particles": len(state["particles"]), "guidance": state["guidance"].get("guidance")}
        if "tet_res" in state:
            state["signature"]["tet_res"] = state.pop("tet_res")
    return state


def check_signature(saved: dict, wanted: dict, training: bool, path: Path) -> None:
    """BadRequest naming both sides when the job's settings differ from the checkpoint's. A finished stage is
    only reloaded, so how it was distilled (its guidance) no longer matters then."""
    if not training:
        wanted = {k: v for k, v in wanted.items() if k != "guidance"}
    differs = [k for k in wanted if saved.get(k) != wanted[k]]
    if differs:
        def describe(values: dict) -> str:
            return ", ".join(f"{k} {values.get(k)}" for k in differs)
        raise BadRequest(f"The checkpoint {path} was made with {describe(saved)} but the job asks for "
                         f"{describe(wanted)}: resume with the same settings or use a new output folder.")


def own_share(ctx: StageContext, stage: Stage, state: dict) -> dict:
    """`state` with the per-particle entries cut to this process's particles."""
    share = slice(ctx.particles.start, ctx.particles.stop)
    if ctx.particles == range(len(state["particles"])):
        return state
    own = {k: state[k][share] for k in stage.state_dict()}
    rng = dict(state["rng"])
    if "particles" in rng:
        rng["particles"] = rng["particles"][share]
    return {**state, **own, "rng": rng}


def save_checkpoint(ctx: StageContext, stage: Stage, guidance: ScoreDistillation, step: int) -> Path:
    """Write the stage's checkpoint with every process's particles (a collective: every rank calls it)."""
    total = stage.settings.steps
    path = ctx.checkpoint_path(stage.name)
    parts = ctx.team.gather({**stage.state_dict(), "generators": [g.get_state() for g in ctx.generators]})
    if parts is None:
        return path
    merged = {k: [item for part in parts for item in part[k]] for k in parts[0]}
    rng = {"generator": ctx.generator.get_state(), "particles": merged.pop("generators"),
           "torch": torch.get_rng_state()}
    return ctx.save_checkpoint(stage.name, {
        "stage": stage.name, "step": step, "total": total, "done": step >= total, "signature": stage.signature(),
        **merged, "guidance": guidance.state_dict(), "rng": rng})


def set_rng_state(ctx: StageContext, state: dict) -> None:
    """Continue the saved generators. A checkpoint from before the per-particle generators (no "particles")
    drew everything from the job generator: with one particle that one goes on drawing its numbers, so the job
    continues as that backend's would; with more, the particles' generators start from their seeds."""
    ctx.generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    if "particles" in state:
        for g, saved in zip(ctx.generators, state["particles"]):
            g.set_state(saved.cpu())
    elif len(ctx.generators) == 1 and ctx.cfg.particles == 1:
        ctx.generators[0] = ctx.generator


def stage_prior(prior_cfg: PriorConfig, anneal_fraction: float, sds_guidance_scale: float | None = None) -> PriorConfig:
    """The prior settings of stages 2 and 3: their own share of steps with the wide t range before
    U(t_min, t_max_annealed) (threestudio's geometry/texture configs: the first 5000 steps) and, where the stage
    has its own SDS guidance knob, its scale."""
    changes: dict[str, Any] = {"anneal_fraction": anneal_fraction}
    if sds_guidance_scale is not None:
        changes["sds_guidance_scale"] = sds_guidance_scale
    return dataclasses.replace(prior_cfg, **changes)


@contextlib.contextmanager
def score_distillation(ctx: StageContext, guidance: Guidance, state: dict | None = None, stage: str = ""):
    """A ScoreDistillation on the shared prior, built with the job's speed options (prior.speed) and restored
    from `state` when given; the options' flags and module layout hold while inside (speed.applied). Its
    initialisation draws from `stage`'s estimator stream (the same in every process), and in a job over several
    processes its gradients are averaged over them before each step. On exit the estimator comes off the shared
    UNet and every setting is back as it was, for the next stage and the next job."""
    options = speed.job_options(ctx.cfg.prior.speed, ctx.device)
    reduce = ctx.team.reduce_grads if ctx.team.size > 1 else None
    with speed.applied(ctx.prior, options):
        with seeded_init(ctx.cfg.seed, ctx.device, ESTIMATOR_INIT, stage_key(stage)):
            distill = ScoreDistillation(ctx.prior, guidance.prior, guidance.mode, reduce_grads=reduce,
                                        **speed.estimator_kwargs(options),
                                        say=lambda message: ctx.reporter.warn("eager_fallback", message))
        try:
            if state is not None:
                distill.load_state_dict(state)
            yield distill
        finally:
            distill.close()


def run_steps(ctx: StageContext, stage: str, stage_cfg, start: int, step_fn: Callable[[int], torch.Tensor],
              save_fn: Callable[[int], Any]) -> None:
    """The step loop. step_fn(step) runs one step and returns the images it rendered (the first is the preview);
    save_fn(done) writes the checkpoint. Previews every `preview_every`, checkpoints every `checkpoint_every` and
    at the end, a progress event per step; on cancel the finished steps are saved first so that --resume
    continues from there. Zero steps left still write the final (done) checkpoint. Over several processes
    rank 0 writes the previews (of its first particle, the job's first)."""
    total, done = stage_cfg.steps, start
    try:
        for step in range(start, total):
            ctx.team.check_cancel(ctx.reporter)
            images = step_fn(step)
            done = step + 1
            preview = None
            if ctx.team.rank == 0 and (done % stage_cfg.preview_every == 0 or done == total):
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
