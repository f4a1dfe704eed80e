"""Training through the real dataset manager, with DataLoader workers, and a killed training."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from dataset.manager import DatasetManager
from tests.images import encode
from tests.trainer.builders import make_samples, textured
from trainer.registry import load_registry
from trainer.summary import summary_table
from trainer.train import train_model, train_on_samples

ROOT = Path(__file__).resolve().parents[2]
# Real worker processes, but no more than the CPUs (more makes torch warn, and warnings are errors).
WORKERS = min(2, len(os.sched_getaffinity(0)))


def _tiny(make_settings, **overrides):
    values = dict(
        train_arch="test_resnet",
        train_image_size=32,
        train_epochs=2,
        train_batch_size=16,
        train_lr=3e-3,
        train_workers=WORKERS,
        val_fraction=0.25,
        min_train_samples=20,
    )
    return make_settings(**{**values, **overrides})


async def _ingest(settings, n: int, unlabeled: int = 0) -> None:
    async with DatasetManager(settings) as dm:
        for i in range(n + unlabeled):
            label = "unlabeled" if i >= n else ("ai" if i % 2 else "real")
            drawn = "ai" if i % 2 else "real"
            outcome = await dm.ingest(
                encode(textured(7000 + i, drawn, size=(64, 48)), "JPEG"),
                {"source": "folder", "label": label, "attribution": {}, "api_data": {}},
            )
            assert outcome.status == "stored", outcome


async def test_train_model_reads_the_dataset_with_workers_and_skips_unlabeled(make_settings):
    settings = _tiny(make_settings)
    await _ingest(settings, 60, unlabeled=10)
    events = []
    result = train_model(settings, progress=events.append)  # called from async code on purpose
    assert result["dataset_size"] == 60 and result["version"] == "v1" and result["promoted"]
    epoch_ends = [e["epoch"] for e in events if "train_loss" in e]  # not the per-batch reports
    assert epoch_ends == [1, 2] and result["val_auc"] > 0.8
    table = summary_table(result)
    assert table.row_count >= 8 and "vit v1" in str(table.title)
    decision = list(table.columns[1].cells)[0]  # the reason's own "promoted:" is not repeated
    assert decision.startswith("yes") and "promoted" not in decision.split(":", 1)[1][:12], decision


def test_trains_from_s3_storage_in_worker_processes(make_settings, s3_storage):
    # About S3 and worker processes, not promotion: the colour cast is learnt in 2 epochs, the texture is not.
    samples = make_samples(s3_storage, 40, signal="cast")
    result = train_on_samples(_tiny(make_settings, train_workers=1), samples, s3_storage)
    assert result["version"] == "v1" and result["skipped_images"] == 0 and result["val_auc"] > 0.8


def test_killed_training_leaves_models_as_they_were_and_is_cleaned_up(make_settings, tmp_path):
    settings = _tiny(make_settings, train_workers=0)
    import asyncio

    asyncio.run(_ingest(settings, 40))
    train_model(settings)
    registry_before = (settings.models_dir / "registry.json").read_bytes()
    script = textwrap.dedent(f"""
        import os
        from config.settings import Settings
        from trainer.train import train_model, train_on_samples
        settings = Settings(_env_file=None, **{settings.model_dump(mode="json", include=_FIELDS)!r})
        train_model(settings, progress=lambda event: event.get("epoch") and os._exit(9))  # like SIGKILL
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env).returncode == 9
    leftovers = [p for p in settings.models_dir.iterdir() if p.name.startswith(".staging-")]
    assert len(leftovers) == 1 and (leftovers[0] / "weights.pt").exists() is False
    assert (settings.models_dir / "registry.json").read_bytes() == registry_before
    assert sorted(p.name for p in (settings.models_dir / "vit").iterdir()) == ["v1"]

    second = train_model(settings)  # the next training cleans the dead run's folder
    assert second["version"] == "v2" and not leftovers[0].exists()
    assert [e["version"] for e in load_registry(settings.models_dir)] == ["v1", "v2"]


_FIELDS = {
    "dataset_dir",
    "models_dir",
    "log_dir",
    "train_arch",
    "train_image_size",
    "train_epochs",
    "train_batch_size",
    "train_lr",
    "train_workers",
    "val_fraction",
    "min_train_samples",
    "train_pretrained",
    "train_device",
    "min_image_side",
}
