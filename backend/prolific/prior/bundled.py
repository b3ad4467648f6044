"""The bundled toy prior: the model used when none is configured (no download, runs on a CPU).

It is a small pixel-space diffusion model trained by `python -m prolific.toy.train` on procedural renders of
simple objects, so it only knows the toy vocabulary ("a red cube", "a blue torus", ...); see prolific/toy/.
"""
from __future__ import annotations

from pathlib import Path

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "toy"
DESCRIPTION = ("the bundled toy prior (64×64 pixel-space diffusion model trained on simple coloured shapes; "
               "prompts like \"a red cube\" or \"a blue torus\"; set a model such as "
               "stabilityai/stable-diffusion-2-1-base for anything else)")


def bundled_available() -> bool:
    """True when the bundled weights are present (they are produced by training and shipped in the package)."""
    return all((BUNDLED_MODEL_DIR / sub).is_dir() for sub in ("unet", "text_encoder", "tokenizer", "scheduler"))


def vocabulary_hint() -> str:
    """One sentence naming what the bundled model can draw, for CLI help and error messages."""
    from ..toy.shapes import PALETTE, SHAPES

    return (f"The bundled toy prior draws one object in one colour: shapes {', '.join(SHAPES)}; "
            f"colours {', '.join(PALETTE)} (e.g. \"a red cube\").")
