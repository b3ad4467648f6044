"""build_addon.py: one valid zip per platform, each carrying only its own xatlas wheel."""
from __future__ import annotations

import importlib.util
import tomllib
import zipfile

import pytest

from addon_helpers import ROOT

_spec = importlib.util.spec_from_file_location("build_addon", ROOT / "build_addon.py")
build_addon = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_addon)


@pytest.fixture(scope="module")
def zips(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    assert build_addon.main(["--dist", str(dist)]) == 0
    return {platform: dist / f"prolific_dreamer-0.1.0-{platform}.zip" for platform in build_addon.PLATFORMS}


def test_each_platform_zip_holds_its_own_wheel_and_manifest(zips):
    expected_tags = {"windows-x64": "win_amd64", "macos-arm64": "macosx_11_0_arm64", "linux-x64": "manylinux"}
    for platform, path in zips.items():
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
        assert manifest["id"] == "prolific_dreamer" and manifest["blender_version_min"] == "4.2.0"
        assert manifest["platforms"] == [platform]
        (wheel,) = manifest["wheels"]
        assert expected_tags[platform] in wheel and "cp311" in wheel and wheel.removeprefix("./") in names
        assert [n for n in names if n.startswith("wheels/")] == [wheel.removeprefix("./")]
        assert "__init__.py" in names and "client.py" in names
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        assert set(manifest["permissions"]) == {"files", "network"}


def test_the_addon_never_imports_torch_and_client_never_imports_bpy():
    for path in (ROOT / "blender_addon").glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text, path
    for name in ("client.py", "installer.py"):
        text = (ROOT / "blender_addon" / name).read_text()
        assert "import bpy" not in text and "from bpy" not in text, name


def test_validation_rejects_a_zip_whose_manifest_lists_a_missing_wheel(zips, tmp_path):
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(zips["linux-x64"]) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            if not item.filename.startswith("wheels/"):
                dst.writestr(item, src.read(item.filename))
    with pytest.raises(build_addon.BuildError, match="is not in the zip"):
        build_addon.validate_zip(broken, "linux-x64")


def test_offline_build_without_wheels_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(build_addon, "WHEELS", tmp_path / "empty")
    with pytest.raises(build_addon.BuildError, match="--offline"):
        build_addon.build_zip("linux-x64", tmp_path / "dist", offline=True)
