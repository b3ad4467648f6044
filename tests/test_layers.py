"""No module of backend/prolific imports a module above it in the data flow (DESIGN.md's module table, lowest
first), including imports inside functions: the layers below are the order, and a module may import only its own
layer or lower ones."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "backend" / "prolific"
# Lowest first. A name is a top-level module or subpackage of prolific; toy (training the bundled prior) and
# bench sit above the product's stages so that nothing the product runs depends on them.
LAYERS = [
    {"__init__", "errors", "device", "interrupt", "speed_options"},
    {"config", "events"},
    {"kernels"},  # torch and triton only: the prior's group norms and the fields' hash grid and MLP run them
    {"prior"},
    {"field"},
    {"render"},
    {"stages"},
    {"export"},
    {"pipeline"},
    {"toy"},
    {"bench", "server", "job_request"},
    {"cli", "__main__"},
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(module: str, source: str, is_package: bool) -> set[str]:
    """The prolific modules that `source` (the text of `module`) imports, anywhere in it."""
    package = module if is_package else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                # `from . import x`: x is a module when there is one of that name, else a name in the package.
                out |= {f"{target}.{a.name}" if node.module is None and is_module(f"{target}.{a.name}") else target
                        for a in node.names}
            elif node.module and node.module.split(".")[0] == "prolific":
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "prolific"}
    return out


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def layer(module: str) -> int:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else "__init__"
    if name not in LEVEL:
        raise AssertionError(f"prolific.{name} is in no layer of test_layers.LAYERS: place it in the data flow")
    return LEVEL[name]


def upward_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    return sorted(t for t in imported(module, source, is_package) if layer(t) > layer(module))


def test_no_module_imports_one_above_it_in_the_data_flow():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        upward = upward_imports(module, path.read_text(), path.name == "__init__.py")
        if upward:
            found[module] = upward
    assert found == {}


@pytest.mark.parametrize("module, source", [
    ("prolific.config", "def f():\n    from .prior.speed import job_options\n"),  # the loop issue 14 removed
    ("prolific.prior.bundled", "from ..toy.shapes import SHAPES\n"),
    ("prolific.render.cameras", "import prolific.stages.runner\n"),
])
def test_an_upward_import_is_found(module, source):
    assert upward_imports(module, source)
