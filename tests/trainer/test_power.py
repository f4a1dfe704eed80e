"""Issue 22 point 6: each decision states the smallest AUC difference it could detect (80 % power)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.promotion import compare_with_champion
from trainer.report import Scored
from trainer.stats import Z80, Z95, auc_estimate, min_detectable, paired_auc_difference


def _normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_the_stated_power_matches_a_simulation_of_the_comparison():
    """Challenger truly better than the champion; simulate many evaluation sets of 30 + 30 images.
    The share whose 95 % interval clears 0 must match the power the formula implies."""
    rng = np.random.default_rng(22)
    labels = np.array([0, 1] * 30)
    cleared, variances, differences = 0, [], []
    runs = 600
    for _ in range(runs):
        shared = rng.normal(0, 1, len(labels))  # each image's difficulty, seen by both models
        old = labels * 1.0 + shared + rng.normal(0, 0.7, len(labels))
        new = labels * 1.6 + shared + rng.normal(0, 0.7, len(labels))
        paired = paired_auc_difference(labels, new, old)
        cleared += paired.ci()[0] > 0
        variances.append(paired.variance)
        differences.append(paired.difference)
    true_difference, se = float(np.mean(differences)), math.sqrt(float(np.mean(variances)))
    predicted = _normal_cdf(true_difference / se - Z95)
    assert abs(cleared / runs - predicted) < 0.08
    # At the minimum detectable difference the power is 80 % by construction.
    assert min_detectable(se**2) == (Z95 + Z80) * se
    assert _normal_cdf(min_detectable(se**2) / se - Z95) == pytest.approx(0.8, abs=1e-9)


def test_ten_plus_ten_images_cannot_detect_a_tenth_of_auc_and_the_decision_says_so(make_settings):
    settings = make_settings(eval_min_per_class=10)
    rng = np.random.default_rng(3)
    labels = np.array([0, 1] * 10)
    samples = [type("S", (), {"id": f"e{i}"})() for i in range(20)]
    champion = Scored(samples, labels, labels * 1.0 + rng.normal(0, 1, 20))
    challenger = Scored(samples, labels, champion.margins + rng.normal(0, 0.8, 20))
    decision = compare_with_champion(
        settings, {"min_detectable_auc_difference": None}, "v1", challenger, champion
    )
    mdd = decision["min_detectable_auc_difference"]
    assert mdd > 0.1  # the audit: a challenger 0.10 better is promoted ~20 % of the time at 10 + 10
    assert f"difference of about {mdd:.3f} would be detected (80% power)" in decision["reason"]
    est = auc_estimate(labels, challenger.margins)
    assert min_detectable(est.variance) > 0.2  # the chance test at this size: only a large gain shows
