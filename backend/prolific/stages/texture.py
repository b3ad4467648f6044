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
from ..field.trimesh import TriMesh
from ..field.texture import AlbedoField
from ..prior.prompts import ViewSectors
from ..prior.vsd import ScoreDistillation
from ..render.mesh import render_mesh
from ..render.raster import make_rasterizer
from .context import StageContext, particle_cameras
from .optimizers import field_optimizer, load_optimizer_state
from .randomness import PARTICLE_INIT, seeded_init, stage_key
from .runner import Guidance, stage_prior

STAGE = "texture"
# Regression onto the NeRF albedo: at most this many steps and never more than the stage's own step count (a fit
# step costs far less than a distillation step, so the copy never dominates the stage).
INIT_FIT_STEPS = 200
INIT_FIT_POINTS = 1 << 16
WHITE = (1.0, 1.0, 1.0)


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


class TextureStage:
    """Stage 3 in the runner's protocol (runner.Stage)."""

    name = STAGE

    def __init__(self, ctx: StageContext, upstream: dict | None):
        if upstream is None:
            raise BadRequest("The texture stage starts from a finished geometry stage: include it "
                             "(--stages geometry,texture).")
        self.ctx, self.settings, self.upstream = ctx, ctx.cfg.texture, upstream
        self.meshes: list[TriMesh] = upstream["meshes"]
        self.fields = []
        for i in range(len(self.meshes)):
            with seeded_init(ctx.cfg.seed, ctx.device, PARTICLE_INIT, stage_key(STAGE), ctx.particle_index(i)):
                self.fields.append(AlbedoField(ctx.cfg.hash_grid, ctx.cfg.nerf.bound, ctx.device))
        self.backgrounds = stage_backgrounds(self.settings, upstream.get("backgrounds") or [None] * len(self.fields))
        self.optimizers = [make_optimizer(f, b, self.settings, ctx.fused_adam)
                           for f, b in zip(self.fields, self.backgrounds)]
        self.raster = make_rasterizer(ctx.device)
        self.normals = [m.vertex_normals() for m in self.meshes]

    def initialise(self) -> None:
        """Each field first copies its NeRF's albedo on the surface."""
        nerf_albedos = self.upstream.get("textures") or [None] * len(self.fields)
        for f, mesh, nerf_albedo, g in zip(self.fields, self.meshes, nerf_albedos, self.ctx.generators):
            if nerf_albedo is not None and mesh.faces.shape[0] > 0:
                points = mesh.sample_surface(INIT_FIT_POINTS, g)
                f.fit(nerf_albedo, points, min(INIT_FIT_STEPS, self.settings.steps), generator=g)

    def signature(self) -> dict:
        return {"particles": self.ctx.cfg.particles, "guidance": self.settings.guidance}

    def guidance(self) -> Guidance:
        return Guidance(stage_prior(self.ctx.cfg.prior, self.settings.anneal_fraction), self.settings.guidance)

    def step(self, step: int, guidance: ScoreDistillation) -> torch.Tensor:
        return train_step(self.ctx, self.raster, self.meshes, self.normals, self.fields, self.optimizers,
                          self.backgrounds, guidance, step)

    def state_dict(self) -> dict:
        particles = []
        for f, b, opt in zip(self.fields, self.backgrounds, self.optimizers):
            saved = {"field": f.state_dict(), "optimizer": opt.state_dict()}
            if isinstance(b, torch.nn.Module):
                saved["background"] = b.state_dict()
            particles.append(saved)
        return {"particles": particles}

    def load_state_dict(self, state: dict, path: Path) -> None:
        for f, b, opt, saved in zip(self.fields, self.backgrounds, self.optimizers, state["particles"]):
            f.load_state_dict(saved["field"])
            if isinstance(b, torch.nn.Module) and "background" in saved:
                b.load_state_dict(saved["background"])
            load_optimizer_state(opt, saved["optimizer"], path)

    def outputs(self, trained: bool) -> dict:
        for f in self.fields:
            f.requires_grad_(False)
        return {"meshes": self.meshes, "textures": self.fields, "checkpoint": self.ctx.checkpoint_path(STAGE)}


def make_optimizer(field: AlbedoField, background, tcfg: TextureConfig, fused: bool = False) -> torch.optim.Optimizer:
    return field_optimizer(field, background, tcfg.lr, tcfg.mlp_lr, tcfg.background_lr, fused)


def train_step(ctx: StageContext, raster, meshes: list[TriMesh], normals: list, fields: list, optimizers: list,
               backgrounds: list, guidance: ScoreDistillation, step: int) -> torch.Tensor:
    tcfg = ctx.cfg.texture
    cameras = particle_cameras(ctx, ctx.cfg.cameras)
    images = torch.cat([
        render_mesh(raster, m.positions, m.faces, cameras[k], tcfg.resolution, tcfg.resolution, shading="albedo",
                    normals=normals[k], albedo_fn=fields[k], background=backgrounds[k], antialias=False)["rgb"]
        for k, m in enumerate(meshes)])
    directions = ViewSectors.of(ctx.cfg.prior).directions(cameras)
    loss, _ = guidance.loss(images, cameras.c2w, directions, ctx.prompt_emb, step, tcfg.steps, ctx.generators)
    # Before the fields' backward, which it does not need: with overlap it runs beside it (as in stage 1).
    guidance.update_estimator(ctx.generator, ctx.generators)
    loss = len(fields) / ctx.cfg.particles * loss  # this process's part of the mean over the job's renders
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    if loss.requires_grad:
        loss.backward()
        for opt in optimizers:
            opt.step()
    return images
