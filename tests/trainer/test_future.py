"""Future generators (issue 25 point 1): the generator first seen last is held out automatically,
never reaches a training batch, and -- a synthetic new generator the model has never seen -- scores
a lower AUC than the in-distribution one; AUC by month of ingest."""

from __future__ import annotations

import dataclasses
import json

from dataset.storage import LocalStorage
from tests.images import encode
from tests.trainer.builders import make_samples, store, textured
from trainer.data import StoredImages
from trainer.future import choose_future
from trainer.promotion import TRAIN_IDS_FILE
from trainer.train import train_on_samples


def _dataset(storage) -> list:
    samples = []
    for i, s in enumerate(make_samples(storage, 120)):
        early = (i // 2) % 2 == 0
        generator = ("SDXL 1.0" if early else "Midjourney v6") if s.label == "ai" else "camera"
        when = "2026-01-15T00:00:00Z" if early else "2026-03-15T00:00:00Z"
        samples.append(dataclasses.replace(s, generator=generator, created_at=when))
    # A new generator, first seen in June, whose pictures look like the real ones to this model.
    for i in range(16):
        new = store(storage, f"flux-{i:03d}", "ai", encode(textured(7_000 + i, "real"), "JPEG"))
        samples.append(dataclasses.replace(new, generator="Flux.2", created_at="2026-06-01T00:00:00Z"))
    return samples


def test_the_newest_generator_is_held_out_never_trains_and_scores_lower(tiny, tmp_path, monkeypatch):
    storage = LocalStorage(tmp_path / "datasets")
    samples = _dataset(storage)
    flux = {s.image_key for s in samples if s.generator == "Flux.2"}
    loaded_for_training = []
    original = StoredImages.load

    def spy(self, index):
        if "RandomResizedCrop" in repr(self.transform):  # the training transform
            loaded_for_training.append(self.keys[index])
        return original(self, index)

    monkeypatch.setattr(StoredImages, "load", spy)
    settings = tiny()  # EVAL_FUTURE_GENERATORS unset: 3 AI generators with 10+ images -> 1
    train_on_samples(settings, samples, storage)
    folder = settings.models_dir / "vit" / "v1"
    report = json.loads((folder / "report.json").read_text())

    assert loaded_for_training and not flux & set(loaded_for_training)
    trained = set(json.loads((folder / TRAIN_IDS_FILE).read_text()))
    assert not trained & {s.id for s in samples if s.generator == "Flux.2"}
    future = report["future_generators"]
    assert future["held_out"] == ["Flux.2"] and future["k"] == 1 and future["reason"] is None
    assert future["first_seen"]["Flux.2"] == "2026-06-01T00:00:00Z"
    assert future["n"] == {"real": report["evaluation"]["n"]["real"], "ai": 16}
    assert future["auc"] < report["evaluation"]["auc"] and len(future["auc_ci95"]) == 2
    months = report["by_month"]
    assert set(months) == {"2026-01", "2026-03"}
    assert sum(m["n"]["real"] + m["n"]["ai"] for m in months.values()) == sum(
        report["evaluation"]["n"].values()
    )
    card = json.loads((folder / "model.json").read_text())
    assert card["evaluation"]["future_generators"]["held_out"] == ["Flux.2"]
    leak = report["leakage"]  # design.md §13: every evaluated image's distance to training
    assert leak["invariant_hash_radius"] == settings.split_near_dup_distance
    assert set(leak["nearest_train_distance"]) == set(report["evaluation"]["image_ids"]) | {
        s.id for s in samples if s.generator == "Flux.2"
    }
    assert leak["eval_within_radius_of_train"] == 0


def test_the_default_holds_none_out_with_fewer_than_three_generators_and_says_why(tmp_path):
    storage = LocalStorage(tmp_path / "datasets")
    samples = [s for s in _dataset(storage) if s.generator != "Midjourney v6"]
    choice = choose_future(samples, None, 10)
    assert choice.held_out == () and "2 AI generator(s)" in choice.reason
    assert choose_future(samples, 1, 10).held_out == ("Flux.2",)
    # Asked for more than there are: one generator always stays in training.
    assert choose_future(samples, 5, 10).held_out == ("Flux.2",)
    assert "at least one must train" in choose_future(samples, 5, 10).reason
