"""The result folder (DESIGN.md): one `object_<k>/` per particle with mesh.npz, albedo.png and meta.json, plus
GLB / OBJ on request and a turntable of the exported (baked) object.

Axes are Blender's: +Z up, metres (our world already is), so the add-on imports the arrays as they are.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .. import __version__
from ..field.trimesh import TriMesh
from ..render.cameras import turntable_cameras
from ..render.mesh import render_mesh
from ..render.raster import make_rasterizer
from ..stages.context import save_png
from .bake import bake_texture
from .formats import write_glb, write_obj
from .seams import weld
from .unwrap import unwrap

TURNTABLE_SIZE = 256
GREY = 0.8  # albedo of an object exported without any colour source (no stage-1 field at hand)


def uniform_grey(points: torch.Tensor) -> torch.Tensor:
    return torch.full_like(points, GREY)


def write_object(obj_dir: Path, positions: np.ndarray, faces: np.ndarray, corner_uv: np.ndarray,
                 normals: np.ndarray | None, albedo_image: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """Write mesh.npz (float32 positions (V,3), int32 faces (F,3), float32 uv (F,3,2) per face corner, float32
    normals (V,3)), albedo.png (albedo_image [H,W,3] in [0,1], row 0 = v 1) and meta.json. Returns the paths
    and counts."""
    if np.shape(corner_uv) != (len(faces), 3, 2):
        raise ValueError(f"uv must be per face corner (F,3,2) = ({len(faces)},3,2), got {np.shape(corner_uv)}.")
    obj_dir = Path(obj_dir)
    obj_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"positions": np.asarray(positions, np.float32), "faces": np.asarray(faces, np.int32),
              "uv": np.asarray(corner_uv, np.float32)}
    if normals is not None:
        arrays["normals"] = np.asarray(normals, np.float32)
    mesh_path, albedo_path, meta_path = obj_dir / "mesh.npz", obj_dir / "albedo.png", obj_dir / "meta.json"
    np.savez(mesh_path, **arrays)
    pixels = (np.clip(albedo_image, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(albedo_path)
    counts = {"vertices": int(arrays["positions"].shape[0]), "faces": int(arrays["faces"].shape[0])}
    meta_path.write_text(json.dumps({**meta, **counts}, indent=2, default=str))
    return {"mesh": str(mesh_path), "albedo": str(albedo_path), "meta": str(meta_path), **counts}


def export_objects(ctx, meshes: Sequence[TriMesh], textures: Sequence[Callable[[torch.Tensor], torch.Tensor]],
                   timings: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Unwrap, bake and write every particle's object into ctx.job_dir/object_<k>/; one dict per object with the
    paths (mesh, albedo, meta, turntable and any glb/obj) and the vertex/face counts."""
    cfg = ctx.cfg
    raster = make_rasterizer(ctx.device)
    objects = []
    for i, (mesh, albedo_fn) in enumerate(zip(meshes, textures)):
        ctx.reporter.check_cancel()
        k = ctx.particle_index(i)
        albedo_fn = albedo_fn or uniform_grey
        started = time.monotonic()
        positions = mesh.positions.detach().cpu().numpy()
        # Normals from the uncut mesh, so UV seams do not show up as shading creases.
        normals = mesh.vertex_normals().detach().cpu().numpy()
        flat = unwrap(positions, mesh.faces.cpu().numpy(), cfg.export.texture_size)
        device = ctx.device
        pos_t = torch.from_numpy(flat.positions).to(device)
        faces_t = torch.from_numpy(flat.faces).long().to(device)
        uv_t = torch.from_numpy(flat.uv).to(device)
        with torch.no_grad():
            image, _ = bake_texture(raster, pos_t, faces_t, uv_t, albedo_fn, cfg.export.texture_size,
                                    cfg.export.dilation_px)
        obj_dir = ctx.object_dir(k)
        meta = {"prompt": cfg.prompt, "negative_prompt": cfg.prior.negative_prompt, "seed": cfg.seed,
                "particle": k, "preset": cfg.preset, "model": cfg.prior.model, "settings": cfg.to_dict(),
                "backend": __version__, "axes": "+Z up, metres",
                "timings": {**(timings or {}), "export_object": round(time.monotonic() - started, 3)}}
        # The files keep the uncut surface (one piece in Blender) with the UVs per face corner.
        vertex, faces, corner_uv = weld(flat)
        welded = (positions[vertex], faces, corner_uv, normals[vertex])
        entry = write_object(obj_dir, *welded, image.cpu().numpy(), meta)
        pil = Image.open(entry["albedo"]).convert("RGB")
        if "glb" in cfg.export.formats:
            entry["glb"] = str(write_glb(obj_dir / "mesh.glb", *welded, pil))
        if "obj" in cfg.export.formats:
            entry["obj"] = str(write_obj(obj_dir / "mesh.obj", *welded, pil))
        split_normals = torch.from_numpy(normals[flat.vmapping]).to(device)
        entry["turntable"] = [str(p) for p in write_turntable(ctx, raster, pos_t, faces_t, uv_t, image,
                                                              split_normals, obj_dir)]
        objects.append(entry)
    return objects


@torch.no_grad()
def write_turntable(ctx, raster, positions, faces, uv, image, normals, folder: Path) -> list[Path]:
    """Lit renders of the exported mesh with its baked texture (what Blender will show), turntable_<i>.png."""
    n = ctx.cfg.export.turntable_views
    cameras = turntable_cameras(n, ctx.cfg.cameras, ctx.device)
    paths = []
    for i in range(n):
        out = render_mesh(raster, positions, faces, cameras[i], TURNTABLE_SIZE, TURNTABLE_SIZE, shading="lambertian",
                          normals=normals, uv_texture=(uv, image))
        paths.append(save_png(out["rgb"], folder / f"turntable_{i}.png"))
    return paths


def write_result(ctx, outputs: dict) -> list[dict[str, Any]]:
    """The pipeline's export step: the last mesh stage's outputs ({"meshes", "textures"}) → result folder."""
    return export_objects(ctx, outputs["meshes"], outputs["textures"])
