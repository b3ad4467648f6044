#!/usr/bin/env python3
"""Build the Blender extension: one installable zip per platform, each with that platform's xatlas wheel.

    python build_addon.py                      # all platforms into dist/
    python build_addon.py --platform linux-x64 --offline --dist /tmp/out

Wheels are fetched with `pip download` into wheels/ (skipped when already there; --offline never downloads).
Every zip is validated: layout, manifest (tomllib), wheel files, Python syntax, and Blender's own extension
validator (`blender --command extension validate` when blender is on PATH, else the same script from the bpy
module when that is installed).
"""
from __future__ import annotations

import argparse
import importlib.util
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "blender_addon"
WHEELS = ROOT / "wheels"
XATLAS = "xatlas==0.0.11"
PYTHON_VERSION = "3.11"  # Blender 4.2 to 5.x bundle Python 3.11
# Blender platform → (pip --platform tag, wheel file name tag). xatlas 0.0.11 has no macOS x64 / Linux arm64 wheel.
PLATFORMS = {
    "windows-x64": ("win_amd64", "win_amd64"),
    "macos-arm64": ("macosx_11_0_arm64", "macosx_11_0_arm64"),
    "linux-x64": ("manylinux_2_17_x86_64", "manylinux_2_17_x86_64"),
}
EXCLUDE_DIRS = {"__pycache__"}
EXCLUDE_SUFFIXES = {".pyc", ".pyo", ".blend1"}


class BuildError(Exception):
    pass


def manifest_text() -> str:
    return (SOURCE / "blender_manifest.toml").read_text(encoding="utf-8")


def find_wheel(platform: str) -> Path | None:
    tag = PLATFORMS[platform][1]
    found = sorted(WHEELS.glob(f"xatlas-0.0.11-cp311-cp311-*{tag}*.whl"))
    return found[0] if found else None


def fetch_wheel(platform: str, offline: bool) -> Path:
    wheel = find_wheel(platform)
    if wheel is not None:
        return wheel
    if offline:
        raise BuildError(f"No xatlas wheel for {platform} in {WHEELS} and --offline forbids downloading it.")
    WHEELS.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps",
               "--python-version", PYTHON_VERSION, "--platform", PLATFORMS[platform][0], "-d", str(WHEELS), XATLAS]
    print("$", " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True)
    wheel = find_wheel(platform)
    if done.returncode != 0 or wheel is None:
        raise BuildError(f"pip download of {XATLAS} for {platform} failed:\n{done.stdout}{done.stderr}")
    return wheel


def platform_manifest(text: str, platform: str, wheel: Path) -> str:
    """The source manifest with `platforms` and `wheels` narrowed to one platform."""
    text, n_platforms = re.subn(r"(?m)^platforms\s*=.*$", f'platforms = ["{platform}"]', text)
    text, n_wheels = re.subn(r"(?m)^wheels\s*=.*$", f'wheels = ["./wheels/{wheel.name}"]', text)
    if n_platforms != 1 or n_wheels != 1:
        raise BuildError("blender_manifest.toml needs exactly one single-line 'platforms = [...]' and "
                         "'wheels = [...]' entry for build_addon.py to fill in.")
    return text


def source_files() -> list[Path]:
    files = []
    for path in sorted(SOURCE.rglob("*")):
        rel = path.relative_to(SOURCE)
        if path.is_dir() or EXCLUDE_DIRS & set(rel.parts) or path.suffix in EXCLUDE_SUFFIXES:
            continue
        if rel.parts[0] == "wheels" or rel.name == "blender_manifest.toml":
            continue
        files.append(path)
    return files


def build_zip(platform: str, dist: Path, offline: bool) -> Path:
    wheel = fetch_wheel(platform, offline)
    text = manifest_text()
    manifest = tomllib.loads(text)
    out = dist / f"{manifest['id']}-{manifest['version']}-{platform}.zip"
    dist.mkdir(parents=True, exist_ok=True)
    # Files sit at the zip's root, the layout Blender's own `extension build` writes.
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("blender_manifest.toml", platform_manifest(text, platform, wheel))
        for path in source_files():
            zf.write(path, path.relative_to(SOURCE).as_posix())
        zf.write(wheel, f"wheels/{wheel.name}")
    validate_zip(out, platform)
    return out


def validate_zip(path: Path, platform: str) -> None:
    """Raise BuildError naming the first problem found in the zip."""
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        for required in ("blender_manifest.toml", "__init__.py"):
            if required not in names:
                raise BuildError(f"{path.name}: {required} is missing at the zip's root.")
        try:
            manifest = tomllib.loads(zf.read("blender_manifest.toml").decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise BuildError(f"{path.name}: the manifest does not parse: {err}") from None
        for key in ("schema_version", "id", "version", "name", "tagline", "maintainer", "type",
                    "blender_version_min", "license", "permissions"):
            if key not in manifest:
                raise BuildError(f"{path.name}: the manifest lacks '{key}'.")
        if manifest["platforms"] != [platform]:
            raise BuildError(f"{path.name}: platforms is {manifest['platforms']}, expected ['{platform}'].")
        wheels = manifest.get("wheels", [])
        if len(wheels) != 1 or PLATFORMS[platform][1] not in wheels[0]:
            raise BuildError(f"{path.name}: expected exactly the {platform} xatlas wheel, got {wheels}.")
        for wheel in wheels:
            if wheel.removeprefix("./") not in names:
                raise BuildError(f"{path.name}: listed wheel {wheel} is not in the zip.")
        stray = [n for n in names if n.startswith("wheels/") and f"./{n}" not in wheels]
        if stray:
            raise BuildError(f"{path.name}: wheels not listed in the manifest: {stray}.")
        if any("__pycache__" in n or n.endswith(".pyc") for n in names):
            raise BuildError(f"{path.name}: holds compiled Python files.")
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                if name.endswith(".py"):
                    target = Path(tmp) / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(name))
                    try:
                        py_compile.compile(str(target), doraise=True)
                    except py_compile.PyCompileError as err:
                        raise BuildError(f"{path.name}: {name} does not compile: {err.msg}") from None
    blender_validate(path)


def blender_validator() -> list[str] | None:
    """The command of Blender's extension validator, if Blender or the bpy module is here."""
    blender = shutil.which("blender")
    if blender:
        return [blender, "--factory-startup", "--command", "extension", "validate"]
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        scripts = sorted(Path(location).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if scripts:
            return [sys.executable, str(scripts[-1]), "validate"]
    return None


def blender_validate(path: Path) -> None:
    command = blender_validator()
    if command is None:
        print(f"{path.name}: Blender's validator is not available (no blender on PATH, no bpy module); skipped.")
        return
    done = subprocess.run([*command, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"{path.name}: Blender's extension validator failed:\n{done.stdout}{done.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platform", action="append", choices=sorted(PLATFORMS),
                        help="build only this platform (repeatable; default: all)")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--offline", action="store_true", help="use only the wheels already in wheels/")
    args = parser.parse_args(argv)
    try:
        for platform in args.platform or list(PLATFORMS):
            print(f"built and validated {build_zip(platform, args.dist, args.offline)}")
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
