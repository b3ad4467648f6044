"""Shared fixtures: tiny diffusion models built from configs (random weights, fixed seed), never downloaded."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402

from tiny_models import build_tiny_pixel, build_tiny_sd  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd_model(tmp_path_factory) -> Path:
    """Folder of a tiny latent SD-architecture model (64×64 images, 8×8×4 latents)."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "model")


@pytest.fixture(scope="session")
def tiny_pixel_model(tmp_path_factory) -> Path:
    """Folder of a tiny pixel-space model (no vae; 32×32 images)."""
    return build_tiny_pixel(tmp_path_factory.mktemp("tiny_pixel") / "model")
