from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.errors import ModelNotFound
from trainer.model_sync import get_model_path, push_latest_model
from trainer.registry import (
    clean_stale,
    commit_version,
    load_registry,
    make_staging_dir,
    promoted_entry,
    write_json_atomic,
)


def _staged(models_dir, payload=b"weights"):
    staging = make_staging_dir(models_dir)
    (staging / "weights.pt").write_bytes(payload)
    (staging / "model.json").write_text(json.dumps({"architecture": "resnet10t"}))
    return staging


def _entry(promoted=True, auc=0.9):
    return {
        "model": "vit",
        "timestamp": "2026-01-01T00:00:00Z",
        "dataset_size": 10,
        "train_size": 9,
        "val_size": 1,
        "val_acc": 0.8,
        "val_auc": auc,
        "val_loss": 0.3,
        "precision": 0.7,
        "recall": 0.6,
        "promoted": promoted,
        "sha256": "ab" * 32,
    }


def test_commit_numbers_versions_and_moves_the_folder(tmp_path):
    first = commit_version(tmp_path, _staged(tmp_path), _entry(), compared_with=None)
    second = commit_version(tmp_path, _staged(tmp_path), _entry(promoted=False), compared_with="v1")
    assert (first["version"], second["version"]) == ("v1", "v2")
    assert (tmp_path / "vit" / "v2" / "weights.pt").read_bytes() == b"weights"
    assert json.loads((tmp_path / "vit" / "v2" / "model.json").read_text())["version"] == "v2"
    assert [e["version"] for e in load_registry(tmp_path)] == ["v1", "v2"]
    assert promoted_entry(tmp_path, "vit")["version"] == "v1"  # rejected v2 is kept, not served
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging-")]


def test_promotion_decided_against_a_stale_incumbent_is_withdrawn(tmp_path):
    commit_version(tmp_path, _staged(tmp_path), _entry(), compared_with=None)
    late = commit_version(tmp_path, _staged(tmp_path), _entry(), compared_with=None)  # scored vs nothing
    assert late["promoted"] is False and "served version changed" in late["promotion_reason"]


def test_push_latest_model_and_paths(tmp_path, make_settings):
    settings = make_settings(models_dir=tmp_path)
    assert push_latest_model(settings) is None
    with pytest.raises(ModelNotFound, match="no promoted version"):
        get_model_path(settings)
    commit_version(tmp_path, _staged(tmp_path), _entry(), compared_with=None)
    commit_version(tmp_path, _staged(tmp_path), _entry(promoted=False, auc=0.5), compared_with="v1")
    latest = push_latest_model(settings)
    assert latest["model_version"] == "v1"
    assert latest["download_url"] == "/models/vit/v1/weights.pt"
    assert latest["metrics"]["val_auc"] == 0.9 and latest["timestamp"] == "2026-01-01T00:00:00Z"
    assert get_model_path(settings) == tmp_path / "vit" / "v1" / "weights.pt"
    assert get_model_path(settings, "vit", "v2") == tmp_path / "vit" / "v2" / "weights.pt"
    with pytest.raises(ModelNotFound):
        get_model_path(settings, "vit", "../../etc")
    (tmp_path / "vit" / "v1" / "weights.pt").unlink()
    with pytest.raises(ModelNotFound, match="missing on disk"):
        get_model_path(settings)


def test_clean_stale_removes_dead_staging_and_unregistered_versions(tmp_path):
    commit_version(tmp_path, _staged(tmp_path), _entry(), compared_with=None)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (tmp_path / f".staging-{dead}-cafe").mkdir()
    orphan = tmp_path / "vit" / "v7"  # a commit killed between rename and registry write
    orphan.mkdir()
    mine = make_staging_dir(tmp_path)  # this process is alive: its staging folder stays
    removed = clean_stale(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".staging-{dead}-cafe", "v7"])
    assert mine.exists() and (tmp_path / "vit" / "v1").exists()


def test_atomic_write_leaves_no_temp_files_and_corrupt_registry_is_explained(tmp_path):
    write_json_atomic(tmp_path / "registry.json", [{"a": 1}])
    assert [p.name for p in tmp_path.iterdir()] == ["registry.json"]
    (tmp_path / "registry.json").write_text("[{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_registry(tmp_path)


def test_registry_module_does_not_import_torch():
    code = "import sys, trainer.registry, trainer.model_sync; sys.exit(1 if 'torch' in sys.modules else 0)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_concurrent_commits_from_two_processes_get_distinct_versions(tmp_path):
    """The fcntl lock serialises read-modify-write of registry.json across processes."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from trainer.registry import commit_version, make_staging_dir\n"
        "root = Path(sys.argv[1])\n"
        "for _ in range(8):\n"
        "    staging = make_staging_dir(root)\n"
        "    (staging / 'weights.pt').write_bytes(b'w')\n"
        "    commit_version(root, staging, json.loads(sys.argv[2]), compared_with=None)\n"
    )
    root = Path(__file__).resolve().parents[2]
    entry = json.dumps(_entry(promoted=False))
    workers = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), entry], cwd=root) for _ in range(2)
    ]
    assert [w.wait() for w in workers] == [0, 0]
    versions = [e["version"] for e in load_registry(tmp_path)]
    assert sorted(versions, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 17)]
    assert sorted(p.name for p in (tmp_path / "vit").iterdir()) == sorted(versions)
