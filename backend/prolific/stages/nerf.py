"""Stage 1: n NeRF particles optimised with VSD (or SDS) against the diffusion prior.

Every particle has its own NeRF, background, occupancy grid and Adam optimizer; all share one score estimator
(the LoRA ε_φ learns the distribution of all particles' renders). One iteration renders every particle from its
own random camera, takes one particle step on the distillation loss plus the opacity regularisers, then one
estimator step (PAPER.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import HashGridConfig, NerfConfig
from ..field.nerf import Background, NeRF
from ..prior.prompts import ViewSectors
from ..prior.vsd import ScoreDistillation
from ..render.cameras import sample_light_dirs, turntable_cameras
from ..render.packed import PackedRenderer, make_renderer
from ..render.shading import SHADINGS
from ..render.volume import OccupancyGrid
from .context import StageContext, particle_cameras, save_png
from .optimizers import field_optimizer, load_optimizer_state
from .randomness import PARTICLE_INIT, seeded_init, stage_key
from .runner import Guidance

STAGE = "nerf"


@dataclass
class Particle:
    nerf: NeRF
    background: Background
    occupancy: OccupancyGrid
    renderer: Callable  # render_nerf's signature: nerf.renderer resolved once (render/packed.make_renderer)


def resolution_at(cfg: NerfConfig, step: int) -> int:
    """The rendering resolution of a step: each milestone switches to the next entry of cfg.resolutions."""
    return cfg.resolutions[sum(1 for m in cfg.resolution_milestones if step >= m)]


def make_particle(cfg: NerfConfig, grid: HashGridConfig, device: torch.device) -> Particle:
    nerf = NeRF(cfg, grid, device=device)
    background = Background(cfg).to(device)
    renderer = make_renderer(cfg, device)
    # The grid tests σ·Δt at the packed renderer's march step; the dense renderer has no fixed step: σ alone.
    step = renderer.step if isinstance(renderer, PackedRenderer) else 1.0
    occupancy = OccupancyGrid(cfg.occupancy_res, cfg.bound, cfg.occupancy_threshold, step=step).to(device)
    return Particle(nerf, background, occupancy, renderer)


def make_optimizer(cfg: NerfConfig, nerf: NeRF, background: Background,
                   fused: bool = False) -> torch.optim.Optimizer:
    return field_optimizer(nerf, background, cfg.lr, cfg.mlp_lr, cfg.background_lr, fused)


def regularisers(renders: list[dict], cfg: NerfConfig, step: int, share: float = 1.0,
                 sampled_total: float | None = None) -> torch.Tensor:
    """The opacity regularisers of one step's renders (render_nerf's outputs), batch means like the
    distillation loss: sparsity mean √(o² + 0.01) pulls every pixel's opacity down (fog, floaters); the opacity
    BCE −o·log o − (1−o)·log(1−o), from step opacity_start_fraction·steps on, pushes each pixel to fully empty
    or fully opaque, so a faint floater goes and the opaque object stays; the official code's entropy does the
    same per sample, over the samples the field was evaluated at. Over several processes each gets its part of
    the job's means: `share` = its renders / all renders, `sampled_total` = all renders' evaluated samples."""
    opacity = torch.cat([r["opacity"] for r in renders])
    loss = opacity.new_zeros(())
    if cfg.sparsity_weight > 0:
        loss = loss + share * cfg.sparsity_weight * (opacity ** 2 + 0.01).sqrt().mean()
    if cfg.opacity_weight > 0 and step >= cfg.opacity_start_fraction * cfg.steps:
        o = opacity.clamp(1e-3, 1 - 1e-3)  # threestudio's clamp
        loss = loss + share * cfg.opacity_weight * -(o * o.log() + (1 - o) * (1 - o).log()).mean()
    if cfg.entropy_weight > 0:
        w = torch.cat([r["weights"][r["sampled"]] for r in renders])
        if w.numel() > 0:
            w = w.clamp(1e-5, 1 - 1e-5)  # the official code's clamp
            entropy = -(w * w.log2() + (1 - w) * (1 - w).log2()).sum() / (sampled_total or w.numel())
            loss = loss + cfg.entropy_weight * entropy
    return loss


def _uniform(generator: torch.Generator) -> float:
    return torch.rand((), generator=generator, device=generator.device).item()


def _random_colour(generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(3, generator=generator, device=generator.device).to(device)


def pick_shading(probabilities: tuple[float, float, float], generator: torch.Generator) -> str:
    u = _uniform(generator)
    cumulative = 0.0
    for name, p in zip(SHADINGS, probabilities):
        cumulative += p
        if u < cumulative:
            return name
    return SHADINGS[-1]


def update_occupancy(particles: list[Particle], generators: list[torch.Generator]) -> None:
    with torch.no_grad():
        for p, g in zip(particles, generators):
            p.occupancy.update(p.nerf.density, generator=g)


class NerfStage:
    """Stage 1 in the runner's protocol (runner.Stage)."""

    name = STAGE

    def __init__(self, ctx: StageContext, upstream: dict | None = None):
        self.ctx, self.settings = ctx, ctx.cfg.nerf
        self.particles = []
        for k in ctx.particles:
            with seeded_init(ctx.cfg.seed, ctx.device, PARTICLE_INIT, stage_key(STAGE), k):
                self.particles.append(make_particle(self.settings, ctx.cfg.hash_grid, ctx.device))
        self.optimizers = [make_optimizer(self.settings, p.nerf, p.background, ctx.fused_adam)
                           for p in self.particles]

    def initialise(self) -> None:
        if self.settings.steps > 0:
            update_occupancy(self.particles, self.ctx.generators)

    def signature(self) -> dict:
        return {"particles": self.ctx.cfg.particles, "guidance": self.ctx.cfg.prior.guidance}

    def guidance(self) -> Guidance:
        return Guidance(self.ctx.cfg.prior, self.ctx.cfg.prior.guidance)

    def step(self, step: int, guidance: ScoreDistillation) -> torch.Tensor:
        rgb = train_step(self.ctx, self.particles, self.optimizers, guidance, step)
        if (step + 1) % self.settings.occupancy_every == 0:
            update_occupancy(self.particles, self.ctx.generators)
        return rgb

    def state_dict(self) -> dict:
        return {"particles": [{"nerf": p.nerf.state_dict(), "background": p.background.state_dict(),
                               "occupancy": p.occupancy.state_dict(), "optimizer": opt.state_dict()}
                              for p, opt in zip(self.particles, self.optimizers)]}

    def load_state_dict(self, state: dict, path: Path) -> None:
        for p, opt, saved in zip(self.particles, self.optimizers, state["particles"]):
            p.nerf.load_state_dict(saved["nerf"])
            p.background.load_state_dict(saved["background"])
            p.occupancy.load_state_dict(saved["occupancy"])
            load_optimizer_state(opt, saved["optimizer"], path)

    def outputs(self, trained: bool) -> dict:
        ctx = self.ctx
        turntables = [write_turntable(ctx, p, ctx.object_dir(ctx.particle_index(i)), again=trained)
                      for i, p in enumerate(self.particles)]
        return {"nerfs": [p.nerf for p in self.particles], "backgrounds": [p.background for p in self.particles],
                "occupancy": [p.occupancy for p in self.particles], "checkpoint": ctx.checkpoint_path(STAGE),
                "turntables": turntables}


def train_step(ctx: StageContext, particles: list[Particle], optimizers: list, estimator: ScoreDistillation,
               step: int) -> torch.Tensor:
    ncfg = ctx.cfg.nerf
    res = resolution_at(ncfg, step)
    generators = ctx.generators
    cameras = particle_cameras(ctx, ctx.cfg.cameras)
    lights = torch.cat([sample_light_dirs(cameras[k], g) for k, g in enumerate(generators)])
    # Both references: on a random half of the steps each render gets a random solid colour behind it (both
    # branches of VSD see that image), so the object cannot hide in the background.
    solid = ncfg.random_background > 0 and _uniform(ctx.generator) < ncfg.random_background
    renders = []
    for k, (p, g) in enumerate(zip(particles, generators)):
        background = _random_colour(g, ctx.device) if solid else p.background
        out = p.renderer(p.nerf, background, cameras[k], res, res, shading=pick_shading(ncfg.shading, g),
                         occupancy=p.occupancy, light_dir=lights[k:k + 1], generator=g)
        renders.append(out)
    images = torch.cat([r["rgb"] for r in renders])
    directions = ViewSectors.of(ctx.cfg.prior).directions(cameras)
    loss, _ = estimator.loss(images, cameras.c2w, directions, ctx.prompt_emb, step, ncfg.steps, generators)
    # The estimator's update reads this step's renders (stored by `loss`), nothing the particles' backward
    # computes: issued before it, with overlap it runs beside it (prior/update_stream.py).
    estimator.update_estimator(ctx.generator, generators)
    # The losses are means over the job's renders: this process's part of them.
    share = len(particles) / ctx.cfg.particles
    sampled = None
    if ncfg.entropy_weight > 0 and ctx.team.size > 1:
        sampled = ctx.team.total(sum(int(r["sampled"].sum()) for r in renders))
    loss = share * loss + regularisers(renders, ncfg, step, share, sampled)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()
    return images.detach()


def write_turntable(ctx: StageContext, particle: Particle, folder: Path, again: bool = True) -> list[Path]:
    """Albedo renders from cfg.export.turntable_views azimuths around the object, at the final resolution
    (kept as they are when `again` is False and they all exist: a reloaded stage has nothing new to show)."""
    ncfg = ctx.cfg.nerf
    n = ctx.cfg.export.turntable_views
    paths = [folder / f"turntable_{i}.png" for i in range(n)]
    if not again and all(p.exists() for p in paths):
        return paths
    cameras = turntable_cameras(n, ctx.cfg.cameras, ctx.device)
    res = ncfg.resolutions[-1]
    with torch.no_grad():
        for i, path in enumerate(paths):
            out = particle.renderer(particle.nerf, particle.background, cameras[i], res, res,
                                    shading="albedo", occupancy=particle.occupancy, jitter=False)
            save_png(out["rgb"], path)
    return paths
