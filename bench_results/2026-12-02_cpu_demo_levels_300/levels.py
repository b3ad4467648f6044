"""Diagnosis (not a bench; levels.py of ../2026-12-02_cpu_demo_levels with other rules, scaled auto levels): re-extract finished demo NeRFs (stage-1 checkpoints of `--stages nerf` jobs) at other
density levels, as the demo's geometry stage with 0 steps does, and score each mesh's shape like
`prolific bench quality` (silhouette IoU, Chamfer; no texture, so no colour). Rules: fixed levels; threestudio's
"auto" (the mean density where positive); "match@o": of levels peak × FRACTIONS, the one whose mesh silhouettes
best match the NeRF's own opacity > o from 8 views the scoring does not use.
Usage: python threshold_sweep.py OUT.json JOB_DIR... (folder names like a_green_cone_s1)"""
import dataclasses
import json
import sys
from pathlib import Path

import torch

from prolific.bench import toy_quality as tq
from prolific.config import make_config
from prolific.field.dmtet import TetGrid
from prolific.field.nerf import NeRF
from prolific.render.cameras import cameras_from_angles
from prolific.render.raster import make_rasterizer
from prolific.render.volume import render_nerf
from prolific.stages.geometry import initial_dmtet

LEVELS = (1.0, 2.0, 3.0, 5.0)
FRACTIONS = (0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.22, 0.33, 0.5)
OPACITIES = (0.3, 0.5)
raster = make_rasterizer(torch.device("cpu"))
full = torch.ones(8)
select_cams = cameras_from_angles(full * 35.0, torch.arange(8) * 45.0 + 22.5, full * tq.VIEW_DISTANCE,
                                  full * tq.VIEW_FOV_DEG)
rows = []


def mesh_at(grid, nerf, gcfg, level):
    with torch.no_grad():
        tri = initial_dmtet(grid, nerf, dataclasses.replace(gcfg, density_threshold=level)).mesh().detach()
        tri = tri.without_small_parts(gcfg.min_part_fraction)
    return tq.Mesh(tri.positions, tri.faces, None, None)


for job in map(Path, sys.argv[2:]):
    words = job.name.split("_")
    shape, seed = words[2], int(words[3][1:])
    cfg = make_config(" ".join(words[:3]), "demo")
    state = torch.load(job / "checkpoints" / "nerf.pt", map_location="cpu", weights_only=False)
    nerf = NeRF(cfg.nerf, cfg.hash_grid, device="cpu")
    nerf.load_state_dict(state.get("state", state)["particles"][0]["nerf"])
    nerf.eval()
    grid = TetGrid.build(cfg.geometry.tet_res, cfg.nerf.bound, "cpu")
    with torch.no_grad():
        sigma = torch.cat([nerf.density(grid.vertices[i:i + 65536]).reshape(-1)
                           for i in range(0, len(grid.vertices), 65536)])
    peak = float(sigma.max())
    auto = float(sigma[sigma > 1e-5].mean())  # threestudio's isosurface_threshold "auto"
    rules = {"auto": auto, **{f"auto*{k}": k * auto for k in (0.25, 0.35, 0.5, 0.75, 1.5, 2.0)},
             }
    for rule, level in rules.items():
        mesh = mesh_at(grid, nerf, cfg.geometry, level)
        score = tq.score_mesh(raster, mesh, shape, None, torch.Generator().manual_seed(0))
        rows.append({"shape": shape, "seed": seed, "rule": rule, "level": level, "peak": peak, **score})
        print(f"{shape} s{seed} {rule:>9} level {level:7.3f}  IoU {score['silhouette_iou']:.3f} "
              f"Chamfer {score['chamfer']:.4f}", flush=True)
for rule in dict.fromkeys(r["rule"] for r in rows):
    sel = [r for r in rows if r["rule"] == rule]
    print(f"{rule:>9}: IoU {sum(r['silhouette_iou'] for r in sel) / len(sel):.3f} "
          f"Chamfer {sum(r['chamfer'] for r in sel) / len(sel):.4f} over {len(sel)}")
Path(sys.argv[1]).write_text(json.dumps(rows, indent=1))
