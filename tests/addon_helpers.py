"""Run code in real Blender (the bpy module) in a child process with its own HOME.

Every bpy test runs this way: HOME must point at a temporary folder before bpy is imported (so the user's
Blender config is never touched), and an installed extension or a registered add-on must not leak into the
next test. The child's code calls `report(**facts)`; `run_blender` returns those facts as a dict.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = "bl_ext.user_default.prolific_dreamer"  # the add-on's module once installed from the zip

PRELUDE = """
import json, os, sys
_facts = {}
def report(**facts):
    _facts.update(facts)
    with open(os.environ["PROLIFIC_TEST_REPORT"], "w") as fh:
        json.dump(_facts, fh, default=str)
"""


def bpy_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bpy") is not None


needs_bpy = pytest.mark.skipif(not bpy_available(), reason="needs the bpy module (pip install bpy==5.0.1)")


def run_blender(code: str, tmp_path: Path, timeout: float = 600, env: dict | None = None) -> dict:
    """Run `code` (after `import bpy`) in a fresh process; raises with its output when it fails."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    report = tmp_path / f"report-{os.getpid()}-{len(list(tmp_path.glob('report-*')))}.json"
    script = tmp_path / f"{report.stem}.py"
    script.write_text(PRELUDE + "import bpy\n" + textwrap.dedent(code))
    child_env = dict(os.environ, HOME=str(home), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                     PROLIFIC_TEST_REPORT=str(report), PYTHONPATH=str(ROOT / "backend"))
    child_env.update(env or {})
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout,
                          env=child_env, cwd=tmp_path)
    if done.returncode != 0 or not report.exists():
        raise AssertionError(f"Blender child failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n"
                             f"{done.stderr[-6000:]}")
    facts = json.loads(report.read_text())
    facts["_stdout"] = done.stdout
    return facts


def this_platform() -> str:
    system = {"linux": "linux", "darwin": "macos", "win32": "windows"}[sys.platform]
    machine = {"x86_64": "x64", "amd64": "x64", "arm64": "arm64", "aarch64": "arm64"}[platform.machine().lower()]
    return f"{system}-{machine}"


def build_zip(dist: Path) -> Path:
    """This platform's extension zip, built by build_addon.py (which fetches the wheel when it is missing)."""
    done = subprocess.run([sys.executable, str(ROOT / "build_addon.py"), "--platform", this_platform(),
                           "--dist", str(dist)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (zip_path,) = dist.glob("prolific_dreamer-*.zip")
    return zip_path


INSTALL = """
bpy.ops.extensions.package_install_files(filepath={zip!r}, repo="user_default", enable_on_install=True)
module = {module!r}
jobs = sys.modules[module + ".jobs"]
prefs = bpy.context.preferences.addons[module].preferences
"""


def install_code(zip_path: Path) -> str:
    """Child code that installs and enables the zip, leaving `module`, `jobs` and `prefs` defined."""
    return INSTALL.format(zip=str(zip_path), module=MODULE)


BACKEND = """
api = __import__(module + ".api", fromlist=["api"])
prefs.backend_python = sys.executable
prefs.model = {model!r}
prefs.device = "cpu"
prefs.output_dir = {out!r}
"""


def install_with_backend_code(zip_path: Path, model: Path, out: Path) -> str:
    """`install_code`, then preferences that run the real backend (this Python) on `model` on the CPU with results
    in `out`; leaves `api` defined too."""
    return install_code(zip_path) + BACKEND.format(model=str(model), out=str(out))
