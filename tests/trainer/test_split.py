from __future__ import annotations

import random

from tests.trainer.builders import fake_sample
from trainer.split import hamming_groups, split_samples


def _random_samples(n: int, seed: int = 1):
    rng = random.Random(seed)
    return [fake_sample(f"id{i:04d}", "ai" if i % 3 == 0 else "real", rng.getrandbits(64)) for i in range(n)]


def test_groups_join_within_radius_transitively_and_use_all_64_bits():
    top = 1 << 63  # an unsigned 64-bit value a signed int64 could not hold
    hashes = [top | 0b0, top | 0b111, top | 0b111111, 0b1111 << 20, (1 << 64) - 1]
    groups = hamming_groups(hashes, max_distance=3)
    assert groups[0] == groups[1] == groups[2]  # 0-1: 3 bits, 1-2: 3 bits, 0-2: 6 bits (chained)
    assert len(set(groups)) == 3                # 0b1111<<20 is 5 bits from hashes[0]; all-ones is far


def test_top_bit_counts_as_one_bit_of_distance():
    assert hamming_groups([1 << 63, 0], max_distance=1) == [0, 0]
    assert hamming_groups([1 << 63, 0], max_distance=0) == [0, 1]


def test_radius_zero_joins_only_identical_hashes():
    assert hamming_groups([5, 5, 4], max_distance=0) == [0, 0, 2]


def test_split_is_deterministic_and_independent_of_order():
    samples = _random_samples(200)
    train_a, val_a = split_samples(samples, 0.1, seed=7, max_distance=6)
    shuffled = samples[:]
    random.Random(3).shuffle(shuffled)
    train_b, val_b = split_samples(shuffled, 0.1, seed=7, max_distance=6)
    assert [s.id for s in val_a] == [s.id for s in val_b]
    assert [s.id for s in train_a] == [s.id for s in train_b]
    _, val_c = split_samples(samples, 0.1, seed=8, max_distance=6)
    assert {s.id for s in val_c} != {s.id for s in val_a}


def test_split_is_stratified_and_complete():
    samples = _random_samples(300)
    train, val = split_samples(samples, 0.1, seed=0, max_distance=6)
    assert {s.id for s in train} | {s.id for s in val} == {s.id for s in samples}
    assert not {s.id for s in train} & {s.id for s in val}
    ai_total = sum(s.label == "ai" for s in samples)
    assert sum(s.label == "ai" for s in val) == round(ai_total * 0.1)
    assert sum(s.label == "real" for s in val) == round((300 - ai_total) * 0.1)


def test_near_duplicate_groups_never_straddle_the_split():
    rng = random.Random(5)
    samples = []
    for g in range(40):  # 40 families of 4 near-copies (1-2 bits apart), far from each other
        base = rng.getrandbits(64)
        for k in range(4):
            samples.append(fake_sample(f"g{g:02d}-{k}", "ai" if g % 2 else "real", base ^ (k << (g % 60))))
    train, val = split_samples(samples, 0.2, seed=0, max_distance=4)
    family = lambda s: s.id.split("-")[0]  # noqa: E731
    assert val and {family(s) for s in train}.isdisjoint({family(s) for s in val})
    assert {s.label for s in val} == {"real", "ai"}
