"""The environment of a backend subprocess (`python -m prolific ...`) that the tests start."""
from __future__ import annotations

import os
from pathlib import Path

BACKEND = Path(__file__).resolve().parents[1] / "backend"


def backend_env() -> dict:
    """This process's environment with the source tree first on PYTHONPATH (and what was there after it: a
    machine may provide packages that way), one CPU thread and no Hugging Face downloads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(BACKEND), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env
