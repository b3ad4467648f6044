"""The preset menu: the backend's presets as its hello event lists them (names and step counts), else, before any
backend has answered this session, the names of the presets of the backend this add-on ships with. No bpy, so
plain pytest can test it."""
from __future__ import annotations

import zlib

# The backend's config.PRESETS names at this add-on's version: the menu until a hello brings the real list.
FALLBACK = [{"name": name} for name in ("test", "demo", "draft", "standard", "high", "paper")]
DEFAULT = "standard"
_last: list[dict] = []  # the latest hello's presets


def remember(presets) -> None:
    """Keep a hello event's `presets` for the menu (a malformed list is ignored: the menu keeps what it had)."""
    if isinstance(presets, list) and presets and all(isinstance(p, dict) and isinstance(p.get("name"), str)
                                                     for p in presets):
        _last[:] = presets


def current() -> list[dict]:
    return _last or FALLBACK


def number(name: str) -> int:
    """A preset's enum number, fixed by its name: a saved choice survives a menu that gains, loses or reorders
    presets (Blender stores a dynamic enum's number)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def describe(preset: dict) -> str:
    steps = preset.get("steps") or {}
    if not steps:
        return ""
    return "Steps: " + ", ".join(f"{stage} {count}" for stage, count in steps.items())


def menu_items() -> list[tuple[str, str, str, int]]:
    """EnumProperty items: (name, label, description, number)."""
    return [(p["name"], p["name"].title(), describe(p), number(p["name"])) for p in current()]
