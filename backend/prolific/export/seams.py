"""UV seams between the two mesh layouts we use.

The result format (mesh.npz) keeps one vertex per surface point and a UV per face corner, as Blender stores a
mesh, so the imported object is one connected piece. Rasterisers and glTF want one UV per vertex instead, so
there a vertex is split wherever its corners disagree on the UV.
"""
from __future__ import annotations

import numpy as np

from .unwrap import Unwrapped


def weld(flat: Unwrapped) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas's seam-split mesh as one vertex per input vertex its faces use: (vertex [V] indices into the
    input mesh, ascending; faces [F,3] int32 into those; corner_uv [F,3,2] float32)."""
    vertex, faces = np.unique(flat.vmapping[flat.faces], return_inverse=True)
    return vertex, faces.reshape(-1, 3).astype(np.int32), flat.uv[flat.faces].astype(np.float32)


def split_at_seams(faces: np.ndarray, corner_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One vertex per distinct (vertex, UV) pair of the corners: (vmapping [V'] = the vertex each new one copies,
    faces [F,3] int32 into the new vertices, uv [V',2] float32). Faces keep their order and winding."""
    faces = np.asarray(faces)
    corner_uv = np.ascontiguousarray(np.asarray(corner_uv, np.float32).reshape(-1, 2) + np.float32(0.0))  # -0 → 0
    keys = np.column_stack([faces.reshape(-1).astype(np.int32), corner_uv.view(np.int32)])  # UVs by their bits
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return (faces.reshape(-1)[first].astype(np.int64), inverse.reshape(-1, 3).astype(np.int32),
            corner_uv[first])
