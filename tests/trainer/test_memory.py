"""What the trainer holds per image: bounded in-flight work, compact per-image columns."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.builders import make_samples
from trainer.cache import bounded_map
from trainer.data import PackedStrings, StoredImages
from trainer.train import train_on_samples


class CountingPool(ThreadPoolExecutor):
    """A thread pool that records how many submitted calls were not yet consumed, at most."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.submitted = 0
        self.most_pending = 0
        self.consumed = 0
        self.lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):
        with self.lock:
            self.submitted += 1
            self.most_pending = max(self.most_pending, self.submitted - self.consumed)
        return super().submit(fn, *args, **kwargs)


def test_bounded_map_keeps_few_calls_in_flight_and_the_order_of_the_items():
    items = [(i, i % 7) for i in range(1000)]
    with CountingPool(3) as pool:
        results = []
        for value in bounded_map(pool, lambda a, b: a * 10 + b, items, in_flight=8):
            pool.consumed += 1
            results.append(value)
    assert results == [a * 10 + b for a, b in items]
    assert pool.submitted == 1000 and pool.most_pending <= 8  # Executor.map would reach 1000


def test_packed_strings_read_back_every_string_and_slice():
    values = ["images/2026/01/01/a.jpg", "", "métadonnées/ü.png", "x" * 300]
    packed = PackedStrings(values)
    assert len(packed) == 4 and list(packed) == values
    assert packed[-1] == values[-1] and packed[1:3] == values[1:3]
    assert list(packed.take([3, 0])) == [values[3], values[0]]
    with pytest.raises(IndexError):
        packed[4]


def test_a_subset_of_stored_images_keeps_keys_labels_sha256s_and_samples_aligned(storage):
    samples = make_samples(storage, 12)
    data = StoredImages(
        storage,
        [s.image_key for s in samples],
        [int(s.label == "ai") for s in samples],
        transform=lambda image: image,
        max_pixels=10_000_000,
        sha256s=[s.sha256 for s in samples],
    )
    data.samples = list(samples)
    assert isinstance(data.keys, PackedStrings) and data.labels.dtype == np.int8

    part = data.subset([7, 2, 11])
    assert [s.id for s in part.samples] == [samples[i].id for i in (7, 2, 11)]
    assert list(part.keys) == [samples[i].image_key for i in (7, 2, 11)]
    assert list(part.sha256s) == [samples[i].sha256 for i in (7, 2, 11)]  # what the cache reads by
    assert part.labels.tolist() == [int(samples[i].label == "ai") for i in (7, 2, 11)]
    assert len(data) == 12  # the original is untouched
    image, label, position = part[1]
    assert (label, position) == (int(samples[2].label == "ai"), 1) and type(label) is int
    assert image.tobytes() == data.load(2).tobytes()


def _children() -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(OSError):
            found |= {int(p) for p in (task / "children").read_text().split()}
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_training_workers_end_before_the_report_and_promotion(tiny, storage):
    samples = make_samples(storage, 60)
    before = _children()
    seen: dict[str, set[int]] = {}

    def progress(event: dict) -> None:
        if event.get("stage") in ("train", "evaluate"):
            seen[event["stage"]] = _children() - before

    result = train_on_samples(tiny(train_workers=2, train_epochs=1), samples, storage, progress)
    assert result["version"] == "v1"
    assert len(seen["train"]) >= 2  # the training loader's workers, alive during the epochs
    assert seen["evaluate"] == set()  # ended once the fit was done
