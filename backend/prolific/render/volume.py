"""Volume rendering of the NeRF: ray–box intersection, occupancy-grid skipping, stratified samples, compositing
and shading (albedo / lambertian / textureless).

With an occupancy grid, each ray's samples are spread only over the stretch of the ray between its first and
last occupied cell (so the samples land on the object, not on empty space), and samples that still fall in
empty cells get zero density without running the network.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .cameras import Cameras
from .shading import LIGHT, SHADINGS

_CHUNK = 1 << 18  # points per density-function call while updating the grid
_PROBE_CHUNK = 1 << 22  # grid lookups per step while finding each ray's occupied stretch


def uniform(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Uniform [0,1) numbers on `device`, drawn from `generator` (on its own device) when one is given."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


class OccupancyGrid(nn.Module):
    """A res^3 grid over [-bound, bound]^3 marking where density may be non-zero.

    `update` keeps an exponential moving maximum of each cell's density like instant-ngp (old * decay vs new,
    whichever is larger), sampled at the cell's 8 corners and one random point inside it; a cell is occupied while
    that value times `step` exceeds min(threshold, its mean times `step`): with the renderer's march step that is
    nerfacc's test on σ·Δt (≈ a sample's alpha), with step 1 one on the density itself. Index order of the grids
    is [x, y, z]."""

    def __init__(self, res: int, bound: float, threshold: float = 0.01, decay: float = 0.95, step: float = 1.0):
        super().__init__()
        self.res, self.bound, self.threshold, self.decay = int(res), float(bound), float(threshold), float(decay)
        self.step = float(step)
        self.register_buffer("density", torch.full((res, res, res), float("inf")))
        self.register_buffer("occupied", torch.ones(res, res, res, dtype=torch.bool))

    @property
    def occupied_fraction(self) -> float:
        return float(self.occupied.float().mean())

    def _eval(self, density_fn, pts: torch.Tensor) -> torch.Tensor:
        return torch.cat([density_fn(chunk).float() for chunk in pts.split(_CHUNK)])

    @torch.no_grad()
    def update(self, density_fn, generator: torch.Generator | None = None) -> None:
        """Refresh the grid from density_fn(x [N,3] world) -> sigma [N]."""
        res, device = self.res, self.density.device
        lin = torch.linspace(-self.bound, self.bound, res + 1, device=device)
        verts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)
        at_verts = self._eval(density_fn, verts).reshape(1, 1, res + 1, res + 1, res + 1)
        corner_max = nn.functional.max_pool3d(at_verts, kernel_size=2, stride=1)[0, 0]  # [res,res,res]
        cell = 2 * self.bound / res
        idx = torch.stack(torch.meshgrid(*(torch.arange(res, device=device),) * 3, indexing="ij"), -1).reshape(-1, 3)
        u = uniform(idx.shape, generator, device)
        inner = self._eval(density_fn, -self.bound + (idx + u) * cell).reshape(res, res, res)
        new = torch.maximum(corner_max, inner)
        old = torch.where(torch.isinf(self.density), torch.zeros_like(new), self.density * self.decay)
        self.density.copy_(torch.maximum(old, new))
        threshold = min(self.threshold, float(self.density.mean()) * self.step)
        self.occupied.copy_(self.density * self.step > threshold)

    def lookup(self, pts: torch.Tensor) -> torch.Tensor:
        """Whether each world point [...,3] lies in an occupied cell (False outside the cube)."""
        inside = (pts.abs() <= self.bound).all(-1)
        ijk = ((pts + self.bound) / (2 * self.bound) * self.res).long().clamp(0, self.res - 1)
        flat = (ijk[..., 0] * self.res + ijk[..., 1]) * self.res + ijk[..., 2]
        return inside & self.occupied.reshape(-1)[flat]


def ray_aabb(origins: torch.Tensor, dirs: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances [R] of rays through the cube [-bound, bound]^3 (entry clamped to >= 0);
    a ray misses when exit <= entry."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-bound - origins) / safe
    t1 = (bound - origins) / safe
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


@torch.no_grad()
def occupied_span(grid: OccupancyGrid, origins, dirs, near, far) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink [near, far] of each ray to the stretch between its first and last occupied cell (probing at half
    a cell), padded by one probe step; rays through empty cells only get far = near."""
    n_probe = int(math.ceil(2 * math.sqrt(3) * grid.res)) + 1
    lo_out, hi_out = [], []
    k = torch.arange(n_probe, device=origins.device, dtype=origins.dtype)
    for o, d, lo, hi in zip(*(t.split(max(1, _PROBE_CHUNK // n_probe)) for t in (origins, dirs, near, far))):
        step = ((hi - lo) / n_probe)[:, None]
        t = lo[:, None] + (k + 0.5) * step  # [r,P]
        occ = grid.lookup(o[:, None, :] + t[..., None] * d[:, None, :])
        any_occ = occ.any(-1)
        first = torch.where(occ, k, float(n_probe)).amin(-1)
        last = torch.where(occ, k, -1.0).amax(-1)
        new_lo = torch.maximum(lo, lo + first * step[:, 0] - step[:, 0])
        new_hi = torch.minimum(hi, lo + (last + 1) * step[:, 0] + step[:, 0])
        lo_out.append(torch.where(any_occ, new_lo, lo))
        hi_out.append(torch.where(any_occ, new_hi, lo))
    return torch.cat(lo_out), torch.cat(hi_out)


def background_rgb(background, dirs: torch.Tensor, ray_batch: torch.Tensor) -> torch.Tensor:
    if isinstance(background, nn.Module):
        return background(dirs)
    if background is None:
        return torch.ones_like(dirs)
    bg = torch.as_tensor(background, dtype=dirs.dtype, device=dirs.device)
    return bg.expand(dirs.shape[0], 3) if bg.dim() == 1 else bg[ray_batch]


# Above this many network points (4 per sample with normals) the field runs in checkpointed chunks: its
# activations take ~350 bytes per point in bf16, ~700 in fp32, i.e. tens of GB for the dense renderer's
# 512² × 64 samples with normals (measured: OOM on an 80 GB H100). Below it the network runs once: recomputing
# it in backward would cost a third more field work per step.
FIELD_CHUNK = 1 << 23


def eval_field(nerf, x: torch.Tensor, with_normal: bool, replay=None):
    """nerf(x) for the sampled points; with gradients and many points, in chunks that keep only their outputs
    and recompute the network in backward (activation checkpointing), so memory grows ~10 floats per sample.
    `replay`: the field's values at x from `NeRF.probe`, which its forward hands back instead of running the
    grid (and the fused MLP); a PyTorch MLP still runs, and is checkpointed like the rest."""
    if with_normal:
        def call(pts, _):
            return nerf(pts, with_normal=True)
    else:
        def call(pts, values):
            return nerf(pts) if values is None else nerf(pts, replay=values)
    chunk = FIELD_CHUNK // 4 if with_normal else FIELD_CHUNK
    if not torch.is_grad_enabled() or x.shape[0] <= chunk:
        return call(x, replay)
    points = x.split(chunk)
    values = replay.split(chunk) if replay is not None else [None] * len(points)
    parts = [checkpoint(call, part, v, use_reentrant=False, preserve_rng_state=False)
             for part, v in zip(points, values)]
    return tuple(torch.cat(outs) for outs in zip(*parts))


def light_directions(cameras: Cameras, light_dir, dtype) -> torch.Tensor:
    """Unit directions toward the light per camera [B,3]: `light_dir` ([3] or [B,3]) or, when None, each camera."""
    if light_dir is None:
        return cameras.position / cameras.position.norm(dim=-1, keepdim=True)
    return torch.as_tensor(light_dir, dtype=dtype, device=cameras.device).reshape(-1, 3).expand(len(cameras), 3)


def check_shading(shading: str) -> None:
    if shading not in SHADINGS:
        raise ValueError(f"Unknown shading '{shading}': use one of {', '.join(SHADINGS)}.")


def as_images(out: dict[str, torch.Tensor], B: int, H: int, W: int) -> dict[str, torch.Tensor]:
    """Per-ray outputs [B·H·W, C] of `rgb`, `opacity`, `depth` and `normal` as images [B,C,H,W]."""
    for key in ("rgb", "opacity", "depth", "normal"):
        if key in out:
            out[key] = out[key].reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
    return out


def render_nerf(nerf, background, cameras: Cameras, H: int, W: int, shading: str = "albedo",
                occupancy: OccupancyGrid | None = None, samples_per_ray: int = 64,
                light_dir: torch.Tensor | None = None, jitter: bool | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Render B = len(cameras) images of the field.

    background: a module dirs [N,3] -> rgb [N,3] (e.g. `Background`), a fixed colour [3] or [B,3], or None
    (white).
    light_dir: unit direction toward a directional light, [3] or [B,3] world; None = from each camera.
    jitter: random positions inside each sample's bin (training); None = jitter when nerf.training.
    Returns rgb [B,3,H,W], opacity [B,1,H,W], depth [B,1,H,W] (opacity-normalised distance along the ray,
    0 where nothing is hit), weights [B·H·W, S] (each sample's compositing weight) with sampled [B·H·W, S]
    (where the field was evaluated; elsewhere the weight is 0) for regularisers and, for lambertian/textureless,
    normal [B,3,H,W] (composited world normals).
    """
    check_shading(shading)
    B = len(cameras)
    origins, dirs = cameras.rays(H, W)
    ray_batch = torch.arange(B, device=origins.device).repeat_interleave(H * W)
    light = light_directions(cameras, light_dir, origins.dtype)[ray_batch] if shading != "albedo" else None
    out = render_rays(nerf, background, origins.reshape(-1, 3), dirs.reshape(-1, 3), ray_batch, light, shading,
                      occupancy, samples_per_ray, jitter, generator)
    return as_images(out, B, H, W)


def render_rays(nerf, background, origins: torch.Tensor, dirs: torch.Tensor, ray_batch: torch.Tensor,
                light: torch.Tensor | None, shading: str = "albedo", occupancy: OccupancyGrid | None = None,
                samples_per_ray: int = 64, jitter: bool | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """`render_nerf` for rays origins/dirs [R,3] (ray_batch [R]: each ray's image, for a per-image background;
    light [R,3] toward the light, for lambertian/textureless): the same outputs per ray, rgb [R,3] etc."""
    jitter = nerf.training if jitter is None else jitter
    S = int(samples_per_ray)
    R, device = origins.shape[0], origins.device

    near, far = ray_aabb(origins, dirs, nerf.bound)
    far = torch.maximum(far, near)
    if occupancy is not None:
        near, far = occupied_span(occupancy, origins, dirs, near, far)
    if jitter:
        u = uniform((R, S), generator, device)
    else:
        u = torch.full((R, S), 0.5, device=device)
    delta = ((far - near) / S)[:, None]  # [R,1]
    t = near[:, None] + (torch.arange(S, device=device) + u) * delta  # [R,S]
    pts = origins[:, None, :] + t[..., None] * dirs[:, None, :]  # [R,S,3]

    mask = (far > near)[:, None].expand(R, S)
    if occupancy is not None:
        mask = mask & occupancy.lookup(pts)
    sel = mask.reshape(-1).nonzero().squeeze(1)

    need_normals = shading != "albedo"
    sigma = torch.zeros(R * S, device=device)
    color = torch.zeros(R * S, 3, device=device)
    normal = torch.zeros(R * S, 3, device=device) if need_normals else None
    if sel.numel() > 0:
        x = pts.reshape(-1, 3)[sel]
        if need_normals:
            sigma_s, albedo_s, n_s = eval_field(nerf, x, with_normal=True)
            albedo_s = LIGHT.shade(albedo_s, n_s, light[sel // S], shading)
            normal = normal.index_put((sel,), n_s)
        else:
            sigma_s, albedo_s = eval_field(nerf, x, with_normal=False)
        sigma = sigma.index_put((sel,), sigma_s.float())
        color = color.index_put((sel,), albedo_s.float())

    sigma_delta = sigma.reshape(R, S) * delta
    alpha = 1 - torch.exp(-sigma_delta)
    before = torch.cat([torch.zeros_like(sigma_delta[:, :1]), torch.cumsum(sigma_delta[:, :-1], dim=1)], dim=1)
    trans = torch.exp(-before)  # light reaching each sample
    weights = alpha * trans  # [R,S]
    opacity = weights.sum(1, keepdim=True)
    rgb = (weights[..., None] * color.reshape(R, S, 3)).sum(1)
    rgb = rgb + (1 - opacity) * background_rgb(background, dirs, ray_batch)
    depth = (weights * t).sum(1, keepdim=True) / opacity.clamp_min(1e-6)

    out = {"rgb": rgb, "opacity": opacity, "depth": depth, "weights": weights, "sampled": mask,
           "n_samples": int(sel.numel())}
    if need_normals:
        out["normal"] = (weights[..., None] * normal.reshape(R, S, 3)).sum(1)
    return out
