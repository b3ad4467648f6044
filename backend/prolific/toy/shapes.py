"""The toy world: analytic signed distance functions of a few objects, a colour palette, captions, the split.

Every object is centred at the origin, +Z up (Blender's axes), and fits inside a sphere of radius 0.4 so that
stage 1's cameras (distance 1.0-1.5, fov 40-70°) frame it: at the nearest, narrowest camera the sphere still fits. Objects are one colour; their pose is fixed, so a
(shape, camera) pair has exactly one true silhouette, which the prior check and the quality benchmark use.
"""
from __future__ import annotations

import torch

# Albedo of each caption colour (linear [0,1] RGB), chosen to stay apart after lambertian shading divides
# out brightness (see `nearest_colour`).
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "orange": (0.95, 0.50, 0.05),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.10, 0.25, 0.90),
    "purple": (0.55, 0.15, 0.75),
    "pink": (0.95, 0.45, 0.70),
}
SHAPES = ("cube", "sphere", "cylinder", "cone", "torus", "snowman", "mushroom", "table")
OBJECT_WORD = "object"  # "a red object" = any shape in red (the ambiguous prompt of the diversity benchmark)
# The shapes below are modelled at 1.5x; stage 1's cameras came 1.5x closer (threestudio's distance 1.0-1.5 instead
# of 1.5-2.0), so the world is scaled by 1/1.5 and renders keep the framing the first toy priors were trained on.
SCALE = 1 / 1.5
RADIUS = 0.6 * SCALE  # every shape lies inside this sphere

# (shape, colour) pairs never shown in training: the prior check asks for them (compositional generalisation).
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("cube", "purple"), ("sphere", "orange"), ("cone", "blue"), ("torus", "yellow"), ("mushroom", "green"),
)


def caption(shape: str, colour: str | None = None) -> str:
    """ "a red cube", "an orange object", "a cube" (no colour: any colour)."""
    text = f"{colour} {shape}" if colour else shape
    return ("an " if text[0] in "aeiou" else "a ") + text


def vocabulary() -> list[str]:
    """The words of every caption (the view-suffix words are added by the tokenizer builder)."""
    return ["a", "an", OBJECT_WORD, *PALETTE, *SHAPES]


def training_pairs(holdout: bool = True) -> list[tuple[str, str]]:
    """All (shape, colour) pairs in a fixed order, minus HELD_OUT when `holdout`."""
    pairs = [(s, c) for s in SHAPES for c in PALETTE]
    return [p for p in pairs if not (holdout and p in HELD_OUT)]


def parse_caption(text: str) -> tuple[str | None, str | None]:
    """(shape, colour) named by a prompt such as "a red cube, front view"; None for what it leaves open."""
    words = text.lower().replace(",", " ").split()
    shape = next((w for w in words if w in SHAPES), None)
    colour = next((w for w in words if w in PALETTE), None)
    return shape, colour


def palette_tensor(device=None) -> torch.Tensor:
    return torch.tensor(list(PALETTE.values()), device=device)


def nearest_colour(rgb: torch.Tensor) -> list[str]:
    """Palette name nearest to each mean foreground colour [N,3], brightness divided out (shading only scales)."""
    pal = palette_tensor(rgb.device)
    a = rgb / rgb.amax(dim=-1, keepdim=True).clamp_min(1e-4)
    b = pal / pal.amax(dim=-1, keepdim=True)
    names = list(PALETTE)
    return [names[i] for i in torch.cdist(a, b).argmin(dim=-1).tolist()]


# --- primitive SDFs (points [...,3] -> signed distance [...]; negative inside) ---
# Offsets are Python floats, never small tensors: on a GPU each new tiny tensor would be a blocking copy.

def _box(p: torch.Tensor, centre: tuple[float, float, float], half: tuple[float, float, float]) -> torch.Tensor:
    q = torch.stack([(p[..., i] - centre[i]).abs() - half[i] for i in range(3)], dim=-1)
    return q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0)


def _sphere(p: torch.Tensor, z: float, r: float) -> torch.Tensor:
    return (p[..., :2].square().sum(-1) + (p[..., 2] - z).square()).sqrt() - r


def _cylinder(p: torch.Tensor, z: float, r: float, half_h: float) -> torch.Tensor:
    """Vertical cylinder centred at (0,0,z): exact distance (2D box in (radius, height))."""
    d = torch.stack([p[..., :2].norm(dim=-1) - r, (p[..., 2] - z).abs() - half_h], dim=-1)
    return d.clamp_min(0).norm(dim=-1) + d.amax(dim=-1).clamp_max(0)


def _cone(p: torch.Tensor, z_base: float, z_apex: float, r: float) -> torch.Tensor:
    """Upright cone: base disc of radius r at z_base, apex above. A lower bound of the distance (max of the
    lateral surface and the base plane), which sphere tracing accepts."""
    h = z_apex - z_base
    norm = (r * r + h * h) ** 0.5
    cos, sin = h / norm, r / norm
    side = p[..., :2].norm(dim=-1) * cos + (p[..., 2] - z_apex) * sin
    return torch.maximum(side, z_base - p[..., 2])


def _torus(p: torch.Tensor, major: float, minor: float) -> torch.Tensor:
    """Flat torus (a doughnut lying in the XY plane)."""
    q = torch.stack([p[..., :2].norm(dim=-1) - major, p[..., 2]], dim=-1)
    return q.norm(dim=-1) - minor


def _dome(p: torch.Tensor, z_cut: float, z_centre: float, r: float) -> torch.Tensor:
    """The part of a sphere above z = z_cut (a mushroom cap); lower bound like `_cone`."""
    return torch.maximum(_sphere(p, z_centre, r), z_cut - p[..., 2])


def _table(p: torch.Tensor) -> torch.Tensor:
    top = _box(p, (0.0, 0.0, 0.12), (0.38, 0.38, 0.05))
    mirrored = torch.cat([p[..., :2].abs(), p[..., 2:]], dim=-1)  # four legs from one
    legs = _box(mirrored, (0.30, 0.30, -0.16), (0.05, 0.05, 0.23))
    return torch.minimum(top, legs)


_SDF = {
    "cube": lambda p: _box(p, (0.0, 0.0, 0.0), (0.33, 0.33, 0.33)),
    "sphere": lambda p: _sphere(p, 0.0, 0.45),
    "cylinder": lambda p: _cylinder(p, 0.0, 0.30, 0.40),
    "cone": lambda p: _cone(p, -0.40, 0.50, 0.42),
    "torus": lambda p: _torus(p, 0.38, 0.16),
    "snowman": lambda p: torch.minimum(_sphere(p, -0.20, 0.30), _sphere(p, 0.27, 0.20)),
    "mushroom": lambda p: torch.minimum(_cylinder(p, -0.20, 0.11, 0.25), _dome(p, 0.0, -0.05, 0.42)),
    "table": _table,
}


def sdf(shape: str, points: torch.Tensor) -> torch.Tensor:
    """Signed distance (a lower bound near some edges) from `points` [...,3] to `shape`; < 0 inside."""
    return SCALE * _SDF[shape](points / SCALE)
