"""Honest evaluation end to end: stable sides through the real index, held-out generators, the
statistics checked against independent computations, calibration and the shortcut audit."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dataset.manager import DatasetManager
from dataset.storage import LocalStorage
from tests.images import encode
from tests.trainer.builders import make_samples, textured
from trainer.data import StoredImages
from trainer.launder import CHAINS
from trainer.model_sync import latest_payload
from trainer.operating import operating_points
from trainer.promotion import compare_with_champion, read_training_record
from trainer.report import Scored, calibrate, shortcut_probe
from trainer.stats import (
    Z95,
    auc_estimate,
    expected_calibration_error,
    fit_temperature,
    paired_auc_difference,
    sigmoid,
)
from trainer.train import train_model, train_on_samples


async def _ingest(settings, start: int, n: int, **extra) -> list[str]:
    ids = []
    async with DatasetManager(settings) as dm:
        for i in range(start, start + n):
            label = "ai" if i % 2 else "real"
            outcome = await dm.ingest(
                encode(textured(9000 + i, label, size=(64, 48)), "JPEG"),
                {"source": "folder", "label": label, **extra},
            )
            assert outcome.status == "stored", outcome
            ids.append(outcome.id)
    return ids


async def _rows(settings) -> dict[str, object]:
    async with DatasetManager(settings) as dm:
        return {s.id: s for s in await dm.samples(("real", "ai"))}


def _read(path) -> object:
    return json.loads(path.read_text())


async def test_grow_by_half_and_retrain_never_evaluates_on_the_champions_training_images(tiny):
    settings = tiny()
    await _ingest(settings, 0, 60)
    v1 = train_model(settings)
    folder1 = settings.models_dir / "vit" / "v1"
    v1_train = set(read_training_record(folder1).ids)
    v1_eval = set(_read(folder1 / "report.json")["evaluation"]["image_ids"])
    sides1 = {i: s.split for i, s in (await _rows(settings)).items()}
    assert v1["promoted"], v1["promotion_reason"]
    assert len(v1_train) == v1["train_size"] and len(v1_eval) == v1["val_size"], v1

    # +50 %: new pictures, and "edits" of a v1 training image and of a v1 evaluation image whose
    # pixels are unrelated (far in pHash) but which the source says belong together.
    await _ingest(settings, 60, 28)
    a_train, an_eval = sorted(v1_train)[0], sorted(v1_eval)[0]
    edit_t = (await _ingest(settings, 200, 1, group_hint=f"image:{a_train}"))[0]
    edit_e = (await _ingest(settings, 201, 1, group_hint=f"image:{an_eval}"))[0]
    v2 = train_model(settings)
    rows = await _rows(settings)
    v2_eval = set(_read(settings.models_dir / "vit" / "v2" / "report.json")["evaluation"]["image_ids"])

    assert not v1_train & v2_eval  # the champion is never graded on its training
    assert v1_eval <= v2_eval  # ... and the evaluation set only grows
    assert all(rows[i].split == side for i, side in sides1.items())  # no stored side moved
    assert rows[edit_t].split == "train" and rows[edit_e].split == "eval"
    assert rows[edit_e].split_group == rows[an_eval].split_group
    for a, b in itertools.combinations(rows.values(), 2):  # no pair within the radius crosses sides
        if bin(a.phash ^ b.phash).count("1") <= settings.split_near_dup_distance:
            assert a.split == b.split, (a.id, b.id)
    promotion = _read(settings.models_dir / "vit" / "v2" / "report.json")["promotion"]
    assert promotion["compared_with"] == "v1" and promotion["n_compared"] == len(v2_eval)
    assert (
        promotion["auc_difference_ci95"][0]
        <= promotion["auc_difference"]
        <= promotion["auc_difference_ci95"][1]
    )
    assert v2["promoted"] == (promotion["auc_difference_ci95"][0] > -settings.promotion_margin)


def test_held_out_generators_never_reach_a_training_batch_and_are_reported_apart(tiny, tmp_path, monkeypatch):
    storage = LocalStorage(tmp_path / "datasets")
    samples = [
        dataclasses.replace(
            s,
            generator="Flux.1 D"
            if s.label == "ai" and i % 3 == 0
            else ("SDXL 1.0" if s.label == "ai" else "camera"),
        )
        for i, s in enumerate(make_samples(storage, 150))
    ]
    held = {s.image_key for s in samples if s.generator == "Flux.1 D"}
    loaded_for_training = []
    original = StoredImages.load

    def spy(self, index):
        if "RandomResizedCrop" in repr(self.transform):  # the training transform
            loaded_for_training.append(self.keys[index])
        return original(self, index)

    monkeypatch.setattr(StoredImages, "load", spy)
    settings = tiny(eval_holdout_generators="Flux.1 D")
    result = train_on_samples(settings, samples, storage)
    report = _read(settings.models_dir / "vit" / "v1" / "report.json")

    assert loaded_for_training and not held & set(loaded_for_training)
    trained = set(read_training_record(settings.models_dir / "vit" / "v1").ids)
    assert not trained & {s.id for s in samples if s.generator == "Flux.1 D"}
    assert not set(report["evaluation"]["image_ids"]) & {s.id for s in samples if s.generator == "Flux.1 D"}
    unseen = report["unseen_generators"]["Flux.1 D"]
    assert unseen["n_ai"] == len(held) and unseen["auc"] is not None and len(unseen["auc_ci95"]) == 2
    assert set(report["by_generator"]) == {"SDXL 1.0", "camera"} and result["version"] == "v1"
    for name in ("jpeg65", "resize50", "jpeg65_resize50", *CHAINS):
        fig = report["robustness"][name]
        assert 0 <= fig["auc"] <= 1 and fig["drop"] == pytest.approx(
            report["evaluation"]["auc"] - fig["auc"], abs=1e-3
        )
    assert 0.3 <= report["shortcut"]["format_swap_auc"] <= 0.7  # preprocessing hides PNG vs JPEG
    # The operating threshold (trainer/operating.py) on the report's own calibrated scores, in
    # report.json, model.json, the registry entry and what /models/latest answers.
    rows = report["evaluation"]["images"]
    points = operating_points([r["label"] for r in rows], [r["p_ai"] for r in rows], [r["id"] for r in rows])
    one = report["operating_points"]["fpr_0.01"]
    assert one["threshold"] == points["fpr_0.01"]["threshold"] and one["tpr"] == points["fpr_0.01"]["tpr"]
    assert "fpr_0.05" in report["operating_points"] and one["warning"].startswith("the evaluation set has")
    card = _read(settings.models_dir / "vit" / "v1" / "model.json")
    assert card["threshold"] == one["threshold"] and card["threshold_target_fpr"] == 0.01
    assert result["threshold"] == one["threshold"]
    assert latest_payload(dict(result))["threshold"] == one["threshold"]


def test_a_held_out_generator_with_too_few_images_is_said_so_and_training_runs(tiny, tmp_path):
    storage = LocalStorage(tmp_path / "datasets")
    samples = make_samples(storage, 80)
    ai = [i for i, s in enumerate(samples) if s.label == "ai"][:3]
    samples = [dataclasses.replace(s, generator="Rare 0.1") if i in ai else s for i, s in enumerate(samples)]
    settings = tiny(eval_holdout_generators="Rare 0.1")
    result = train_on_samples(settings, samples, storage)
    rare = _read(settings.models_dir / "vit" / "v1" / "report.json")["unseen_generators"]["Rare 0.1"]
    assert result["version"] == "v1" and rare["auc"] is None and rare["n_ai"] == 3
    assert rare["note"].startswith("too few to evaluate")


def test_a_class_missing_from_the_evaluation_set_is_explained_and_nothing_is_promoted(tiny, tmp_path):
    storage = LocalStorage(tmp_path / "datasets")
    # Every ai image already sits on the training side (decided by earlier trainings).
    samples = [
        dataclasses.replace(s, split="train", split_group=s.id) if s.label == "ai" else s
        for s in make_samples(storage, 80)
    ]
    settings = tiny()
    result = train_on_samples(settings, samples, storage)
    assert result["promoted"] is False and result["version"] == "v1"
    assert (
        "lacks the class ai" in result["promotion_reason"] and "add 10 more ai" in result["promotion_reason"]
    )
    assert not (settings.models_dir / "registry.json").read_text().count('"promoted": true')


# ---- statistics against independent computations ------------------------------------------------


def _delong_by_definition(labels, a, b=None):
    """DeLong's variance (and covariance) straight from the pairwise kernel, O(m n)."""
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)

    def comps(s):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    a10, a01 = comps(a)
    if b is None:
        return a10.mean(), np.var(a10, ddof=1) / len(pos) + np.var(a01, ddof=1) / len(neg)
    b10, b01 = comps(b)
    d10, d01 = a10 - b10, a01 - b01
    return a10.mean() - b10.mean(), np.var(d10, ddof=1) / len(pos) + np.var(d01, ddof=1) / len(neg)


def test_auc_interval_matches_delong_by_definition_sklearn_and_a_bootstrap():
    rng = np.random.default_rng(3)
    labels = (rng.random(120) < 0.4).astype(int)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: ties count half
    est = auc_estimate(labels, scores)
    auc, var = _delong_by_definition(labels, scores)
    assert est.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12) == pytest.approx(auc)
    assert est.variance == pytest.approx(var, rel=1e-9)
    assert est.ci95 == pytest.approx((auc - Z95 * var**0.5, auc + Z95 * var**0.5), abs=1e-12)
    boot = []
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    for _ in range(2000):  # stratified bootstrap: DeLong's variance is its large-sample limit
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        boot.append(roc_auc_score(labels[idx], scores[idx]))
    assert np.var(boot) == pytest.approx(var, rel=0.2)


def test_paired_difference_matches_the_definition_and_cancels_shared_difficulty():
    rng = np.random.default_rng(4)
    labels = (rng.random(200) < 0.5).astype(int)
    difficulty = rng.normal(0, 1, 200)
    old = labels * 1.0 + difficulty + rng.normal(0, 0.3, 200)
    new = labels * 1.2 + difficulty + rng.normal(0, 0.3, 200)
    paired = paired_auc_difference(labels, new, old)
    diff, var = _delong_by_definition(labels, new, old)
    assert paired.difference == pytest.approx(diff) and paired.variance == pytest.approx(var, rel=1e-9)
    # Scored on the same images the difference is far more certain than two independent AUCs.
    assert paired.variance < 0.5 * (paired.new.variance + paired.old.variance)


def test_perfect_separation_on_a_handful_of_images_is_not_certainty():
    est = auc_estimate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert est.auc == 1.0 and est.ci95[0] < 0.7  # 2 + 2 images: chance gets it right 1 time in 6
    big = auc_estimate([0] * 15 + [1] * 15, list(range(30)))
    assert big.ci95[0] > 0.9


def test_temperature_scaling_lowers_ece_on_an_over_confident_model():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 2, 4000)
    labels = (rng.random(4000) < sigmoid(z)).astype(int)  # true P(ai) = sigmoid(z)
    margins = 4.0 * z  # the model is 4x over-confident
    fit, test = slice(0, 2000), slice(2000, None)
    t = fit_temperature(labels[fit], margins[fit])
    before = expected_calibration_error(labels[test], sigmoid(margins[test]))
    after = expected_calibration_error(labels[test], sigmoid(margins[test] / t))
    assert t == pytest.approx(4.0, rel=0.15) and after < before / 3

    # The report's calibrate(): fitted on one half of the groups, ECE on the other.
    samples = [type("S", (), {"id": f"s{i}"})() for i in range(4000)]
    result = calibrate(Scored(samples, labels, margins), {s.id: s.id for s in samples})
    assert (
        result["ece"] < result["ece_uncalibrated"] / 3 and result["n_calibration"] + result["n_ece"] == 4000
    )


def _meta_samples(shortcut: bool, n: int = 200):
    rng = random.Random(6)
    out = []
    for i in range(n):
        label = "ai" if i % 2 else "real"
        if shortcut:  # camera JPEGs with EXIF, big; AI PNGs, small, no EXIF (the acceptance data's bias)
            fmt, w, h = (
                ("JPEG", rng.randint(2000, 4000), rng.randint(1500, 3000))
                if label == "real"
                else ("PNG", 512, 512)
            )
            size, exif = (
                (rng.randint(1_000_000, 5_000_000), True)
                if label == "real"
                else (rng.randint(300_000, 600_000), False)
            )
        else:
            fmt = rng.choice(["JPEG", "PNG"])
            w, h = rng.randint(400, 3000), rng.randint(400, 3000)
            size, exif = rng.randint(100_000, 5_000_000), rng.random() < 0.5
        out.append(
            type(
                "S",
                (),
                dict(
                    id=f"m{i}",
                    label=label,
                    format=fmt,
                    width=w,
                    height=h,
                    source="folder",
                    size_bytes=size,
                    has_exif=exif,
                ),
            )()
        )
    return out


@pytest.mark.parametrize("shortcut", [True, False])
def test_metadata_probe_sees_a_format_shortcut_and_nothing_without_one(shortcut):
    samples = _meta_samples(shortcut)
    probe = shortcut_probe(samples, lambda s: (s.size_bytes, s.has_exif), {}, warn_auc=0.8)
    if shortcut:
        assert probe["metadata_probe_auc"] > 0.95 and "without looking at pixels" in probe["warning"]
    else:
        assert 0.35 <= probe["metadata_probe_auc"] <= 0.65 and probe["warning"] is None


def test_champion_clearly_better_stays_and_a_non_inferior_challenger_replaces_it(make_settings):
    settings = make_settings(eval_min_per_class=10, promotion_margin=0.02)
    rng = np.random.default_rng(7)
    labels = np.array([0, 1] * 100)
    samples = [type("S", (), {"id": f"e{i}"})() for i in range(200)]
    champion = Scored(samples, labels, labels * 3.0 + rng.normal(0, 1, 200))
    worse = Scored(samples, labels, labels * 0.8 + rng.normal(0, 1, 200))
    as_good = Scored(samples, labels, champion.margins + rng.normal(0, 0.05, 200))
    kept = compare_with_champion(settings, {}, "v1", worse, champion)
    assert (
        kept["promoted"] is False and kept["auc_difference_ci95"][1] < 0 and "not promoted" in kept["reason"]
    )
    replaced = compare_with_champion(settings, {}, "v1", as_good, champion)
    assert replaced["promoted"] is True and replaced["auc_difference_ci95"][0] > -0.02
    assert replaced["n_compared"] == 200 and replaced["compared_with"] == "v1"


async def test_sides_survive_a_lost_index(tiny):
    """The side is in the metadata file too: the documented rebuild brings it back, so a lost index
    can never put an image a model trained on into a later evaluation set."""
    from dataset.check import check_dataset as run_check_dataset

    settings = tiny()
    await _ingest(settings, 0, 60)
    train_model(settings)
    before = {i: (s.split, s.split_group) for i, s in (await _rows(settings)).items()}
    assert set(v[0] for v in before.values()) == {"train", "eval"}
    db = settings.dataset_dir / "dedupe.db"
    for suffix in ("", "-wal", "-shm"):
        (settings.dataset_dir / f"dedupe.db{suffix}").unlink(missing_ok=True)
    db.touch()
    async with DatasetManager(settings) as dm:
        await run_check_dataset(dm, repair=True, force=False)
    after = {i: (s.split, s.split_group) for i, s in (await _rows(settings)).items()}
    assert after == before


async def test_the_images_the_gate_asks_for_go_to_the_evaluation_side(tiny):
    """A gate short of evaluation images says how many to add; adding exactly that many gives the
    next training exactly that many more evaluation images (sides already given never move)."""
    settings = tiny(eval_min_per_class=10, val_fraction=0.1)
    await _ingest(settings, 0, 24)  # 12 + 12: the evaluation side may hold at most half, 6 + 6
    v1 = train_model(settings)
    report1 = _read(settings.models_dir / "vit" / "v1" / "report.json")
    assert report1["evaluation"]["n"] == {"real": 6, "ai": 6} and not v1["promoted"]
    # 10 evaluation images per class wanted; 4 more each, and the class must double past 2 x 10.
    assert report1["promotion"]["eval_wanted"] == {"real": 10, "ai": 10}
    assert "add 8 more real and 8 more ai labelled image(s)" in v1["promotion_reason"]
    assert "not promoted: not promoted" not in v1["promotion_reason"]

    await _ingest(settings, 24, 16)  # exactly what the reason asked for
    train_model(settings)
    report2 = _read(settings.models_dir / "vit" / "v2" / "report.json")
    assert report2["evaluation"]["n"] == {"real": 10, "ai": 10}
    assert set(report1["evaluation"]["image_ids"]) < set(report2["evaluation"]["image_ids"])
    trained = read_training_record(settings.models_dir / "vit" / "v1")
    assert trained is not None and not set(report2["evaluation"]["image_ids"]) & set(trained.ids)
