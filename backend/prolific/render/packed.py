"""The packed NeRF renderer, and the renderer a particle uses (`make_renderer`, chosen once from nerf.renderer).

Rays are marched with a fixed step through the occupancy grid (`render/march.py`), the field runs on the packed
samples only, and `composite` (segment ops, or the Triton kernel on CUDA) turns them into pixels. Outputs are
`render_nerf`'s, with weights/sampled per packed sample [N] instead of [R,S] (the regularisers read
weights[sampled] either way).

Early termination (a ray stops once its transmittance is below `early_stop`) and skipping near-empty samples
(alpha below `alpha_threshold`) need the densities, so they are done as nerfacc's sampling with a sigma_fn (what
threestudio renders with): the density alone without gradients over the packed samples, then those samples are
dropped before the field runs with gradients, so neither its forward nor its backward pays for them. Unlike
nerfacc, the density pass runs in rounds along the rays and stops at the rays that turned opaque (`_prune`),
so the inside of a solid object costs nothing. Without normals the pass keeps what the field computed at the
samples it keeps (`NeRF.probe`), and the field's pass with gradients replays it: its forward costs nothing, its
backward is the usual one (the hash grid's and the fused MLP's backward recompute from their inputs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..config import NerfConfig
from ..field.mlp import Encoded
from ..kernels import triton_available
from .cameras import Cameras
from .composite import composite as composite_torch
from .march import PackedSamples, march_rays, march_step, walk_lattice
from .shading import LIGHT
from .volume import (OccupancyGrid, as_images, background_rgb, check_shading, eval_field, light_directions,
                     render_nerf)

_DENSITY_CHUNK = 1 << 22  # points per no-grad density call of the early-termination pass
# Samples per ray in the first round of density calls (then twice as many per round): Instant-NGP marches in
# rounds too; 32 covers an opaque surface and the occupied cell padding it (up to ~5 steps of 512 at the
# standard occupancy grid): `prolific bench render --field solid` keeps 8.5 samples per pixel at 512.
FIRST_ROUND = 32


def render_nerf_packed(nerf, background, cameras: Cameras, H: int, W: int, shading: str = "albedo",
                       occupancy: OccupancyGrid | None = None, step: float = 0.01, early_stop: float = 0.0,
                       alpha_threshold: float = 0.0, light_dir: torch.Tensor | None = None, jitter: bool | None = None,
                       generator: torch.Generator | None = None, composite: Callable = composite_torch,
                       walk: Callable = walk_lattice, replay: bool = True) -> dict[str, torch.Tensor]:
    """`render_nerf` (same arguments and outputs) with packed samples every `step` world units."""
    check_shading(shading)
    B = len(cameras)
    origins, dirs = cameras.rays(H, W)
    ray_batch = torch.arange(B, device=origins.device).repeat_interleave(H * W)
    light = light_directions(cameras, light_dir, origins.dtype)[ray_batch] if shading != "albedo" else None
    out = render_rays_packed(nerf, background, origins.reshape(-1, 3), dirs.reshape(-1, 3), ray_batch, light,
                             shading, occupancy, step, early_stop, alpha_threshold, jitter, generator, composite, walk,
                             replay)
    return as_images(out, B, H, W)


def render_rays_packed(nerf, background, origins: torch.Tensor, dirs: torch.Tensor, ray_batch: torch.Tensor,
                       light: torch.Tensor | None, shading: str = "albedo", occupancy: OccupancyGrid | None = None,
                       step: float = 0.01, early_stop: float = 0.0, alpha_threshold: float = 0.0,
                       jitter: bool | None = None, generator: torch.Generator | None = None,
                       composite: Callable = composite_torch, walk: Callable = walk_lattice,
                       replay: bool = True) -> dict[str, torch.Tensor]:
    """`volume.render_rays` with packed samples: per-ray outputs for rays origins/dirs [R,3]. `replay`: the
    field's pass with gradients reuses the density pass's values (where there is one, without normals)."""
    jitter = nerf.training if jitter is None else jitter
    samples = march_rays(origins, dirs, nerf.bound, step, occupancy, jitter, generator, walk)
    need_normals = shading != "albedo"
    values = None
    if (early_stop > 0 or alpha_threshold > 0) and len(samples) > 0:
        samples, values = _prune(nerf, samples, origins, dirs, early_stop, alpha_threshold,
                                 keep_values=replay and not need_normals and torch.is_grad_enabled())
    ray, t = samples.ray, samples.t
    x = origins[ray] + t[:, None] * dirs[ray]
    if need_normals:
        sigma, albedo, normal = eval_field(nerf, x, with_normal=True)
        color = LIGHT.shade(albedo, normal, light[ray], shading)
        features = torch.cat([color.float(), t[:, None], normal.float()], dim=1)
    else:
        sigma, color = eval_field(nerf, x, with_normal=False, replay=values)
        features = torch.cat([color.float(), t[:, None]], dim=1)
    weights, acc, opacity = composite(sigma.float() * samples.dt, features, ray, samples.offsets)
    opacity = opacity[:, None]
    rgb = acc[:, :3] + (1 - opacity) * background_rgb(background, dirs, ray_batch)
    out = {"rgb": rgb, "opacity": opacity, "depth": acc[:, 3:4] / opacity.clamp_min(1e-6), "weights": weights,
           "sampled": torch.ones_like(weights, dtype=torch.bool), "n_samples": len(samples)}
    if need_normals:
        out["normal"] = acc[:, 4:7]
    return out


@torch.no_grad()
def _prune(nerf, samples: PackedSamples, origins, dirs, early_stop: float, alpha_threshold: float,
           first_round: int = FIRST_ROUND, keep_values: bool = False) -> tuple[PackedSamples, Encoded | None]:
    """The samples that reach the field: transmittance >= early_stop and alpha >= alpha_threshold. With early
    termination the densities are taken in rounds along the rays (the first `first_round` samples of every ray,
    then twice as many of the rays still lit, and so on), so a ray stops costing density calls soon after it
    turns opaque instead of after the object's far side; the kept samples are those of one pass over all.

    With `keep_values` (and a field that can replay them) also the field's values at the kept samples, in
    their order (`NeRF.probe`); else None. A round holds every sample in front of its own along their rays, so
    which of them are kept is known when it ends: only their values are held."""
    keep_values = keep_values and hasattr(nerf, "probe")  # a field with a density alone has nothing to replay
    if early_stop <= 0:
        sigma_dt, values = _sigma_dt(nerf, samples, origins, dirs, slice(None), keep_values)
        keep = 1 - torch.exp(-sigma_dt) >= alpha_threshold
        if not values:
            return samples.select(keep), None
        return samples.select(keep), Encoded.cat([v for _, v in _take(values, keep.nonzero().squeeze(1))])
    held = []  # (sample indices, the field's values there) of each round's kept samples
    keep = torch.zeros(len(samples), dtype=torch.bool, device=samples.t.device)
    counts = samples.offsets.diff()
    depth = torch.zeros(samples.n_rays, dtype=torch.float64, device=samples.t.device)  # optical depth so far
    rays, lo, size = (counts > 0).nonzero().squeeze(1), 0, first_round  # the rays still lit
    while rays.numel() > 0:
        idx, run, first, last = _round(samples.offsets, rays, lo, size)
        sd, values = _sigma_dt(nerf, samples, origins, dirs, idx, keep_values)
        # In float64, as composite.transmittance: the depth in front of a sample is its ray's before this round
        # plus the round's own samples in front of it.
        total = torch.cumsum(sd.double(), 0)
        before = total - sd.double()
        front = (depth.index_select(0, rays) - before.index_select(0, first)).index_select(0, run) + before
        rows = ((torch.exp(-front) >= early_stop) & (1 - torch.exp(-sd) >= alpha_threshold)).nonzero().squeeze(1)
        at = idx.index_select(0, rows)
        keep[at] = True
        held += [(at[part], v) for part, v in _take(values, rows)]
        depth.index_add_(0, rays, total.index_select(0, last) - before.index_select(0, first))
        lo, size = lo + size, 2 * size
        rays = rays[(counts.index_select(0, rays) > lo) & (torch.exp(-depth.index_select(0, rays)) >= early_stop)]
    kept = samples.select(keep)
    if not held:
        return kept, None
    rank = keep.cumsum(0) - 1  # a kept sample's row among the kept
    placed = [(rank.index_select(0, at), values) for at, values in held]
    held.clear()  # `assemble` frees each part once it is placed
    return kept, Encoded.assemble(placed, len(kept))


def _round(offsets: torch.Tensor, rays: torch.Tensor, lo: int, size: int):
    """The samples lo..lo+size-1 along each of `rays` (each with more than lo): their indices [n] in order, the
    position in `rays` of each one's ray [n], and where each ray's run starts and ends in them [len(rays)]."""
    start = offsets.index_select(0, rays) + lo
    count = (offsets.index_select(0, rays + 1) - start).clamp_max(size)
    end = torch.cumsum(count, 0)
    n = int(end[-1])
    run = torch.repeat_interleave(torch.arange(rays.numel(), device=rays.device), count, output_size=n)
    first = end - count
    idx = torch.arange(n, device=rays.device) + (start - first).index_select(0, run)
    return idx, run, first, end - 1


def _sigma_dt(nerf, samples: PackedSamples, origins, dirs, idx,
              keep_values: bool = False) -> tuple[torch.Tensor, list[Encoded]]:
    """σ·Δt of the samples `idx` (indices or a slice), in chunks of _DENSITY_CHUNK points, and with
    `keep_values` the field's values there chunk by chunk (`NeRF.probe`; none where the field cannot replay,
    as with tiny-cuda-nn's grid)."""
    ray = samples.ray[idx]
    x = origins[ray] + samples.t[idx, None] * dirs[ray]
    parts = [nerf.probe(chunk) if keep_values else (nerf.density(chunk), None) for chunk in x.split(_DENSITY_CHUNK)]
    sigma_dt = torch.cat([sigma.float() for sigma, _ in parts]) * samples.dt[idx]
    return sigma_dt, [v for _, v in parts if v is not None]


def _take(chunks: list[Encoded], rows: torch.Tensor) -> list[tuple[slice, Encoded]]:
    """The values at `rows` (ascending) of the chunks' concatenation, chunk by chunk, each with the stretch of
    `rows` it holds: no chunk is copied whole."""
    if len(chunks) <= 1:
        return [(slice(None), chunk.take(rows)) for chunk in chunks]
    starts = range(0, len(chunks) * _DENSITY_CHUNK, _DENSITY_CHUNK)
    cuts = torch.searchsorted(rows, torch.tensor(starts[1:], device=rows.device)).tolist()
    bounds = [0, *cuts, rows.numel()]
    return [(slice(a, b), chunk.take(rows[a:b] - start))
            for chunk, start, a, b in zip(chunks, starts, bounds, bounds[1:])]


@dataclass(frozen=True)
class PackedRenderer:
    """render_nerf_packed with a particle's settings: step, the pruning thresholds, the lattice walk, the
    compositing (segment ops, or the Triton kernels) and whether the density pass's values are replayed."""

    step: float
    early_stop: float = 0.0
    alpha_threshold: float = 0.0
    composite: Callable = composite_torch
    walk: Callable = walk_lattice
    replay: bool = True
    name: str = "packed"

    def __call__(self, nerf, background, cameras: Cameras, H: int, W: int, **kwargs) -> dict[str, torch.Tensor]:
        return render_nerf_packed(nerf, background, cameras, H, W, step=self.step, early_stop=self.early_stop,
                                  alpha_threshold=self.alpha_threshold, composite=self.composite, walk=self.walk,
                                  replay=self.replay, **kwargs)

    @property
    def fused(self) -> bool:
        """Whether it runs the Triton kernels (march and composite) rather than plain PyTorch."""
        return self.walk is not walk_lattice


@dataclass(frozen=True)
class DenseRenderer:
    """render_nerf (samples_per_ray spread over each ray's occupied stretch) with a particle's settings."""

    samples_per_ray: int
    name: str = "dense"

    def __call__(self, nerf, background, cameras: Cameras, H: int, W: int, **kwargs) -> dict[str, torch.Tensor]:
        return render_nerf(nerf, background, cameras, H, W, samples_per_ray=self.samples_per_ray, **kwargs)


def make_renderer(cfg: NerfConfig, device: torch.device | str | None = None):
    """The renderer nerf.renderer names (auto = packed); on CUDA with triton importable the packed renderer
    marches and composites with the Triton kernels, elsewhere in plain PyTorch."""
    if cfg.renderer == "dense":
        return DenseRenderer(cfg.samples_per_ray)
    step = march_step(cfg.bound, cfg.march_steps)
    if torch.device(device or "cpu").type == "cuda" and triton_available():
        from ..kernels.composite import composite as composite_triton
        from ..kernels.march import walk_lattice as walk_triton

        return PackedRenderer(step, cfg.early_stop, cfg.alpha_threshold, composite_triton, walk_triton)
    return PackedRenderer(step, cfg.early_stop, cfg.alpha_threshold)
