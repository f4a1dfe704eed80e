"""The exception tree of config/errors.py: one root, branches in the packages' errors modules."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from config.errors import ConfigError, ExposrError
from dataset.errors import DatasetError, StorageError
from labeler.errors import CoreError
from scraper.errors import FetchError
from trainer.errors import RegistryError, TrainingError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "config", "dataset", "labeler", "scraper", "trainer")
ERROR_MODULES = (
    "config.errors",
    "dataset.errors",
    "scraper.errors",
    "labeler.errors",
    "trainer.errors",
    "app.errors",
)
BUILTIN_ROOTS = {"Exception", "ValueError", "KeyError", "LookupError", "RuntimeError", "BaseException"}


@pytest.mark.parametrize("module", ERROR_MODULES)
def test_every_exception_derives_from_the_root(module):
    classes = [v for v in vars(importlib.import_module(module)).values() if isinstance(v, type)]
    errors = [c for c in classes if issubclass(c, BaseException) and c.__module__ == module]
    assert errors
    assert all(issubclass(c, ExposrError) for c in errors), [
        c for c in errors if not issubclass(c, ExposrError)
    ]


def test_exceptions_are_defined_only_in_the_errors_modules():
    stray = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "errors.py" or "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                bases = {b.id for b in getattr(node, "bases", []) if isinstance(b, ast.Name)}
                if isinstance(node, ast.ClassDef) and bases & BUILTIN_ROOTS:
                    stray.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert not stray, f"define exceptions in the branch's errors module (config/errors.py): {stray}"


def test_core_errors_are_fetch_errors_and_branches_are_apart():
    assert issubclass(CoreError, FetchError)
    branches = [ConfigError, StorageError, DatasetError, FetchError, TrainingError, RegistryError]
    for branch in branches:
        assert [b for b in branches if b is not branch and issubclass(branch, b)] == []
