"""The operating threshold at a target false-positive rate: the rule against a hand computation,
the warning on too few real images, and the TPR interval's bootstrap over groups."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.operating import operating_points, served_threshold, threshold_at

REAL = [i / 200 for i in range(200)]  # 0.000, 0.005, ..., 0.995
AI = [0.99, 0.9875, 0.97, 0.5, 0.999, 1.0, 0.9851]


def _points(real, ai, groups=None, **kw):
    labels = ["real"] * len(real) + ["ai"] * len(ai)
    groups = groups or [f"g{i}" for i in range(len(labels))]
    return operating_points(labels, real + ai, groups, **kw)


def test_the_threshold_at_one_percent_matches_the_hand_computation():
    points = _points(REAL, AI)
    # 1 % of 200 real images: 2 may be called ai. The 3rd highest real score is 0.985; the smallest
    # score above it is the AI image at 0.9851. Real at or above it: 0.99, 0.995 -> FPR 2/200.
    # AI at or above it: 0.99, 0.9875, 0.999, 1.0, 0.9851 -> TPR 5/7.
    one = points["fpr_0.01"]
    assert one["threshold"] == 0.9851
    assert one["fpr"] == 0.01 and one["tpr"] == round(5 / 7, 4)
    # 5 %: 10 may be called ai; the 11th highest real is 0.945, the smallest score above it the real
    # 0.95: real 0.95..0.995 (10) -> FPR 0.05; every AI image but 0.5 -> TPR 6/7.
    five = points["fpr_0.05"]
    assert five["threshold"] == 0.95 and five["fpr"] == 0.05 and five["tpr"] == round(6 / 7, 4)
    assert one["warning"] is None and five["warning"] is None
    assert one["n"] == {"real": 200, "ai": 7}
    lo, hi = one["tpr_ci95"]
    assert 0 <= lo <= one["tpr"] <= hi <= 1


def test_no_score_above_the_boundary_gives_a_threshold_just_above_it_and_tpr_zero():
    real, ai = np.array([0.1, 0.2, 0.9]), np.array([0.3, 0.4])
    assert threshold_at(real, ai, 0.01) == pytest.approx(0.9 + 1e-6)


def test_fewer_real_images_than_one_over_the_fpr_is_warned():
    points = _points(REAL[::4], AI)  # 50 real images
    assert "has 50 real images" in points["fpr_0.01"]["warning"]
    assert "at least 100" in points["fpr_0.01"]["warning"]
    assert points["fpr_0.05"]["warning"] is None  # 50 >= 20
    # With none allowed, the threshold lies above the highest real score (0.98): the smallest score
    # above it is 0.9851.
    assert points["fpr_0.01"]["threshold"] == 0.9851 and points["fpr_0.01"]["fpr"] == 0.0


def test_the_tpr_interval_resamples_whole_groups():
    rng = np.random.default_rng(0)
    real = rng.uniform(0, 0.8, 300).tolist()
    ai = rng.uniform(0.5, 1.0, 100).tolist()
    apart = _points(real, ai)["fpr_0.05"]
    assert apart["tpr_ci95"][1] - apart["tpr_ci95"][0] > 0.05
    # One group holding every image: each resample draws that group, so the interval is the point.
    together = _points(real, ai, groups=["one"] * 400)["fpr_0.05"]
    assert together["tpr_ci95"] == [together["tpr"], together["tpr"]]
    assert together["threshold"] == apart["threshold"]


def test_the_served_threshold_is_the_one_at_the_target_fpr():
    points = _points(REAL, AI, targets=(0.01, 0.05, 0.02))
    assert set(points) == {"fpr_0.01", "fpr_0.02", "fpr_0.05"}
    served = served_threshold(points, 0.05)
    assert served["threshold"] == 0.95 and served["threshold_target_fpr"] == 0.05
    assert served["threshold_tpr"] == points["fpr_0.05"]["tpr"]


def test_misaligned_inputs_are_refused():
    with pytest.raises(ValueError, match="must align"):
        operating_points(["ai", "real"], [0.1], ["a", "b"])
