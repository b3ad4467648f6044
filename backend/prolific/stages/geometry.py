"""Stage 2: each particle's surface as a DMTet, initialised from its stage-1 NeRF (the grid fitted to the
object's bounding box) and refined with SDS on normal-map renders (the paper: at mesh scale VSD and SDS differ
little), plus normal-consistency and Laplacian regularisers against folds, self-intersections and spiky floaters.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..config import GeometryConfig
from ..errors import BadRequest
from ..field.dmtet import DMTet, TetGrid, object_box
from ..field.trimesh import TriMesh, laplacian_smoothness, normal_consistency, vertex_normal_consistency
from ..field.texture import nerf_albedo
from ..prior.prompts import ViewSectors
from ..prior.vsd import ScoreDistillation
from ..render.mesh import render_mesh
from ..render.raster import make_rasterizer
from .context import StageContext, particle_cameras
from .optimizers import adam, load_optimizer_state
from .runner import Guidance, stage_prior

STAGE = "geometry"
# Normal maps on black, as threestudio's mesh renderer blends them: the prior sees a normal map, not a white
# object, so the background gives no shortcut that ignores the shape.
NORMAL_BACKGROUND = (0.0, 0.0, 0.0)


# threestudio's isosurface_threshold "auto": the mean of the grid's densities above this.
AUTO_LEVEL_EPS = 1e-5


def surface_level(sigma: torch.Tensor, interior: torch.Tensor, setting: float | str, auto_scale: float = 1.0) -> float:
    """The density level of the initial surface, from the densities `sigma` at the grid's vertices: the setting,
    or for "auto" `auto_scale` times the mean of those above AUTO_LEVEL_EPS; a NeRF that never gets that dense
    inside the grid (a faint or collapsed particle) is cut at half its peak density instead, so every particle
    still gets a surface."""
    level = setting
    if setting == "auto":
        dense = sigma[sigma > AUTO_LEVEL_EPS]
        level = auto_scale * float(dense.mean()) if dense.numel() else float(sigma.max())
    if not (sigma[interior] > level).any():
        peak = float(sigma.max())
        print(f"geometry: the NeRF never reaches density {level:.3g} (peak {peak:.3g}); using {peak / 2:.3g}",
              file=sys.stderr)
        level = peak / 2
    return level


@torch.no_grad()
def initial_dmtet(grid: TetGrid, nerf, gcfg: GeometryConfig) -> DMTet:
    """DMTet at the NeRF's level set (surface_level of gcfg.density_threshold), on the grid fitted to the object's
    bounding box when gcfg.fit_grid."""
    sigma = torch.cat([nerf.density(grid.vertices[i:i + (1 << 18)]).reshape(-1).float()
                       for i in range(0, grid.vertices.shape[0], 1 << 18)])
    threshold = surface_level(sigma, ~grid.boundary, gcfg.density_threshold, gcfg.auto_level_scale)
    dmtet = DMTet(grid, object_box(grid, sigma, threshold) if gcfg.fit_grid else None)
    dmtet.init_from_density(nerf.density, threshold, gcfg.sdf_init)
    return dmtet


class GeometryStage:
    """Stage 2 in the runner's protocol (runner.Stage)."""

    name = STAGE

    def __init__(self, ctx: StageContext, upstream: dict | None):
        self.ctx, self.settings, self.upstream = ctx, ctx.cfg.geometry, upstream
        self.grid = TetGrid.build(self.settings.tet_res, ctx.cfg.nerf.bound, ctx.device)
        self.dmtets: list[DMTet] = []  # built by initialise or load_state_dict
        self.optimizers: list = []
        self.raster = make_rasterizer(ctx.device)

    def initialise(self) -> None:
        if self.upstream is None:
            raise BadRequest("The geometry stage starts from a finished nerf stage: include it (--stages nerf,...).")
        self.dmtets = [initial_dmtet(self.grid, nerf, self.settings) for nerf in self.upstream["nerfs"]]
        self.optimizers = [make_optimizer(d, self.settings, self.ctx.fused_adam) for d in self.dmtets]

    def signature(self) -> dict:
        return {"particles": self.ctx.cfg.particles, "guidance": "sds", "tet_res": self.settings.tet_res}

    def guidance(self) -> Guidance:
        # SDS on normal maps at the stage's own CFG scale (geometry.guidance_scale), whatever stage 1 used.
        return Guidance(stage_prior(self.ctx.cfg.prior, self.settings.anneal_fraction, self.settings.guidance_scale),
                        "sds")

    def step(self, step: int, guidance: ScoreDistillation) -> torch.Tensor:
        return train_step(self.ctx, self.raster, self.dmtets, self.optimizers, guidance, step)

    def state_dict(self) -> dict:
        return {"particles": [{"sdf": d.sdf.detach(), "deform": d.deform.detach(), "box": d.box,
                               "optimizer": opt.state_dict()} for d, opt in zip(self.dmtets, self.optimizers)]}

    def load_state_dict(self, state: dict, path: Path) -> None:
        self.dmtets = [DMTet(self.grid) for _ in state["particles"]]
        self.optimizers = [make_optimizer(d, self.settings, self.ctx.fused_adam) for d in self.dmtets]
        for d, opt, saved in zip(self.dmtets, self.optimizers, state["particles"]):
            # Checkpoints from before the fitted grid hold no box: theirs was the whole cube, DMTet's default.
            d.load_state_dict({"sdf": saved["sdf"], "deform": saved["deform"], "box": saved.get("box", d.box)})
            load_optimizer_state(opt, saved["optimizer"], path)

    def outputs(self, trained: bool) -> dict:
        with torch.no_grad():
            meshes = [d.mesh().detach().without_small_parts(self.settings.min_part_fraction) for d in self.dmtets]
        upstream = self.upstream
        return {"meshes": meshes, "checkpoint": self.ctx.checkpoint_path(STAGE),
                "textures": [nerf_albedo(n) for n in upstream["nerfs"]] if upstream else [None] * len(meshes),
                "backgrounds": upstream["backgrounds"] if upstream else [None] * len(meshes)}


def make_optimizer(dmtet: DMTet, gcfg: GeometryConfig, fused: bool = False) -> torch.optim.Optimizer:
    return adam(dmtet.parameters(), fused, lr=gcfg.lr, betas=gcfg.betas, eps=gcfg.eps)


def train_step(ctx: StageContext, raster, dmtets: list[DMTet], optimizers, guidance: ScoreDistillation,
               step: int) -> torch.Tensor:
    cfg, gcfg = ctx.cfg, ctx.cfg.geometry
    res = gcfg.resolution
    cameras = particle_cameras(ctx, cfg.cameras)
    images, reg = [], 0.0
    for k, dmtet in enumerate(dmtets):
        mesh = dmtet.mesh()
        out = render_mesh(raster, mesh.positions, mesh.faces, cameras[k], res, res, shading="normal",
                          background=NORMAL_BACKGROUND)
        images.append(out["rgb"])
        reg = reg + regularisers(mesh, gcfg)
    images = torch.cat(images)
    # The distillation loss is a batch mean (per-particle gradients shrink as 1/n), so the regularisers are
    # averaged over the particles too and keep their weight relative to it; over several processes both are
    # means over the job's particles.
    directions = ViewSectors.of(cfg.prior).directions(cameras)
    loss, _ = guidance.loss(images, cameras.c2w, directions, ctx.prompt_emb, step, gcfg.steps, ctx.generators)
    loss = len(dmtets) / cfg.particles * loss + reg / cfg.particles
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
