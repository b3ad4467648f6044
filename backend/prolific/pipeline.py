"""Runs one job: prior → stage 1 NeRF (VSD) → stage 2 geometry → stage 3 texture → export, with resume.

The CLI and the server both call `run_job`; it returns the result the protocol's `result` event carries and
writes `<out_dir>/<job>/meta.json`.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import JobConfig, check_job_name
from .device import device_description, job_dtype, pick_device
from .errors import BadRequest, JobExists, OutOfMemory
from .events import Phase, Reporter, Sink
from .stages.context import StageContext
from .stages.distributed import Team
from .stages.geometry import GeometryStage
from .stages.nerf import NerfStage
from .stages.runner import reload_stage, run_stage
from .stages.texture import TextureStage

# The stages, in the order a job runs them (config.STAGES names them for validation).
STAGES = {"nerf": NerfStage, "geometry": GeometryStage, "texture": TextureStage}
ORDER = tuple(STAGES)
MESH_STAGES = ("geometry", "texture")
OUT_OF_MEMORY_ADVICE = ("The GPU ran out of memory. Try a smaller preset (draft), fewer particles, or lower "
                        "rendering resolutions (nerf.resolutions, geometry.resolution, texture.resolution).")


def run_job(cfg: JobConfig, out_dir: Path, job_name: str, sink: Sink | None = None,
            cancel: threading.Event | None = None, resume: bool = False, prior: Any = None) -> dict:
    """Run `cfg` into `<out_dir>/<job_name>`; `prior` is a loaded DiffusionPrior to reuse (else it is loaded).

    Raises the errors of errors.py; a CUDA out-of-memory becomes `OutOfMemory` with advice."""
    try:
        return _run_job(cfg, Path(out_dir).expanduser().absolute(), job_name, sink, cancel or threading.Event(),
                        resume, prior)
    except torch.cuda.OutOfMemoryError as err:
        torch.cuda.empty_cache()
        raise OutOfMemory(OUT_OF_MEMORY_ADVICE) from err


def load_job_prior(cfg: JobConfig, device: torch.device):
    from .prior.diffusion import load_prior

    return load_prior(cfg.prior.model, device, job_dtype(device, cfg.prior.dtype, cfg.prior.speed))


def _run_job(cfg: JobConfig, out_dir: Path, job_name: str, sink, cancel: threading.Event, resume: bool,
             prior) -> dict:
    job_dir = out_dir / check_job_name(job_name)
    reporter = Reporter(sink, cancel, plan_phases(cfg, is_mesh_job(cfg)))
    continuing = check_job_dir(job_dir, cfg.stages, resume)
    if resume and not continuing:
        reporter.warn("nothing_to_resume", f"Nothing to resume in {job_dir}: no checkpoint was saved there. "
                      "Starting the job from the beginning.")
    prepare_job_dir(job_dir)
    if cfg.gpus > 1:
        from .stages.distributed import run_team

        return run_team(cfg, job_dir, continuing, resume, reporter, run_share)
    return run_stages(cfg, job_dir, continuing, resume, reporter, prior, Team(), pick_device(cfg.device))


def run_stages(cfg: JobConfig, job_dir: Path, continuing: bool, resume: bool, reporter: Reporter, prior,
               team: Team, device: torch.device) -> dict:
    """The stages and the export in a prepared job folder, for `team`'s share of the particles; rank 0 writes
    meta.json and returns the result (other ranks return theirs, without meta)."""
    lead = team.rank == 0
    timings: dict[str, float] = previous_timings(job_dir) if resume else {}
    started = time.monotonic()
    if prior is None:
        prior = load_job_prior(cfg, device)
        timings["load_prior"] = round(time.monotonic() - started, 3)
    warn_unknown_words(prior, cfg.prompt, reporter)
    prompt_emb = prior.embed_prompt(cfg.prompt, cfg.prior.negative_prompt, cfg.prior.view_dependent_prompt)
    if not continuing and lead:  # only now that the model has loaded: a run that fails earlier changes nothing
        clear_stale_previews(job_dir, cfg.stages)

    torch.manual_seed(cfg.seed)  # modules seed their own initialisation; anything else stays reproducible
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    ctx = StageContext(cfg, device, prior, prompt_emb, job_dir, reporter, reporter.cancel, generator, team)

    outputs, previous = None, None
    stage_outputs: dict[str, Any] = {}
    for stage in cfg.stages:
        team.check_cancel(reporter)
        if ORDER.index(stage) > 0 and previous != ORDER[ORDER.index(stage) - 1]:
            outputs = load_upstream(ctx, stage)  # e.g. --stages geometry,texture after a nerf-only run
        was_done = resume and ctx.stage_done(stage)
        t0 = time.monotonic()
        outputs = run_stage(ctx, STAGES[stage], outputs, resume)
        stage_outputs[stage] = outputs
        if not was_done or stage not in timings:  # a finished stage only reloads: keep its real timing
            timings[stage] = round(time.monotonic() - t0, 3)
        previous = stage

    if is_mesh_job(cfg):
        t0 = time.monotonic()
        reporter.step("export", 0, 1)
        from .export.result import write_result

        objects = write_result(ctx, outputs)
        timings["export"] = round(time.monotonic() - t0, 3)
        reporter.step("export", 1, 1)
    else:
        nerf_out = stage_outputs["nerf"]
        objects = [{"checkpoint": str(nerf_out["checkpoint"]), "turntable": [str(p) for p in views]}
                   for views in nerf_out["turntables"]]
    parts = team.gather(objects)
    if not lead:
        return {}
    objects = [obj for part in parts for obj in part]
    timings["total"] = round(time.monotonic() - started, 3)

    meta_path = job_dir / "meta.json"
    meta = {"prompt": cfg.prompt, "negative_prompt": cfg.prior.negative_prompt, "seed": cfg.seed,
            "preset": cfg.preset, "model": cfg.prior.model, "stages": list(cfg.stages),
            "settings": cfg.to_dict(), "timings": timings, "backend": __version__,
            "device": device_description(device) + (f" (and {team.size - 1} more)" if team.size > 1 else ""),
            "objects": objects}
    meta_path.write_text(json.dumps(meta, indent=2, default=str))
    return {"job_dir": str(job_dir), "meta": str(meta_path), "previews": str(job_dir / "previews"),
            "objects": objects}


def run_share(cfg: JobConfig, job_dir: Path, continuing: bool, resume: bool, reporter: Reporter, team: Team,
              device: torch.device) -> dict:
    """run_stages in one worker process of a job over several (stages/distributed.py), which loads its own prior;
    a CUDA out-of-memory becomes `OutOfMemory` with advice, as in run_job."""
    try:
        return run_stages(cfg, job_dir, continuing, resume, reporter, None, team, device)
    except torch.cuda.OutOfMemoryError as err:
        torch.cuda.empty_cache()
        raise OutOfMemory(OUT_OF_MEMORY_ADVICE) from err


def is_mesh_job(cfg: JobConfig) -> bool:
    return any(s in MESH_STAGES for s in cfg.stages)


def plan_phases(cfg: JobConfig, mesh_job: bool) -> list[Phase]:
    """What the job will run, in order, split where the cost of a step changes: stage 1 at each rendering
    resolution (a resolution never reached, or a stage of 0 steps, is an empty phase), each mesh stage, the
    export (one step)."""
    phases = []
    for stage in cfg.stages:
        scfg = getattr(cfg, stage)
        if stage == "nerf":
            bounds = [0, *(min(m, scfg.steps) for m in scfg.resolution_milestones), scfg.steps]
            phases += [Phase(stage, a, b, r) for a, b, r in zip(bounds, bounds[1:], scfg.resolutions)]
        else:
            phases.append(Phase(stage, 0, scfg.steps, scfg.resolution))
    if mesh_job:
        phases.append(Phase("export", 0, 1, phases[-1].resolution))
    return phases


def warn_unknown_words(prior, prompt: str, reporter: Reporter) -> None:
    """The bundled toy prior knows a handful of words (prior/bundled.py): say which of the prompt's it does not."""
    from .prior.bundled import BUNDLED_MODEL_DIR, unknown_words_warning

    warning = unknown_words_warning(prompt, prior.tokenizer) if Path(prior.source) == BUNDLED_MODEL_DIR else None
    if warning:
        reporter.warn("unknown_words", warning)


def check_job_dir(job_dir: Path, stages: tuple[str, ...], resume: bool) -> bool:
    """Whether the job continues saved checkpoints in `job_dir`. A new job never replaces another's checkpoints
    (JobExists), and resuming a folder that does not exist is a mistyped name or output folder (BadRequest)."""
    saved = [s for s in STAGES if (job_dir / "checkpoints" / f"{s}.pt").exists()]
    if resume:
        if not job_dir.is_dir():
            raise BadRequest(f"Nothing to resume: there is no job folder {job_dir}. Check the output folder and the "
                             "job name, or start a new job without resume.")
        return bool(saved)
    replaced = [s for s in saved if ORDER.index(s) >= ORDER.index(stages[0])]
    if replaced:
        raise JobExists(job_dir, replaced)
    return False


def prepare_job_dir(job_dir: Path) -> None:
    """Create the job folder, failing with the folder named when it cannot be written."""
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
        probe = job_dir / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise BadRequest(f"Cannot write to the output folder {job_dir}: {err.strerror or err}.") from None


def clear_stale_previews(job_dir: Path, stages: tuple[str, ...]) -> None:
    """A job starting afresh drops the previews an earlier unsaved attempt left for its stages and later ones,
    so that the previews folder shows one run."""
    for stage in ORDER[ORDER.index(stages[0]):]:
        for preview in (job_dir / "previews").glob(f"{stage}_*.png"):
            preview.unlink()


def load_upstream(ctx: StageContext, stage: str) -> Any:
    """A stage whose predecessor is not part of the job (e.g. --stages geometry,texture after a nerf-only run)
    continues from that predecessor's finished checkpoint in the same job folder."""
    previous = ORDER[ORDER.index(stage) - 1]
    outputs = reload_stage(ctx, [STAGES[s] for s in ORDER[:ORDER.index(previous) + 1]])
    if outputs is None:
        raise BadRequest(f"The {stage} stage starts from a finished {previous} stage, but "
                         f"{ctx.checkpoint_path(previous)} is missing or unfinished: include the {previous} stage "
                         f"(--stages {previous},{stage}...).")
    return outputs


def previous_timings(job_dir: Path) -> dict[str, float]:
    try:
        return dict(json.loads((job_dir / "meta.json").read_text())["timings"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
