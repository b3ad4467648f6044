"""Save a backend result folder as a .blend with a camera and a light, outside Blender's UI.

`prolific-blend JOB OUT.blend` from any folder once the package is installed (`pip install -e .`, with bpy), or
`python -m blender_addon.blend_file JOB OUT.blend` from the repository root (where `blender_addon` imports
without an install). The objects are built by the same `scene_import` code the add-on uses, so the file holds
what Generate would have put in the scene, plus a camera and a sun framing them: rendering it (F12) shows them.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import bpy
import numpy as np
from mathutils import Vector

from . import scene_import

CAMERA_ELEVATION_DEG, CAMERA_AZIMUTH_DEG = 20.0, 30.0  # from the front (−Y), a little to the right and above
SUN_ELEVATION_DEG, SUN_AZIMUTH_DEG = 50.0, -30.0  # from above the camera's left, so the visible side is lit
SUN_STRENGTH = 3.0  # W/m²
FILL = 0.8  # the objects' bounding box stays within this central fraction of the frame's width and height


def save_result_as_blend(job_dir: Path, blend_path: Path) -> list[str]:
    """Import every object_<k> of `job_dir` into an empty scene with a camera and a light, and save it (textures
    packed, their paths relative to the .blend) as `blend_path`."""
    job_dir, blend_path = job_dir.resolve(), blend_path.resolve()
    meta = json.loads((job_dir / "meta.json").read_text(encoding="utf-8"))
    entries = [{"mesh": str(d / "mesh.npz"), "albedo": str(d / "albedo.png") if (d / "albedo.png").is_file() else None,
                "meta": str(d / "meta.json")}
               for d in sorted(job_dir.glob("object_*")) if (d / "mesh.npz").is_file()]
    if not entries:
        raise FileNotFoundError(f"{job_dir} holds no object_<k>/mesh.npz: run the mesh stages first.")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    objects = scene_import.import_result(entries, meta.get("prompt", ""), int(meta.get("seed", 0)),
                                         meta.get("settings", {}), job_id=job_dir.name)
    add_camera_and_light(bpy.context.scene, objects)
    blend_path.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend_path), relative_remap=True)
    return [obj.name for obj in objects]


def direction(elevation_deg: float, azimuth_deg: float) -> Vector:
    """Unit vector toward a viewpoint at that elevation, turned from the front (−Y) toward +X by the azimuth."""
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    return Vector((math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)))


def world_vertices(obj) -> np.ndarray:
    co = np.empty(len(obj.data.vertices) * 3, dtype=np.float32)
    obj.data.vertices.foreach_get("co", co)
    matrix = np.array(obj.matrix_world)
    return co.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]


def add_camera_and_light(scene, objects) -> tuple[bpy.types.Object, bpy.types.Object]:
    """The scene camera, looking at the centre of the objects' bounding box from CAMERA_ELEVATION/AZIMUTH, just
    far enough away that every vertex falls within the central FILL of the frame; and a sun lighting the side the
    camera sees."""
    bpy.context.view_layer.update()  # world matrices of the objects just placed
    points = np.concatenate([world_vertices(obj) for obj in objects] + [np.empty((0, 3))])
    if not len(points):  # nothing but empty meshes: look at the 3D cursor
        points = np.array([bpy.context.scene.cursor.location])
    centre = (points.min(0) + points.max(0)) / 2
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    toward = direction(CAMERA_ELEVATION_DEG, CAMERA_AZIMUTH_DEG)
    camera.rotation_euler = (-toward).to_track_quat("-Z", "Y").to_euler()  # a camera looks down its −Z axis
    axes = np.array(camera.rotation_euler.to_matrix()).T  # rows: the camera's right, up and backward directions
    right, up, back = ((points - centre) @ axes.T).T
    # `angle` spans the frame's longer side (sensor fit Auto); the shorter side sees less.
    width, height = scene.render.resolution_x, scene.render.resolution_y
    tan_long = math.tan(camera.data.angle / 2)
    tan_x, tan_y = tan_long * min(1.0, width / height), tan_long * min(1.0, height / width)
    # A vertex `back` metres nearer the camera than the centre needs distance − back ≥ |offset| / (FILL · tan).
    distance = float(max((back + np.abs(right) / (FILL * tan_x)).max(), (back + np.abs(up) / (FILL * tan_y)).max()))
    distance = max(distance, 1e-3)
    camera.location = Vector(centre) + toward * distance
    size = float(np.ptp(points, axis=0).max())
    camera.data.clip_start, camera.data.clip_end = distance / 100, distance + 10 * size
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy = SUN_STRENGTH
    light_toward = direction(SUN_ELEVATION_DEG, SUN_AZIMUTH_DEG)
    sun.location = Vector(centre) + light_toward * distance  # a sun's place does not matter, only its direction
    sun.rotation_euler = (-light_toward).to_track_quat("-Z", "Y").to_euler()
    for obj in (camera, sun):
        scene.collection.objects.link(obj)
    scene.camera = camera
    return camera, sun


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prolific-blend", description=__doc__.split("\n")[0])
    parser.add_argument("job_dir", type=Path, help="the result folder of one job (holds meta.json, object_<k>/)")
    parser.add_argument("blend", type=Path, help="the .blend file to write")
    args = parser.parse_args(argv)
    try:
        names = save_result_as_blend(args.job_dir, args.blend)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"saved {', '.join(names)} to {args.blend}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
