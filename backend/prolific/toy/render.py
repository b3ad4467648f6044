"""Sphere-tracing renderer of the toy shapes: shaded RGB on white, silhouette and albedo, batched on CPU or GPU.

Rays come from `prolific.render.cameras.Cameras.rays`, so a toy render and a stage-1 render from the same
camera line up pixel for pixel. Each shape's rays are traced together (one SDF per group), which keeps the
number of kernel launches independent of the batch size.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..config import CameraConfig
from ..render.cameras import Cameras
from .shapes import RADIUS, sdf

# The camera the prior check and the quality benchmark look from: the middle of stage 1's ranges.
VIEW_DISTANCE = sum(CameraConfig.camera_distance) / 2
VIEW_FOV_DEG = sum(CameraConfig.fov_deg) / 2

HIT_EPS = 2e-3
COMPACT_EVERY = 8
# Tetrahedron offsets for normals from 4 SDF evaluations instead of 6.
_TETRA = ((1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), (-1.0, 1.0, -1.0), (1.0, 1.0, 1.0))


def trace(shape: str, origins: torch.Tensor, dirs: torch.Tensor, steps: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Sphere-trace rays [N,3] against `shape`: returns (t [N], hit [N] bool)."""
    bound = RADIUS + 0.05
    b = (origins * dirs).sum(-1)
    disc = b * b - (origins * origins).sum(-1) + bound * bound
    inside_bound = disc > 0
    root = disc.clamp_min(0).sqrt()
    t_far = -b + root
    t = (-b - root).clamp_min(0)
    # March only the rays still in flight: every COMPACT_EVERY steps, converged and escaped rays drop out.
    idx = torch.nonzero(inside_bound).squeeze(1)
    o, d, tf, ta = origins[idx], dirs[idx], t_far[idx], t[idx]
    for i in range(steps):
        dist = sdf(shape, o + ta[:, None] * d)
        ta = torch.minimum(ta + dist, tf + 0.01)
        if (i + 1) % COMPACT_EVERY == 0 or i == steps - 1:
            t[idx] = ta
            keep = (dist.abs() >= HIT_EPS / 4) & (ta < tf)
            idx, o, d, tf, ta = idx[keep], o[keep], d[keep], tf[keep], ta[keep]
            if len(idx) == 0:
                break
    hit = inside_bound & (t < t_far) & (sdf(shape, origins + t[:, None] * dirs).abs() < HIT_EPS)
    return t, hit


def normals(shape: str, points: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Unit outward normals [N,3] of `shape` at `points` [N,3] (finite differences)."""
    offsets = points.new_tensor(_TETRA)  # one copy per call
    n = torch.zeros_like(points)
    for k in offsets:
        n = n + k * sdf(shape, points + eps * k)[:, None]
    return F.normalize(n, dim=-1)


def render(shapes: Sequence[str], albedo: torch.Tensor, cameras: Cameras, H: int, W: int, *,
           light_dirs: torch.Tensor | None = None, ambient: float | torch.Tensor = 0.4,
           shaded: torch.Tensor | None = None, supersample: int = 1, steps: int = 64) -> dict[str, torch.Tensor]:
    """Render object b = shapes[b] with colour albedo[b] ([B,3] in [0,1]) from cameras[b].

    Lambertian shading `albedo * (ambient + (1 - ambient) * max(0, n·l))` toward `light_dirs` [B,3] (unit,
    default: from the camera); where `shaded` [B] bool is False the colour is the flat albedo.
    Returns rgb [B,3,H,W] over white, mask [B,1,H,W] (coverage in [0,1]) and albedo [B,3,H,W] over white,
    anti-aliased by rendering `supersample` times larger and averaging.
    """
    B, device = len(shapes), cameras.device
    h, w = H * supersample, W * supersample
    origins, dirs = cameras.rays(h, w)
    origins, dirs = origins.reshape(B, -1, 3), dirs.reshape(B, -1, 3)
    albedo = albedo.to(device=device, dtype=origins.dtype)
    if light_dirs is None:
        light_dirs = F.normalize(cameras.position, dim=-1)
    light_dirs = light_dirs.to(origins)
    ambient = torch.as_tensor(ambient, dtype=origins.dtype, device=device).expand(B)
    shaded = torch.ones(B, dtype=torch.bool, device=device) if shaded is None else shaded.to(device)

    mask = torch.zeros(B, h * w, device=device, dtype=origins.dtype)
    shade = torch.zeros(B, h * w, device=device, dtype=origins.dtype)
    for shape in sorted(set(shapes)):
        idx = torch.tensor([i for i, s in enumerate(shapes) if s == shape], device=device)
        o, d = origins[idx].reshape(-1, 3), dirs[idx].reshape(-1, 3)
        t, hit = trace(shape, o, d, steps)
        n = normals(shape, o + t[:, None] * d)
        lambert = (n.view(len(idx), -1, 3) * light_dirs[idx, None, :]).sum(-1).clamp_min(0)
        amb = ambient[idx, None]
        s = torch.where(shaded[idx, None], amb + (1 - amb) * lambert, torch.ones_like(lambert))
        mask[idx] = hit.view(len(idx), -1).to(mask.dtype)
        shade[idx] = s

    mask = mask.view(B, 1, h, w)
    shade = shade.view(B, 1, h, w)
    colour = albedo[:, :, None, None]
    rgb = mask * colour * shade + (1 - mask)
    flat = mask * colour + (1 - mask)
    if supersample > 1:
        rgb, mask, flat = (F.avg_pool2d(x, supersample) for x in (rgb, mask, flat))
    return {"rgb": rgb, "mask": mask, "albedo": flat}
