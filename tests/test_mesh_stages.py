"""Stages 2 and 3 through the pipeline on the tiny model: the result folder, and resume after a cancel."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from prolific.config import make_config
from prolific.errors import Cancelled
from prolific.events import Reporter
from prolific.pipeline import run_job


def check_object(entry: dict) -> None:
    data = np.load(entry["mesh"])
    positions, faces, uv = data["positions"], data["faces"], data["uv"]
    assert positions.dtype == np.float32 and faces.dtype == np.int32 and uv.dtype == np.float32
    assert len(faces) > 0 and faces.min() >= 0 and faces.max() < len(positions)
    assert uv.shape == (len(faces), 3, 2) and uv.min() >= 0 and uv.max() <= 1  # per face corner
    assert np.abs(positions).max() <= 1.0  # inside the scene cube, +Z up metres
    image = Image.open(entry["albedo"])
    assert image.size == (64, 64) and image.mode == "RGB"


def test_three_stage_test_preset_writes_a_valid_result_folder(tmp_path, tiny_sd_model):
    cfg = make_config("a red teapot", "test", {"prior": {"model": str(tiny_sd_model)},
                                              "export": {"formats": ["glb"]}})
    events = []
    result = run_job(cfg, tmp_path, "job", sink=events.append)
    assert len(result["objects"]) == 1
    entry = result["objects"][0]
    check_object(entry)
    assert (tmp_path / "job" / "object_0" / "mesh.glb").exists()
    stages = [e.stage for e in events]
    assert stages.index("nerf") < stages.index("geometry") < stages.index("texture") < stages.index("export")
    previews = {p.name.split("_")[0] for p in (tmp_path / "job" / "previews").glob("*.png")}
    assert {"geometry", "texture"} <= previews
    for stage in ("geometry", "texture"):
        state = torch.load(tmp_path / "job" / "checkpoints" / f"{stage}.pt", weights_only=True)
        assert state["done"] and state["step"] == getattr(cfg, stage).steps


def test_resume_after_a_cancel_in_stage_3_repeats_no_finished_stage(tmp_path, tiny_sd_model, monkeypatch):
    cfg = make_config("a red teapot", "test", {"prior": {"model": str(tiny_sd_model)}, "nerf": {"steps": 2},
                                              "geometry": {"steps": 2},
                                              "texture": {"steps": 3, "checkpoint_every": 1}})
    cancel = threading.Event()
    monkeypatch.setattr(Reporter, "min_interval_s", 0.0)  # every step reported, so the cancel lands on step 1

    def cancel_after_texture_step_1(event):
        if event.stage == "texture" and event.step == 1:
            cancel.set()  # the user presses Cancel right after texture step 1 is saved

    with pytest.raises(Cancelled):
        run_job(cfg, tmp_path, "job", sink=cancel_after_texture_step_1, cancel=cancel)
    ckpt = tmp_path / "job" / "checkpoints"
    stopped_at = torch.load(ckpt / "texture.pt", weights_only=True)["step"]
    assert stopped_at == 1
    stamps = {s: (ckpt / f"{s}.pt").stat().st_mtime_ns for s in ("nerf", "geometry")}

    events = []
    result = run_job(cfg, tmp_path, "job", sink=events.append, resume=True)
    check_object(result["objects"][0])
    for stage in ("nerf", "geometry"):  # finished stages only report themselves done; their files stay untouched
        assert all(e.step == e.total for e in events if e.stage == stage)
        assert (ckpt / f"{stage}.pt").stat().st_mtime_ns == stamps[stage]
    texture_steps = [e.step for e in events if e.stage == "texture"]
    assert texture_steps[0] == stopped_at and texture_steps[-1] == 3  # continued where the cancel left it


def test_a_geometry_stage_cancelled_mid_way_resumes_to_the_surface_of_an_uninterrupted_run(tmp_path, tiny_sd_model,
                                                                                          monkeypatch):
    cfg = make_config("a red teapot", "test", {"prior": {"model": str(tiny_sd_model)}, "nerf": {"steps": 2},
                                              "geometry": {"steps": 3, "checkpoint_every": 10},
                                              "stages": ["nerf", "geometry"]})
    run_job(cfg, tmp_path, "straight")
    cancel = threading.Event()
    monkeypatch.setattr(Reporter, "min_interval_s", 0.0)  # every step reported, so the cancel lands on step 1

    def cancel_after_geometry_step_1(event):
        if event.stage == "geometry" and event.step == 1:
            cancel.set()

    with pytest.raises(Cancelled) as err:
        run_job(cfg, tmp_path, "stopped", sink=cancel_after_geometry_step_1, cancel=cancel)
    assert (err.value.stage, err.value.step) == ("geometry", 1)
    events = []
    run_job(cfg, tmp_path, "stopped", sink=events.append, resume=True)
    assert [e.step for e in events if e.stage == "geometry"] == [1, 2, 3]
    straight, resumed = (torch.load(tmp_path / job / "checkpoints" / "geometry.pt", weights_only=True)["particles"][0]
                         for job in ("straight", "stopped"))
    assert straight["deform"].abs().max() > 0, "the surface never moved: the comparison would be vacuous"
    # Equal up to float noise: ~2e-6 here, as with the backend before the stage runner (c87ba52); a wrong RNG or
    # optimizer restore moves the deformation by its own size (1e-2).
    assert torch.allclose(straight["sdf"], resumed["sdf"], atol=1e-5)
    assert torch.allclose(straight["deform"], resumed["deform"], atol=1e-5)


class PushTowards:
    """A stand-in prior whose loss pulls the renders toward a target image (here: the normal map's background),
    so the test can see whether normal-map renders carry gradients to the DMTet's SDF."""

    def __init__(self, value: float):
        self.value = value

    def loss(self, images, c2w, directions, prompt, step, total, generator):
        return ((images - self.value) ** 2).mean(), {}


def test_geometry_step_moves_the_surface_through_normal_map_renders(tmp_path):
    import dataclasses

    from prolific.field.dmtet import DMTet, TetGrid
    from prolific.render.raster import TorchRasterizer
    from prolific.stages import geometry
    from prolific.stages.context import StageContext

    cfg = make_config("a red teapot", "test", {"geometry": {"normal_consistency_weight": 0.0,
                                                            "laplacian_weight": 0.0}})
    cancel = threading.Event()
    # The particle's cameras from generator 0, as the test was written with (the volume's change depends on them).
    ctx = StageContext(cfg, torch.device("cpu"), None, None, tmp_path, None, cancel,
                       torch.Generator().manual_seed(0), generators=[torch.Generator().manual_seed(0)])
    grid = TetGrid.build(cfg.geometry.tet_res, 1.0)
    dmtet = DMTet(grid)
    with torch.no_grad():
        # Radius 0.3: its silhouette's edge stays in the frame from the nearest training camera (distance 1,
        # fov 40°: the frame's half-width there is tan 20° ≈ 0.36).
        dmtet.sdf.copy_(grid.vertices.norm(dim=-1) - 0.3)
    before = enclosed_volume(dmtet)
    optimizer = geometry.make_optimizer(dmtet, dataclasses.replace(cfg.geometry, lr=0.05))
    for step in range(5):  # renders pulled toward the black background: the object must shrink
        geometry.train_step(ctx, TorchRasterizer(), [dmtet], [optimizer], PushTowards(0.0), step)
    assert enclosed_volume(dmtet) < 0.9 * before


def enclosed_volume(dmtet) -> float:
    with torch.no_grad():
        mesh = dmtet.mesh()
        return float((mesh.face_normals() * mesh.positions[mesh.faces[:, 0]]).sum() / 6)
