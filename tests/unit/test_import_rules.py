"""The import contract of DESIGN.md, checked on the source tree.

``trainer``, ``edge_agent`` and ``services`` import ``slimspect`` and never each other;
``slimspect`` imports none of them (only ``slimspect/cli.py`` names them, as strings, to
mount their commands lazily); ``edge_agent`` and ``services`` never import torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("slimspect", "trainer", "edge_agent", "services")
FORBIDDEN = {
    "slimspect": {"trainer", "edge_agent", "services", "torch", "ray"},
    "trainer": {"edge_agent", "services"},
    "edge_agent": {"trainer", "services", "torch", "ray"},
    "services": {"trainer", "edge_agent", "torch", "ray"},
}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_respect_the_contract(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_top_levels(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_checker_sees_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import torch.nn as nn\nfrom trainer.model import build\nfrom . import x\n")
    assert imported_top_levels(sample) == {"torch", "trainer"}
