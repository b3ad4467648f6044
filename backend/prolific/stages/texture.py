"""Stage 3: geometry fixed, each particle's albedo field (and its stage-1 background) optimised with VSD (or
SDS) on rasterised renders.

All particles share one score estimator, as in stage 1. Each field first copies its NeRF's albedo on the
surface, so the stage refines stage 1's colours rather than starting from grey.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..config import TextureConfig
from ..errors import BadRequest
from ..field.dmtet import TriMesh
from ..field.texture import AlbedoField
from ..prior.vsd import ScoreDistillation
from ..render.cameras import sample_cameras
from ..render.mesh import render_mesh
from ..render.raster import make_rasterizer
from .common import (StageContext, field_optimizer, load_optimizer_state, rng_state, run_steps, score_distillation,
                     set_rng_state)
from .geometry import refine_prior_config

STAGE = "texture"
# Regression onto the NeRF albedo: at most this many steps and never more than the stage's own step count (a fit
# step costs far less than a distillation step, so the copy never dominates the stage).
INIT_FIT_STEPS = 200
INIT_FIT_POINTS = 1 << 16
WHITE = (1.0, 1.0, 1.0)


def upstream_geometry(ctx: StageContext, inputs: dict | None) -> dict:
    if inputs is not None:
        return inputs
    if not ctx.stage_done("geometry"):
        raise BadRequest("The texture stage starts from a finished geometry stage: include it "
                         "(--stages geometry,texture).")
    from . import geometry
    return geometry.run(StageContext(**{**ctx.__dict__, "resume": True}), None)


def frozen(background):
    """Stage 1's background as a plain function of view directions (no gradients into it), or white."""
    if background is None:
        return WHITE

    def colour(dirs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return background(dirs)
    return colour


def stage_backgrounds(tcfg: TextureConfig, upstream: list) -> list:
    """What each particle's renders are composited on: a copy of its stage-1 background that goes on training
    (tcfg.train_background), or that background frozen; white where there is none."""
    if not tcfg.train_background:
        return [frozen(b) for b in upstream]
    return [WHITE if b is None else copy.deepcopy(b).requires_grad_(True) for b in upstream]


def run(ctx: StageContext, inputs: dict | None = None) -> dict:
    cfg, tcfg = ctx.cfg, ctx.cfg.texture
    geo = upstream_geometry(ctx, inputs)
    meshes: list[TriMesh] = geo["meshes"]
    fields = [AlbedoField(cfg.nerf, ctx.device) for _ in meshes]
    backgrounds = stage_backgrounds(tcfg, geo.get("backgrounds") or [None] * len(fields))
    optimizers = [make_optimizer(f, b, tcfg) for f, b in zip(fields, backgrounds)]
    state = ctx.load_checkpoint(STAGE)
    start = 0
    if state is not None:
        if len(state["particles"]) != len(fields):
            raise BadRequest(f"The checkpoint {ctx.checkpoint_path(STAGE)} holds {len(state['particles'])} "
                             f"particle(s) but the job asks for {len(fields)}: use a new output folder.")
        for f, b, opt, saved in zip(fields, backgrounds, optimizers, state["particles"]):
            f.load_state_dict(saved["field"])
            if isinstance(b, torch.nn.Module) and "background" in saved:
                b.load_state_dict(saved["background"])
            load_optimizer_state(opt, saved["optimizer"], ctx.checkpoint_path(STAGE))
        set_rng_state(ctx.generator, state["rng"])
        start = min(state["step"], tcfg.steps)
    else:
        for f, mesh, nerf_albedo in zip(fields, meshes, geo.get("textures") or [None] * len(fields)):
            if nerf_albedo is not None and mesh.faces.shape[0] > 0:
                points = mesh.sample_surface(INIT_FIT_POINTS, ctx.generator)
                f.fit(nerf_albedo, points, min(INIT_FIT_STEPS, tcfg.steps), generator=ctx.generator)
    ctx.reporter.step(STAGE, start, tcfg.steps)
    if start < tcfg.steps or state is None:
        with score_distillation(ctx, refine_prior_config(cfg.prior, tcfg.anneal_fraction), tcfg.guidance,
                                optimizers, state.get("guidance") if state is not None else None) as guidance:
            train(ctx, meshes, fields, optimizers, backgrounds, guidance, start)
    for f in fields:
        f.requires_grad_(False)
    return {"meshes": meshes, "textures": fields, "checkpoint": ctx.checkpoint_path(STAGE)}


def make_optimizer(field: AlbedoField, background, tcfg: TextureConfig) -> torch.optim.Optimizer:
    return field_optimizer(field, background, tcfg.lr, tcfg.mlp_lr, tcfg.background_lr)


def train(ctx: StageContext, meshes, fields, optimizers, backgrounds, guidance: ScoreDistillation,
          start: int) -> None:
    tcfg = ctx.cfg.texture
    raster = make_rasterizer(ctx.device)
    normals = [m.vertex_normals() for m in meshes]

    def step_fn(step: int) -> torch.Tensor:
        cameras = sample_cameras(len(fields), ctx.cfg.nerf, ctx.generator, ctx.device)
        images = torch.cat([
            render_mesh(raster, m.positions, m.faces, cameras[k], tcfg.resolution, tcfg.resolution,
                        shading="albedo", normals=normals[k], albedo_fn=fields[k], background=backgrounds[k],
                        antialias=False)["rgb"]
            for k, m in enumerate(meshes)])
        loss, _ = guidance.loss(images, cameras.c2w, cameras.prompt_directions(ctx.cfg.prior), ctx.prompt_emb,
                                step, tcfg.steps, ctx.generator)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
            for opt in optimizers:
                opt.step()
        guidance.update_estimator(ctx.generator)
        return images

    run_steps(ctx, STAGE, tcfg, start, step_fn,
              lambda done: save(ctx, fields, backgrounds, optimizers, guidance, done))


def save(ctx: StageContext, fields, backgrounds, optimizers, guidance: ScoreDistillation, step: int) -> Path:
    particles = []
    for f, b, opt in zip(fields, backgrounds, optimizers):
        saved = {"field": f.state_dict(), "optimizer": opt.state_dict()}
        if isinstance(b, torch.nn.Module):
            saved["background"] = b.state_dict()
        particles.append(saved)
    return ctx.save_checkpoint(STAGE, {
        "stage": STAGE,
        "step": step,
        "total": ctx.cfg.texture.steps,
        "done": step >= ctx.cfg.texture.steps,
        "particles": particles,
        "guidance": guidance.state_dict(),
        "rng": rng_state(ctx.generator),
    })
