"""The toy prior's pull on an object's size: which size does score distillation settle an object at?

    python -m prolific.toy.size_probe --prompts "a red cube;a green cone" --json size_probe.json

The true object grown by s about its centre is rendered (flat albedo, as stage 1) from random stage-1 cameras and
noised at several t; the SDS update of the render, −(1 − ᾱ_t)(ε̂ − ε), is projected on d(render)/ds. A positive
pull grows the object, a negative one shrinks it. `balance` is the scale where the mean pull over t changes from
growing to shrinking: the size a particle drifts to under this prior and guidance scale (1 = its true size). The
same noise is used at every scale, so the comparison across scales is not blurred by it.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Sequence

import torch

from ..config import CameraConfig
from ..prior.prompts import ViewSectors
from ..render.cameras import sample_cameras
from .dataset import CAPTION_SECTORS_DEG
from .render import render
from .shapes import PALETTE, parse_caption

SCALES = (0.7, 1.0, 1.4, 2.0)  # 2.0 keeps the nearest camera (1.0 / 2.0) outside every object (radius 0.4)
TIMESTEPS = (100, 200, 300, 400, 500, 700, 900)
GUIDANCES = (1.0, 7.5)  # the conditional model alone, and the paper's CFG
DEFAULT_PROMPTS = ("a red cube", "a green cone", "a blue torus", "a yellow snowman")
FD_STEP = 1.05  # d(render)/ds by central differences at s·1.05 and s/1.05


def balance_scale(scales: Sequence[float], pulls: Sequence[float]) -> float | None:
    """Where the pull first turns from growing (> 0) to shrinking (≤ 0) along increasing scale, interpolated in
    log scale; the smallest scale if it already shrinks there, None if it grows at every scale."""
    if pulls[0] <= 0:
        return float(scales[0])
    for (s0, p0), (s1, p1) in zip(zip(scales, pulls), zip(scales[1:], pulls[1:])):
        if p1 <= 0 < p0:
            w = p0 / (p0 - p1)
            return math.exp((1 - w) * math.log(s0) + w * math.log(s1))
    return None


def probe(prior, prompt: str, scales: Sequence[float] = SCALES, timesteps: Sequence[int] = TIMESTEPS,
          guidances: Sequence[float] = GUIDANCES, views: int = 32, seed: int = 0) -> dict:
    """The pull per guidance scale, scale and t for `prompt` (a toy caption naming a shape and a colour)."""
    shape, colour = parse_caption(prompt)
    if shape is None or colour is None:
        raise ValueError(f"The size probe needs a prompt naming a toy shape and colour, not {prompt!r}.")
    device = prior.device
    size = 64  # the toy prior's size; encode_images resizes for any other model
    cams = sample_cameras(views, CameraConfig(), torch.Generator().manual_seed(seed))
    directions = ViewSectors(*CAPTION_SECTORS_DEG).directions(cams)
    cams = cams.to(device)
    albedo = torch.tensor([PALETTE[colour]] * views, device=device)
    flat = torch.zeros(views, dtype=torch.bool, device=device)

    def image(s: float) -> torch.Tensor:
        rgb = render([shape] * views, albedo, cams.nearer(s), size, size, shaded=flat, supersample=2)["rgb"]
        return prior.encode_images(rgb)

    cond, uncond = prior.embed_prompt(prompt).get(directions)
    alphas = prior.alphas_cumprod
    renders = {s: image(s) for s in scales}
    slopes = {s: (image(s * FD_STEP) - image(s / FD_STEP)) / (s * FD_STEP - s / FD_STEP) for s in scales}
    noise_gen = torch.Generator(device).manual_seed(seed + 1)
    shape_x = renders[scales[0]].shape
    noises = {t: torch.randn(shape_x, generator=noise_gen, device=device) for t in timesteps}
    out: dict = {"prompt": prompt, "scales": list(scales), "timesteps": list(timesteps), "views": views,
                 "guidance": {}}
    for g in guidances:
        per_scale = []
        for s in scales:
            x, dx = renders[s], slopes[s]
            pulls = []
            for t in timesteps:
                a = alphas[t]
                x_t = a.sqrt() * x + (1 - a).sqrt() * noises[t]
                with torch.no_grad():
                    eps = prior.predict_noise(x_t, torch.full((views,), t, device=device), cond, uncond, g)
                pulls.append(-((1 - a) * (eps.float() - noises[t]) * dx).sum((1, 2, 3)).mean().item())
            per_scale.append(pulls)
        means = [sum(p) / len(p) for p in per_scale]
        out["guidance"][str(g)] = {"pull": [[round(v, 2) for v in p] for p in per_scale],
                                   "mean_pull": [round(m, 2) for m in means],
                                   "balance": balance_scale(scales, means)}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m prolific.toy.size_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="diffusers folder (default: the bundled toy prior)")
    parser.add_argument("--prompts", default=";".join(DEFAULT_PROMPTS), help="semicolon-separated")
    parser.add_argument("--guidances", default=",".join(str(g) for g in GUIDANCES))
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    prompts = [p.strip() for p in args.prompts.split(";") if p.strip()]
    unusable = [p for p in prompts if None in parse_caption(p)]
    if not prompts:
        parser.error("--prompts is empty")
    if unusable:
        parser.error(f"each prompt must name a toy shape and colour (e.g. \"a red cube\"), not {unusable}")
    from ..prior.diffusion import load_prior

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    prior = load_prior(args.model, device, torch.float32)
    guidances = [float(g) for g in args.guidances.split(",")]
    report = {"model": args.model or "bundled toy prior", "seed": args.seed, "prompts": []}
    for prompt in prompts:
        result = probe(prior, prompt, guidances=guidances, views=args.views, seed=args.seed)
        report["prompts"].append(result)
        balances = ", ".join(f"CFG {g}: " + (f"{v['balance']:.2f}" if v["balance"] else f"> {result['scales'][-1]}")
                             for g, v in result["guidance"].items())
        print(f"{prompt}: settles at scale {balances}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
