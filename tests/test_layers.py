"""The layering of ARCHITECTURE.md, checked on the source.

app -> labeler -> {scraper, trainer} -> dataset -> config.

Every import counts: module level, inside functions and under ``if TYPE_CHECKING:`` (``ast.walk``).
The module map of ARCHITECTURE.md lists every module under its own package's heading, so a new
module is placed (and checked here) the day it is written.
"""

from __future__ import annotations

import ast
import re
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
# What the app (or a CLI command without a model) imports must not load torch: every package but the
# trainer, and the trainer's modules that ARCHITECTURE.md marks "no torch".
NO_TORCH_AT_MODULE_LEVEL = [
    "app/**/*.py",
    "config/*.py",
    "dataset/*.py",
    "scraper/*.py",
    "labeler/*.py",
    "trainer/aliases.py",
    "trainer/architectures.py",
    "trainer/benchmark.py",
    "trainer/future.py",
    "trainer/launder.py",
    "trainer/model_store.py",
    "trainer/model_sync.py",
    "trainer/monitoring.py",
    "trainer/operating.py",
    "trainer/registry.py",
    "trainer/results.py",
    "trainer/stats.py",
]


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
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_layers_cover_every_package():
    assert set(FORBIDDEN) | {"app"} == OURS
    assert all((ROOT / package / "__init__.py").is_file() for package in OURS)


def module_map() -> dict[str, str]:
    """ARCHITECTURE.md's module map: each listed path (a file, or a folder ending in /) -> the package
    whose heading it is listed under."""
    listed: dict[str, str] = {}
    heading = None
    for line in (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("## ") and listed:
            break  # the map ends where the next section starts
        if match := re.match(r"### (\w+) \(", line):
            heading = match.group(1)
        elif heading and (match := re.match(r"\| `([\w/.]+)` \|", line)):
            listed[match.group(1)] = heading
    return listed


def test_every_module_is_on_the_map_under_its_package():
    listed = module_map()
    folders = [path for path in listed if path.endswith("/")]
    missing, misplaced = [], []
    for package in sorted(OURS):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if path.name == "__init__.py" and (path.parent.parent == ROOT or not path.stat().st_size):
                continue  # a package's own __init__ is its heading; an empty one says nothing
            entry = name if name in listed else next((f for f in folders if name.startswith(f)), None)
            if entry is None:
                missing.append(name)
            elif listed[entry] != package:
                misplaced.append(f"{name} (under {listed[entry]})")
    assert not missing, f"ARCHITECTURE.md's module map lacks: {missing}"
    assert not misplaced, f"listed under another package's heading: {misplaced}"


def test_the_map_names_only_existing_modules():
    gone = [path for path in module_map() if not (ROOT / path).exists()]
    assert not gone, f"ARCHITECTURE.md lists modules that do not exist: {gone}"
