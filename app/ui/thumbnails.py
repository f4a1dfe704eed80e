"""Review thumbnails: made on the server from the stored image, cached on local disk, made ahead.

:class:`ThumbnailMaker` runs in the service (app/main.py's lifespan): at start-up it makes the
thumbnail of every image that has none, then follows the index (rows newer than the last it saw:
uploads, scrapes, other hosts' imports) so a thumbnail exists before anyone asks; a review page
puts its own images first in line. A thumbnail asked for before it was made is made on the spot.

The cache lives in ``DATASET_DIR/.thumbnails/{id[:2]}/{id}.jpg`` (local even with S3 storage: it
is only a cache). The id is parsed as a UUID before anything else, so the path is never built
from what a client sent. Decoding goes through the dataset's checked decoder (pixel budget,
EXIF orientation). Files are written atomically: a reader never sees half a thumbnail.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import tempfile
from collections import deque
from pathlib import Path

from dataset.errors import ImageRejected, StorageError
from dataset.images import decode_rgb

log = logging.getLogger(__name__)
FOLLOW_SECONDS = 2.0  # how often the index is asked for new rows when there is nothing to make

SIDE = 256
QUALITY = 82


def cache_path(dataset_dir: Path, image_id: str) -> Path:
    return Path(dataset_dir) / ".thumbnails" / image_id[:2] / f"{image_id}.jpg"


def make_thumbnail(data: bytes, max_pixels: int) -> bytes:
    img = decode_rgb(data, max_pixels=max_pixels, reduce_to=SIDE)
    img.thumbnail((SIDE, SIDE))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=QUALITY)
    return out.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def thumbnail(dataset, settings, image_id: str) -> bytes:
    """The cached thumbnail of a (parsed) image id; made and cached on first use.

    Raises what ``dataset.read_image`` raises for an unknown id or storage trouble, and
    ImageRejected when the stored bytes cannot be decoded.
    """
    path = cache_path(settings.dataset_dir, image_id)
    try:
        return await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        pass
    data = await dataset.read_image(image_id)
    thumb = await asyncio.to_thread(make_thumbnail, data, settings.max_image_pixels)
    await asyncio.to_thread(_write_atomic, path, thumb)
    return thumb


class ThumbnailMaker:
    """Makes missing thumbnails in the background, a page's images first (see the module doc)."""

    def __init__(self, dataset, settings, workers: int = 1) -> None:
        self.dataset, self.settings, self.workers = dataset, settings, workers
        self.urgent: deque[str] = deque()
        self.backlog: deque[str] = deque()
        self.queued: set[str] = set()
        self.last_seq = 0
        self.made = 0
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    def missing(self, image_id: str) -> bool:
        return not cache_path(self.settings.dataset_dir, image_id).is_file()

    def warm(self, image_ids: list[str]) -> None:
        """These images next (a page that is being shown), unless they have a thumbnail."""
        for image_id in reversed(image_ids):
            if self.missing(image_id):
                self.urgent.appendleft(image_id)
                self.queued.add(image_id)
        if self.urgent:
            self.wake.set()

    async def follow_index(self) -> None:
        """Queue the images stored since the last look (all of them the first time)."""
        for seq, image_id in await self.dataset.stored_after(self.last_seq):
            self.last_seq = max(self.last_seq, seq)
            if image_id not in self.queued and self.missing(image_id):
                self.backlog.append(image_id)
                self.queued.add(image_id)

    def next_id(self) -> str | None:
        for line in (self.urgent, self.backlog):
            while line:
                image_id = line.popleft()
                if image_id in self.queued:
                    self.queued.discard(image_id)
                    return image_id
        return None

    async def work(self) -> None:
        while True:
            image_id = self.next_id()
            if image_id is None:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), FOLLOW_SECONDS)
                try:
                    await self.follow_index()
                except Exception as exc:  # the database away for a moment: the next look retries
                    log.warning("thumbnails: cannot read the index: %s", exc)
                continue
            if not self.missing(image_id):
                continue
            try:
                await thumbnail(self.dataset, self.settings, image_id)
                self.made += 1
            except (ImageRejected, StorageError, KeyError, OSError) as exc:  # shown as a 404/422 when asked
                log.info("thumbnail of %s not made: %s", image_id, exc)
            except Exception:  # a background worker outlives any one image: the next one is made
                log.exception("thumbnail of %s not made", image_id)

    async def __aenter__(self) -> ThumbnailMaker:
        self.tasks = [asyncio.create_task(self.work(), name=f"thumbnails-{i}") for i in range(self.workers)]
        self.wake.set()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = ["ImageRejected", "ThumbnailMaker", "cache_path", "make_thumbnail", "thumbnail"]
