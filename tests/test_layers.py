"""The layering of ARCHITECTURE.md, checked on the source.

app -> labeler -> {scraper, trainer} -> dataset -> config.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"app", "labeler", "scraper", "trainer", "dataset", "config"}
FORBIDDEN = {
    "config": OURS - {"config"},
    "dataset": {"app", "labeler", "scraper", "trainer"},
    "scraper": {"app", "labeler", "trainer"},
    "trainer": {"app", "labeler", "scraper"},
    "labeler": {"app"},
}
NO_TORCH_AT_MODULE_LEVEL = ["app/**/*.py", "trainer/registry.py", "trainer/model_sync.py"]


def imported_roots(tree: ast.AST, top_level_only: bool = False) -> set[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    roots = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_downwards(package):
    bad = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        found = imported_roots(parse(path)) & FORBIDDEN[package]
        if found:
            bad[str(path.relative_to(ROOT))] = sorted(found)
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}: {bad}"


def test_no_torch_at_module_level_in_app_and_registry():
    offenders = []
    for pattern in NO_TORCH_AT_MODULE_LEVEL:
        for path in sorted(ROOT.glob(pattern)):
            roots = imported_roots(parse(path), top_level_only=True)
            if roots & {"torch", "torchvision", "timm"}:
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"import torch lazily (inside a function) in: {offenders}"


def test_checker_catches_a_module_level_torch_import():
    tree = ast.parse("import os\nimport torch.nn\ndef f():\n    import timm\n")
    assert imported_roots(tree, top_level_only=True) == {"os", "torch"}
    assert imported_roots(tree) == {"os", "torch", "timm"}


def test_importing_the_app_does_not_load_torch():
    code = "import app.main, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
