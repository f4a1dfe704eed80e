"""The stored train/evaluation split (trainer/split.py): decided once per group, never moved."""

from __future__ import annotations

import dataclasses
import random

from tests.trainer.builders import fake_sample
from trainer.split import EVAL, EXCLUDED, TRAIN, SplitPlan, assign_splits, hamming_groups, leakage

PLAN = dict(radius=12, eval_fraction=0.1, min_per_class=10)


def _random_samples(n: int, seed: int = 1, prefix: str = "id"):
    rng = random.Random(seed)
    return [
        fake_sample(f"{prefix}{i:04d}", "ai" if i % 3 == 0 else "real", rng.getrandbits(64)) for i in range(n)
    ]


def _store(samples, plan):
    """What the index holds after DatasetManager.record_splits(plan.decided)."""
    return [
        dataclasses.replace(s, split_group=plan.group_of[s.id], split=plan.side_of[s.id]) for s in samples
    ]


def _ids(samples) -> set[str]:
    return {s.id for s in samples}


def test_groups_join_within_radius_transitively_and_use_all_64_bits():
    top = 1 << 63  # an unsigned 64-bit value a signed int64 could not hold
    hashes = [top | 0b0, top | 0b111, top | 0b111111, 0b1111 << 20, (1 << 64) - 1]
    groups = hamming_groups(hashes, max_distance=3)
    assert groups[0] == groups[1] == groups[2]  # 0-1: 3 bits, 1-2: 3 bits, 0-2: 6 bits (chained)
    assert len(set(groups)) == 3  # 0b1111<<20 is 5 bits from hashes[0]; all-ones is far


def test_top_bit_counts_as_one_bit_of_distance():
    assert hamming_groups([1 << 63, 0], max_distance=1) == [0, 0]
    assert hamming_groups([1 << 63, 0], max_distance=0) == [0, 1]


def test_split_is_deterministic_and_independent_of_order():
    samples = _random_samples(200)
    a = assign_splits(samples, **PLAN)
    shuffled = samples[:]
    random.Random(3).shuffle(shuffled)
    b = assign_splits(shuffled, **PLAN)
    assert a.side_of == b.side_of and a.group_of == b.group_of
    assert _ids(a.train) | _ids(a.eval) == _ids(samples) and not _ids(a.train) & _ids(a.eval)


def test_evaluation_set_meets_the_minimum_per_class_on_a_small_dataset():
    samples = _random_samples(60)  # 20 ai, 40 real: 10 % would be 2 and 4 images
    plan = assign_splits(samples, **PLAN)
    assert sum(s.label == "ai" for s in plan.eval) == 10
    assert sum(s.label == "real" for s in plan.eval) == 10
    # ... and on a big one it is the fraction.
    big = assign_splits(_random_samples(900, seed=2), **PLAN)
    assert sum(s.label == "real" for s in big.eval) == 60 and sum(s.label == "ai" for s in big.eval) == 30


def test_a_class_too_small_for_the_minimum_keeps_half_for_training():
    samples = _random_samples(30)  # 10 ai
    plan = assign_splits(samples, **PLAN)
    assert sum(s.label == "ai" for s in plan.eval) == 5 and sum(s.label == "ai" for s in plan.train) == 5


def test_grown_dataset_never_moves_a_stored_side_and_old_training_images_stay_out_of_evaluation():
    first = _random_samples(200, seed=4)
    plan1 = assign_splits(first, **PLAN)
    stored = _store(first, plan1)
    grown = stored + _random_samples(100, seed=5, prefix="new")  # +50 %
    plan2 = assign_splits(grown, **PLAN)
    assert not _ids(plan1.train) & _ids(plan2.eval)
    assert _ids(plan1.eval) <= _ids(plan2.eval)
    assert set(plan2.decided) == {s.id for s in grown if s.id.startswith("new")}  # only new ones decided
    assert sum(s.label == "real" for s in plan2.eval) == round(200 * 0.1)  # 10 % of the grown class


def test_new_image_near_a_stored_one_takes_its_group_and_side():
    first = _random_samples(100, seed=6)
    plan1 = assign_splits(first, **PLAN)
    stored = _store(first, plan1)
    an_eval, a_train = plan1.eval[0], plan1.train[0]
    near_eval = fake_sample("x-near-eval", "real", an_eval.phash ^ 0b1111111111)  # 10 bits away
    near_train = fake_sample("x-near-train", "ai", a_train.phash ^ 0b111111111111)  # 12 bits away
    plan2 = assign_splits(stored + [near_eval, near_train], **PLAN)
    assert (
        plan2.side_of["x-near-eval"] == EVAL and plan2.group_of["x-near-eval"] == plan1.group_of[an_eval.id]
    )
    assert plan2.side_of["x-near-train"] == TRAIN
    assert plan2.group_of["x-near-train"] == plan1.group_of[a_train.id]


def test_an_image_bridging_a_train_and_an_evaluation_group_is_excluded_from_both():
    t = fake_sample("t", "real", 0)
    e = fake_sample("e", "real", (1 << 20) - 1)  # 20 bits from t: separate groups
    stored = [
        dataclasses.replace(t, split_group="t", split=TRAIN),
        dataclasses.replace(e, split_group="e", split=EVAL),
    ]
    bridge = fake_sample("b", "ai", (1 << 10) - 1)  # 10 bits from each
    plan = assign_splits(stored + _random_samples(40), **PLAN)
    plan = assign_splits(stored + [bridge] + _random_samples(40), **PLAN)
    assert plan.side_of["b"] == EXCLUDED and _ids(plan.excluded) == {"b"}
    assert plan.side_of["t"] == TRAIN and plan.side_of["e"] == EVAL


def test_no_pair_within_the_split_radius_crosses_sides():
    rng = random.Random(5)
    samples = []
    for g in range(60):  # 60 families of near-copies 8-12 bits apart (edits, img2img, re-runs)
        base = rng.getrandbits(64)
        for k in range(4):
            flip = sum(1 << b for b in rng.sample(range(64), rng.choice([0, 4, 5, 6])))
            samples.append(fake_sample(f"g{g:02d}-{k}", "ai" if g % 2 else "real", base ^ flip))
    plan = assign_splits(samples, **PLAN)
    for a in samples:
        for b in samples:
            if bin(a.phash ^ b.phash).count("1") <= PLAN["radius"]:
                assert plan.side_of[a.id] == plan.side_of[b.id], (a.id, b.id)
    family = lambda s: s.id.split("-")[0]  # noqa: E731
    assert {family(s) for s in plan.train}.isdisjoint({family(s) for s in plan.eval})


def test_source_groups_and_edits_stay_on_one_side_whatever_their_hashes():
    rng = random.Random(7)
    post = [
        dataclasses.replace(fake_sample(f"p{k}", "ai", rng.getrandbits(64)), group_hint="civitai:post:9")
        for k in range(5)
    ]
    original = fake_sample("orig", "real", rng.getrandbits(64))
    edit = dataclasses.replace(fake_sample("edit", "real", rng.getrandbits(64)), group_hint="image:orig")
    plan = assign_splits(post + [original, edit] + _random_samples(80, seed=8), **PLAN)
    assert len({plan.side_of[s.id] for s in post}) == 1 and len({plan.group_of[s.id] for s in post}) == 1
    assert plan.side_of["edit"] == plan.side_of["orig"] and plan.group_of["edit"] == plan.group_of["orig"]


def test_held_out_generators_and_sources_never_train():
    samples = [
        dataclasses.replace(
            s, generator="Flux.1 D" if i % 4 == 0 else "SDXL 1.0", source="civitai" if i % 5 else "pexels"
        )
        for i, s in enumerate(_random_samples(200, seed=9))
    ]
    plan = assign_splits(samples, **PLAN, holdout_generators={"Flux.1 D"}, holdout_sources={"pexels"})
    assert plan.held_out and all(s.generator != "Flux.1 D" and s.source != "pexels" for s in plan.train)
    assert all(s.generator != "Flux.1 D" and s.source != "pexels" for s in plan.eval)
    assert _ids(plan.held_out) == {s.id for s in samples if s.generator == "Flux.1 D" or s.source == "pexels"}


def _balanced(n: int, seed: int, prefix: str):
    rng = random.Random(seed)
    return [fake_sample(f"{prefix}{i:04d}", "ai" if i % 2 else "real", rng.getrandbits(64)) for i in range(n)]


def test_the_gates_need_is_true_adding_what_the_reason_asks_adds_that_many_evaluation_images():
    """The promotion gate's "add N more" (trainer/promotion.py) and the split agree: the next N new
    images of a class go to the evaluation side, counted against the half-a-class cap."""
    import numpy as np

    from config.settings import Settings
    from trainer.promotion import chance_check, images_to_add
    from trainer.report import Scored

    first = _balanced(120, seed=7, prefix="old")  # 60 + 60: 10 % gives the minimum, 10 + 10
    plan1 = assign_splits(first, **PLAN)
    evaluation = plan1.eval
    assert [sum(s.label == c for s in evaluation) for c in ("real", "ai")] == [10, 10]
    # A challenger at AUC ~0.70 on 10 + 10: its interval reaches below 0.5.
    labels = np.array([1 if s.label == "ai" else 0 for s in evaluation])
    margins = np.where(labels == 1, 0.6, 0.0) + np.linspace(-1, 1, len(labels))[np.argsort(np.arange(20) % 7)]
    scored = Scored(list(evaluation), labels, margins)
    totals = {"real": 60, "ai": 60}
    estimate, reason, wanted = chance_check(Settings(_env_file=None), scored, totals)
    assert reason is not None and wanted is not None and 0.5 < estimate.auc < 0.9
    more = images_to_add(wanted, {"real": 10, "ai": 10}, totals)
    assert f"add {more['real']} more real and {more['ai']} more ai" in reason

    stored = _store(first, plan1)
    new = [
        fake_sample(f"new-real-{i}", "real", random.Random(100 + i).getrandbits(64))
        for i in range(more["real"])
    ] + [fake_sample(f"new-ai-{i}", "ai", random.Random(900 + i).getrandbits(64)) for i in range(more["ai"])]
    plan2 = assign_splits(stored + new, **PLAN, gate_wanted=wanted)
    got = {c: sum(s.label == c for s in plan2.eval) for c in ("real", "ai")}
    assert got == wanted  # exactly what the gate asked for
    assert _ids(plan1.eval) <= _ids(plan2.eval) and not _ids(plan1.train) & _ids(plan2.eval)
    # Without the gate's figure the same new images would mostly train (10 % of the class).
    plain = assign_splits(stored + new, **PLAN)
    assert sum(s.label == "real" for s in plain.eval) < wanted["real"]


def test_a_model_near_chance_is_told_that_a_better_model_is_the_shorter_way():
    """At AUC 0.55 the interval would need hundreds of evaluation images: the reason says so and
    points at a better model instead of counting images to add; the split still fills the
    evaluation side first (up to half of each class)."""
    import numpy as np

    from config.settings import Settings
    from trainer.promotion import chance_check
    from trainer.report import Scored

    evaluation = _balanced(20, seed=3, prefix="e")
    labels = np.array([1 if s.label == "ai" else 0 for s in evaluation])
    # Pairs of one real and one AI image share a score but for the AI's +0.5: AUC exactly 0.55.
    margins = np.arange(20) // 2 + 0.5 * labels
    estimate, reason, wanted = chance_check(Settings(_env_file=None), Scored(evaluation, labels, margins))
    assert estimate.auc == 0.55 and wanted["real"] > 4 * 20
    assert "little signal" in reason and "pretrained backbone" in reason and "add " not in reason


def test_leakage_finds_an_evaluation_image_near_a_training_one():
    """report.json's leakage block (design.md §13): a near copy on the evaluation side is counted
    with its distance, a far one is not; all 64 bits count."""
    top = 1 << 63
    plan = SplitPlan(
        train=[fake_sample("t1", "real", top | 0b0), fake_sample("t2", "ai", 0xFFFF_0000)],
        eval=[fake_sample("e1", "real", top | 0b111), fake_sample("e2", "ai", (1 << 40) - 1)],
        held_out=[fake_sample("h1", "ai", 0xFFFF_0001)],
    )
    out = leakage(plan, radius=3)
    assert out["invariant_hash_radius"] == 3
    assert out["nearest_train_distance"] == {"e1": 3, "e2": 24, "h1": 1}
    assert out["eval_within_radius_of_train"] == 2  # e1 (3 bits) and the held-out h1 (1 bit)
    assert out["min_distance"] == 1


def test_assigned_split_leaves_no_evaluation_image_within_the_radius_of_training():
    base = _random_samples(300)
    near = [fake_sample(f"near{i:03d}", s.label, s.phash ^ 0b1011) for i, s in enumerate(base[:60])]
    plan = assign_splits(base + near, **PLAN)
    out = leakage(plan, radius=PLAN["radius"])
    assert plan.eval and plan.train
    assert out["eval_within_radius_of_train"] == 0
    assert out["min_distance"] > PLAN["radius"]
    assert set(out["nearest_train_distance"]) == _ids(plan.eval) | _ids(plan.held_out)


def test_leakage_without_training_images_has_no_distances():
    out = leakage(SplitPlan(eval=[fake_sample("e1", "real", 1)]), radius=12)
    assert out["nearest_train_distance"] == {"e1": None}
    assert out["eval_within_radius_of_train"] == 0 and out["min_distance"] is None
