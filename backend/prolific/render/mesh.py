"""Render a triangle mesh from `Cameras` through a `Rasterizer`: normal maps, albedo (optionally lit), opacity.

Outputs follow the volume renderer's layout: images [B,C,H,W], row 0 at the top (the rasterizer's rows are
flipped), so the stages can hand them to the prior exactly like stage-1 renders.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..field.trimesh import TriMesh
from .cameras import Cameras
from .raster import Rasterizer
from .shading import LIGHT

# Clip planes: cameras sit 1.5–2 m from an object inside [-1,1]^3, so everything lies between 0.1 and 10 m.
NEAR, FAR = 0.1, 10.0

Background = tuple[float, float, float] | Callable[[torch.Tensor], torch.Tensor] | None


def clip_positions(positions: torch.Tensor, cameras: Cameras, aspect: float = 1.0) -> torch.Tensor:
    """World positions [V,3] → clip positions [B,V,4] for each camera."""
    mvp = cameras.mvp(NEAR, FAR, aspect).to(positions)
    homo = F.pad(positions, (0, 1), value=1.0)
    return torch.einsum("bij,vj->bvi", mvp, homo)


def _background(background: Background, cameras: Cameras, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Background colour [B,H,W,3] in image layout (row 0 at the top)."""
    b = len(cameras)
    if background is None or isinstance(background, (tuple, list)):
        colour = like.new_tensor(background if background is not None else (1.0, 1.0, 1.0))
        return colour.expand(b, h, w, 3)
    _, dirs = cameras.rays(h, w)
    return background(dirs.reshape(-1, 3).to(like)).reshape(b, h, w, 3)


def render_mesh(raster: Rasterizer, positions: torch.Tensor, faces: torch.Tensor, cameras: Cameras, H: int,
                W: int, shading: str = "normal", normals: torch.Tensor | None = None,
                albedo_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                uv_texture: tuple[torch.Tensor, torch.Tensor] | None = None,
                background: Background = (1.0, 1.0, 1.0), light_dir: torch.Tensor | None = None,
                antialias: bool = True) -> dict[str, torch.Tensor]:
    """Render the mesh (positions [V,3], faces [F,3]) from each camera.

    shading: "normal" (world normals n as (n + 1) / 2), "albedo" (albedo_fn at the surface points, or a baked
    texture: uv_texture = (uv [V,2], image [h,w,3] with row 0 at v = 1)), or "lambertian" (that albedo lit by
    a directional light toward light_dir [B,3], default the camera direction).
    normals [V,3] default to the mesh's area-weighted vertex normals. background: an rgb tuple, or a function of
    the view directions [N,3] → rgb [N,3] such as stage 1's Background.
    Returns rgb [B,3,H,W], opacity [B,1,H,W], normal [B,3,H,W] (unit world normals, zero off the mesh).
    """
    if shading not in ("normal", "albedo", "lambertian"):
        raise ValueError(f"Unknown shading '{shading}': use normal, albedo or lambertian.")
    if shading != "normal" and albedo_fn is None and uv_texture is None:
        raise ValueError(f"Shading '{shading}' needs an albedo_fn or a uv_texture.")
    faces = faces.long()
    if normals is None:
        normals = TriMesh(positions, faces).vertex_normals()
    clip = clip_positions(positions, cameras, W / H)
    rast = raster.rasterize(clip, faces, (H, W))
    mask = (rast[..., 3:4] > 0).to(positions.dtype)  # [B,H,W,1]
    normal = F.normalize(raster.interpolate(normals, rast, faces), dim=-1, eps=1e-12) * mask

    if shading == "normal":
        colour = (normal + 1) / 2
    elif albedo_fn is not None:
        points = raster.interpolate(positions, rast, faces)
        covered = mask[..., 0] > 0
        colour = torch.zeros_like(points)
        colour = colour.index_put((covered,), albedo_fn(points[covered]).to(colour))
    else:
        uv, image = uv_texture
        coords = raster.interpolate(uv, rast, faces) * 2 - 1  # [B,H,W,2]
        grid = torch.stack([coords[..., 0], -coords[..., 1]], -1)  # image row 0 is v = 1
        tex = image.permute(2, 0, 1)[None].expand(len(cameras), -1, -1, -1).to(coords)
        colour = F.grid_sample(tex, grid, mode="bilinear", align_corners=False).permute(0, 2, 3, 1) * mask
    if shading == "lambertian":
        if light_dir is None:
            light_dir = F.normalize(cameras.position, dim=-1)
        colour = LIGHT.shade(colour, normal, light_dir.to(normal)[:, None, None, :], "lambertian")

    # Flip the rasterizer's bottom-up rows before compositing with the (top-down) background.
    colour, mask, normal = colour.flip(1), mask.flip(1), normal.flip(1)
    rgb = colour * mask + _background(background, cameras, H, W, colour) * (1 - mask)
    if antialias:
        rgb = raster.antialias(rgb.flip(1), rast, clip, faces).flip(1)
    return {"rgb": rgb.permute(0, 3, 1, 2), "opacity": mask.permute(0, 3, 1, 2),
            "normal": normal.permute(0, 3, 1, 2)}
