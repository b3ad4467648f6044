"""Where a job's random numbers come from, so that they do not depend on how the particles are spread over
processes: one shared generator for the draws every particle sees alike (a step's solid-background coin, the
estimator's camera dropout), one generator per particle for everything drawn for that particle (its cameras,
lights, render jitter, occupancy updates, diffusion times and noise), and the global generator re-seeded per
particle (and for the estimator) while modules are initialised. Each seed comes from the job seed and the
particle's index through numpy's SeedSequence, so particle k gets the same numbers whichever process owns it.
"""
from __future__ import annotations

import contextlib
import zlib

import numpy as np
import torch

# Stream kinds, the first key of every derived seed so that no two streams share one.
PARTICLE, PARTICLE_INIT, ESTIMATOR_INIT = 0, 1, 2


def stream_seed(seed: int, *keys: int) -> int:
    """A 64-bit seed for the stream named by (seed, *keys)."""
    return int(np.random.SeedSequence((seed, *keys)).generate_state(1, np.uint64)[0])


def stage_key(stage: str) -> int:
    return zlib.crc32(stage.encode())


def particle_generators(seed: int, particles: range, device: torch.device) -> list[torch.Generator]:
    """The generators of `particles` (global indices) on `device`."""
    return [torch.Generator(device=device).manual_seed(stream_seed(seed, PARTICLE, k)) for k in particles]


@contextlib.contextmanager
def seeded_init(seed: int, device: torch.device, *keys: int):
    """While inside, the global generators (the CPU one and `device`'s) draw the stream (seed, *keys); they
    come back as they were on leaving. Module initialisation draws from them."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(stream_seed(seed, *keys))
        yield
