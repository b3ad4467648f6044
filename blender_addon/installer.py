"""Backend set-up: a venv made with `python -m venv`, then `pip install` of the backend package. Imports no bpy.

Runs on a thread so Blender stays responsive during the long torch download; the preferences poll `status()`.
"""
from __future__ import annotations

import collections
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PACKAGE = "prolific-dreamer"


def venv_python(venv_dir: str | Path) -> Path:
    venv_dir = Path(venv_dir)
    return venv_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


@dataclass
class SetupStatus:
    state: str = "idle"  # idle, running, done, error
    step: int = 0
    total: int = 3
    message: str = ""
    log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))

    @property
    def fraction(self) -> float:
        return self.step / self.total


class BackendInstaller:
    """Create (or reuse) `venv_dir`, install `package` (a PyPI name, a source folder or a wheel) and check it."""

    def __init__(self, venv_dir: str | Path, package: str = DEFAULT_PACKAGE, pip_args: str = "",
                 base_python: str | None = None):
        self.venv_dir = Path(venv_dir)
        self.package = package.strip() or DEFAULT_PACKAGE
        self.pip_args = shlex.split(pip_args)
        self.base_python = base_python or sys.executable
        self.status = SetupStatus()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self._cancelled = False

    @property
    def python(self) -> Path:
        return venv_python(self.venv_dir)

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self.status = SetupStatus(state="running", message="Starting")
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="prolific-setup", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> SetupStatus:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status

    def cancel(self) -> None:
        self._cancelled = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def _run(self) -> None:
        package = self.package
        if Path(package).expanduser().exists():
            package = str(Path(package).expanduser().resolve())
        steps = [
            ("Creating the Python environment", [self.base_python, "-m", "venv", str(self.venv_dir)],
             not self.python.exists()),
            (f"Installing {self.package} and its dependencies (torch is large: this can take a while)",
             [str(self.python), "-m", "pip", "install", "--disable-pip-version-check", *self.pip_args, package], True),
            ("Checking the backend", [str(self.python), "-m", "prolific", "--help"], True),
        ]
        for index, (message, command, needed) in enumerate(steps, start=1):
            self.status.step, self.status.message = index - 1, message
            if not needed:
                continue
            error = self._call(command)
            if self._cancelled:
                self._finish("error", "Set-up was cancelled.")
                return
            if error:
                self._finish("error", f"{message} failed: {error}")
                return
        self.status.step = self.status.total
        self._finish("done", f"Backend ready: {self.python}")

    def _call(self, command: list[str]) -> str:
        """Run one step, streaming its output into the log; returns '' or the most telling error line."""
        self.status.log.append("$ " + " ".join(command))
        kwargs = {"creationflags": subprocess.CREATE_NO_WINDOW} if sys.platform == "win32" else {}
        try:
            self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, **kwargs)
        except OSError as exc:
            return f"cannot run {command[0]}: {exc.strerror or exc}"
        lines: collections.deque[str] = collections.deque(maxlen=50)
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self.status.log.append(line)
                lines.append(line)
        code = self._proc.wait()
        if code == 0:
            return ""
        errors = [line for line in lines if "error" in line.lower()]
        return (errors or lines or [f"exit code {code}"])[-1].strip()

    def _finish(self, state: str, message: str) -> None:
        self.status.message = message
        self.status.state = state
