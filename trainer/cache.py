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

Each entry is tied to its original: it starts with a header line (:data:`ENTRY_MAGIC`, then JSON
with the SHA-256 and size of the original and of the JPEG that follows). A reader checks the
header against the key and the JPEG's own hash, then decodes through the same bounded decode as
ingest (``decode_rgb``: decompression bombs refused); an entry that fails any of it (overwritten,
truncated, a bomb, another picture) is rebuilt from the original and counted, never trained on,
and ``exposr-trainer check --repair`` removes it.

Both classes go through the same steps. The JPEG round trip is part of the preprocessing
(``model.json``: ``preprocessing.resize_shorter_to`` and ``cache_jpeg_quality``): the uncached
path and predictions (``trainer.predict``) apply :func:`prepared` to the original, so the model
sees the same pixels at training, evaluation and serving time. A cached file that is missing or
cannot be decoded is rebuilt from the original and
counted; ``exposr-trainer check`` reports and removes entries whose image is gone.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from dataset.errors import ImageRejected, StorageError
from dataset.images import decode_rgb
from dataset.storage import StorageDriver
from trainer.errors import EntryMismatch
from trainer.workers import worker_context

log = logging.getLogger(__name__)

CACHE_PREFIX = "cache"
CACHE_VERSION = 2  # bump when decode_rgb, shrink or the entry format change (2: the header)
ENTRY_MAGIC = b"EXPOSR-CACHE-ENTRY 1\n"
MAX_HEADER = 1024
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


def entry_bytes(jpeg: bytes, original: bytes) -> bytes:
    """A cache entry: the header tying it to ``original``, then the JPEG."""
    header = {
        "original_sha256": hashlib.sha256(original).hexdigest(),
        "original_size": len(original),
        "entry_sha256": hashlib.sha256(jpeg).hexdigest(),
        "entry_size": len(jpeg),
    }
    return ENTRY_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + jpeg


def entry_jpeg(data: bytes, sha256: str) -> bytes:
    """The JPEG of an entry whose header names the original ``sha256`` and matches the JPEG's own
    size and hash; EntryMismatch otherwise."""
    if not data.startswith(ENTRY_MAGIC):
        raise EntryMismatch("no entry header (not written by the cache)")
    line, newline, jpeg = data[len(ENTRY_MAGIC) : len(ENTRY_MAGIC) + MAX_HEADER].partition(b"\n")
    if not newline:
        raise EntryMismatch("the entry header is not terminated")
    jpeg = data[len(ENTRY_MAGIC) + len(line) + 1 :]
    try:
        header = json.loads(line)
    except ValueError as exc:
        raise EntryMismatch(f"the entry header is not JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("original_sha256") != sha256:
        raise EntryMismatch("the entry is not tied to this original (SHA-256 differs)")
    if (
        header.get("entry_size") != len(jpeg)
        or header.get("entry_sha256") != hashlib.sha256(jpeg).hexdigest()
    ):
        raise EntryMismatch("the picture is not the one the entry was written with (size or SHA-256)")
    return jpeg


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

    def _encoded(self, original_key: str) -> tuple[bytes, bytes]:
        """(the entry, its JPEG) made from the original."""
        original = self.storage.get(original_key)
        jpeg = encode_cached(prepared(original, self.side, self.max_pixels), self.quality)
        return entry_bytes(jpeg, original), jpeg

    def _write(self, sha256: str, original_key: str) -> bool:
        try:
            self.storage.put(self.key(sha256), self._encoded(original_key)[0])
            return True
        except (StorageError, ImageRejected, OSError) as exc:
            log.warning("cannot cache %s: %s", original_key, exc)
            return False

    def decode_entry(self, data: bytes, sha256: str) -> Image.Image:
        """The picture of an entry, checked (header, hashes) and decoded with ingest's bounds;
        EntryMismatch, ImageRejected or OSError when it is not usable."""
        image = decode_rgb(entry_jpeg(data, sha256), max_pixels=self.max_pixels)
        if min(image.size) > self.side:
            raise EntryMismatch(f"shorter side {min(image.size)} > {self.side}")
        return image

    def load(self, sha256: str, original_key: str) -> Image.Image:
        """The cached picture; a missing, mismatched or undecodable entry is rebuilt from the
        original and counted (never trained on)."""
        try:
            return self.decode_entry(self.storage.get(self.key(sha256)), sha256)
        except (StorageError, OSError, ValueError, ImageRejected) as exc:
            reason = str(exc) or type(exc).__name__
        log.warning(
            "training cache entry of %s unusable (%s): rebuilt from the original", original_key, reason
        )
        entry, jpeg = self._encoded(original_key)
        try:
            self.storage.put(self.key(sha256), entry)
        except StorageError as exc:  # still train on the picture; the next run tries again
            log.warning("could not rewrite the cache entry of %s: %s", original_key, exc)
        with self.rebuilt.get_lock():
            self.rebuilt.value += 1
        return decode_cached(jpeg)  # exactly what a reader of the rewritten entry gets


async def run_check_cache(settings, repair: bool = False) -> dict:
    """``exposr-trainer check``'s training-cache part: entries per preprocessing; orphans, and
    entries that are not what their original gave (overwritten, undecodable), removed with
    ``--repair`` (a missing entry needs nothing: the next training builds it)."""
    from dataset.manager import DatasetManager

    async with DatasetManager(settings) as dm:
        known = {s.sha256 for s in await dm.samples(("real", "ai", "unlabeled"))}
        storage = dm.storage
    return check_cache(storage, known, repair, settings.max_image_pixels)


def check_cache(
    storage: StorageDriver,
    known_sha256: Sequence[str] | set[str],
    repair: bool = False,
    max_pixels: int = 50_000_000,
) -> dict:
    """Cache entries per preprocessing, orphans (their image is no longer in the index) and bad
    entries of the current format (each read and checked as a training would)."""
    known = set(known_sha256)
    by_id: dict[str, int] = {}
    orphans: list[str] = []
    bad: list[dict] = []
    current = f"-v{CACHE_VERSION}"
    for key in storage.list(f"{CACHE_PREFIX}/"):
        parts = key.split("/")
        if len(parts) != 4 or not parts[3].endswith(".jpg"):
            continue
        by_id[parts[1]] = by_id.get(parts[1], 0) + 1
        sha = parts[3].removesuffix(".jpg")
        if sha not in known:
            orphans.append(key)
        elif parts[1].endswith(current) and (
            reason := _entry_problem(storage, key, sha, parts[1], max_pixels)
        ):
            bad.append({"key": key, "reason": reason})
    if repair:
        for key in [*orphans, *(b["key"] for b in bad)]:
            storage.delete(key)
    return {
        "entries": by_id,
        "orphans": len(orphans),
        "bad_entries": bad[:20],
        "bad": len(bad),
        "removed": len(orphans) + len(bad) if repair else 0,
        "orphan_keys": sorted(orphans)[:20],
    }


def _entry_problem(storage: StorageDriver, key: str, sha: str, cache: str, max_pixels: int) -> str | None:
    side = int(cache.split("-")[0].removeprefix("side"))
    checker = ImageCache.__new__(ImageCache)  # decode_entry needs only these two
    checker.side, checker.max_pixels = side, max_pixels
    try:
        checker.decode_entry(storage.get(key), sha)
    except StorageError as exc:
        return f"unreadable: {exc}"
    except (OSError, ValueError, ImageRejected) as exc:
        return str(exc) or type(exc).__name__
    return None
