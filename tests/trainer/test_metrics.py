from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

from trainer.evaluate import accuracy_by_source, classification_metrics, midranks, roc_auc


def test_midranks_share_ranks_among_ties():
    assert midranks(np.array([0.3, 0.1, 0.3, 0.9, 0.3])).tolist() == [3.0, 1.0, 3.0, 5.0, 3.0]


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_heavy_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) * 0.6 + labels * 0.3, 1)  # rounded: many ties, across classes
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_extremes_and_undefined():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert roc_auc([1, 1], [0.2, 0.3]) is None


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 150)
    probs = np.clip(rng.random(150) * 0.8 + labels * 0.2, 0, 1)
    m = classification_metrics(labels, probs, loss=0.42, threshold=0.5)
    predicted = (probs >= 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted).ravel()
    assert m["confusion_matrix"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert m["precision"] == pytest.approx(precision_score(labels, predicted))
    assert m["recall"] == pytest.approx(recall_score(labels, predicted))
    assert m["f1"] == pytest.approx(f1_score(labels, predicted))
    assert m["val_acc"] == pytest.approx((predicted == labels).mean())
    assert m["val_auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert (m["val_loss"], m["threshold"]) == (0.42, 0.5)


def test_precision_is_none_when_nothing_is_called_ai():
    m = classification_metrics([0, 1], [0.1, 0.2], loss=1.0)
    assert m["precision"] is None and m["recall"] == 0.0 and m["f1"] == 0.0


def test_accuracy_by_source():
    sources = ["civitai", "pexels", "civitai", "pexels"]
    result = accuracy_by_source([1, 0, 1, 0], [0.9, 0.6, 0.2, 0.1], sources)
    assert result == {"civitai": {"n": 2, "accuracy": 0.5}, "pexels": {"n": 2, "accuracy": 0.5}}
