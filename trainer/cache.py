"""The training cache: every stored image decoded and shrunk once per preprocessing, shared by hosts.

Decoding a 12 MP photo costs tens of milliseconds; the trainer needs at most
``Preprocessing.decode_side`` pixels on the shorter side. So each image is decoded once
(``dataset.images.decode_rgb`` with the same power-of-two reduction as before), shrunk to exactly
that shorter side (:func:`shrink`), and stored through the storage driver under

    cache/side{N}-q{Q}-v{VERSION}/{sha256[:2]}/{sha256}.jpg

(JPEG at quality 95, 4:4:4: a 504 x 336 picture decodes in ~0.5 ms of CPU where PNG took 5 ms
and the original photo's reduced JPEG decode 2 ms), keyed by the image's content and the size,
so every host (and every later training) shares it;
a new preprocessing (another size, or a change of :data:`CACHE_VERSION`) is a new prefix, so a
stale entry is never read. Writes are atomic through the driver (a local temp file renamed into
place, a single S3 PUT), so a reader never sees half a file, even while another host is writing.

Both classes go through the same steps. The JPEG round trip is part of the preprocessing
(``model.json``: ``preprocessing.resize_shorter_to`` and ``cache_jpeg_quality``): the uncached
path and predictions (``trainer.predict``) apply :func:`prepared` to the original, so the model
sees the same pixels at training, evaluation and serving time. A cached file that is missing or
cannot be decoded is rebuilt from the original and
counted; ``exposr-trainer check`` reports and removes entries whose image is gone.
"""

from __future__ import annotations

import io
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from dataset.images import ImageRejected, decode_rgb
from dataset.storage import StorageDriver, StorageError
from trainer.workers import worker_context

log = logging.getLogger(__name__)

CACHE_PREFIX = "cache"
CACHE_VERSION = 1  # bump when decode_rgb or shrink change what a cached picture holds
CACHE_QUALITY = 95  # JPEG quality of cached pictures (chroma not subsampled)


def shrink(image: Image.Image, side: int) -> Image.Image:
    """Resize so the shorter side is ``side`` (never enlarge): what the trainer and predictions see."""
    short = min(image.size)
    if short <= side:
        return image
    scale = side / short
    if image.width <= image.height:
        size = (side, max(side, round(image.height * scale)))
    else:
        size = (max(side, round(image.width * scale)), side)
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)


def prepared(data: bytes, side: int, max_pixels: int, quality: int | None = None) -> Image.Image:
    """The picture the model's transforms start from: decode (reduced), shrink, and -- when the
    model was trained from the cache (``quality``) -- the same JPEG round trip the cache applies."""
    image = shrink(decode_rgb(data, max_pixels=max_pixels, reduce_to=side), side)
    return image if quality is None else decode_cached(encode_cached(image, quality))


def cache_id(side: int, quality: int = CACHE_QUALITY) -> str:
    return f"side{side}-q{quality}-v{CACHE_VERSION}"


def cache_key(sha256: str, side: int, quality: int = CACHE_QUALITY) -> str:
    return f"{CACHE_PREFIX}/{cache_id(side, quality)}/{sha256[:2]}/{sha256}.jpg"


def encode_cached(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def decode_cached(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


@dataclass
class CacheBuild:
    """What :meth:`ImageCache.build` did: entries written, already there, originals unreadable."""

    built: int = 0
    present: int = 0
    failed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        rate = self.built / self.seconds if self.seconds > 0 else None
        return {
            "built": self.built,
            "present": self.present,
            "failed": self.failed,
            "seconds": round(self.seconds, 2),
            "images_per_s": None if rate is None else round(rate, 1),
        }


def bounded_map(pool: ThreadPoolExecutor, fn, items: Iterable[tuple], in_flight: int) -> Iterator:
    """``pool.map(fn, *zip(*items))`` with at most ``in_flight`` calls submitted at a time, results in
    order. ``Executor.map`` submits every item at once: ~1.6 KB of futures and work items per image,
    160 MB for 100k images, in the trainer's peak memory."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, *item))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class ImageCache:
    """Cached pictures at one decode side and quality. DataLoader workers read through it."""

    def __init__(
        self, storage: StorageDriver, side: int, max_pixels: int, quality: int = CACHE_QUALITY
    ) -> None:
        self.storage, self.side, self.max_pixels, self.quality = storage, side, max_pixels, quality
        # Entries found corrupt or missing while reading (in any DataLoader worker), rebuilt.
        self.rebuilt = worker_context().Value("i", 0)
        self.last_build = CacheBuild()

    def key(self, sha256: str) -> str:
        return cache_key(sha256, self.side, self.quality)

    def present(self) -> set[str]:
        """sha256s with an entry here (one listing, not a request per image)."""
        prefix = f"{CACHE_PREFIX}/{cache_id(self.side, self.quality)}/"
        return {key.rsplit("/", 1)[-1].removesuffix(".jpg") for key in self.storage.list(prefix)}

    def build(
        self,
        items: Iterable[tuple[str, str]],
        workers: int = 4,
        on_entry: Callable[[int, int], None] | None = None,
    ) -> CacheBuild:
        """Write the entries that are missing; ``items`` are (sha256, original's storage key).

        Incremental (only new images) and in parallel threads: Pillow decodes and encodes outside
        the GIL, and storage requests overlap. ``on_entry(done, total)`` follows the pass (entries
        already present count as done).
        """
        started = time.perf_counter()
        have = self.present()
        items = list(items)
        missing = {sha: key for sha, key in items if sha not in have}
        total, done = len(items), len(items) - len(missing)
        report = CacheBuild(present=len(have))
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for ok in bounded_map(pool, self._write, missing.items(), in_flight=4 * max(1, workers)):
                report.built += ok
                report.failed += not ok
                done += 1
                if on_entry is not None:
                    on_entry(done, total)
        report.seconds = time.perf_counter() - started
        if report.built or report.failed:
            log.info(
                "training cache %s: %d built (%.1f images/s), %d present, %d originals unreadable",
                cache_id(self.side, self.quality),
                report.built,
                report.built / max(report.seconds, 1e-9),
                report.present,
                report.failed,
            )
        self.last_build = report
        return report

    def _encoded(self, original_key: str) -> bytes:
        picture = prepared(self.storage.get(original_key), self.side, self.max_pixels)
        return encode_cached(picture, self.quality)

    def _write(self, sha256: str, original_key: str) -> bool:
        try:
            self.storage.put(self.key(sha256), self._encoded(original_key))
            return True
        except (StorageError, ImageRejected, OSError) as exc:
            log.warning("cannot cache %s: %s", original_key, exc)
            return False

    def load(self, sha256: str, original_key: str) -> Image.Image:
        """The cached picture; a missing or corrupt entry is rebuilt from the original and counted."""
        try:
            image = decode_cached(self.storage.get(self.key(sha256)))
            if min(image.size) <= self.side:
                return image
            reason = f"shorter side {min(image.size)} > {self.side}"
        except (StorageError, OSError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
        log.warning(
            "training cache entry of %s unusable (%s): rebuilt from the original", original_key, reason
        )
        data = self._encoded(original_key)
        try:
            self.storage.put(self.key(sha256), data)
        except StorageError as exc:  # still train on the picture; the next run tries again
            log.warning("could not rewrite the cache entry of %s: %s", original_key, exc)
        with self.rebuilt.get_lock():
            self.rebuilt.value += 1
        return decode_cached(data)  # exactly what a reader of the rewritten entry gets


async def run_check_cache(settings, repair: bool = False) -> dict:
    """``exposr-trainer check``'s training-cache part: entries per preprocessing, orphans removed
    with ``--repair`` (a missing or corrupt entry needs nothing: the next training rebuilds it)."""
    from dataset.manager import DatasetManager

    async with DatasetManager(settings) as dm:
        known = {s.sha256 for s in await dm.samples(("real", "ai", "unlabeled"))}
        storage = dm.storage
    return check_cache(storage, known, repair)


def check_cache(storage: StorageDriver, known_sha256: Sequence[str] | set[str], repair: bool = False) -> dict:
    """Cache entries per preprocessing, and orphans (their image is no longer in the index)."""
    known = set(known_sha256)
    by_id: dict[str, int] = {}
    orphans: list[str] = []
    for key in storage.list(f"{CACHE_PREFIX}/"):
        parts = key.split("/")
        if len(parts) != 4 or not parts[3].endswith(".jpg"):
            continue
        by_id[parts[1]] = by_id.get(parts[1], 0) + 1
        if parts[3].removesuffix(".jpg") not in known:
            orphans.append(key)
    if repair:
        for key in orphans:
            storage.delete(key)
    return {
        "entries": by_id,
        "orphans": len(orphans),
        "removed": len(orphans) if repair else 0,
        "orphan_keys": sorted(orphans)[:20],
    }
