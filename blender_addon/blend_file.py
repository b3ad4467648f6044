"""Save a backend result folder as a .blend, outside Blender's UI: `python -m blender_addon.blend_file JOB OUT`.

Runs with the `bpy` module (pip install bpy) from the repository root; the objects are built by the same
`scene_import` code the add-on uses, so the file holds what Generate would have put in the scene.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import bpy

from . import scene_import


def save_result_as_blend(job_dir: Path, blend_path: Path) -> list[str]:
    """Import every object_<k> of `job_dir` into an empty scene and save it (textures packed) as `blend_path`."""
    meta = json.loads((job_dir / "meta.json").read_text(encoding="utf-8"))
    entries = [{"mesh": str(d / "mesh.npz"), "albedo": str(d / "albedo.png") if (d / "albedo.png").is_file() else None,
                "meta": str(d / "meta.json")}
               for d in sorted(job_dir.glob("object_*")) if (d / "mesh.npz").is_file()]
    if not entries:
        raise FileNotFoundError(f"{job_dir} holds no object_<k>/mesh.npz: run the mesh stages first.")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    objects = scene_import.import_result(entries, meta.get("prompt", ""), int(meta.get("seed", 0)),
                                         meta.get("settings", {}), job_id=job_dir.name)
    blend_path.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend_path.resolve()))
    return [obj.name for obj in objects]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blender_addon.blend_file", description=__doc__.split("\n")[0])
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
