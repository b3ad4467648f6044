"""The quality benchmark's scores: a mesh of the true object scores near perfect, a wrong one does not."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prolific.export.bake import bake_texture
from prolific.export.result import write_object
from prolific.export.seams import weld
from prolific.export.unwrap import unwrap
from prolific.field.dmtet import make_tet_grid, marching_tets
from prolific.render.raster import TorchRasterizer
from prolific.bench import toy_quality as quality
from prolific.toy.model import build_models, build_tokenizer, save_model
from prolific.toy.shapes import PALETTE, sdf


def true_mesh(shape: str, colour: str, turn_deg: float = 0.0) -> quality.Mesh:
    verts, tets = make_tet_grid(24, 0.8)
    m = marching_tets(verts, sdf(shape, verts), tets)
    uv = torch.full((len(m.positions), 2), 0.5)
    mesh = quality.Mesh(m.positions, m.faces, uv, torch.tensor(PALETTE[colour]).expand(4, 4, 3).clone())
    mesh.positions = mesh.turned(turn_deg)
    return mesh


@pytest.fixture(scope="module")
def raster():
    return TorchRasterizer()


def test_the_true_object_scores_near_perfect_even_when_turned(raster):
    g = torch.Generator().manual_seed(0)
    good = quality.score_mesh(raster, true_mesh("cube", "red", turn_deg=30.0), "cube", "red", g)
    assert good["silhouette_iou"] > 0.85 and good["volume_iou"] > 0.85, good
    assert good["chamfer"] < 0.04 and good["albedo_error"] < 0.02 and good["colour_ok"], good
    wrong = quality.score_mesh(raster, true_mesh("torus", "blue"), "cube", "red", g)
    assert wrong["silhouette_iou"] < good["silhouette_iou"] - 0.2 and wrong["volume_iou"] < 0.5, wrong
    assert wrong["chamfer"] > 2 * good["chamfer"] and not wrong["colour_ok"] and wrong["colour"] == "blue"


def test_a_result_folder_mesh_is_scored_through_its_per_corner_uvs(tmp_path, raster):
    verts, tets = make_tet_grid(24, 0.8)
    m = marching_tets(verts, sdf("cube", verts), tets)
    flat = unwrap(m.positions.numpy(), m.faces.numpy(), 128)
    red = torch.tensor(PALETTE["red"])
    image, filled = bake_texture(raster, torch.from_numpy(flat.positions), torch.from_numpy(flat.faces).long(),
                                 torch.from_numpy(flat.uv), lambda p: red.expand(len(p), 3), 128, dilation_px=1)
    image[~filled] = torch.tensor(PALETTE["green"])  # what UVs pointing outside their charts would read
    vertex, faces, corner_uv = weld(flat)
    entry = write_object(tmp_path / "object_0", m.positions.numpy()[vertex], faces, corner_uv, None, image.numpy(), {})
    mesh = quality.Mesh.load(entry["mesh"], entry["albedo"], "cpu")
    # Every face corner keeps its position and UV (the renderer needs one UV per vertex: split at the seams).
    np.testing.assert_array_equal(mesh.uv[mesh.faces].numpy(), corner_uv)
    np.testing.assert_array_equal(mesh.positions[mesh.faces].numpy(), m.positions.numpy()[vertex][faces])
    g = torch.Generator().manual_seed(0)
    score = quality.score_mesh(raster, mesh, "cube", "red", g)
    assert score["albedo_error"] < 0.02 and score["colour_ok"], score
    # A folder of the older format (vertices split at the seams, one UV each) scores the same.
    np.savez(tmp_path / "split.npz", positions=flat.positions, faces=flat.faces, uv=flat.uv)
    split = quality.Mesh.load(tmp_path / "split.npz", entry["albedo"], "cpu")
    old = quality.score_mesh(raster, split, "cube", "red", g)
    assert old["silhouette_iou"] == score["silhouette_iou"]
    assert old["albedo_error"] == pytest.approx(score["albedo_error"], abs=1e-3)


def test_volume_iou_separates_shapes():
    cone = true_mesh("cone", "red")
    assert quality.volume_iou(cone.positions, cone.faces, "cone") > 0.9
    assert quality.volume_iou(cone.positions, cone.faces, "cylinder") < 0.7


def test_diversity_distance_is_zero_for_copies_and_large_for_different_shapes(raster):
    cube, torus = true_mesh("cube", "red"), true_mesh("torus", "red")
    assert quality.pairwise_distance(raster, [cube, cube]) < 0.02
    assert quality.pairwise_distance(raster, [cube, torus]) > 0.3


def test_benchmark_runs_the_pipeline_and_reports_scores(tmp_path):
    tok = build_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    model = save_model(tmp_path / "toy", *build_models(tok, "tiny"), tok)
    report = quality.run_quality(str(model), prompts=["a red cube"], preset="test", guidances=("vsd",),
                                 diversity_runs=2, out_dir=tmp_path / "bench", device="cpu", log=lambda _: None)
    [row] = report["runs"]
    assert row["guidance"] == "vsd" and 0.0 <= row["silhouette_iou"] <= 1.0 and row["chamfer"] > 0
    assert len(report["diversity"]["vsd"]["shapes"]) == 2
    assert json.loads((tmp_path / "bench" / "quality.json").read_text())["summary"]["vsd"]["volume_iou"] is not None


def _part(prompt: str, guidance: str, iou: float, diversity: dict | None = None) -> dict:
    row = {"prompt": prompt, "guidance": guidance, "seed": 0, "particle": 0, "silhouette_iou": iou,
           "volume_iou": iou / 2, "chamfer": 0.1, "albedo_error": 0.05, "colour_ok": True}
    return {"benchmark": "quality", "model": "toy", "preset": "demo", "seed": 0, "prompts": [prompt],
            "summary": quality.summarise([row], [guidance]), "runs": [row], "diversity": diversity, "seconds": 10.0}


def test_reports_run_in_parts_merge_into_one_with_the_summary_recomputed(tmp_path):
    from prolific.bench import quality as bench_quality
    from prolific.errors import BadRequest

    parts = [_part("a red cube", "vsd", 0.8), _part("a blue torus", "vsd", 0.6),
             _part("a red cube", "sds", 0.4, {"prompt": "a red object", "sds": {"distinct_shapes": 2}})]
    paths = []
    for k, part in enumerate(parts):
        paths.append(tmp_path / f"part{k}.json")
        paths[-1].write_text(json.dumps(part))
    assert bench_quality.run(["--merge", *map(str, paths), "--json", str(tmp_path / "all.json")]) == 0
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["summary"]["vsd"]["silhouette_iou"] == 0.7 and merged["summary"]["sds"]["volume_iou"] == 0.2
    assert merged["prompts"] == ["a red cube", "a blue torus"] and len(merged["runs"]) == 3
    assert merged["diversity"]["sds"]["distinct_shapes"] == 2 and merged["seconds"] == 30.0
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**parts[0], "preset": "draft"}))
    with pytest.raises(BadRequest, match="different model/preset"):
        bench_quality.run(["--merge", str(paths[0]), str(other)])
    with pytest.raises(BadRequest, match="same run"):
        bench_quality.run(["--merge", str(paths[0]), str(paths[0])])


def test_parts_of_several_seeds_merge_into_one_summary_over_every_run(tmp_path):
    from prolific.bench import quality as bench_quality

    seed1 = _part("a red cube", "vsd", 0.4)
    seed1["seed"] = 1
    seed1["runs"] = [{**row, "seed": 1} for row in seed1["runs"]]
    paths = []
    for k, part in enumerate([_part("a red cube", "vsd", 0.8), seed1]):
        paths.append(tmp_path / f"part{k}.json")
        paths[-1].write_text(json.dumps(part))
    assert bench_quality.run(["--merge", *map(str, paths), "--json", str(tmp_path / "all.json")]) == 0
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["seed"] == [0, 1] and len(merged["runs"]) == 2
    assert merged["summary"]["vsd"]["silhouette_iou"] == pytest.approx(0.6)
