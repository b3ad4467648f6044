"""Export: xatlas unwrap, the UV-space bake, the result folder, GLB and OBJ."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image

from prolific.config import make_config
from prolific.events import Reporter
from prolific.export.bake import bake_texture
from prolific.export.formats import write_glb, write_obj
from prolific.export.result import export_objects, write_object
from prolific.export.seams import split_at_seams, weld
from prolific.export.unwrap import unwrap
from prolific.field.dmtet import DMTet, TetGrid
from prolific.field.trimesh import TriMesh
from prolific.render.raster import TorchRasterizer
from prolific.stages.context import StageContext

CENTRE = torch.tensor([0.1, 0.0, -0.05])


@pytest.fixture(scope="module")
def sphere() -> TriMesh:
    grid = TetGrid.build(16, 1.0)
    dmtet = DMTet(grid)
    with torch.no_grad():
        dmtet.sdf.copy_((grid.vertices - CENTRE).norm(dim=-1) - 0.55)
    return dmtet.mesh().detach()


def albedo(p: torch.Tensor) -> torch.Tensor:
    """A smooth colour that differs in every direction, so any mix-up of UVs, charts or rows shows."""
    return 0.5 + 0.4 * torch.sin(torch.stack([3 * p[:, 0] + 1, 2 * p[:, 1] - p[:, 2], 4 * p[:, 2]], -1))


def surface_samples(positions, faces, uv, n, seed=0):
    """Area-uniform points on the mesh: their 3D positions and their UVs (same barycentrics)."""
    gen = torch.Generator().manual_seed(seed)
    area = TriMesh(positions, faces).face_normals().norm(dim=-1)
    face = torch.multinomial(area, n, replacement=True, generator=gen)
    r = torch.rand(n, 2, generator=gen)
    r = torch.where((r.sum(-1) > 1)[:, None], 1 - r, r)
    w = torch.stack([1 - r.sum(-1), r[:, 0], r[:, 1]], -1)[..., None]
    return (positions[faces[face]] * w).sum(1), (uv[faces[face]] * w).sum(1)


def bilinear_footprint(uv: torch.Tensor, size: int):
    """Rows and columns of the 4 texels bilinear filtering reads at uv (image layout: row 0 at v = 1)."""
    x = (uv[:, 0] * size - 0.5).floor().long()
    y = ((1 - uv[:, 1]) * size - 0.5).floor().long()
    xs = [x.clamp(0, size - 1), (x + 1).clamp(0, size - 1)]
    ys = [y.clamp(0, size - 1), (y + 1).clamp(0, size - 1)]
    return [(yy, xx) for yy in ys for xx in xs]


def test_unwrap_keeps_faces_and_maps_back_to_the_mesh(sphere):
    flat = unwrap(sphere.positions.numpy(), sphere.faces.numpy(), 128)
    assert flat.faces.shape == tuple(sphere.faces.shape) and flat.faces.dtype == np.int32
    assert flat.positions.shape[0] == flat.uv.shape[0] >= sphere.positions.shape[0]  # seams split vertices
    assert flat.uv.min() >= 0 and flat.uv.max() <= 1
    np.testing.assert_array_equal(flat.positions, sphere.positions.numpy()[flat.vmapping])
    # Same triangles, same order and winding, only re-indexed.
    np.testing.assert_array_equal(flat.vmapping[flat.faces], sphere.faces.numpy())


def test_baked_texture_resampled_through_the_uvs_matches_the_albedo(sphere):
    """Bilinear lookup of the baked texture at surface points' UVs against the albedo at their 3D positions.

    Texels are ~2 cm at 128² (3.8 m² of sphere, about half the atlas used); bilinear error of this albedo
    (|f''| <= 6.4 /m²) is then ~4e-4, i.e. ~68 dB; seams read dilated texels, a little worse. 50 dB fails if
    dilation leaves seam texels empty (~44 dB) and by far if rows (V) or charts are mixed up (~10 dB)."""
    size = 128
    flat = unwrap(sphere.positions.numpy(), sphere.faces.numpy(), size)
    pos, faces, uv = torch.from_numpy(flat.positions), torch.from_numpy(flat.faces).long(), torch.from_numpy(flat.uv)
    image, filled = bake_texture(TorchRasterizer(), pos, faces, uv, albedo, size, dilation_px=2)
    assert image.shape == (size, size, 3) and filled.shape == (size, size)
    points, puv = surface_samples(pos, faces, uv, 20000)
    grid = torch.stack([puv[:, 0] * 2 - 1, 1 - puv[:, 1] * 2], -1)[None, None]
    looked_up = F.grid_sample(image.permute(2, 0, 1)[None], grid, mode="bilinear", align_corners=False)[0, :, 0].T
    mse = float(((looked_up - albedo(points)) ** 2).mean())
    assert 10 * np.log10(1 / mse) > 50
    # No empty texel anywhere bilinear filtering reads inside the charts...
    assert all(filled[y, x].all() for y, x in bilinear_footprint(puv, size))
    # ...which rasterising texel centres alone does not give: seams and slivers need the dilation.
    _, bare = bake_texture(TorchRasterizer(), pos, faces, uv, albedo, size, dilation_px=0)
    assert not all(bare[y, x].all() for y, x in bilinear_footprint(puv, size))


def test_write_object_writes_the_result_folder_format(tmp_path, sphere):
    vertex, faces, corner_uv = weld(unwrap(sphere.positions.numpy(), sphere.faces.numpy(), 64))
    positions = sphere.positions.numpy()[vertex]
    normals = np.tile([[0.0, 0.0, 1.0]], (len(positions), 1))
    image = np.random.default_rng(0).random((64, 64, 3))
    entry = write_object(tmp_path / "object_0", positions.astype(np.float64), faces.astype(np.int64),
                         corner_uv, normals, image, {"prompt": "a red teapot", "seed": 3})
    data = np.load(entry["mesh"])
    assert data["positions"].dtype == np.float32 and data["positions"].shape == positions.shape
    assert data["faces"].dtype == np.int32 and data["faces"].shape == faces.shape
    assert data["uv"].dtype == np.float32 and data["uv"].shape == (len(faces), 3, 2)
    assert data["normals"].dtype == np.float32
    png = np.asarray(Image.open(entry["albedo"]))
    assert png.shape == (64, 64, 3) and np.abs(png / 255.0 - image).max() <= 0.5 / 255 + 1e-9
    meta = json.loads(open(entry["meta"]).read())
    assert meta["prompt"] == "a red teapot" and meta["seed"] == 3 and meta["faces"] == len(faces)
    with pytest.raises(ValueError, match=r"per face corner"):
        write_object(tmp_path / "object_1", positions, faces, corner_uv.reshape(-1, 2), None, image, {})


def test_weld_gives_the_uncut_mesh_with_the_unwrapped_uvs_per_corner(sphere):
    flat = unwrap(sphere.positions.numpy(), sphere.faces.numpy(), 64)
    vertex, faces, corner_uv = weld(flat)
    # The marching-tets sphere back, vertex for vertex and face for face: no seam splits any vertex.
    np.testing.assert_array_equal(vertex, np.arange(len(sphere.positions)))
    np.testing.assert_array_equal(faces, sphere.faces.numpy())
    assert len(flat.positions) > len(vertex)  # xatlas did cut seams
    np.testing.assert_array_equal(corner_uv, flat.uv[flat.faces])
    # Splitting again at the seams recovers xatlas's vertices: one per distinct (vertex, UV) pair.
    vmapping, split_faces, uv = split_at_seams(faces, corner_uv)
    assert len(vmapping) == len(flat.positions)
    np.testing.assert_array_equal(uv[split_faces], corner_uv)
    np.testing.assert_array_equal(vmapping[split_faces], faces)


def test_glb_and_obj_load_back_with_the_same_corners_and_y_up(tmp_path, sphere):
    flat = unwrap(sphere.positions.numpy(), sphere.faces.numpy(), 64)
    vertex, faces, corner_uv = weld(flat)
    positions = sphere.positions.numpy()[vertex]
    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    glb = write_glb(tmp_path / "mesh.glb", positions, faces, corner_uv, None, image)
    loaded = trimesh.load(glb, force="mesh", process=False)
    # glTF has one UV per vertex: the file's vertices are split at the seams, as xatlas cut them.
    assert loaded.vertices.shape[0] == flat.positions.shape[0] and loaded.faces.shape[0] == len(faces)
    # glTF is +Y up: our +Z (up) becomes +Y, our +Y (back) becomes −Z.
    p = positions[faces].reshape(-1, 3)
    np.testing.assert_allclose(loaded.vertices[loaded.faces].reshape(-1, 3), np.stack([p[:, 0], p[:, 2], -p[:, 1]], 1),
                               atol=1e-6)
    np.testing.assert_allclose(loaded.visual.uv[loaded.faces], corner_uv, atol=1e-6)
    assert loaded.visual.material.baseColorTexture.size == (64, 64)
    obj = write_obj(tmp_path / "mesh.obj", positions, faces, corner_uv, None, image)
    mtl = (tmp_path / "mesh.mtl").read_text()
    texture = mtl.split("map_Kd")[1].split()[0]
    assert (tmp_path / texture).exists()
    back = trimesh.load(obj, force="mesh", process=False)
    assert back.faces.shape[0] == len(faces)
    np.testing.assert_allclose(back.visual.uv[back.faces], corner_uv, atol=1e-6)


def test_export_objects_writes_one_folder_per_particle(tmp_path, sphere):
    cfg = make_config("a red teapot", "test", {"particles": 2, "export": {"formats": ["glb", "obj"]}})
    cancel = threading.Event()
    ctx = StageContext(cfg, torch.device("cpu"), None, None, tmp_path, Reporter(None, cancel), cancel,
                       torch.Generator().manual_seed(0))
    shifted = TriMesh(sphere.positions * 0.5, sphere.faces)
    objects = export_objects(ctx, [sphere, shifted], [albedo, lambda p: torch.full_like(p, 0.25)])
    assert len(objects) == 2
    for k, entry in enumerate(objects):
        folder = tmp_path / f"object_{k}"
        for name in ("mesh.npz", "albedo.png", "meta.json", "mesh.glb", "mesh.obj"):
            assert (folder / name).exists(), name
        data = np.load(entry["mesh"])
        # The mesh as the stage left it (welded) with per-corner UVs; normals stay per vertex.
        mesh = [sphere, shifted][k]
        np.testing.assert_array_equal(data["positions"], mesh.positions.numpy())
        np.testing.assert_array_equal(data["faces"], mesh.faces.numpy())
        assert data["uv"].shape == (len(data["faces"]), 3, 2) and data["normals"].shape == data["positions"].shape
        assert data["faces"].max() < data["positions"].shape[0] == entry["vertices"]
        assert len(entry["turntable"]) == cfg.export.turntable_views
    # The constant albedo of particle 1 is baked everywhere, including the texels outside its charts.
    flat_colour = np.asarray(Image.open(objects[1]["albedo"])) / 255.0
    assert np.abs(flat_colour - 0.25).max() < 1 / 255
    assert np.asarray(Image.open(objects[0]["albedo"])).std() > 10
