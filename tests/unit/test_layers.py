"""The package's layers import downward only: walked from the source, so a new upward import
fails here rather than in a reader's head."""

import ast
from pathlib import Path

import recoverlm

ROOT = Path(recoverlm.__file__).parent
# Lowest first. A module may import anything in a lower layer, and within its own layer only
# its own package: the stages of one layer never import each other. recover sits above
# evaluate and analysis because it calls the measurements during training.
LAYERS = [
    {"errors", "stage_package"},
    {"io", "runs", "offline"},
    {"config", "data", "ops"},
    {"formats"},
    {"models", "lm"},
    {"environment"},
    {"constraints", "tasks"},
    {"teacher", "result_cache"},
    {"degrade", "evaluate", "analysis", "describe", "export"},
    {"recover"},
    {"report"},
    {"pipeline"},
    {"study"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules():
    """(dotted name, path) of every module of the package; the shipped lm-eval suite plugins are
    loaded by lm-eval from their folders, not imported by the package, and are left out."""
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[:2] == ("evaluate", "suites"):
            continue
        parts = ("recoverlm", *rel.with_suffix("").parts)
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path, path.name == "__init__.py"


def _imports(name: str, path: Path, is_package: bool) -> set[str]:
    """Absolute names of the recoverlm modules a module imports, at any depth of its code."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}
    return {f for f in found if f == "recoverlm" or f.startswith("recoverlm.")}


def _top(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_top_level_module_has_a_layer():
    tops = {_top(name) for name, _, _ in _modules()} - {None, "__init__"}
    assert tops <= set(RANK), f"give these a layer: {sorted(tops - set(RANK))}"


def test_imports_point_downward_only():
    upward = []
    for name, path, is_package in _modules():
        here = _top(name)
        if here is None:
            continue
        for target in _imports(name, path, is_package):
            there = _top(target)
            if there is None or there == here or there not in RANK:
                continue  # the package root, the module's own package, or a name inside a module
            if RANK[there] >= RANK[here]:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports that point sideways or up:\n" + "\n".join(sorted(upward))


def test_the_walk_sees_relative_and_function_level_imports(tmp_path):
    """The checker itself: a sideways import written inside a function is caught."""
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from ..evaluate.fidelity import fidelity\n    from . import calibration\n")
    found = _imports("recoverlm.degrade.prune", path, False)
    assert "recoverlm.evaluate.fidelity" in found and "recoverlm.degrade.calibration" in found
