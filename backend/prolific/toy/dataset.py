"""The procedural training data: random toy objects from stage-1 cameras, with captions, rendered on the fly.

Captions look like what the backend sends the prior: "a red cube" plus the view suffix of the camera
(", front view", ...) most of the time; some name only the colour ("a red object", the ambiguous prompt) or
only the shape ("a cube", any colour). Lighting varies like stage 1's lambertian renders (a light near the
camera, random ambient), and some images are flat albedo like its albedo renders.

A few images show an object larger than life (seen from closer) under the empty caption only. Classifier-free
guidance pushes a render toward what the caption explains better than the empty one does; when the empty caption
alone has seen oversized objects, "too big" is something the caption explains badly, so guidance pulls an object
back to its size. Without them guidance at the paper's scale settled "a red cube" at 1.8x its size and the cone
at 1.14x: a bigger cube is more clearly a cube (`python -m prolific.toy.size_probe`; now 1.04x and 0.97x).
Smaller-than-life objects (seen from farther) go under the empty caption the same way, so that "too small" is
explained badly too: with the oversized ones alone guidance settled the torus at 0.84x and the snowman at 0.87x,
with both at 0.90x and 0.93x (the cube 1.02x, the cone 1.03x).

`python -m prolific.toy.dataset --out samples.png` writes a grid of samples (captions beside it) to look at.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import CameraConfig
from ..prior.prompts import VIEW_SUFFIXES, ViewSectors
from ..render.cameras import Cameras, sample_cameras, sample_light_dirs
from .render import render
from .shapes import OBJECT_WORD, PALETTE, caption, training_pairs

P_COLOUR_ONLY = 0.10  # "a red object"
P_SHAPE_ONLY = 0.05  # "a cube"
P_NO_SUFFIX = 0.15  # prompts without the view suffix (view_dependent_prompt off)
P_FLAT = 0.15  # flat albedo instead of lambertian shading
ALBEDO_JITTER = 0.03
P_OVERSIZE = 0.05  # larger-than-life objects with the empty caption
OVERSIZE_SCALE = (1.3, 2.2)  # their scale; 2.2 keeps the nearest camera (1.0/2.2) outside every object (radius 0.4)
# Smaller-than-life objects with the empty caption: with the oversized ones, half the uncaptioned images in training
# (train.py drops 10% of the captions). The bundled prior's last 802 steps had them: demo VSD silhouette IoU over 4
# prompts x seeds 0-2 0.763 against 0.735 before; a 10% share gave 0.699 on seed 0 against 0.781
# (bench_results/2026-12-07_h100_quality_undersize).
P_UNDERSIZE = 0.05
UNDERSIZE_SCALE = (0.5, 0.8)  # their scale; at 0.5 an object is 12 px across at 64 px from the farthest, widest camera
# The view sectors of the captions (front/back within ±45° of azimuth 0/180, overhead above 60°): what the bundled
# prior was trained with, so the demo preset asks it with the same ones.
CAPTION_SECTORS_DEG = (45.0, 45.0, 60.0)


def check_oversize(share: float, scale: tuple[float, float]) -> None:
    """ValueError unless `share` is in [0, 1) and 1 <= low <= high <= the largest scale a camera allows."""
    low, high = scale
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the oversized share must be in [0, 1), got {share}")
    if not 1.0 <= low <= high <= OVERSIZE_SCALE[1]:
        raise ValueError(f"the oversized scales must satisfy 1 <= low <= high <= {OVERSIZE_SCALE[1]} (any nearer "
                         f"and a camera could sit inside an object), got {low}, {high}")


def check_undersize(share: float, scale: tuple[float, float], oversize: float) -> None:
    """ValueError unless `share` is in [0, 1 - oversize) and the smallest scale <= low <= high <= 1."""
    low, high = scale
    if not 0.0 <= share < 1.0 - oversize:
        raise ValueError(f"the undersized share must be in [0, 1 - the oversized share {oversize}), got {share}")
    if not UNDERSIZE_SCALE[0] <= low <= high <= 1.0:
        raise ValueError(f"the undersized scales must satisfy {UNDERSIZE_SCALE[0]} <= low <= high <= 1 (any "
                         f"smaller and an object is a few pixels), got {low}, {high}")


@dataclass
class Batch:
    images: torch.Tensor  # [B,3,H,W] in [0,1]
    captions: list[str]
    shapes: list[str]
    colours: list[str]
    cameras: Cameras


class ToyData:
    """Random batches of captioned renders. Deterministic for a given torch.Generator (on `device`)."""

    def __init__(self, image_size: int = 64, holdout: bool = True, supersample: int = 2,
                 cameras: CameraConfig | None = None, oversize: float = P_OVERSIZE,
                 oversize_scale: tuple[float, float] = OVERSIZE_SCALE, undersize: float = P_UNDERSIZE,
                 undersize_scale: tuple[float, float] = UNDERSIZE_SCALE):
        check_oversize(oversize, oversize_scale)
        check_undersize(undersize, undersize_scale, oversize)
        self.oversize, self.oversize_scale = oversize, tuple(oversize_scale)
        self.undersize, self.undersize_scale = undersize, tuple(undersize_scale)
        self.image_size = image_size
        self.pairs = training_pairs(holdout)
        self.supersample = supersample
        self.cameras = cameras or CameraConfig()

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Batch:
        g_device = generator.device

        def rand(*shape):
            return torch.rand(*shape, generator=generator, device=g_device)

        picks = (rand(n) * len(self.pairs)).long().clamp_max(len(self.pairs) - 1).tolist()
        shapes = [self.pairs[i][0] for i in picks]
        colours = [self.pairs[i][1] for i in picks]
        albedo = torch.tensor([PALETTE[c] for c in colours], device=g_device)
        albedo = (albedo + ALBEDO_JITTER * (2 * rand(n, 3) - 1)).clamp(0, 1)
        cameras = sample_cameras(n, self.cameras, generator, g_device)
        (o_low, o_high), (u_low, u_high) = self.oversize_scale, self.undersize_scale
        size_pick, size_at = rand(n), rand(n)
        oversize = size_pick < self.oversize
        undersize = (size_pick >= self.oversize) & (size_pick < self.oversize + self.undersize)
        scale = torch.where(oversize, o_low + (o_high - o_low) * size_at,
                            torch.where(undersize, u_low + (u_high - u_low) * size_at, torch.ones_like(size_at)))
        cameras = cameras.nearer(scale)
        off_size = oversize | undersize
        light = sample_light_dirs(cameras, generator)
        ambient = 0.3 + 0.25 * rand(n)
        shaded = rand(n) >= P_FLAT
        kind, suffix = rand(n).tolist(), rand(n).tolist()
        captions = []
        directions = ViewSectors(*CAPTION_SECTORS_DEG).directions(cameras)
        for s, c, k, u, d, off in zip(shapes, colours, kind, suffix, directions, off_size.tolist()):
            if off:
                captions.append("")
                continue
            if k < P_COLOUR_ONLY:
                text = caption(OBJECT_WORD, c)
            elif k < P_COLOUR_ONLY + P_SHAPE_ONLY:
                text = caption(s)
            else:
                text = caption(s, c)
            captions.append(text if u < P_NO_SUFFIX else text + VIEW_SUFFIXES[d])
        cameras = cameras.to(device)
        out = render(shapes, albedo.to(device), cameras, self.image_size, self.image_size,
                     light_dirs=light.to(device), ambient=ambient.to(device), shaded=shaded.to(device),
                     supersample=self.supersample)
        return Batch(out["rgb"], captions, shapes, colours, cameras)


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """Save images [B,3,H,W] in [0,1] as one PNG grid (row-major, 2 px white gaps)."""
    b, _, h, w = images.shape
    rows = (b + nrow - 1) // nrow
    grid = np.ones((rows * (h + 2), nrow * (w + 2), 3), dtype=np.float32)
    pix = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    for i in range(b):
        r, c = divmod(i, nrow)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = pix[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a grid of toy training samples and their captions.")
    parser.add_argument("--out", type=Path, default=Path("toy_samples.png"))
    parser.add_argument("-n", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    batch = ToyData(args.size).sample(args.n, torch.Generator().manual_seed(args.seed))
    save_grid(batch.images, args.out)
    args.out.with_suffix(".txt").write_text("\n".join(batch.captions) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.txt')}")


if __name__ == "__main__":
    main()
