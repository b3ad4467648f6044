"""Bake a 3D albedo field into a UV texture: rasterise the mesh in UV space, query the field at each texel's
surface point, then grow the charts outward so filtering at UV seams never reads empty (black) texels."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..render.raster import Rasterizer

QUERY_BATCH = 1 << 18


@torch.no_grad()
def bake_texture(raster: Rasterizer, positions: torch.Tensor, faces: torch.Tensor, uv: torch.Tensor,
                 albedo_fn: Callable[[torch.Tensor], torch.Tensor], size: int,
                 dilation_px: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Texture [size,size,3] in [0,1] and its coverage mask [size,size] (True where a chart covers a texel or
    dilation filled it), both in image layout: row 0 is the top, i.e. v = 1 (UV origin bottom-left, Blender's).
    Texels that neither charts nor dilation reach get the mean colour (harmless under mip-mapping)."""
    faces = faces.long()
    # Clip position (2u − 1, 2v − 1, 0, 1): rasterizer row 0 is v = 0, flipped to the image's bottom row below.
    clip = torch.cat([uv * 2 - 1, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], -1)[None]
    rast = raster.rasterize(clip, faces, (size, size))
    points = raster.interpolate(positions, rast, faces)[0]  # [size,size,3]
    covered = rast[0, ..., 3] > 0
    image = torch.zeros(size, size, 3, device=positions.device)
    inside = points[covered]
    colours = torch.cat([albedo_fn(inside[i:i + QUERY_BATCH]).float()
                         for i in range(0, inside.shape[0], QUERY_BATCH)]) if inside.shape[0] else inside
    image[covered] = colours.clamp(0, 1)
    image, covered = splat_edges(image, covered, positions, faces, uv, albedo_fn)
    image, filled = dilate(image, covered, dilation_px)
    if filled.any():
        image[~filled] = image[filled].mean(0)
    return image.flip(0), filled.flip(0)


def splat_edges(image: torch.Tensor, covered: torch.Tensor, positions: torch.Tensor, faces: torch.Tensor,
                uv: torch.Tensor, albedo_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Conservative coverage: a texel a triangle touches without containing its centre (thin slivers, tiny
    charts, chart borders) gets the mean albedo of points sampled every half texel along the triangle's edges.
    Without this, sub-texel triangles would have no texel of their own and show a neighbouring chart's colour."""
    size = image.shape[0]
    a = torch.cat([faces[:, 0], faces[:, 1], faces[:, 2]])
    b = torch.cat([faces[:, 1], faces[:, 2], faces[:, 0]])
    n = ((uv[b] - uv[a]).norm(dim=-1) * size * 2).ceil().long() + 1  # samples per edge, ends included
    edge = torch.repeat_interleave(torch.arange(a.shape[0], device=uv.device), n)
    first = torch.cumsum(n, 0) - n
    t = (torch.arange(int(n.sum()), device=uv.device) - first[edge]) / (n[edge] - 1).clamp(min=1)
    t = t[:, None]
    suv = uv[a[edge]] * (1 - t) + uv[b[edge]] * t
    texel = (suv * size).floor().long().clamp(0, size - 1)
    index = texel[:, 1] * size + texel[:, 0]  # rasterizer layout: row = v
    empty = ~covered.reshape(-1)[index]
    if not empty.any():
        return image, covered
    index, edge, t = index[empty], edge[empty], t[empty]
    points = positions[a[edge]] * (1 - t) + positions[b[edge]] * t
    colours = torch.cat([albedo_fn(points[i:i + QUERY_BATCH]).float()
                         for i in range(0, points.shape[0], QUERY_BATCH)]).clamp(0, 1)
    total = torch.zeros(size * size, 3, device=image.device).index_add(0, index, colours)
    count = torch.zeros(size * size, device=image.device).index_add(0, index, torch.ones_like(t[:, 0]))
    hit = count > 0
    flat = image.reshape(-1, 3).clone()
    flat[hit] = total[hit] / count[hit, None]
    return flat.reshape(size, size, 3), covered | hit.reshape(size, size)


def dilate(image: torch.Tensor, mask: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each iteration gives every empty texel next to filled ones the mean of its filled 8-neighbours."""
    img = image.permute(2, 0, 1)[None]  # [1,3,H,W]
    m = mask[None, None].to(img.dtype)
    kernel = torch.ones(1, 1, 3, 3, device=img.device, dtype=img.dtype)
    for _ in range(iterations):
        count = F.conv2d(m, kernel, padding=1)
        total = F.conv2d(img * m, kernel.expand(3, 1, 3, 3), padding=1, groups=3)
        grow = (m == 0) & (count > 0)
        img = torch.where(grow, total / count.clamp(min=1), img)
        m = torch.where(grow, torch.ones_like(m), m)
    return img[0].permute(1, 2, 0), m[0, 0] > 0
