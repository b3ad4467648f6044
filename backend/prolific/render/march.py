"""Packed ray marching (Instant-NGP, nerfacc's OccGridEstimator): a fixed step along each ray, samples only in
occupied cells of the occupancy grid, all rays' samples in one flat array.

Each ray's samples sit on a lattice anchored at its entry into the cube, t_k = entry + (k + u)·step with u = ½
(or one random u per ray when jittering), so the samples do not move when the occupancy grid changes; the whole
lattice is walked and only the points in occupied cells are kept. The fields run on those samples only: their
cost is the samples on the object, not rays × steps (on CUDA the walk itself is kernels/march.py's, which keeps
nothing of that size either).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .volume import OccupancyGrid, ray_aabb, uniform

_CANDIDATES = 1 << 24  # lattice points generated at once (the rest of a frame waits for the next chunk)


def march_step(bound: float, march_steps: int) -> float:
    """The fixed step: `march_steps` steps over the diagonal of the cube [-bound, bound]^3."""
    return 2 * math.sqrt(3) * bound / march_steps


@dataclass
class PackedSamples:
    """Samples of R rays, ray by ray in order of t: ray index [N] (non-decreasing), midpoint t [N], length dt [N],
    and offsets [R+1] (ray r's samples are [offsets[r], offsets[r+1]))."""

    ray: torch.Tensor
    t: torch.Tensor
    dt: torch.Tensor
    offsets: torch.Tensor

    @property
    def n_rays(self) -> int:
        return self.offsets.numel() - 1

    def __len__(self) -> int:
        return self.ray.numel()

    def select(self, keep: torch.Tensor) -> "PackedSamples":
        """The samples where keep [N] (bool) is true, still packed ray by ray."""
        ray = self.ray[keep]
        return PackedSamples(ray, self.t[keep], self.dt[keep], offsets_of(ray, self.n_rays))


def offsets_of(ray: torch.Tensor, n_rays: int) -> torch.Tensor:
    counts = torch.bincount(ray, minlength=n_rays)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


@torch.no_grad()
def march_rays(origins: torch.Tensor, dirs: torch.Tensor, bound: float, step: float,
               occupancy: OccupancyGrid | None = None, jitter: bool = False,
               generator: torch.Generator | None = None, walk: Callable | None = None) -> PackedSamples:
    """Samples every `step` along rays origins/dirs [R,3] inside the cube [-bound, bound]^3, in occupied cells
    only when an occupancy grid is given. `walk` finds them (`walk_lattice` here, or kernels/march.py's twin)."""
    R, device = origins.shape[0], origins.device
    entry, exit_ = ray_aabb(origins, dirs, bound)
    u = uniform((R,), generator, device) if jitter else torch.full((R,), 0.5, device=device)
    # Lattice indices k with t_k < exit (a ray that misses the cube has exit <= entry and none).
    n_steps = ((exit_ - entry) / step - u).ceil().clamp_min(0).long()
    ray, t, offsets = (walk or walk_lattice)(origins, dirs, entry, u, n_steps, step, occupancy)
    return PackedSamples(ray, t, torch.full_like(t, step), offsets)


def walk_lattice(origins: torch.Tensor, dirs: torch.Tensor, entry: torch.Tensor, u: torch.Tensor,
                 n_steps: torch.Tensor, step: float,
                 occupancy: OccupancyGrid | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ray [N], t [N], offsets [R+1]) of the lattice points t_k = entry + (k + u)·step, k < n_steps, that lie in
    occupied cells (all of them without a grid), in chunks of at most _CANDIDATES lattice points."""
    device = origins.device
    rays, ts = [], []
    for chunk in _ray_chunks(n_steps):
        c = n_steps[chunk]
        ray = torch.repeat_interleave(torch.arange(chunk.start, chunk.stop, device=device), c)
        start = torch.cumsum(c, 0) - c
        k = torch.arange(ray.numel(), device=device) - start.repeat_interleave(c)
        t = entry[ray] + (k + u[ray]) * step
        if occupancy is not None:
            inside = occupancy.lookup(origins[ray] + t[:, None] * dirs[ray])
            ray, t = ray[inside], t[inside]
        rays.append(ray)
        ts.append(t)
    ray = torch.cat(rays) if rays else torch.zeros(0, dtype=torch.long, device=device)
    t = torch.cat(ts) if ts else torch.zeros(0, device=device)
    return ray, t, offsets_of(ray, origins.shape[0])


def _ray_chunks(counts: torch.Tensor) -> list[slice]:
    """Consecutive ray ranges with at most _CANDIDATES lattice points each (one range when they all fit)."""
    total = int(counts.sum())
    if total <= _CANDIDATES:
        return [slice(0, counts.numel())] if total > 0 else []
    bounds = torch.searchsorted(counts.cumsum(0), torch.arange(_CANDIDATES, total, _CANDIDATES,
                                                               device=counts.device), right=True).tolist()
    edges = [0, *bounds, counts.numel()]
    return [slice(a, b) for a, b in zip(edges, edges[1:]) if b > a]
