"""Linear-probe mode with cached features, EMA, resume after a kill, class balance."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from dataset.manager import DatasetManager
from tests.images import encode
from tests.trainer.builders import make_samples, textured
from trainer.errors import TrainingError
from trainer.predict import Predictor
from trainer.probe import FEATURES_PREFIX
from trainer.train import train_model, train_on_samples

ROOT = Path(__file__).resolve().parents[2]


def test_linear_probe_embeds_each_image_once_and_saves_a_complete_model(tiny, storage):
    settings = tiny(train_mode="linear_probe")
    assert settings.train_arch == "test_resnet"  # an explicit TRAIN_ARCH wins over the probe default
    samples = make_samples(storage, 120)
    first = train_on_samples(settings, samples[:100], storage)
    assert first["linear_probe"]["embedded"] == 100 and first["linear_probe"]["reused"] == 0
    assert first["val_auc"] > 0.9 and first["promoted"], first["promotion_reason"]
    shards = list(storage.list(f"{FEATURES_PREFIX}/"))
    assert len(shards) == 1

    second = train_on_samples(settings, samples, storage)  # 20 new images: only those are embedded
    assert (second["linear_probe"]["embedded"], second["linear_probe"]["reused"]) == (20, 100)
    assert len(list(storage.list(f"{FEATURES_PREFIX}/"))) == 2

    # The artifact is the whole network: timm rebuilds it from model.json, the Predictor scores with it.
    folder = settings.models_dir / "vit" / "v2"
    card = json.loads((folder / "model.json").read_text())
    assert card["train_mode"] == "linear_probe" and card["architecture"] == "test_resnet"
    model = timm.create_model(card["architecture"], pretrained=False, num_classes=card["num_classes"])
    model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    probs = Predictor(folder, device="cpu").predict_bytes([storage.get(s.image_key) for s in samples[:20]])
    labels = [s.label == "ai" for s in samples[:20]]
    assert np.mean([(p >= 0.5) == y for p, y in zip(probs, labels, strict=True)]) > 0.8


def test_probe_default_backbone_is_a_clip_vit(make_settings):
    assert make_settings(train_mode="linear_probe").train_arch == "vit_large_patch14_clip_224.openai"
    assert make_settings().train_arch == "vit_small_patch16_224"


def test_unknown_backbone_and_a_mismatched_pretrained_file_fail_at_once_naming_the_settings(
    tiny, storage, tmp_path
):
    samples = make_samples(storage, 40)
    with pytest.raises(TrainingError, match="TRAIN_ARCH='no_such_clip'"):
        train_on_samples(tiny(train_mode="linear_probe", train_arch="no_such_clip"), samples, storage)
    torch.save(timm.create_model("resnet10t", num_classes=1000).state_dict(), tmp_path / "other.pth")
    with pytest.raises(TrainingError) as info:
        train_on_samples(
            tiny(train_mode="linear_probe", train_pretrained_file=tmp_path / "other.pth"), samples, storage
        )
    assert "TRAIN_PRETRAINED_FILE=" in str(info.value) and "TRAIN_ARCH='test_resnet'" in str(info.value)


def test_class_weights_balance_an_imbalanced_dataset_and_are_reported(tiny, storage):
    samples = make_samples(storage, 160)
    samples = [s for i, s in enumerate(samples) if s.label == "real" or i % 6 == 1]  # 80 real, ~27 ai
    settings = tiny()
    result = train_on_samples(settings, samples, storage)
    trained = set(json.loads((settings.models_dir / "vit" / "v1" / "train_ids.json").read_text())["ids"])
    n_real = sum(s.label == "real" and s.id in trained for s in samples)
    n_ai = sum(s.label == "ai" and s.id in trained for s in samples)
    total = n_real + n_ai
    assert result["class_weights"] == {
        "real": round(total / (2 * n_real), 4),
        "ai": round(total / (2 * n_ai), 4),
    }
    assert result["class_weights"]["ai"] > 1 > result["class_weights"]["real"]
    assert train_on_samples(tiny(train_balance="none"), samples, storage)["class_weights"] is None


def test_ema_weights_are_the_ones_evaluated_and_saved(tiny, storage):
    samples = make_samples(storage, 80)
    plain = train_on_samples(tiny(), samples, storage)
    settings = tiny(train_ema_decay=0.9)
    ema = train_on_samples(settings, samples, storage)
    assert ema["sha256"] != plain["sha256"]
    card = json.loads((settings.models_dir / "vit" / ema["version"] / "model.json").read_text())
    assert card["ema_decay"] == 0.9
    # what was saved reproduces what was scored: the EMA copy, not the raw weights
    report = json.loads((settings.models_dir / "vit" / ema["version"] / "report.json").read_text())
    by_id = {s.id: s for s in samples}
    val = [by_id[i] for i in report["evaluation"]["image_ids"]]
    probs = Predictor(settings.models_dir / "vit" / ema["version"], device="cpu").predict_bytes(
        [storage.get(s.image_key) for s in val]
    )
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score([s.label == "ai" for s in val], probs) == pytest.approx(ema["val_auc"], abs=1e-6)


async def _ingest(settings, n: int) -> None:
    async with DatasetManager(settings) as dm:
        for i in range(n):
            label = "ai" if i % 2 else "real"
            await dm.ingest(
                encode(textured(4000 + i, label, size=(64, 48)), "JPEG"), {"source": "folder", "label": label}
            )


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
    "train_ema_decay",
}


def test_a_killed_training_resumes_from_its_last_epoch_with_the_same_loss_curve(tiny, tmp_path):
    settings = tiny(train_ema_decay=0.8)
    asyncio.run(_ingest(settings, 80))
    script = textwrap.dedent(f"""
        import os
        from config.settings import Settings
        from trainer.train import train_model
        settings = Settings(_env_file=None, **{settings.model_dump(mode="json", include=_FIELDS)!r})
        train_model(settings, progress=lambda e: e.get("stage") == "train" and e.get("epoch") == 2
                    and os._exit(9))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env).returncode == 9
    assert not (settings.models_dir / "registry.json").exists()  # nothing registered by the killed run
    resumed = train_model(settings)
    assert resumed["resumed_from_epoch"] == 1 and resumed["version"] == "v1"  # killed during epoch 2
    assert not list((settings.models_dir / ".resume").iterdir())  # a finished run leaves no checkpoint

    straight = train_model(tiny(train_ema_decay=0.8, models_dir=tmp_path / "models-straight"))
    assert straight["resumed_from_epoch"] is None
    assert resumed["train_losses"] == pytest.approx(straight["train_losses"], abs=1e-3)
    assert resumed["val_auc"] == pytest.approx(straight["val_auc"], abs=1e-3)
