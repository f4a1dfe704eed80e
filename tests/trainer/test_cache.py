"""The training cache (trainer/cache.py): built once and incrementally, shared through storage,
rebuilt when broken, and the same pixels as the uncached path -- so format and size stay hidden."""

from __future__ import annotations

import numpy as np
import torch

from tests.images import encode, scene
from tests.trainer.builders import make_samples, store
from trainer.cache import CACHE_QUALITY, ImageCache, cache_key, check_cache
from trainer.data import Preprocessing, StoredImages, eval_transform
from trainer.evaluate import CLASS_INDEX
from trainer.stats import auc_estimate
from trainer.train import train_on_samples

PRE = Preprocessing(32, (0.5,) * 3, (0.5,) * 3)  # decode side 48


def _items(samples):
    return [(s.sha256, s.image_key) for s in samples]


def _tensors(storage, samples, cache, quality=CACHE_QUALITY):
    data = StoredImages(
        storage,
        [s.image_key for s in samples],
        [0] * len(samples),
        eval_transform(PRE),
        10_000_000,
        reduce_to=PRE.decode_side,
        cache=cache,
        sha256s=[s.sha256 for s in samples],
        quality=quality,
    )
    return [data[i][0] for i in range(len(samples))]


def test_built_once_incrementally_and_read_with_the_same_pixels_as_the_originals(storage):
    samples = [store(storage, f"big{i}", "real", encode(scene(i, (400, 300)), "JPEG")) for i in range(12)]
    cache = ImageCache(storage, PRE.decode_side, 10_000_000)
    first = cache.build(_items(samples[:8]))
    second = cache.build(_items(samples))
    assert (first.built, first.present, second.built, second.present) == (8, 0, 4, 8)
    cached, plain = _tensors(storage, samples, cache), _tensors(storage, samples, None)
    assert all(torch.equal(a, b) for a, b in zip(cached, plain, strict=True))
    with storage_file(storage, cache_key(samples[0].sha256, 48)) as picture:
        assert min(picture.size) == 48  # shrunk to the decode side, not the 300 px original
    assert cache.rebuilt.value == 0


class storage_file:
    def __init__(self, storage, key):
        import io

        from PIL import Image

        from trainer.cache import entry_jpeg

        sha = key.rsplit("/", 1)[-1].removesuffix(".jpg")
        self.image = Image.open(io.BytesIO(entry_jpeg(storage.get(key), sha)))

    def __enter__(self):
        return self.image

    def __exit__(self, *exc):
        self.image.close()


def test_a_missing_or_corrupt_entry_is_rebuilt_from_the_original_and_counted(storage):
    samples = [store(storage, f"c{i}", "ai", encode(scene(50 + i, (200, 150)), "PNG")) for i in range(3)]
    cache = ImageCache(storage, PRE.decode_side, 10_000_000)
    cache.build(_items(samples))
    storage.put(cache_key(samples[0].sha256, 48), b"\x89PNG cut off")
    storage.delete(cache_key(samples[1].sha256, 48))
    fresh = _tensors(storage, samples, None)
    assert all(torch.equal(a, b) for a, b in zip(_tensors(storage, samples, cache), fresh, strict=True))
    assert cache.rebuilt.value == 2
    assert cache.build(_items(samples)).built == 0  # rewritten in place while reading


def test_another_preprocessing_is_another_prefix_and_check_finds_orphans(storage):
    samples = [store(storage, f"p{i}", "real", encode(scene(70 + i, (200, 150)), "JPEG")) for i in range(4)]
    ImageCache(storage, 48, 10_000_000).build(_items(samples))
    assert ImageCache(storage, 96, 10_000_000).build(_items(samples)).built == 4  # never reads side 48
    report = check_cache(storage, {s.sha256 for s in samples[:3]})
    assert report["entries"] == {"side48-q95-v2": 4, "side96-q95-v2": 4} and report["orphans"] == 2
    assert check_cache(storage, {s.sha256 for s in samples[:3]}, repair=True)["removed"] == 2
    assert check_cache(storage, {s.sha256 for s in samples[:3]})["orphans"] == 0


def test_hosts_share_the_cache_through_s3(s3_storage):
    samples = [store_s3(s3_storage, f"s{i}", encode(scene(90 + i, (200, 150)), "JPEG")) for i in range(5)]
    assert ImageCache(s3_storage, 48, 10_000_000).build(_items(samples)).built == 5
    other_host = ImageCache(s3_storage, 48, 10_000_000).build(_items(samples))
    assert (other_host.built, other_host.present) == (0, 5)


def store_s3(storage, image_id, data):
    from dataset.images import inspect_image
    from dataset.manager import Sample

    info = inspect_image(data, max_bytes=10_000_000, min_side=8, max_pixels=10_000_000)
    key = f"images/2026/01/01/{image_id}.jpg"
    storage.put(key, data)
    return Sample(
        id=image_id,
        label="real",
        source="folder",
        image_key=key,
        meta_key=f"meta/{image_id}.json",
        sha256=info.sha256,
        phash=info.phash,
        width=info.width,
        height=info.height,
        created_at="2026-01-01T00:00:00Z",
    )


def test_format_and_size_stay_hidden_with_the_cache_on(tiny, storage):
    settings = tiny()
    train_on_samples(settings, make_samples(storage, 120), storage)
    from trainer.modeling import load_artifacts

    model, pre, _ = load_artifacts(settings.models_dir / "vit" / "v1")
    cache = ImageCache(storage, pre.decode_side, 10_000_000)
    pictures = [scene(300 + i, (2048, 1536)) for i in range(20)]
    variants = {
        "png": [
            store(storage, f"fp{i}", "real", encode(p.resize((512, 384)), "PNG"))
            for i, p in enumerate(pictures)
        ],
        "jpeg": [
            store(storage, f"fj{i}", "real", encode(p.resize((512, 384)), "JPEG", quality=95))
            for i, p in enumerate(pictures)
        ],
        "small": [
            store(storage, f"s{i}", "real", encode(p.resize((512, 384)), "JPEG", quality=95))
            for i, p in enumerate(pictures)
        ],
        "large": [
            store(storage, f"l{i}", "real", encode(p, "JPEG", quality=95)) for i, p in enumerate(pictures)
        ],
    }
    margins = {}
    for name, samples in variants.items():
        cache.build(_items(samples))
        batch = torch.stack(_tensors(storage, samples, cache)).float()
        mean = torch.tensor(pre.mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(pre.std).view(1, 3, 1, 1) * 255
        with torch.no_grad():
            logits = model((batch - mean) / std)
        margins[name] = (logits[:, CLASS_INDEX["ai"]] - logits[:, CLASS_INDEX["real"]]).numpy()
    for a, b in (("png", "jpeg"), ("small", "large")):
        labels = np.array([1] * 20 + [0] * 20)
        auc = auc_estimate(labels, np.concatenate([margins[a], margins[b]])).auc
        assert 0.3 <= auc <= 0.7, (a, b, auc)


async def test_check_command_reports_and_removes_cache_entries_of_deleted_images(make_settings):
    from dataset.manager import DatasetManager
    from trainer.cache import run_check_cache

    settings = make_settings()
    async with DatasetManager(settings) as dm:
        meta = {"source": "folder", "label": "real"}
        ids = [(await dm.ingest(encode(scene(500 + i, (120, 90)), "JPEG"), meta)).id for i in range(3)]
        rows = [await dm.index.get(i) for i in ids]
        ImageCache(dm.storage, 48, 10_000_000).build([(r["sha256"], r["image_key"]) for r in rows])
        await dm.index.delete(ids[0])  # the image left the dataset; its cache entry is an orphan
    report = await run_check_cache(settings)
    assert report["entries"] == {"side48-q95-v2": 3} and report["orphans"] == 1
    assert (await run_check_cache(settings, repair=True))["removed"] == 1
    assert (await run_check_cache(settings))["entries"] == {"side48-q95-v2": 2}
