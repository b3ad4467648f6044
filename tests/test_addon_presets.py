"""The add-on's preset menu (built from the backend's hello, with a fallback before it answers) and its guidance
settings, in real Blender; the settings' overrides then go through the server's request parsing to the stages."""
from __future__ import annotations

import threading

import torch

from addon_helpers import ROOT, needs_bpy, run_blender
from prolific.config import PRESETS
from prolific.server import Server, preset_list
from prolific.stages.context import StageContext
from prolific.stages.geometry import GeometryStage
from prolific.stages.nerf import NerfStage

SETUP = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import blender_addon
from blender_addon import jobs, properties
blender_addon.register()
scene = bpy.context.scene.prolific
"""


@needs_bpy
def test_the_preset_menu_comes_from_the_backends_hello(tmp_path):
    facts = run_blender(SETUP + """
menu = lambda: [(name, label, description) for name, label, description, _ in properties.preset_items(scene, None)]
default, before = scene.preset, menu()
scene.preset = "demo"
jobs._on_hello({"event": "hello", "presets": [
    {"name": "huge", "steps": {"nerf": 90000, "geometry": 1, "texture": 2}},
    {"name": "demo", "steps": {"nerf": 200, "geometry": 0, "texture": 60}}]})
kept, after = scene.preset, menu()
scene.preset = "huge"
report(default=default, before=before, kept=kept, after=after, chosen=scene.preset)
""", tmp_path)
    assert facts["default"] == "standard"
    assert [item[0] for item in facts["before"]] == list(PRESETS)  # demo included, before any backend answered
    assert facts["kept"] == "demo"  # the choice survives a menu that changed around it
    assert facts["after"] == [["huge", "Huge", "Steps: nerf 90000, geometry 1, texture 2"],
                              ["demo", "Demo", "Steps: nerf 200, geometry 0, texture 60"]]
    assert facts["chosen"] == "huge"


@needs_bpy  # the add-on package imports bpy
def test_the_fallback_menu_names_the_backends_presets():
    from blender_addon import presets

    assert [p["name"] for p in presets.FALLBACK] == [p["name"] for p in preset_list()]


@needs_bpy
def test_a_malformed_hello_list_leaves_the_menu_as_it_was():
    from blender_addon import presets

    before = presets.menu_items()
    presets.remember([{"steps": {}}])
    presets.remember("draft")
    assert presets.menu_items() == before


@needs_bpy
def test_the_guidance_sliders_reach_their_stages(tmp_path):
    facts = run_blender(SETUP + """
scene.use_advanced, scene.guidance, scene.guidance_scale, scene.geometry_guidance_scale = True, "vsd", 5.0, 42.0
report(overrides=scene.overrides())
""", tmp_path)
    # The request jobs.submit sends with these settings, parsed by the server as it parses any generate.
    request = {"op": "generate", "id": "job-1", "prompt": "a red teapot", "preset": "test", "seed": 0, "particles": 1,
               "out_dir": str(tmp_path), "model": None, "device": "cpu", **facts["overrides"]}
    cfg = Server(lambda event: None).parse_generate(request).cfg
    ctx = StageContext(cfg, torch.device("cpu"), None, None, tmp_path, None, threading.Event(),
                       torch.Generator().manual_seed(0))
    stage2 = GeometryStage(ctx, None).guidance()
    assert stage2.mode == "sds" and stage2.prior.sds_guidance_scale == 42.0
    stage1 = NerfStage(ctx, None).guidance()
    assert stage1.mode == "vsd" and stage1.prior.guidance_scale == 5.0
