"""Textured GLB and OBJ (+MTL +PNG) files through trimesh, for tools other than our Blender add-on.

Both formats are written +Y up: glTF requires it, and OBJ importers (Blender's included, by default) assume it.
Our world is +Z up, so (x, y, z) → (x, z, −y), a rotation (handedness and winding are kept).
The writers take the result format's mesh (UVs per face corner); trimesh holds one UV per vertex, so vertices
are split at UV seams in these files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from trimesh.visual.material import PBRMaterial, SimpleMaterial

from .seams import split_at_seams


def z_up_to_y_up(v: np.ndarray) -> np.ndarray:
    return np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)


def _textured_mesh(positions: np.ndarray, faces: np.ndarray, corner_uv: np.ndarray, normals: np.ndarray | None,
                   material) -> trimesh.Trimesh:
    vmapping, faces, uv = split_at_seams(faces, corner_uv)
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(vertices=z_up_to_y_up(positions[vmapping]), faces=faces,
                           vertex_normals=None if normals is None else z_up_to_y_up(normals[vmapping]),
                           visual=visual, process=False)


def write_glb(path: Path, positions: np.ndarray, faces: np.ndarray, corner_uv: np.ndarray, normals: np.ndarray | None,
              albedo: Image.Image) -> Path:
    path = Path(path)
    material = PBRMaterial(name="albedo", baseColorTexture=albedo, metallicFactor=0.0, roughnessFactor=1.0)
    _textured_mesh(positions, faces, corner_uv, normals, material).export(path, file_type="glb")
    return path


def write_obj(path: Path, positions: np.ndarray, faces: np.ndarray, corner_uv: np.ndarray, normals: np.ndarray | None,
              albedo: Image.Image) -> Path:
    """path.obj plus path.mtl and the texture PNG beside it (the MTL names the PNG)."""
    path = Path(path)
    # White diffuse and no specular: importers multiply Kd with map_Kd, so the texture shows unchanged.
    material = SimpleMaterial(name="albedo", image=albedo, diffuse=(255, 255, 255, 255),
                              ambient=(255, 255, 255, 255), specular=(0, 0, 0, 255))
    mesh = _textured_mesh(positions, faces, corner_uv, normals, material)
    text, files = trimesh.exchange.obj.export_obj(mesh, include_normals=normals is not None, include_texture=True,
                                                  return_texture=True, mtl_name=path.with_suffix(".mtl").name)
    path.write_text(text)
    for name, data in files.items():
        (path.parent / name).write_bytes(data)
    return path
