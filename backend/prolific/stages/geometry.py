"""Stage 2: each particle's surface as a DMTet, initialised from its stage-1 NeRF (the grid fitted to the
object's bounding box) and refined with SDS on normal-map renders (the paper: at mesh scale VSD and SDS differ
little), plus normal-consistency and Laplacian regularisers against folds, self-intersections and spiky floaters.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from ..config import GeometryConfig
from ..errors import BadRequest
from ..field.dmtet import (DMTet, TetGrid, TriMesh, laplacian_smoothness, normal_consistency, object_box,
                           vertex_normal_consistency)
from ..field.texture import nerf_albedo
from ..prior.vsd import ScoreDistillation
from ..render.cameras import sample_cameras
from ..render.mesh import render_mesh
from ..render.raster import make_rasterizer
from .common import StageContext, rng_state, run_steps, score_distillation, set_rng_state

STAGE = "geometry"
# Normal maps on black, as threestudio's mesh renderer blends them: the prior sees a normal map, not a white
# object, so the background gives no shortcut that ignores the shape.
NORMAL_BACKGROUND = (0.0, 0.0, 0.0)


def refine_prior_config(prior_cfg, anneal_fraction: float, guidance_scale: float | None = None):
    """The prior settings of stages 2 and 3: their own share of steps with the wide t range before
    U(t_min, t_max_annealed) (threestudio's geometry/texture configs: the first 5000 steps), and the stage's own
    SDS guidance scale if given."""
    changes = {"anneal_fraction": anneal_fraction}
    if guidance_scale is not None:
        changes["sds_guidance_scale"] = guidance_scale
    return dataclasses.replace(prior_cfg, **changes)


def upstream_nerf(ctx: StageContext, inputs: dict | None) -> dict | None:
    """Stage 1's outputs: as given by the pipeline, else reloaded from its finished checkpoint, else None."""
    if inputs is not None:
        return inputs
    if ctx.stage_done("nerf"):
        from . import nerf
        return nerf.run(StageContext(**{**ctx.__dict__, "resume": True}), None)
    return None


@torch.no_grad()
def initial_dmtet(grid: TetGrid, nerf, gcfg: GeometryConfig) -> DMTet:
    """DMTet at the NeRF's level set σ = gcfg.density_threshold, on the grid fitted to the object's bounding box
    when gcfg.fit_grid; a NeRF that never gets that dense (a faint or collapsed particle) is cut at half its
    peak density instead, so every particle still gets a surface."""
    sigma = torch.cat([nerf.density(grid.vertices[i:i + (1 << 18)]).reshape(-1).float()
                       for i in range(0, grid.vertices.shape[0], 1 << 18)])
    threshold = gcfg.density_threshold
    if not (sigma[~grid.boundary] > threshold).any():
        peak = float(sigma.max())
        print(f"geometry: the NeRF never reaches density {threshold:g} (peak {peak:.3g}); using {peak / 2:.3g}",
              file=sys.stderr)
        threshold = peak / 2
    dmtet = DMTet(grid, object_box(grid, sigma, threshold) if gcfg.fit_grid else None)
    dmtet.init_from_density(nerf.density, threshold, gcfg.sdf_init)
    return dmtet


def run(ctx: StageContext, inputs: dict | None = None) -> dict:
    cfg, gcfg = ctx.cfg, ctx.cfg.geometry
    upstream = upstream_nerf(ctx, inputs)
    grid = TetGrid.build(gcfg.tet_res, cfg.nerf.bound, ctx.device)
    state = ctx.load_checkpoint(STAGE)
    start = 0
    if state is not None:
        check_compatible(state, cfg.particles, gcfg.tet_res, ctx.checkpoint_path(STAGE))
        dmtets = [DMTet(grid) for _ in range(cfg.particles)]
        optimizers = [make_optimizer(d, gcfg) for d in dmtets]
        for d, opt, saved in zip(dmtets, optimizers, state["particles"]):
            # Checkpoints from before the fitted grid hold no box: theirs was the whole cube, DMTet's default.
            d.load_state_dict({"sdf": saved["sdf"], "deform": saved["deform"], "box": saved.get("box", d.box)})
            opt.load_state_dict(saved["optimizer"])
        set_rng_state(ctx.generator, state["rng"])
        start = min(state["step"], gcfg.steps)
    else:
        if upstream is None:
            raise BadRequest("The geometry stage starts from a finished nerf stage: include it (--stages nerf,...).")
        dmtets = [initial_dmtet(grid, nerf, gcfg) for nerf in upstream["nerfs"]]
        optimizers = [make_optimizer(d, gcfg) for d in dmtets]
    ctx.reporter.step(STAGE, start, gcfg.steps)
    if start < gcfg.steps or state is None:
        prior_cfg = refine_prior_config(cfg.prior, gcfg.anneal_fraction, gcfg.guidance_scale)
        with score_distillation(ctx, prior_cfg, "sds", optimizers,
                                state.get("guidance") if state is not None else None) as guidance:
            train(ctx, dmtets, optimizers, guidance, start)
    with torch.no_grad():
        meshes = [d.mesh().detach().without_small_parts(gcfg.min_part_fraction) for d in dmtets]
    out = {"meshes": meshes, "checkpoint": ctx.checkpoint_path(STAGE),
           "textures": [nerf_albedo(n) for n in upstream["nerfs"]] if upstream else [None] * len(meshes),
           "backgrounds": upstream["backgrounds"] if upstream else [None] * len(meshes)}
    return out


def make_optimizer(dmtet: DMTet, gcfg: GeometryConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(dmtet.parameters(), lr=gcfg.lr, betas=gcfg.betas, eps=gcfg.eps)


def train(ctx: StageContext, dmtets: list[DMTet], optimizers, guidance: ScoreDistillation, start: int) -> None:
    raster = make_rasterizer(ctx.device)
    run_steps(ctx, STAGE, ctx.cfg.geometry, start,
              lambda step: train_step(ctx, raster, dmtets, optimizers, guidance, step),
              lambda done: save(ctx, dmtets, optimizers, guidance, done))


def train_step(ctx: StageContext, raster, dmtets: list[DMTet], optimizers, guidance: ScoreDistillation,
               step: int) -> torch.Tensor:
    cfg, gcfg = ctx.cfg, ctx.cfg.geometry
    res = gcfg.resolution
    cameras = sample_cameras(len(dmtets), cfg.nerf, ctx.generator, ctx.device)
    images, reg = [], 0.0
    for k, dmtet in enumerate(dmtets):
        mesh = dmtet.mesh()
        out = render_mesh(raster, mesh.positions, mesh.faces, cameras[k], res, res, shading="normal",
                          background=NORMAL_BACKGROUND)
        images.append(out["rgb"])
        reg = reg + regularisers(mesh, gcfg)
    images = torch.cat(images)
    # The distillation loss is a batch mean (per-particle gradients shrink as 1/n), so the regularisers are
    # averaged over the particles too and keep their weight relative to it.
    loss, _ = guidance.loss(images, cameras.c2w, cameras.prompt_directions(cfg.prior), ctx.prompt_emb, step,
                            gcfg.steps, ctx.generator)
    loss = loss + reg / len(dmtets)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    if loss.requires_grad:  # an empty surface has nothing to optimise
        loss.backward()
        for opt in optimizers:
            opt.step()
    return images.detach()


def regularisers(mesh: TriMesh, gcfg: GeometryConfig) -> torch.Tensor:
    if mesh.faces.shape[0] == 0:
        return mesh.positions.sum() * 0
    consistency = vertex_normal_consistency if gcfg.normal_consistency_on == "vertex" else normal_consistency
    return gcfg.normal_consistency_weight * consistency(mesh) + gcfg.laplacian_weight * laplacian_smoothness(mesh)


def save(ctx: StageContext, dmtets: list[DMTet], optimizers, guidance: ScoreDistillation, step: int) -> Path:
    return ctx.save_checkpoint(STAGE, {
        "stage": STAGE,
        "step": step,
        "total": ctx.cfg.geometry.steps,
        "done": step >= ctx.cfg.geometry.steps,
        "tet_res": ctx.cfg.geometry.tet_res,
        "particles": [{"sdf": d.sdf.detach(), "deform": d.deform.detach(), "box": d.box,
                       "optimizer": opt.state_dict()} for d, opt in zip(dmtets, optimizers)],
        "guidance": guidance.state_dict(),
        "rng": rng_state(ctx.generator),
    })


def check_compatible(state: dict, particles: int, tet_res: int, path: Path) -> None:
    if len(state["particles"]) != particles or state.get("tet_res") != tet_res:
        raise BadRequest(f"The checkpoint {path} holds {len(state['particles'])} particle(s) at tet_res "
                         f"{state.get('tet_res')}, but the job asks for {particles} at {tet_res}: resume with the "
                         "same settings or use a new output folder.")
