"""README's table of settings against the paper's code and threestudio: every setting of the three stages is in
it, and its `ours` column is what the `paper` preset really builds, so neither can drift from the other."""
from __future__ import annotations

import ast
import dataclasses
import math
import re
from pathlib import Path

from prolific.config import make_config

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("prior", "cameras", "hash_grid", "nerf", "geometry", "texture")
# Not part of the method: which model and speed switches run it, and how often files are written.
NOT_METHOD = {"prior.model", "prior.speed"} | {f"{s}.{k}" for s in SECTIONS for k in ("checkpoint_every",
                                                                                      "preview_every")}


def table_rows() -> dict[str, str]:
    """{"section.key": ours cell} of the rows of README's "Fidelity to the paper" table that name a setting."""
    text = README.read_text(encoding="utf-8").split("## Fidelity to the paper", 1)[1]
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["setting", "paper/official", "threestudio", "ours"]
    rows: dict[str, str] = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 4, line
        named = re.match(r"`(\w+\.\w+)`", cells[0])
        if named:
            assert named.group(1) not in rows, f"{named.group(1)} is in the table twice"
            rows[named.group(1)] = cells[3]
    return rows


def parse(cell: str):
    cell = cell.strip("`")
    try:
        return ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        fraction = re.fullmatch(r"(\d+)/(\d+)", cell)
        return int(fraction.group(1)) / int(fraction.group(2)) if fraction else cell


def same(documented, actual) -> bool:
    if isinstance(actual, bool) or isinstance(documented, bool):
        return documented is actual
    if isinstance(actual, (int, float)) and isinstance(documented, (int, float)):
        return math.isclose(documented, actual, rel_tol=1e-9)
    if isinstance(actual, tuple) and isinstance(documented, tuple):
        return len(actual) == len(documented) and all(same(d, a) for d, a in zip(documented, actual))
    return documented == actual


def test_the_readme_table_lists_every_setting_of_the_three_stages():
    cfg = make_config("a red teapot", "paper")
    settings = {f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(getattr(cfg, s))} - NOT_METHOD
    rows = table_rows()
    assert settings - rows.keys() == set(), "settings missing from README's table"
    assert rows.keys() - settings == set(), "rows naming no setting of the config"


def test_the_paper_preset_has_the_values_the_table_gives():
    cfg = make_config("a red teapot", "paper")
    wrong = {}
    for key, cell in table_rows().items():
        section, name = key.split(".")
        actual = getattr(getattr(cfg, section), name)
        if not same(parse(cell), actual):
            wrong[key] = (cell, actual)
    assert wrong == {}, "README's table and the paper preset disagree: {key: (table, config)}"


def test_the_comparison_can_tell_values_apart():
    assert same(parse("(0.9, 0.99)"), (0.9, 0.99)) and not same(parse("(0.9, 0.999)"), (0.9, 0.99))
    assert same(parse("1/3"), 1 / 3) and not same(parse("1/6"), 1 / 3)
    assert same(parse("True"), True) and not same(parse("1"), True)
    assert same(parse("vertex"), "vertex") and same(parse('""'), "") and not same(parse("face"), "vertex")
