"""Issue 22 point 4: unseen generators enter the promotion decision."""

from __future__ import annotations

import numpy as np

from trainer.promotion import compare_with_champion, with_unseen
from trainer.report import Scored


def _samples(prefix: str, n: int):
    return [type("S", (), {"id": f"{prefix}{i}", "generator": "Flux.1 D"})() for i in range(n)]


def _pair(rng, n: int, new_signal: float, old_signal: float):
    labels = np.array([0, 1] * (n // 2))
    samples = _samples("u", n)
    shared = rng.normal(0, 1, n)
    new = Scored(samples, labels, labels * new_signal + shared + rng.normal(0, 0.3, n))
    old = Scored(samples, labels, labels * old_signal + shared + rng.normal(0, 0.3, n))
    return new, old


def _in_distribution(settings, rng):
    new, old = _pair(rng, 200, 3.0, 3.0)
    return compare_with_champion(settings, {}, "v1", new, old)


def test_a_challenger_worse_on_unseen_generators_is_not_promoted_and_the_report_says_why(make_settings):
    settings = make_settings(eval_min_per_class=10, promotion_margin=0.02)
    rng = np.random.default_rng(4)
    decision = _in_distribution(settings, rng)
    assert decision["promoted"] is True
    worse_new, old = _pair(rng, 200, 0.3, 2.5)  # the synthetic unseen generator: challenger far worse
    final = with_unseen(settings, decision, "v1", worse_new, old)
    assert final["promoted"] is False and final["decided_by"] == "unseen generators"
    assert final["reason"].startswith("not promoted: worse than v1 on unseen generators")
    unseen = final["unseen_generators"]
    assert unseen["used"] and unseen["auc_difference_ci95"][1] < 0 and unseen["n_ai"] == 100
    as_good_new, old = _pair(rng, 200, 2.5, 2.5)
    both = with_unseen(settings, decision, "v1", as_good_new, old)
    assert both["promoted"] is True and both["decided_by"] == "both"
    assert "on held-out generators AUC" in both["reason"]


def test_too_few_unseen_images_leave_the_decision_to_the_in_distribution_criterion(make_settings):
    settings = make_settings(eval_min_per_class=10)
    rng = np.random.default_rng(5)
    decision = _in_distribution(settings, rng)
    new, old = _pair(rng, 12, 0.1, 3.0)  # 6 ai images of the unseen generator: under the minimum
    final = with_unseen(settings, decision, "v1", new, old)
    assert final["promoted"] is decision["promoted"] and final["decided_by"] == "in-distribution"
    assert final["unseen_generators"]["used"] is False
    assert "6 ai and 6 real comparable images" in final["unseen_generators"]["note"]
    none = with_unseen(settings, decision, "v1", None, None)
    assert none["unseen_generators"]["used"] is False and none["decided_by"] == "in-distribution"


def test_a_retrain_scores_the_champion_on_the_held_out_generator_for_the_decision(tiny, storage):
    import dataclasses
    import json

    from tests.trainer.builders import make_samples
    from trainer.train import train_on_samples

    samples = [
        dataclasses.replace(s, generator="Flux.1 D" if s.label == "ai" and i % 4 == 1 else "SDXL 1.0")
        for i, s in enumerate(make_samples(storage, 96, seed=6))
    ]
    # why: a small minimum so 12 held-out images and a 64-image retrain decide in seconds
    settings = tiny(eval_holdout_generators="Flux.1 D", eval_min_per_class=4)
    train_on_samples(settings, samples[:64], storage)
    train_on_samples(settings, samples, storage)
    promotion = json.loads((settings.models_dir / "vit" / "v2" / "report.json").read_text())["promotion"]
    assert promotion["compared_with"] == "v1"
    unseen = promotion["unseen_generators"]
    held = sum(s.generator == "Flux.1 D" for s in samples)
    assert unseen["used"] is True and unseen["n_ai"] == held
    assert promotion["decided_by"] in {"both", "in-distribution", "unseen generators"}
    lo, hi = unseen["auc_difference_ci95"]
    assert lo <= unseen["auc_difference"] <= hi
