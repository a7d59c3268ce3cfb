"""Data flows one way (see the architecture notes): a module imports only from its own layer or above.

Layers, bottom to top: leaf modules (errors, elements, labels, outputs, cpu_allocator, lazy) -> graph (pure tensor ops: radius
graph, edge vectors, Verlet list) -> data (reading, checks, batching; may count neighbours with the
graph layer) -> nn -> models -> checkpoint -> train, calculators, evaluation, export, torchsim, interop, lammps,
md -> cli.
Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mpnn_ip

PACKAGE = Path(mpnn_ip.__file__).parent
LAYERS = {
    "errors": 0,
    "elements": 0,
    "labels": 0,
    "outputs": 0,
    "cpu_allocator": 0,
    "lazy": 0,
    "graph": 1,
    "data": 2,
    "nn": 3,
    "models": 4,
    "checkpoint": 5,
    "train": 6,
    "calculators": 6,
    "evaluation": 6,
    "export": 6,
    "torchsim": 6,
    "interop": 6,
    "lammps": 6,
    "md": 6,
    "cli": 7,
}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "mpnn_ip" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1])


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def test_no_module_imports_from_a_layer_below_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "mpnn_ip." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        own = _layer(module)
        if own is None:
            continue
        for line, imported in _imports(path):
            other = _layer(imported)
            if other is not None and other > own:
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {imported}")
    assert not upward, "imports against the data flow:\n" + "\n".join(upward)


def test_every_top_level_module_has_a_layer():
    names = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()
    }
    assert names <= set(LAYERS), f"give these a layer in {__file__}: {sorted(names - set(LAYERS))}"
