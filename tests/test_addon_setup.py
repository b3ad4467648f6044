"""Set up backend: the preferences' operator makes a venv, pip-installs the backend package and points the
backend Python at it; failures come back as a readable sentence. Offline: a hand-made wheel stands in for the
backend package (pip --no-index)."""
from __future__ import annotations

import subprocess
import sys
import zipfile

from addon_helpers import build_zip, install_code, needs_bpy, run_blender

pytestmark = needs_bpy


def fake_backend_wheel(folder):
    """A minimal wheel with a `prolific` package whose `python -m prolific --help` succeeds."""
    wheel = folder / "prolific_dreamer-0.0.1-py3-none-any.whl"
    info = "prolific_dreamer-0.0.1.dist-info"
    files = {
        "prolific/__init__.py": "__version__ = '0.0.1'\n",
        "prolific/__main__.py": "print('usage: prolific {generate,serve,bench}')\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: prolific-dreamer\nVersion: 0.0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return wheel


def test_setup_backend_installs_into_a_venv_and_reports_failures(tmp_path):
    wheel = fake_backend_wheel(tmp_path)
    not_a_project = tmp_path / "not_a_project"
    not_a_project.mkdir()
    facts = run_blender(install_code(build_zip(tmp_path / "dist")) + f"""
prefs.pip_args = "--no-index"
def setup_error(package):
    prefs.backend_package = package
    try:
        bpy.ops.prolific.setup_backend(wait=True)
    except RuntimeError as err:
        return str(err)
report(offline=setup_error("prolific-dreamer"), online_access=bpy.app.online_access)
report(failure=setup_error({str(not_a_project)!r}), python_after_failure=prefs.backend_python)
prefs.backend_package = {str(wheel)!r}
report(result=sorted(bpy.ops.prolific.setup_backend(wait=True)), python=prefs.backend_python,
       log=list(jobs.setup.status.log) if jobs.setup else [])
""", tmp_path, timeout=600, env={"PIP_NO_INDEX": "1", "PYTHONPATH": ""})
    # Background Blender runs without online access: installing from the package index is refused up front.
    assert not facts["online_access"] and "online access is off" in facts["offline"]
    assert "Installing" in facts["failure"] and "not_a_project" in facts["failure"]
    assert facts["python_after_failure"] == ""
    assert facts["result"] == ["FINISHED"]
    python = facts["python"]
    assert "backend-venv" in python and python != sys.executable
    done = subprocess.run([python, "-c", "import prolific; print(prolific.__version__)"], capture_output=True,
                          text=True, env={})
    assert done.stdout.strip() == "0.0.1"
