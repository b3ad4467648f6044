"""The quality benchmark: text-to-3D with the toy prior, scored against the true objects (`prolific bench quality`).

For each prompt of the toy vocabulary and each guidance (VSD, SDS) the full pipeline runs and the exported mesh
(mesh.npz + albedo.png) is compared with the analytic object the prompt names:
- silhouette IoU: mesh vs true silhouette from 8 turntable cameras (mean over views);
- volume IoU: inside the mesh (ray parity) vs inside the SDF on a 40³ grid over [-1,1]^3;
- Chamfer distance: mean of the two one-sided distances between mesh surface samples and true surface points;
- albedo error: mean absolute RGB difference between the baked texture seen from the 8 views and the true
  albedo, on pixels both silhouettes cover; plus whether the mean albedo's nearest palette colour is the prompt's.
The prior only knows front/side/back, so a generated object may come out turned about +Z: every score uses the
turn (0-90° in 7.5° steps; all toy shapes repeat every 90°) that maximises the silhouette IoU.
Diversity: for an ambiguous prompt ("a red object"), one VSD job with N particles and N SDS jobs with different
seeds; the distance of two objects is 1 - their silhouette IoU over the 8 views (best turn), reported as the
mean over pairs, with the shape each object most resembles.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..export.seams import split_at_seams
from ..render.cameras import Cameras, orbit_cameras
from ..toy.render import VIEW_DISTANCE, VIEW_FOV_DEG, render, trace
from ..toy.shapes import PALETTE, SHAPES, nearest_colour, parse_caption, sdf

DEFAULT_PROMPTS = ("a red cube", "a green cone", "a blue torus", "a yellow snowman")
DIVERSITY_PROMPT = "a red object"
VIEWS, VIEW_SIZE = 8, 64
TURNS_DEG = tuple(7.5 * k for k in range(12))
GRID_RES = 40
SURFACE_SAMPLES = 4096


class Mesh:
    """A result mesh: positions [V,3], faces [F,3] long, per-vertex uv [V,2] and the albedo image [h,w,3]."""

    def __init__(self, positions: torch.Tensor, faces: torch.Tensor, uv: torch.Tensor | None,
                 albedo: torch.Tensor | None):
        self.positions, self.faces, self.uv, self.albedo = positions, faces.long(), uv, albedo

    @classmethod
    def load(cls, mesh_path: Path, albedo_path: Path | None, device) -> "Mesh":
        """A result's mesh.npz (uv per vertex (V,2) or per face corner (F,3,2), the latter split at its seams)."""
        with np.load(mesh_path) as data:
            positions, faces, uv = data["positions"], data["faces"], data["uv"] if "uv" in data else None
        if uv is not None and uv.ndim == 3:
            vmapping, faces, uv = split_at_seams(faces, uv)
            positions = positions[vmapping]
        albedo = None
        if albedo_path is not None and Path(albedo_path).is_file():
            albedo = torch.from_numpy(np.asarray(Image.open(albedo_path).convert("RGB"), np.float32) / 255).to(device)
        return cls(torch.from_numpy(positions).float().to(device), torch.from_numpy(faces.astype(np.int64)).to(device),
                   None if uv is None else torch.from_numpy(uv).float().to(device), albedo)

    def turned(self, degrees: float) -> torch.Tensor:
        """Positions turned by `degrees` about +Z."""
        a = math.radians(degrees)
        c, s = math.cos(a), math.sin(a)
        rot = self.positions.new_tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return self.positions @ rot.T


def views(device) -> Cameras:
    return orbit_cameras(VIEWS, elevation_deg=20.0, distance=VIEW_DISTANCE, fov_deg=VIEW_FOV_DEG,
                         device=device)


def true_views(shape: str, colour: str | None, cameras: Cameras, size: int = VIEW_SIZE) -> dict[str, torch.Tensor]:
    """Silhouettes [N,H,W] bool and albedo [N,3,H,W] of the true object from `cameras`."""
    albedo = torch.tensor(PALETTE[colour] if colour else (0.5, 0.5, 0.5)).expand(len(cameras), 3)
    out = render([shape] * len(cameras), albedo, cameras, size, size)
    return {"mask": out["mask"][:, 0] > 0.5, "albedo": out["albedo"]}


def mesh_views(raster, mesh: Mesh, cameras: Cameras, degrees: float, size: int = VIEW_SIZE) -> dict[str, torch.Tensor]:
    """Silhouettes [N,H,W] bool and baked albedo [N,3,H,W] of the mesh turned by `degrees`."""
    from ..render.mesh import render_mesh

    positions = mesh.turned(degrees)
    textured = mesh.uv is not None and mesh.albedo is not None
    out = render_mesh(raster, positions, mesh.faces, cameras, size, size,
                      shading="albedo" if textured else "normal",
                      uv_texture=(mesh.uv, mesh.albedo) if textured else None, antialias=False)
    return {"mask": out["opacity"][:, 0] > 0.5, "albedo": out["rgb"] if textured else None}


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU per leading index of bool masks [N,H,W] (1 when both are empty)."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def best_turn(raster, mesh: Mesh, target: torch.Tensor, cameras: Cameras) -> tuple[float, float]:
    """(degrees, mean silhouette IoU) of the turn about +Z that best matches the target silhouettes [N,H,W]."""
    scores = [(mask_iou(mesh_views(raster, mesh, cameras, d)["mask"], target).mean().item(), d) for d in TURNS_DEG]
    iou, degrees = max(scores)
    return degrees, iou


def inside_mesh(vertices: torch.Tensor, faces: torch.Tensor, res: int = GRID_RES, bound: float = 1.0,
                chunk: int = 1 << 22) -> torch.Tensor:
    """Which cells of the res³ grid over [-bound, bound]³ lie inside a closed mesh: bool [res³] in grid_points'
    order. Ray parity along +Z, one ray per (x, y) column (nudged off the grid so no ray grazes a mesh edge)."""
    axis = grid_axis(res, vertices.device, bound)
    px, py = torch.meshgrid(axis + 1.234e-5, axis + 2.345e-5, indexing="ij")
    px, py = px.reshape(-1, 1), py.reshape(-1, 1)  # [C,1]
    tri = vertices[faces]  # [F,3,3]
    hits = torch.zeros(px.shape[0], res + 1, device=vertices.device)  # per column: crossings per z interval
    per = max(1, chunk // px.shape[0])
    for i in range(0, len(tri), per):
        (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = (tri[i:i + per, k].T for k in range(3))
        den = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
        den = torch.where(den.abs() < 1e-12, torch.full_like(den, float("inf")), den)  # edge-on: never hit
        l0 = ((y1 - y2) * (px - x2) + (x2 - x1) * (py - y2)) / den
        l1 = ((y2 - y0) * (px - x2) + (x0 - x2) * (py - y2)) / den
        l2 = 1 - l0 - l1
        col, face = torch.nonzero((l0 >= 0) & (l1 >= 0) & (l2 >= 0) & (den.abs() < float("inf")), as_tuple=True)
        z = l0[col, face] * z0[face] + l1[col, face] * z1[face] + l2[col, face] * z2[face]
        hits.index_put_((col, torch.bucketize(z, axis)), torch.ones_like(z), accumulate=True)
    above = hits.flip(1).cumsum(1).flip(1)[:, 1:]  # crossings above each cell centre
    return (above.long() % 2 == 1).reshape(-1)


def grid_axis(res: int, device, bound: float = 1.0) -> torch.Tensor:
    return (torch.arange(res, device=device, dtype=torch.float32) + 0.5) / res * 2 * bound - bound


def grid_points(res: int, device, bound: float = 1.0) -> torch.Tensor:
    axis = grid_axis(res, device, bound)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def volume_iou(mesh_positions: torch.Tensor, faces: torch.Tensor, shape: str, res: int = GRID_RES) -> float:
    inside = inside_mesh(mesh_positions, faces, res)
    inside_true = sdf(shape, grid_points(res, mesh_positions.device)) < 0
    union = (inside | inside_true).sum().item()
    return (inside & inside_true).sum().item() / union if union else 1.0


def surface_samples(positions: torch.Tensor, faces: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n points on the mesh surface, area-weighted."""
    tri = positions[faces]
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1)
    g_dev = generator.device
    idx = torch.multinomial(area.to(g_dev) + 1e-12, n, replacement=True, generator=generator).to(positions.device)
    u, v = torch.rand(2, n, 1, generator=generator, device=g_dev).to(positions)
    flip = (u + v) > 1
    u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
    t = tri[idx]
    return t[:, 0] + u * (t[:, 1] - t[:, 0]) + v * (t[:, 2] - t[:, 0])


def true_surface(shape: str, cameras: Cameras, size: int = 96) -> torch.Tensor:
    """Points on the true surface: where rays of `cameras` hit it."""
    origins, dirs = cameras.rays(size, size)
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    t, hit = trace(shape, o, d)
    return (o + t[:, None] * d)[hit]


def chamfer(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> float:
    """Symmetric Chamfer distance (mean of the two one-sided mean nearest distances) between point sets."""
    def one_sided(x, y):
        return torch.cat([torch.cdist(x[i:i + chunk], y).amin(dim=1) for i in range(0, len(x), chunk)]).mean()
    return float((one_sided(a, b) + one_sided(b, a)) / 2)


def score_mesh(raster, mesh: Mesh, shape: str, colour: str | None, generator: torch.Generator) -> dict:
    """All scores of one result mesh against the true (shape, colour)."""
    cams = views(mesh.positions.device)
    truth = true_views(shape, colour, cams)
    degrees, sil = best_turn(raster, mesh, truth["mask"], cams)
    positions = mesh.turned(degrees)
    surf = surface_samples(positions, mesh.faces, SURFACE_SAMPLES, generator)
    result = {"turn_deg": degrees, "silhouette_iou": round(sil, 4),
              "volume_iou": round(volume_iou(positions, mesh.faces, shape), 4),
              "chamfer": round(chamfer(surf, true_surface(shape, cams).to(surf)), 4)}
    seen = mesh_views(raster, mesh, cams, degrees)
    if seen["albedo"] is not None:
        both = seen["mask"] & truth["mask"]
        if both.any():
            ours = seen["albedo"].permute(0, 2, 3, 1)[both]
            result["albedo_error"] = round((ours - truth["albedo"].permute(0, 2, 3, 1)[both]).abs().mean().item(), 4)
            result["colour"] = nearest_colour(ours.mean(0, keepdim=True))[0]
            result["colour_ok"] = result["colour"] == colour if colour else None
    return result


def shape_guess(raster, mesh: Mesh) -> tuple[str, float]:
    """The toy shape whose silhouettes the mesh matches best, and that IoU."""
    cams = views(mesh.positions.device)
    scores = {s: best_turn(raster, mesh, true_views(s, None, cams)["mask"], cams)[1] for s in SHAPES}
    best = max(scores, key=scores.get)
    return best, round(scores[best], 4)


def pairwise_distance(raster, meshes: Sequence[Mesh]) -> float:
    """Mean over pairs of 1 - silhouette IoU (best turn of the second object) over the 8 views."""
    if len(meshes) < 2:
        return 0.0
    cams = views(meshes[0].positions.device)
    masks = [mesh_views(raster, m, cams, 0.0)["mask"] for m in meshes]
    dists = [1.0 - best_turn(raster, meshes[j], masks[i], cams)[1]
             for i in range(len(meshes)) for j in range(i + 1, len(meshes))]
    return round(sum(dists) / len(dists), 4)


def _objects(result: dict, device) -> list[Mesh]:
    return [Mesh.load(Path(o["mesh"]), Path(o["albedo"]) if o.get("albedo") else None, device)
            for o in result["objects"]]


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(sum(vals) / len(vals), 4) if vals else None


def summarise(rows: list[dict], guidances: Sequence[str]) -> dict:
    """Per guidance, the mean of every metric over the scored objects and the fraction of right colours."""
    metrics = ("silhouette_iou", "volume_iou", "chamfer", "albedo_error")
    summary = {g: {m: _mean([r for r in rows if r["guidance"] == g], m) for m in metrics} for g in guidances}
    for g in guidances:
        oks = [r["colour_ok"] for r in rows if r["guidance"] == g and r.get("colour_ok") is not None]
        summary[g]["colour_accuracy"] = round(sum(oks) / len(oks), 4) if oks else None
    return summary


def merge_reports(reports: Sequence[dict]) -> dict:
    """One report from reports of the same benchmark run in parts (e.g. one process per prompt and seed on one GPU):
    their runs and diversity studies together, the summary recomputed over every run. Parts must share model and
    preset; parts of several seeds give `seed` as the list of them."""
    keys = {(r["model"], r["preset"]) for r in reports}
    if len(keys) != 1:
        raise ValueError(f"Cannot merge quality reports of different model/preset: {sorted(keys)}.")
    rows = [row for r in reports for row in r["runs"]]
    runs = [(row["prompt"], row["guidance"], row["seed"], row["particle"]) for row in rows]
    if len(set(runs)) != len(runs):
        raise ValueError("Two parts hold the same run (prompt, guidance, seed, particle).")
    seeds = sorted({s for r in reports for s in (r["seed"] if isinstance(r["seed"], list) else [r["seed"]])})
    guidances = list(dict.fromkeys(row["guidance"] for row in rows))
    diversity: dict = {}
    for r in reports:
        for key, value in (r.get("diversity") or {}).items():
            if key != "prompt" and key in diversity:
                raise ValueError(f"Two parts hold the {key} diversity study.")
            diversity[key] = value
    first = reports[0]
    return {**first, "seed": seeds[0] if len(seeds) == 1 else seeds,
            "prompts": list(dict.fromkeys(p for r in reports for p in r["prompts"])),
            "summary": summarise(rows, guidances), "runs": rows, "diversity": diversity or None,
            "seconds": round(sum(r["seconds"] for r in reports), 1), "parts": len(reports)}


def run_quality(model: str | None = None, prompts: Sequence[str] = DEFAULT_PROMPTS, preset: str = "draft",
                guidances: Sequence[str] = ("vsd", "sds"), seed: int = 0,
                diversity_prompt: str | None = DIVERSITY_PROMPT, diversity_runs: int = 4,
                out_dir: Path = Path("out/bench_quality"), device: str = "auto", overrides: dict | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Run the pipeline per (prompt, guidance) and score the meshes; then the diversity study. Returns the report
    (also written to <out_dir>/quality.json)."""
    from ..config import make_config
    from ..device import pick_device
    from ..pipeline import load_job_prior, run_job
    from ..render.raster import make_rasterizer

    out_dir = Path(out_dir)
    started = time.monotonic()

    def config(prompt: str, guidance: str, job_seed: int, particles: int = 1):
        over = json.loads(json.dumps(overrides or {}))
        over.setdefault("prior", {}).update({"model": model, "guidance": guidance})
        over.setdefault("texture", {})["guidance"] = guidance
        over.update({"seed": job_seed, "particles": particles, "device": device})
        return make_config(prompt, preset, over)

    first = config(prompts[0] if prompts else diversity_prompt, guidances[0], seed)
    dev = pick_device(first.device)
    prior = load_job_prior(first, dev)
    raster = make_rasterizer(dev)
    generator = torch.Generator(dev).manual_seed(seed)

    def job(prompt: str, guidance: str, job_seed: int, particles: int = 1) -> tuple[dict, float]:
        name = f"{guidance}_{prompt.replace(' ', '_')}_s{job_seed}_p{particles}"
        log(f"quality: {guidance} '{prompt}' seed {job_seed} particles {particles} ...")
        t0 = time.monotonic()
        result = run_job(config(prompt, guidance, job_seed, particles), out_dir, name, prior=prior)
        return result, round(time.monotonic() - t0, 1)

    rows = []
    for prompt in prompts:
        shape, colour = parse_caption(prompt)
        if shape is None:
            raise ValueError(f"Quality prompts must name a toy shape ({', '.join(SHAPES)}): '{prompt}'.")
        for guidance in guidances:
            result, seconds = job(prompt, guidance, seed)
            for k, mesh in enumerate(_objects(result, dev)):
                row = {"prompt": prompt, "guidance": guidance, "seed": seed, "particle": k, "seconds": seconds,
                       **score_mesh(raster, mesh, shape, colour, generator), "job": result["job_dir"]}
                rows.append(row)
                log(f"  {json.dumps(row)}")

    summary = summarise(rows, guidances)

    diversity = {}
    if diversity_prompt and diversity_runs > 1:
        runs = {}
        if "vsd" in guidances:
            result, seconds = job(diversity_prompt, "vsd", seed, diversity_runs)
            runs["vsd"] = (_objects(result, dev), seconds, f"{diversity_runs} particles of one job")
        if "sds" in guidances:
            meshes, seconds = [], 0.0
            for k in range(diversity_runs):
                result, s = job(diversity_prompt, "sds", seed + k)
                meshes += _objects(result, dev)
                seconds += s
            runs["sds"] = (meshes, seconds, f"{diversity_runs} jobs with seeds {seed}..{seed + diversity_runs - 1}")
        for g, (meshes, seconds, how) in runs.items():
            guesses = [shape_guess(raster, m) for m in meshes]
            diversity[g] = {"how": how, "mean_pairwise_distance": pairwise_distance(raster, meshes),
                            "shapes": [s for s, _ in guesses], "shape_ious": [i for _, i in guesses],
                            "distinct_shapes": len({s for s, _ in guesses}), "seconds": seconds}
            log(f"  diversity {g}: {json.dumps(diversity[g])}")

    report = {"benchmark": "quality", "model": prior.source, "preset": preset, "seed": seed,
              "prompts": list(prompts), "summary": summary, "runs": rows,
              "diversity": {"prompt": diversity_prompt, **diversity} if diversity else None,
              "distance": "1 - silhouette IoU over 8 views (best turn about +Z)",
              "seconds": round(time.monotonic() - started, 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
