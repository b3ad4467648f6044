"""UV unwrapping with xatlas: charts packed into one square atlas of the export texture's size."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xatlas

# Texels of gap around each chart: dilation fills them, so bilinear (and a few mip levels) never reach a
# neighbouring chart's colours.
CHART_PADDING_PX = 2


@dataclass
class Unwrapped:
    """A mesh with its vertices split at UV seams: positions [V',3], faces [F,3], uv [V',2] in [0,1]
    (origin bottom-left, as Blender and OpenGL), vmapping [V'] = index of each vertex in the input mesh."""

    positions: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    vmapping: np.ndarray


def unwrap(positions: np.ndarray, faces: np.ndarray, texture_size: int,
           padding_px: int = CHART_PADDING_PX) -> Unwrapped:
    """Cut the mesh into charts, flatten and pack them (xatlas). Faces keep their order and winding."""
    positions = np.ascontiguousarray(positions, dtype=np.float32)
    faces = np.ascontiguousarray(faces, dtype=np.uint32)
    atlas = xatlas.Atlas()
    atlas.add_mesh(positions, faces)
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    pack.padding = padding_px
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:  # several atlas pages would overlap in one texture: let xatlas size it freely
        vmapping, indices, uv = xatlas.parametrize(positions, faces)
    else:
        vmapping, indices, uv = atlas[0]
    vmapping = vmapping.astype(np.int64)
    return Unwrapped(positions[vmapping], indices.astype(np.int32), uv.astype(np.float32), vmapping)
