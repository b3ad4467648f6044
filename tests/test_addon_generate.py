"""The built extension zip installed into real Blender (bpy 5.0.1), driving the real backend on the tiny model.

One Blender child runs the whole user story (install, enable, generate headless, a failing job, disable) and
reports what it saw; the tests below check those facts against the backend's result files.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from addon_helpers import build_zip, install_with_backend_code, needs_bpy, run_blender

pytestmark = needs_bpy


STORY = """
import os, time
import xatlas
wheel_dirs = [p for p in sys.path if "extensions" in p and "site-packages" in p]
report(enabled=module in bpy.context.preferences.addons,
       bundled=[f for d in wheel_dirs for f in os.listdir(d) if f.startswith("xatlas")])

bpy.context.scene.cursor.location = (1.0, 2.0, 3.0)
t = time.monotonic()
result = bpy.ops.prolific.generate(prompt="a red teapot", preset="test", seed=5, variations=2, wait=True, timeout=600)
seconds = time.monotonic() - t
job = jobs.QUEUE.jobs[-1]
objects = []
for name in job.objects:
    obj = bpy.data.objects[name]
    mesh = obj.data
    uv = np.empty(len(mesh.loops) * 2, dtype=np.float32)
    mesh.uv_layers["UVMap"].uv.foreach_get("vector", uv)
    tex = next(n for n in obj.active_material.node_tree.nodes if n.type == "TEX_IMAGE")
    pixels = np.empty(len(tex.image.pixels), dtype=np.float32)
    tex.image.pixels.foreach_get(pixels)
    pixel_file = os.path.join({out!r}, name + ".npy")
    np.save(pixel_file, pixels)
    objects.append(dict(name=name, location=list(obj.location), verts=len(mesh.vertices), faces=len(mesh.polygons),
                        loops=len(mesh.loops), uv_file=pixel_file.replace(".npy", "_uv.npy"),
                        size=list(tex.image.size), packed=tex.image.packed_file is not None, pixels=pixel_file,
                        props={{k: obj[k] for k in obj.keys()}}))
    np.save(objects[-1]["uv_file"], uv)
report(result=sorted(result), seconds=seconds, objects=objects, backend_objects=job.result["objects"],
       status=jobs.backend_status["text"])

# The sidebar's way: Generate returns at once; the timer callback pumps events until the objects exist.
t = time.monotonic()
ui_result = bpy.ops.prolific.generate(prompt="a blue chair", preset="test", seed=1)
returned_after = time.monotonic() - t
ui_job = jobs.QUEUE.jobs[-1]
states, intervals = [ui_job.state], []
while not ui_job.finished and time.monotonic() - t < 600:
    intervals.append(jobs._timer())
    states.append(ui_job.state)
    time.sleep(0.05)
report(ui_result=sorted(ui_result), returned_after=returned_after, ui_states=states, ui_objects=ui_job.objects,
       busy_interval=intervals[0], idle_interval=jobs._timer())

# Unwrap with xatlas from the bundled wheel on the imported mesh.
bpy.ops.object.select_all(action="DESELECT")
first = bpy.data.objects[job.objects[0]]
first.select_set(True)
bpy.context.view_layer.objects.active = first
unwrap = sorted(bpy.ops.prolific.unwrap_xatlas())
new_uv = np.empty(len(first.data.loops) * 2, dtype=np.float32)
first.data.uv_layers["xatlas"].uv.foreach_get("vector", new_uv)
report(unwrap=unwrap, uv_layers=[l.name for l in first.data.uv_layers], active_uv=first.data.uv_layers.active.name,
       xatlas_uv=[float(new_uv.min()), float(new_uv.max()), len(np.unique(new_uv.reshape(-1, 2), axis=0))])

# A job the backend refuses: the operator fails with the backend's sentence; the script API raises.
prefs.model = {missing!r}
try:
    bpy.ops.prolific.generate(prompt="a blue chair", preset="test", wait=True, timeout=300)
    report(operator_error=None)
except RuntimeError as err:
    report(operator_error=str(err))
try:
    api.generate("a blue chair", preset="test", timeout=300)
    report(api_error=None)
except api.GenerationError as err:
    report(api_error=[err.code, str(err)])

pid = jobs.backend_pid()
bpy.ops.preferences.addon_disable(module=module)
try:
    os.kill(pid, 0)
    alive = True
except ProcessLookupError:
    alive = False
report(pid=pid, backend_alive_after_disable=alive, disabled=module not in bpy.context.preferences.addons)
"""


@pytest.fixture(scope="module")
def story(tiny_sd_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("story")
    out = tmp / "results"
    out.mkdir()
    code = STORY.format(out=str(out), missing=str(tmp / "no-model-here"))
    setup = install_with_backend_code(build_zip(tmp / "dist"), tiny_sd_model, out)
    return run_blender("import numpy as np\n" + setup + code, tmp, timeout=900)


def test_the_zip_installs_and_enables_with_its_bundled_wheel(story):
    assert story["enabled"]
    # Blender unpacked the bundled wheel into the extensions' site-packages, which it put on sys.path.
    assert any(f.startswith("xatlas.cpython-311") for f in story["bundled"]), story["bundled"]
    assert "Backend 0.1.0 (protocol 1) on cpu" in story["status"]


def test_generate_headless_creates_the_backend_objects(story):
    assert story["result"] == ["FINISHED"]
    objects, results = story["objects"], story["backend_objects"]
    assert [o["name"] for o in objects] == ["a red teapot 1", "a red teapot 2"]
    assert len(results) == 2
    for obj, result in zip(objects, results):
        mesh = np.load(result["mesh"])
        assert (obj["verts"], obj["faces"], obj["loops"]) == (len(mesh["positions"]), len(mesh["faces"]),
                                                               3 * len(mesh["faces"]))
        uv = mesh["uv"][mesh["faces"]].reshape(-1, 2) if mesh["uv"].ndim == 2 else mesh["uv"].reshape(-1, 2)
        np.testing.assert_allclose(np.load(obj["uv_file"]).reshape(-1, 2), uv, atol=1e-6)
        rgb = np.asarray(Image.open(result["albedo"]).convert("RGB"), dtype=np.float32) / 255
        assert obj["size"] == [rgb.shape[1], rgb.shape[0]] and obj["packed"]
        pixels = np.load(obj["pixels"]).reshape(rgb.shape[0], rgb.shape[1], 4)[::-1]  # Blender rows go bottom-up
        np.testing.assert_allclose(pixels[..., :3], rgb, atol=1e-3)
        meta = json.loads(open(result["meta"]).read())
        props = obj["props"]
        assert props["prolific_prompt"] == "a red teapot" and props["prolific_seed"] == meta["seed"] == 5
        assert json.loads(props["prolific_settings"])["preset"] == "test"
    # Variations stand side by side around the 3D cursor.
    (x0, y0, z0), (x1, y1, z1) = objects[0]["location"], objects[1]["location"]
    assert (y0, z0, y1, z1) == (2, 3, 2, 3) and x0 + x1 == pytest.approx(2.0) and x1 > x0
    print(f"\nheadless generate (2 variations, test preset, CPU, incl. backend start): {story['seconds']:.1f} s")


def test_generate_from_the_sidebar_returns_at_once_and_the_timer_imports(story):
    assert story["ui_result"] == ["FINISHED"] and story["returned_after"] < 1.0
    states = story["ui_states"]
    assert states[0] in ("starting", "queued") and "running" in states and states[-1] == "done"
    assert story["ui_objects"] == ["a blue chair"]
    assert story["busy_interval"] < story["idle_interval"]


def test_unwrap_with_xatlas_adds_a_uv_map(story):
    assert story["unwrap"] == ["FINISHED"]
    assert story["uv_layers"] == ["UVMap", "xatlas"] and story["active_uv"] == "xatlas"
    low, high, distinct = story["xatlas_uv"]
    assert 0.0 <= low < high <= 1.0 and distinct > 3  # every corner got a packed chart coordinate


def test_a_failing_job_reports_the_backends_message(story):
    assert story["operator_error"] and "no-model-here" in story["operator_error"]
    code, message = story["api_error"]
    assert code == "model_not_found" and "no-model-here" in message


def test_disabling_the_addon_leaves_no_backend_process(story):
    assert story["disabled"] and story["pid"] and not story["backend_alive_after_disable"]
