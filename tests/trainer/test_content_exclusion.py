"""Issue 22 point 2: the champion is excluded from the comparison by content, not by id."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from tests.trainer.builders import fake_sample, make_samples
from trainer.promotion import TRAIN_IDS_FILE, comparable_subset, read_training_record, training_record
from trainer.report import Scored
from trainer.train import train_on_samples


def _scored(samples) -> Scored:
    labels = np.array([1 if s.label == "ai" else 0 for s in samples])
    return Scored(list(samples), labels, np.linspace(-1, 1, len(samples)))


def _with_sha(sample, sha: str):
    return dataclasses.replace(sample, sha256=sha)


def test_same_sha256_and_same_group_are_excluded_and_counted(tmp_path):
    trained = [_with_sha(fake_sample(f"t{i}", "ai", i), f"{i:064x}") for i in range(3)]
    (tmp_path / TRAIN_IDS_FILE).write_text(json.dumps(training_record(trained)))
    # Today's dataset: t0's file again under a new id, a crop of t1 (its own SHA-256, t1's group),
    # and two images unrelated to the champion.
    again = _with_sha(fake_sample("n0", "ai", 10), f"{0:064x}")
    crop = _with_sha(fake_sample("n1", "real", 11), "c" * 64)
    t1_today = _with_sha(fake_sample("n2", "real", 12), f"{1:064x}")
    free = [
        _with_sha(fake_sample(f"f{i}", "ai" if i % 2 else "real", 20 + i), f"{100 + i:064x}")
        for i in range(2)
    ]
    group_of = {"n0": "g0", "n1": "g1", "n2": "g1", "f0": "f0", "f1": "f1"}
    challenger = _scored([again, crop, *free])
    kept, why, excluded = comparable_subset(tmp_path, challenger, [again, crop, t1_today, *free], group_of)
    assert why is None and [s.id for s in kept.samples] == ["f0", "f1"]
    assert excluded == {"same_id": 0, "same_sha256": 1, "same_group": 1, "basis": "content", "note": None}


def test_an_old_record_of_ids_is_completed_from_the_index_and_says_what_it_could_not(tmp_path):
    (tmp_path / TRAIN_IDS_FILE).write_text(json.dumps(["t0", "gone"]))
    assert read_training_record(tmp_path).sha256 is None
    t0 = _with_sha(fake_sample("t0", "ai", 1), "a" * 64)
    same_file = _with_sha(fake_sample("x", "real", 2), "a" * 64)  # cannot be in one index, but may
    other = _with_sha(fake_sample("y", "real", 3), "b" * 64)  # be after a rebuild: still excluded
    _, _, excluded = comparable_subset(tmp_path, _scored([same_file, other]), [t0, other], {})
    assert excluded["same_sha256"] == 1 and excluded["basis"] == "ids only"
    assert "1 of the champion's 2 training images are no longer in the index" in excluded["note"]


def test_reingesting_the_same_files_with_the_models_kept_never_compares_on_the_champions_training(
    tiny, storage, tmp_path
):
    """The audit's case: the same files re-ingested into a new DATASET_DIR (new ids), models kept."""
    settings = tiny(eval_min_per_class=4)  # why: small sets so the comparison happens in seconds
    first = make_samples(storage, 64, seed=4)
    v1 = train_on_samples(settings, first, storage)
    assert v1["promoted"]
    record = read_training_record(settings.models_dir / "vit" / "v1")
    assert record.sha256 is not None and len(record.sha256) == v1["train_size"]

    again = [
        dataclasses.replace(s, id=f"re-{s.id}", split=None, split_group=None, image_key=s.image_key)
        for s in first
    ]
    train_on_samples(settings, again, storage)
    report = json.loads((settings.models_dir / "vit" / "v2" / "report.json").read_text())
    promotion = report["promotion"]
    eval_sha = {row["sha256"] for row in report["evaluation"]["images"]}
    overlap = eval_sha & set(record.sha256)
    assert overlap  # the new split put some of v1's training files on the evaluation side ...
    assert promotion["compared_with"] == "v1"
    excluded = promotion["excluded_from_comparison"]
    assert excluded["same_sha256"] == len(overlap) and excluded["basis"] == "content"
    # ... and none of them was compared.
    n_eval = len(report["evaluation"]["images"])
    if promotion["n_compared"] is not None:
        assert promotion["n_compared"] == n_eval - excluded["same_sha256"] - excluded["same_group"]
    else:
        assert "never trained on by either model" in promotion["reason"]
