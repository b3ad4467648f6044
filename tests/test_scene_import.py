"""scene_import.py in real Blender: result folders written here (DESIGN.md format) become native objects."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from addon_helpers import ROOT, needs_bpy, run_blender
from prolific.config import make_config
from prolific.events import Reporter
from prolific.export.result import export_objects
from prolific.export.seams import split_at_seams
from prolific.field.dmtet import DMTet, TetGrid
from prolific.stages.context import StageContext

pytestmark = needs_bpy

LOAD_MODULE = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("scene_import", {str(ROOT / "blender_addon" / "scene_import.py")!r})
scene_import = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scene_import)
"""


def write_object(folder, positions, faces, uv, normals=None, texture_size=(8, 4), seed=0):
    folder.mkdir(parents=True)
    arrays = {"positions": positions.astype(np.float32), "faces": faces.astype(np.int32), "uv": uv.astype(np.float32)}
    if normals is not None:
        arrays["normals"] = normals.astype(np.float32)
    np.savez(folder / "mesh.npz", **arrays)
    w, h = texture_size
    rgb = (np.arange(w * h * 3).reshape(h, w, 3) * 7 % 256).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "albedo.png")
    (folder / "meta.json").write_text(json.dumps({"seed": seed, "settings": {"preset": "test", "seed": seed}}))
    return {"mesh": str(folder / "mesh.npz"), "albedo": str(folder / "albedo.png")}


def tetrahedron():
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], dtype=np.int32)
    return positions, faces


def test_result_objects_match_the_files(tmp_path):
    positions, faces = tetrahedron()
    uv_vertex = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
    uv_corner = np.random.default_rng(0).random((4, 3, 2)).astype(np.float32)
    normals = positions - positions.mean(0)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    entries = [write_object(tmp_path / "job" / "object_0", positions, faces, uv_vertex, normals, seed=11),
               write_object(tmp_path / "job" / "object_1", positions * 2, faces, uv_corner, texture_size=(4, 4), seed=12)]
    facts = run_blender(LOAD_MODULE + f"""
import numpy as np
bpy.context.scene.cursor.location = (10.0, 20.0, 30.0)
objs = scene_import.import_result({entries!r}, "  a   red teapot ", 7, {{"preset": "test"}}, job_id="job-1")
out = []
for obj in objs:
    mesh = obj.data
    uv = np.empty(len(mesh.loops) * 2, dtype=np.float32)
    mesh.uv_layers["UVMap"].uv.foreach_get("vector", uv)
    loop_normals = np.empty(len(mesh.loops) * 3, dtype=np.float32)
    mesh.corner_normals.foreach_get("vector", loop_normals)
    tex = next(n for n in obj.active_material.node_tree.nodes if n.type == "TEX_IMAGE")
    bsdf = next(n for n in obj.active_material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    img = tex.image
    out.append(dict(name=obj.name, location=list(obj.location), verts=len(mesh.vertices), faces=len(mesh.polygons),
                    loop_verts=[l.vertex_index for l in mesh.loops], uv=uv.tolist(), normals=loop_normals.tolist(),
                    smooth=all(p.use_smooth for p in mesh.polygons), size=list(img.size), packed=img.packed_file is not None,
                    pixels=list(img.pixels), linked=bsdf.inputs["Base Color"].links[0].from_node == tex,
                    props={{k: obj[k] for k in obj.keys()}}, selected=obj.select_get(),
                    in_scene=obj.name in bpy.context.scene.objects))
report(objects=out, active=bpy.context.view_layer.objects.active.name)
""", tmp_path)
    first, second = facts["objects"]
    assert [first["name"], second["name"]] == ["a red teapot 1", "a red teapot 2"]
    assert facts["active"] == first["name"]
    for obj, entry, uv in ((first, entries[0], uv_vertex[faces]), (second, entries[1], uv_corner)):
        mesh = np.load(entry["mesh"])
        assert obj["verts"] == len(mesh["positions"]) and obj["faces"] == len(mesh["faces"])
        assert obj["loop_verts"] == mesh["faces"].ravel().tolist()
        np.testing.assert_allclose(np.reshape(obj["uv"], (-1, 2)), uv.reshape(-1, 2), atol=1e-6)
        assert obj["smooth"] and obj["packed"] and obj["linked"] and obj["selected"] and obj["in_scene"]
        rgb = np.asarray(Image.open(entry["albedo"]), dtype=np.float32) / 255
        assert obj["size"] == [rgb.shape[1], rgb.shape[0]]
        pixels = np.reshape(obj["pixels"], (rgb.shape[0], rgb.shape[1], 4))[::-1]  # Blender rows go bottom-up
        np.testing.assert_allclose(pixels[..., :3], rgb, atol=1e-3)
    # The result's own normals become the custom normals: each corner gets its vertex's normal.
    np.testing.assert_allclose(np.reshape(first["normals"], (-1, 3)), normals[faces.ravel()], atol=1e-3)
    assert first["props"]["prolific_prompt"] == "  a   red teapot "
    assert (first["props"]["prolific_seed"], second["props"]["prolific_seed"]) == (11, 12)
    assert json.loads(first["props"]["prolific_settings"]) == {"preset": "test", "seed": 11}
    assert first["props"]["prolific_job"] == "job-1"
    # Side by side along X, centred on the 3D cursor, without overlapping.
    (x0, y0, z0), (x1, y1, z1) = first["location"], second["location"]
    assert (y0, z0, y1, z1) == (20, 30, 20, 30)
    assert x0 + x1 == pytest.approx(20.0) and x1 - x0 >= 2.0  # the second object is 2 m wide


def parts(faces: np.ndarray, n_vertices: int) -> int:
    """Connected parts of a mesh: faces linked through the vertices they share."""
    rows = np.repeat(np.arange(len(faces)) + n_vertices, 3)
    graph = coo_matrix((np.ones(faces.size), (rows, faces.ravel())), shape=(n_vertices + len(faces),) * 2)
    return connected_components(graph, directed=False)[0]


def test_a_backend_result_comes_in_as_one_piece_per_connected_part_with_its_corner_uvs(tmp_path):
    # Two balls the way stage 2 makes surfaces (DMTet), written by the backend's exporter (xatlas cuts seams).
    grid = TetGrid.build(16, 1.0)
    dmtet = DMTet(grid)
    with torch.no_grad():
        v = grid.vertices
        dmtet.sdf.copy_(torch.minimum((v - torch.tensor([-0.45, 0, 0])).norm(dim=-1) - 0.35,
                                      (v - torch.tensor([0.45, 0.1, 0])).norm(dim=-1) - 0.3))
    backend_mesh = dmtet.mesh().detach()
    n_parts = parts(backend_mesh.faces.numpy(), len(backend_mesh.positions))
    assert n_parts == 2
    cancel = threading.Event()
    ctx = StageContext(make_config("two balls", "test"), torch.device("cpu"), None, None, tmp_path / "job",
                       Reporter(None, cancel), cancel, torch.Generator().manual_seed(0))
    [entry] = export_objects(ctx, [backend_mesh], [None])
    data = np.load(entry["mesh"])
    # The same object in the older format: vertices split at the UV seams, one UV each.
    vmapping, split_faces, split_uv = split_at_seams(data["faces"], data["uv"])
    old = tmp_path / "old" / "object_0"
    old.mkdir(parents=True)
    np.savez(old / "mesh.npz", positions=data["positions"][vmapping], faces=split_faces, uv=split_uv,
             normals=data["normals"][vmapping])
    shutil.copy(entry["albedo"], old / "albedo.png")
    assert parts(split_faces, len(vmapping)) > 3 * n_parts  # what Blender got before: a piece per UV chart
    entries = [{"mesh": entry["mesh"], "albedo": entry["albedo"]},
               {"mesh": str(old / "mesh.npz"), "albedo": str(old / "albedo.png")}]
    facts = run_blender(LOAD_MODULE + f"""
import numpy as np
out = []
for obj in scene_import.import_result({entries!r}, "two balls", 0, {{}}):
    mesh = obj.data
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    loops = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.loops.foreach_get("vertex_index", loops)
    uv = np.empty(len(mesh.loops) * 2, dtype=np.float32)
    mesh.uv_layers["UVMap"].uv.foreach_get("vector", uv)
    out.append(dict(name=obj.name, vertices=len(mesh.vertices), corners=co.reshape(-1, 3)[loops].tolist(),
                    uv=uv.tolist()))
for name in [o["name"] for o in out]:  # what a user sees: Edit Mode > Separate > By Loose Parts
    obj = bpy.data.objects[name]
    for other in bpy.context.view_layer.objects:
        other.select_set(other == obj)
    bpy.context.view_layer.objects.active = obj
    before = set(bpy.data.objects)
    with bpy.context.temp_override(active_object=obj):
        bpy.ops.object.mode_set(mode="EDIT")
        bpy.ops.mesh.select_all(action="SELECT")
        bpy.ops.mesh.separate(type="LOOSE")
        bpy.ops.object.mode_set(mode="OBJECT")
    next(o for o in out if o["name"] == name)["pieces"] = 1 + len(set(bpy.data.objects) - before)
report(objects=out)
""", tmp_path)
    distinct = len(np.unique(data["positions"], axis=0))
    assert distinct == len(backend_mesh.positions) == len(data["positions"])
    for obj in facts["objects"]:
        assert obj["pieces"] == n_parts, obj["name"]
        assert obj["vertices"] == distinct, obj["name"]
        # Every face corner keeps its position and its UV, in the file's face order.
        np.testing.assert_array_equal(np.reshape(obj["corners"], (-1, 3, 3)), data["positions"][data["faces"]])
        np.testing.assert_allclose(np.reshape(obj["uv"], (-1, 3, 2)), data["uv"], atol=1e-6)


def test_a_seam_split_fold_is_welded_and_shades_smoothly_across_it(tmp_path):
    # Two triangles folded along a shared edge that an older result split (a UV seam), and no normals array.
    positions = np.array([[0, 0, 0], [1, 0.5, 0.5], [0, 1, 0], [0, 0, 0], [0, 1, 0], [-1, 0.5, 0.5]], np.float32)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    uv = np.random.default_rng(0).random((6, 2))
    entry = write_object(tmp_path / "job" / "object_0", positions, faces, uv)
    facts = run_blender(LOAD_MODULE + f"""
import numpy as np
obj = scene_import.import_result([{entry!r}], "fold", 0, {{}})[0]
n = np.empty(len(obj.data.loops) * 3, dtype=np.float32)
obj.data.corner_normals.foreach_get("vector", n)
loop_uv = np.empty(len(obj.data.loops) * 2, dtype=np.float32)
obj.data.uv_layers["UVMap"].uv.foreach_get("vector", loop_uv)
report(vertices=len(obj.data.vertices), normals=n.tolist(), uv=loop_uv.tolist())
""", tmp_path)
    assert facts["vertices"] == 4
    np.testing.assert_allclose(np.reshape(facts["uv"], (-1, 2)), uv[faces.ravel()], atol=1e-6)
    # On the fold both sides share the mean normal (+Z); the far corners keep their face's normal.
    side = np.array([[-0.5, 0, 1], [0.5, 0, 1]]) / np.sqrt(1.25)
    expected = [[0, 0, 1], side[0], [0, 0, 1], [0, 0, 1], [0, 0, 1], side[1]]
    np.testing.assert_allclose(np.reshape(facts["normals"], (-1, 3)), expected, atol=1e-4)


def test_a_broken_result_names_the_file_and_the_problem(tmp_path):
    folder = tmp_path / "job" / "object_0"
    folder.mkdir(parents=True)
    np.savez(folder / "mesh.npz", positions=np.zeros((3, 3), np.float32), faces=np.array([[0, 1, 5]], np.int32))
    facts = run_blender(LOAD_MODULE + f"""
try:
    scene_import.import_result([{{"mesh": {str(folder / "mesh.npz")!r}}}], "x", 0, {{}})
except scene_import.ResultError as err:
    report(error=str(err), objects=len(bpy.data.objects))
""", tmp_path)
    assert "mesh.npz" in facts["error"] and "vertex that does not exist" in facts["error"]


def sphere_grid(n: int):
    u, v = np.meshgrid(np.linspace(0, 1, n + 1), np.linspace(0, 1, n + 1))
    theta, phi = u * 2 * np.pi, v * np.pi
    positions = np.stack([np.sin(phi) * np.cos(theta), np.sin(phi) * np.sin(theta), np.cos(phi)], -1).reshape(-1, 3)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return positions, faces, np.stack([u, v], -1).reshape(-1, 2)


def test_a_million_triangles_import_in_a_few_seconds(tmp_path):
    positions, faces, uv = sphere_grid(708)
    assert len(faces) > 1_000_000
    entry = write_object(tmp_path / "job" / "object_0", positions, faces, uv, texture_size=(1024, 1024))
    facts = run_blender(LOAD_MODULE + f"""
import time
t = time.perf_counter()
obj = scene_import.import_result([{entry!r}], "big sphere", 0, {{}})[0]
seconds = time.perf_counter() - t
report(seconds=seconds, faces=len(obj.data.polygons), verts=len(obj.data.vertices))
""", tmp_path)
    print(f"\n1M-triangle import: {facts['faces']} triangles, {facts['verts']} vertices in {facts['seconds']:.2f} s")
    # The grid's seam column and north-pole row are welded; the pole's triangles collapse and are left out.
    _, weld = np.unique(positions.astype(np.float32), axis=0, return_inverse=True)
    corners = weld.reshape(-1)[faces]
    whole = (corners[:, 0] != corners[:, 1]) & (corners[:, 1] != corners[:, 2]) & (corners[:, 2] != corners[:, 0])
    assert facts["faces"] == whole.sum() and facts["verts"] == weld.max() + 1 < len(positions)
    assert facts["seconds"] < 5.0


FRAMING = """
from bpy_extras.object_utils import world_to_camera_view
scene = bpy.context.scene
meshes = [o for o in scene.objects if o.type == "MESH"]
view = np.array([world_to_camera_view(scene, scene.camera, o.matrix_world @ v.co)
                 for o in meshes for v in o.data.vertices])
scene.render.engine = "CYCLES"
scene.cycles.samples = 4
scene.render.resolution_x, scene.render.resolution_y = 96, 54
scene.render.filepath = os.environ["PROLIFIC_TEST_REPORT"] + ".png"
bpy.ops.render.render(write_still=True)
framing = dict(camera=scene.camera.type, lights=[o.data.type for o in scene.objects if o.type == "LIGHT"],
               view_min=view.min(0).tolist(), view_max=view.max(0).tolist(), render=scene.render.filepath)
"""


def check_framing(framing: dict) -> None:
    """The scene camera sees every vertex, the objects fill a good part of the frame, and a light shows them."""
    assert framing["camera"] == "CAMERA" and framing["lights"] == ["SUN"]
    (x0, y0, z0), (x1, y1, _) = framing["view_min"], framing["view_max"]
    assert z0 > 0 and 0.02 < x0 and x1 < 0.98 and 0.02 < y0 and y1 < 0.98  # in front, inside the frame
    assert max(x1 - x0, y1 - y0) > 0.4
    rgb = np.asarray(Image.open(framing["render"]).convert("RGB"), dtype=np.float32) / 255
    lit = rgb.max(-1) > 0.05  # no world: only the lit objects are not black
    assert 0.05 < lit.mean() and not (lit[0].any() or lit[-1].any() or lit[:, 0].any() or lit[:, -1].any())


def ball(folder, centre=(0.0, 0.0, 0.0), seed=0):
    """A result object: a 1 m ball (trimesh's icosphere), light grey."""
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    uv = sphere.vertices[:, :2] + 0.5
    entry = write_object(folder, sphere.vertices + centre, sphere.faces, uv, texture_size=(8, 4), seed=seed)
    Image.new("RGB", (8, 4), (200, 200, 200)).save(entry["albedo"])
    return sphere


def test_a_result_folder_becomes_a_self_contained_blend_file_with_a_camera_and_a_light(tmp_path):
    # README's main command ends with `python -m blender_addon.blend_file out/red_cube out/red_cube.blend`, run
    # from the repository root (where the package imports): here relative paths from the child's folder.
    job = tmp_path / "out" / "red_cube"
    sphere = ball(job / "object_0", seed=3)
    (job / "meta.json").write_text(json.dumps({"prompt": "a red cube", "seed": 3, "settings": {}}))
    blend = tmp_path / "out" / "red_cube.blend"
    run_blender(f"""
import runpy, sys
sys.path.insert(0, {str(ROOT)!r})
sys.argv = ["blend_file", "out/red_cube", "out/red_cube.blend"]
try:
    runpy.run_module("blender_addon.blend_file", run_name="__main__")
except SystemExit as done:
    report(exit=done.code)
""", tmp_path)
    albedo = job / "object_0" / "albedo.png"
    image_facts = f"""
import numpy as np
bpy.ops.wm.open_mainfile(filepath={str(blend)!r})
obj = bpy.data.objects["a red cube"]
image = next(n for n in obj.active_material.node_tree.nodes if n.type == "TEX_IMAGE").image
report(names=sorted(o.name for o in bpy.data.objects), vertices=len(obj.data.vertices), faces=len(obj.data.polygons),
       packed=image.packed_file is not None, size=list(image.size), prompt=obj["prolific_prompt"],
       filepath=image.filepath, path=bpy.path.abspath(image.filepath))
"""
    facts = run_blender(image_facts + FRAMING + "report(framing=framing)\n", tmp_path)
    # The stored path is relative to the .blend and names the result's texture.
    assert facts["filepath"] == "//red_cube/object_0/albedo.png" and Path(facts["path"]).samefile(albedo)
    check_framing(facts["framing"])
    albedo.unlink()  # the .blend must not need the folder any more
    facts = run_blender(image_facts, tmp_path)
    assert facts["names"] == ["Camera", "Sun", "a red cube"]
    assert (facts["vertices"], facts["faces"]) == (len(sphere.vertices), len(sphere.faces))
    assert facts["packed"] and facts["size"] == [8, 4]
    assert facts["prompt"] == "a red cube"


def test_the_blend_command_works_from_any_folder(tmp_path):
    # pyproject.toml's console script, called as an install would (the package importable, the work folder
    # elsewhere), with paths relative to that folder; two variations side by side, both in the frame.
    job = tmp_path / "results" / "red_cube"
    for k in range(2):
        ball(job / f"object_{k}", seed=k)
    (job / "meta.json").write_text(json.dumps({"prompt": "a red cube", "seed": 0, "settings": {}}))
    (tmp_path / "elsewhere").mkdir()
    facts = run_blender(f"""
import importlib, tomllib
sys.path.append({str(ROOT)!r})
os.chdir({str(tmp_path / "elsewhere")!r})
with open({str(ROOT / "pyproject.toml")!r}, "rb") as fh:
    module, function = tomllib.load(fh)["project"]["scripts"]["prolific-blend"].split(":")
report(exit=getattr(importlib.import_module(module), function)(["../results/red_cube", "scenes/red_cube.blend"]))
""", tmp_path)
    assert facts["exit"] == 0
    blend = tmp_path / "elsewhere" / "scenes" / "red_cube.blend"
    facts = run_blender(f"""
import numpy as np
bpy.ops.wm.open_mainfile(filepath={str(blend)!r})
paths = [bpy.path.abspath(i.filepath) for i in bpy.data.images]
""" + FRAMING + "report(framing=framing, paths=paths)\n", tmp_path)
    assert sorted(Path(p).resolve() for p in facts["paths"]) == [job / f"object_{k}" / "albedo.png" for k in range(2)]
    check_framing(facts["framing"])


def test_blend_file_names_a_folder_without_objects(tmp_path):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "meta.json").write_text("{}")
    facts = run_blender(f"""
import runpy, sys
sys.path.insert(0, {str(ROOT)!r})
sys.argv = ["blend_file", {str(tmp_path / "job")!r}, {str(tmp_path / "x.blend")!r}]
try:
    runpy.run_module("blender_addon.blend_file", run_name="__main__")
except SystemExit as done:
    report(exit=done.code)
""", tmp_path)
    assert facts["exit"] == 2
    assert not (tmp_path / "x.blend").exists()
