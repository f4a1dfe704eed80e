"""DatasetManager: the one way images enter, leave and change in the dataset.

Ingest order: validate and hash (in a worker thread) -> exact duplicate? -> near duplicate? ->
write image -> write metadata -> insert the index row -> near-duplicate re-check. The row comes
last, so a crash leaves at worst files without a row (orphans that ``check(repair=True)`` removes),
never a row without files; every write is atomic, so no half-written file is ever visible.

Two near-duplicates stored at the same moment (in this process or another) both pass the first
near check; the re-check after the insert looks at the rows that arrived in between, and the later
row (higher seq) withdraws itself: row first, then its files. The earliest one always stays.

Per-image failures are outcomes, not exceptions: a bad image is ``rejected`` with a reason, a
storage failure (full disk, S3 down) is ``error`` / ``storage_error`` and the next image goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import sys
import threading
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast

from PIL import Image
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from config.clock import iso_seconds, utc_now
from config.errors import IndexUnusable, StorageUnavailable
from config.filelock import FileLock
from config.settings import Settings
from dataset.contracts import LABELS, CheckReport, DatasetCounts, ImageMetadata
from dataset.db import describe_db, images, sqlite_path, unavailable
from dataset.errors import DuplicateHash, ImageRejected, StorageError, StorageKeyError, UnknownImage
from dataset.facts import generator_for, group_hint_for, has_exif
from dataset.images import ImageInfo, inspect_image
from dataset.index import DedupeIndex, Look, NearMatch
from dataset.rebuild import (  # the metadata file's text; the scorer column
    json_bytes,
    read_metadata,
    scorer_json,
)
from dataset.storage import StorageDriver, image_key, make_storage, meta_key

log = logging.getLogger(__name__)


COUNT_NAMES = {"real": "real", "ai": "ai_generated", "unlabeled": "unlabeled"}


# What a failing database raises: SQLAlchemy's errors, and asyncpg's refused connection as itself.
INDEX_ERRORS = (SQLAlchemyError, OSError, TimeoutError)


# Ingest (an upload, a batch) catches up with other writers at most once a second: a near duplicate
# stored elsewhere since then is found by the re-check after the insert, which withdraws this image.
# A process that is the only writer never needs more: its own rows join memory as they are inserted.
UPLOAD_CATCH_UP_SECONDS = 1.0

MAX_DECODE_THREADS = 4  # validation threads of a manager at most (one per usable core below that)

# Images stored together at most (ingest_stream): enough to spread the fixed costs of a batch
# (catch-up query, transaction, folder fsyncs) to well under a millisecond per image, while a batch's
# bytes (at most this many images of UPLOAD_MAX_BYTES) stay a modest amount of memory.
INGEST_BATCH = 32
INGEST_PIPELINE = 2  # batches being stored at once (ingest_stream)
# Images read ahead of the outcome the caller last took, by default: two batches in flight and the
# next one read and validated meanwhile.
INGEST_READ_AHEAD = INGEST_BATCH * (INGEST_PIPELINE + 1)


IngestStatus = Literal["stored", "duplicate", "near_duplicate", "rejected", "error"]


@dataclass(frozen=True)
class IngestOutcome:
    status: IngestStatus
    id: str | None = None  # the new id (stored) or the existing image's id (duplicates)
    reason: str | None = None  # rejection reason code, or "storage_error" / "index_error"
    message: str | None = None  # for a person
    distance: int | None = None  # Hamming distance for near_duplicate

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# An item of ingest_stream as it arrived: its bytes, its metadata and its validation (started then)
_Arrival = tuple[bytes, dict, "Future[ImageInfo | IngestOutcome]"]


async def _results(futures: Sequence[Future[Any]]) -> list[Any]:
    """The results of ``futures`` (validations in the decode threads), in order, once all are done.

    The event loop is woken once, by the last one to finish, not once per image: each wake-up is a
    write to the loop's self-pipe, a switch to the loop thread and the GIL taken from the decode
    threads (``asyncio.wrap_future`` per image, gathered, cost the loop about as much as the rest of
    a batch's Python). An exception of a validation is raised, as ``gather`` would."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    left = len(futures)
    lock = threading.Lock()

    def settle() -> None:
        if not done.done():
            done.set_result(None)

    def one_done(_future: Future[Any]) -> None:
        nonlocal left
        with lock:
            left -= 1
            last = left == 0
        if last:
            loop.call_soon_threadsafe(settle)

    for future in futures:
        future.add_done_callback(one_done)  # called at once for a future already done
    if futures:
        await done
    return [future.result() for future in futures]


@dataclass(frozen=True, slots=True)  # slots: ~56 bytes less per image (100k in a training)
class Sample:
    id: str
    label: str
    source: str
    image_key: str
    meta_key: str
    sha256: str
    phash: int
    width: int
    height: int
    created_at: str
    confidence: float | None = None  # the latest P(ai) from the labeler (index column), None if unscored
    scorer: str | None = None  # who produced it: scorer_json(set_score's scorer); None if unknown
    format: str | None = None  # the stored file's format (PNG, JPEG ...)
    generator: str | None = None  # dataset.facts.generator_for; None on rows older than the column
    group_hint: str | None = None  # dataset.facts.group_hint_for
    split_group: str | None = None  # the stable key of its near-duplicate group (trainer/split.py)
    split: str | None = None  # "train" | "eval" | "excluded"; None until a training decides it
    size_bytes: int | None = None  # file size (None: older row, read the file)
    has_exif: bool | None = None


SHARED_STRINGS = frozenset({"label", "source", "format", "generator", "split", "scorer"})


def iso(when: datetime) -> str:
    return iso_seconds(when)


class _Arrivals:
    """The read side of :meth:`DatasetManager.ingest_stream`: a task reads the items, at most
    ``read_ahead`` ahead of the outcomes taken, and starts each one's validation as it arrives;
    the stream takes what has arrived in batches."""

    def __init__(
        self,
        items: AsyncIterable[tuple[bytes, dict]],
        validate: Callable[[bytes, dict], Future[ImageInfo | IngestOutcome]],
        read_ahead: int,
    ) -> None:
        self.room = asyncio.Semaphore(max(1, read_ahead))
        self.queue: asyncio.Queue[_Arrival | None] = asyncio.Queue()  # unbounded: `room` bounds it
        self.batch_waiting = asyncio.Event()  # a whole batch, or the end, is in the queue
        self.end_queued = False
        self.reader = asyncio.create_task(self._read(items, validate))

    async def _read(self, items: AsyncIterable[tuple[bytes, dict]], validate: Callable) -> None:
        source = aiter(items)
        try:
            while True:
                await self.room.acquire()
                try:
                    data, metadata = await anext(source)
                except StopAsyncIteration:
                    break
                self.queue.put_nowait((data, metadata, validate(data, metadata)))
                if self.queue.qsize() >= INGEST_BATCH:
                    self.batch_waiting.set()
        finally:
            self.queue.put_nowait(None)  # the end, also after a failure (re-raised by `await reader`)
            self.end_queued = True
            self.batch_waiting.set()

    def whole(self) -> bool:
        """A whole batch, or the end of the items, is waiting."""
        return self.queue.qsize() >= INGEST_BATCH or self.end_queued

    async def whole_or(self, oldest: asyncio.Task) -> None:
        """Until the oldest batch in flight is done or a whole new one is waiting, whichever is first.
        Called right after ``not whole()``: no await before the clear, so the reader cannot run between."""
        self.batch_waiting.clear()
        waiter = asyncio.ensure_future(self.batch_waiting.wait())
        try:
            await asyncio.wait((oldest, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def batch(self) -> tuple[list[_Arrival], bool]:
        """What has arrived, up to INGEST_BATCH (waiting for one item at least), and whether the
        end of the items was taken with it."""
        batch: list[_Arrival] = []
        item = await self.queue.get()
        while item is not None:
            batch.append(item)
            if len(batch) == INGEST_BATCH or self.queue.empty():
                break
            item = self.queue.get_nowait()
        return batch, item is None

    def taken(self) -> None:
        self.room.release()

    def close(self) -> None:
        """Stop reading; images not batched yet: their decodes are not wanted."""
        self.reader.cancel()
        while not self.queue.empty():
            if (left := self.queue.get_nowait()) is not None:
                left[2].cancel()


class DatasetManager:
    """``async with DatasetManager(settings) as dm: await dm.ingest(data, meta)``."""

    def __init__(self, settings: Settings, storage: StorageDriver | None = None) -> None:
        self.settings = settings
        self.storage = storage or make_storage(settings)
        # the near-duplicate file of a database server is kept in DATASET_DIR (one per host)
        self.index = DedupeIndex(settings.db_url, near_dir=settings.dataset_dir)
        self._meta_lock = asyncio.Lock()  # serialises read-modify-write of metadata files
        # ... and this file lock does the same across processes (the label job runs in a worker
        # process while the API records a person's label on the same image).
        self._meta_lock_path = settings.dataset_dir / ".metadata.lock"
        self._decoders: ThreadPoolExecutor | None = None  # validation threads, made on first use

    async def open(self) -> DatasetManager:
        await self.index.open()
        log.info("dataset at %s, index %s rows", self.storage.describe(), len(self.index.cache))
        return self

    async def close(self) -> None:
        if self._decoders is not None:
            self._decoders.shutdown(wait=False, cancel_futures=True)
            self._decoders = None
        await self.index.close()

    async def verify(self) -> None:
        """IndexUnusable if the index has no rows but metadata files exist (see dataset/check.py)."""
        from dataset.check import index_problem

        try:
            problem = await index_problem(self)
        except StorageError as exc:  # start-up: a message naming the fix, not a traceback
            raise StorageUnavailable(f"the dataset storage cannot be read at start-up: {exc}") from exc
        if problem:
            raise IndexUnusable(problem)

    async def __aenter__(self) -> DatasetManager:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- ingest -------------------------------------------------------------------------------

    async def ingest(self, data: bytes, metadata: dict) -> IngestOutcome:
        """One image (an upload): the one-item case of :meth:`ingest_stream`, without its reader."""
        checked = await asyncio.wrap_future(self._validate(data, metadata))
        return (await self._ingest_checked([(data, metadata)], [checked]))[0]

    async def ingest_stream(
        self, items: AsyncIterable[tuple[bytes, dict]], *, read_ahead: int | None = None
    ) -> AsyncGenerator[IngestOutcome, None]:
        """The one door for many images (a scrape, a folder import, a multi-file upload): one
        :class:`IngestOutcome` for each ``(bytes, metadata)`` item, **in the order the items came**
        (the caller pairs them up by position), as :meth:`ingest` one by one would give them.

        Each item is validated as it arrives, in the validation threads (one per usable core, at
        most MAX_DECODE_THREADS): Pillow's decoders and SHA-256 run without the GIL. Items are read
        at most ``read_ahead`` (default INGEST_READ_AHEAD) ahead of the outcome the caller last
        took, so memory holds that many images at most; an item's place is freed when the caller
        asks for the outcome after it. ``read_ahead=1`` reads the next item only once the last
        outcome was taken (a source whose next request depends on it, a quota say).

        What has arrived is stored in batches of up to INGEST_BATCH, up to INGEST_PIPELINE batches
        at once: one batch's files and rows are written while the next is checked and the threads
        validate what arrives meanwhile. A batch starts as soon as a whole one is waiting (or the
        items have ended), not when the oldest is done, so batches stay full. Racing batches are
        safe: the index decides exact duplicates, the near re-check after the rows the near ones.
        A batch costs one catch-up, one exact-duplicate query, one group commit
        (:meth:`StorageDriver.put_many`), one transaction and one near re-check; the crash
        guarantees are those of :meth:`ingest` (every file durable before any row of its batch).

        Per-image failures are outcomes; a batch whose ingest raised gets ``error`` outcomes with
        the exception's class name as ``reason``. An exception from ``items`` itself is raised
        after the outcomes of what arrived before it. Closing or cancelling the stream cancels the
        reads, validations and batches in flight (a killed batch leaves at worst files without rows).
        """
        arrivals = _Arrivals(items, self._validate, INGEST_READ_AHEAD if read_ahead is None else read_ahead)
        ingesting: deque[tuple[list[_Arrival], asyncio.Task[list[IngestOutcome]]]] = deque()
        try:
            ended = False  # the end of the items was taken from the queue
            while not ended or ingesting:
                if ingesting:
                    if not ended and len(ingesting) < INGEST_PIPELINE and not arrivals.whole():
                        await arrivals.whole_or(ingesting[0][1])
                    if ended or len(ingesting) >= INGEST_PIPELINE or not arrivals.whole():
                        _batch, task = ingesting.popleft()
                        for outcome in await task:
                            yield outcome
                            arrivals.taken()  # the caller took it: the reader may read one more
                        continue
                batch, ended = await arrivals.batch()
                if batch:
                    ingesting.append((batch, asyncio.create_task(self._ingest_arrived(batch))))
            # The items' failure is raised here, after what arrived before it was stored.
            await arrivals.reader
        finally:
            arrivals.close()
            for batch, task in ingesting:
                task.cancel()
                for *_item, checked in batch:  # a batch whose task never ran still holds its validations
                    checked.cancel()

    async def _ingest_arrived(self, batch: list[_Arrival]) -> list[IngestOutcome]:
        """One batch of :meth:`ingest_stream`: its validations awaited, then checked and stored."""
        try:
            checked = await _results([validation for *_item, validation in batch])
            return await self._ingest_checked([(data, metadata) for data, metadata, _v in batch], checked)
        except Exception as exc:  # noqa: BLE001 - each image gets an outcome; the stream goes on
            log.warning("ingest of a batch of %d images failed: %s", len(batch), exc)
            failed = IngestOutcome("error", reason=type(exc).__name__, message=str(exc))
            return [failed] * len(batch)

    async def _ingest_checked(
        self, items: Sequence[tuple[bytes, dict]], checked: Sequence[ImageInfo | IngestOutcome]
    ) -> list[IngestOutcome]:
        outcomes: list[IngestOutcome | None] = [None] * len(items)
        valid = [i for i, got in enumerate(checked) if isinstance(got, ImageInfo)]
        for i, got in enumerate(checked):
            if isinstance(got, IngestOutcome):
                outcomes[i] = got
        infos = {i: cast(ImageInfo, checked[i]) for i in valid}
        accepted: list[int] = []
        later: list[int] = []
        distance = self.settings.near_dup_max_distance
        try:
            # at most once a second, before the exact check (see ingest); then one query for the
            # exact duplicates and, only when some hash is near a stored one, one for those rows
            await self.index.refresh(max_age=UPLOAD_CATCH_UP_SECONDS)
            look = self.index.look()
            known = await self.index.find_shas([infos[i].sha256 for i in valid])
            found = await self.index.near_many([infos[i].phash for i in valid], distance)
            nears = dict(zip(valid, found, strict=True))
            if near_ones := [
                infos[i].sha256 for i in valid if nears[i] is not None and infos[i].sha256 not in known
            ]:
                # an identical image may have been stored since the exact check (as in ingest)
                known.update(await self.index.find_shas(near_ones))
            for i in valid:
                info = infos[i]
                if info.sha256 in known:
                    outcomes[i] = _duplicate(known[info.sha256])
                elif any(_same_or_near(info, infos[j], distance) for j in accepted):
                    later.append(i)
                elif (near := nears[i]) is not None:
                    outcomes[i] = _near_duplicate(near)
                else:
                    accepted.append(i)
        except INDEX_ERRORS as exc:  # the database is away: nothing was written
            for i in valid:
                outcomes[i] = outcomes[i] or self._index_error(None, exc)
            return cast(list[IngestOutcome], outcomes)
        entries = [(items[i][0], items[i][1], infos[i]) for i in accepted]
        for i, outcome in zip(accepted, await self._store_batch(entries, look), strict=True):
            outcomes[i] = outcome
        if later:
            again = await self._ingest_checked([items[i] for i in later], [checked[i] for i in later])
            for i, outcome in zip(later, again, strict=True):
                outcomes[i] = outcome
        return cast(list[IngestOutcome], outcomes)

    def _validate(self, data: bytes, metadata: dict) -> Future[ImageInfo | IngestOutcome]:
        """Start validating one image (decode, hashes) in the manager's validation threads, one per
        usable core: Pillow's decoders and SHA-256 run without the GIL, so the cores decode side by
        side while the event loop goes on; DECODE_MEMORY_BUDGET_MB bounds what the decodes hold
        together. The result goes to :meth:`_ingest_checked`."""
        if self._decoders is None:
            threads = max(1, min(len(os.sched_getaffinity(0)), MAX_DECODE_THREADS))
            self._decoders = ThreadPoolExecutor(threads, thread_name_prefix="validate")
        return self._decoders.submit(self._inspect, data, metadata)

    def _inspect(self, data: bytes, metadata: dict) -> ImageInfo | IngestOutcome:
        """The image's facts, or the outcome that rejects it (a bad label, bytes that fail validation)."""
        label = metadata.get("label")
        if label not in LABELS:
            return IngestOutcome(
                "rejected", reason="bad_label", message=f"label {label!r} is not one of {', '.join(LABELS)}"
            )
        try:
            return inspect_image(
                data,
                max_bytes=self.settings.upload_max_bytes,
                min_side=self.settings.min_image_side,
                max_pixels=self.settings.max_image_pixels,
                memory_budget=self.settings.decode_memory_budget_mb * 2**20,
            )
        except ImageRejected as exc:
            return IngestOutcome("rejected", reason=exc.reason, message=exc.message)

    async def _store_batch(
        self, entries: list[tuple[bytes, dict, ImageInfo]], look: Look
    ) -> list[IngestOutcome]:
        """Files (one group commit), then rows (one transaction), then the near re-check (one query)."""
        if not entries:
            return []
        if len(entries) == 1:
            data, metadata, info = entries[0]
            return [await self._store(data, metadata, info, look)]
        now = utc_now()
        planned = []
        for data, metadata, info in entries:
            image_id = str(uuid.uuid4())
            keys = (image_key(image_id, info.ext, now), meta_key(image_id, now))
            doc = build_metadata(metadata, image_id, now, info)
            planned.append((image_id, keys, doc, index_row(doc, info, keys, data)))
        puts = [
            pair
            for (data, _m, _i), (_id, keys, doc, _r) in zip(entries, planned, strict=True)
            for pair in ((keys[0], data), (keys[1], json_bytes(doc)))
        ]
        written = [key for key, _data in puts]
        try:
            await asyncio.to_thread(self.storage.put_many, puts)
        except StorageError as exc:  # which image's write failed is not known: one at a time tells
            log.warning("batch write failed (%s); storing its %d images one at a time", exc, len(entries))
            await self._discard(written)
            return [await self._store(data, metadata, info, look) for data, metadata, info in entries]
        except BaseException:
            await self._discard(written)
            raise
        rows = [row for *_rest, row in planned]
        try:
            seqs = await self.index.insert_many(rows)
        except IntegrityError:  # an identical image came in from elsewhere since the exact check
            return await self._insert_one_by_one(planned, look)
        except INDEX_ERRORS as exc:
            await self._discard(written)
            return [self._index_error(image_id, exc) for image_id, *_rest in planned]
        except BaseException:
            await self._discard(written)
            raise
        return await self._yield_batch_to_earlier(planned, seqs, look)

    async def _insert_one_by_one(self, planned: list, look: Look) -> list[IngestOutcome]:
        """After a batch insert lost an exact-duplicate race: each row on its own, so the duplicate
        alone is refused (its files removed) and the others are stored with the files already written."""
        outcomes = []
        for image_id, keys, _doc, row in planned:
            written = list(keys)
            try:
                seq = await self.index.insert(row)
            except DuplicateHash as dup:
                await self._discard(written)
                outcomes.append(_duplicate(dup.existing_id))
                continue
            except INDEX_ERRORS as exc:
                await self._discard(written)
                outcomes.append(self._index_error(image_id, exc))
                continue
            outcomes.append(
                await self._yield_to_earlier_near_duplicate(image_id, row["phash"], look, seq, written)
            )
        return outcomes

    async def _yield_batch_to_earlier(
        self, planned: list, seqs: list[int], look: Look
    ) -> list[IngestOutcome]:
        """The batch's :meth:`_yield_to_earlier_near_duplicate`: the rows that other writers (another
        batch in flight, another process) inserted since the batch's look, checked at once -- from
        memory when this process wrote them, else one query; an image with such an earlier near
        duplicate withdraws itself (rows first, then files)."""
        outcomes = [IngestOutcome("stored", id=image_id) for image_id, *_rest in planned]
        distance = self.settings.near_dup_max_distance
        if distance <= 0:
            return outcomes
        rows = [(seq, row["phash"]) for (*_rest, row), seq in zip(planned, seqs, strict=True)]
        try:
            earlier = await self.index.earlier_near(rows, look, distance)
            losers = {k: earlier[seq] for k, seq in enumerate(seqs) if seq in earlier}
            if not losers:
                return outcomes
            await self.index.delete_many([planned[k][0] for k in losers])  # rows first
        except SQLAlchemyError as exc:  # rows and files are all in place: keep them
            log.warning("near-duplicate re-check of a batch failed, kept it: %s", exc)
            return outcomes
        for k, match in losers.items():
            await self._discard(list(planned[k][1]))
            outcomes[k] = _near_duplicate(match)
        return outcomes

    def _index_error(self, image_id: str | None, exc: BaseException) -> IngestOutcome:
        message = str(unavailable(self.settings.db_url, exc))
        log.warning("index error while storing %s: %s", image_id or "an image", message)
        return IngestOutcome("error", reason="index_error", message=f"dataset index failed: {message}")

    async def _store(self, data: bytes, metadata: dict, info: ImageInfo, look: Look) -> IngestOutcome:
        image_id, now = str(uuid.uuid4()), utc_now()
        keys = (image_key(image_id, info.ext, now), meta_key(image_id, now))
        doc = build_metadata(metadata, image_id, now, info)
        written: list[str] = []
        try:
            await self._put(keys[0], data, written)
            await self._put(keys[1], json_bytes(doc), written)
            seq = await self.index.insert(index_row(doc, info, keys, data))
        except DuplicateHash as dup:
            if dup.existing_id == image_id:  # `check --rebuild-index` indexed our files first: ours
                return IngestOutcome("stored", id=image_id)
            await self._discard(written)  # lost a race with an identical image: keep the winner only
            return _duplicate(dup.existing_id)
        except StorageError as exc:
            await self._discard(written)
            log.warning("storage error while storing %s: %s", image_id, exc)
            return IngestOutcome("error", reason="storage_error", message=str(exc))
        except INDEX_ERRORS as exc:  # the database file's disk is full, the database server is away
            await self._discard(written)
            return self._index_error(image_id, exc)
        except BaseException:  # cancelled or a bug: still leave nothing behind
            await self._discard(written)
            raise
        return await self._yield_to_earlier_near_duplicate(image_id, info.phash, look, seq, written)

    async def _yield_to_earlier_near_duplicate(
        self, image_id: str, phash: int, look: Look, seq: int, written: list[str]
    ) -> IngestOutcome:
        """Withdraw this image if a near duplicate was inserted between our near check and our row."""
        try:
            found = await self.index.earlier_near([(seq, phash)], look, self.settings.near_dup_max_distance)
            earlier = found.get(seq)
            if earlier is None:
                return IngestOutcome("stored", id=image_id)
            await self.index.delete(image_id)  # the row first: never a row without its files
        except SQLAlchemyError as exc:  # row and files are both in place: keep them
            log.warning("near-duplicate re-check of %s failed, kept it: %s", image_id, exc)
            return IngestOutcome("stored", id=image_id)
        await self._discard(written)
        return _near_duplicate(earlier)

    async def _put(self, key: str, data: bytes, written: list[str]) -> None:
        written.append(key)  # before the put: a failed put may still have left something to remove
        await asyncio.to_thread(self.storage.put, key, data)

    async def _discard(self, keys: list[str]) -> None:
        for key in reversed(keys):  # metadata first, so an image never loses its record first
            try:
                await asyncio.to_thread(self.storage.delete, key)
            except StorageError as exc:  # leaves an orphan; `check --repair` removes it
                log.warning("could not remove %s after a failed ingest: %s", key, exc)

    # ---- queries ------------------------------------------------------------------------------

    async def counts(self) -> DatasetCounts:
        totals = {name: 0 for name in COUNT_NAMES.values()}
        by_source: dict[str, dict[str, int]] = {}
        for label, source, n in await self.index.count_by_label_source():
            name = COUNT_NAMES.get(label, label)
            totals[name] = totals.get(name, 0) + n
            src = by_source.setdefault(source, {"total": 0, **{k: 0 for k in COUNT_NAMES.values()}})
            src[name] = src.get(name, 0) + n
            src["total"] += n
        return cast(DatasetCounts, {"total": sum(totals.values()), **totals, "by_source": by_source})

    async def added_by_label(self, period: Literal["day", "hour"]) -> list[tuple[str, str, int]]:
        """(day or hour, label, images added) from the index, oldest first (the console's growth)."""
        return await self.index.added_by_label(10 if period == "day" else 13)

    async def stored_after(self, seq: int) -> list[tuple[int, str]]:
        """(seq, id) of the images indexed after ``seq``, in the order they were (thumbnails ahead)."""
        return await self.index.ids_after(seq)

    @property
    def shared_engine(self) -> AsyncEngine | None:
        """The database engine when other hosts share it (PostgreSQL), for the tables beside the
        index (the scraper's ``rate_buckets``); None on SQLite, which one host uses alone."""
        return self.index.engine if self.index.shared else None

    async def samples(self, labels: tuple[str, ...] | list[str] = ("real", "ai")) -> list[Sample]:
        # A page of rows at a time, and the strings that repeat (label, source, format, generator,
        # side, scorer) shared: a list of row dicts held ~1.7 KB per image at its peak.
        fields = tuple(Sample.__dataclass_fields__)
        shared = [i for i, name in enumerate(fields) if name in SHARED_STRINGS]
        exif = fields.index("has_exif")
        out: list[Sample] = []
        async for page in self.index.column_pages(fields, tuple(labels)):
            for row in page:
                values = list(row)
                for i in shared:
                    if values[i] is not None:
                        values[i] = sys.intern(values[i])
                if values[exif] is not None:
                    values[exif] = bool(values[exif])
                out.append(Sample(*values))
        return out

    async def record_splits(self, decided: dict[str, tuple[str, str]]) -> int:
        """Store each image's (split_group, split) once: rows that already have a side keep it.

        Returns how many rows took the new side. The trainer calls this before it trains, so the
        side of an image never moves however the dataset grows (trainer/split.py). The side is also
        written into each image's metadata file (after the index: a crash in between costs at most
        a re-decision, never two sides), so ``check --rebuild-index`` brings it back with the row.
        """
        changed = await self.index.set_splits_once(decided)
        for image_id, (group, side) in decided.items():

            def keep_first(doc: dict, group: str = group, side: str = side) -> None:
                if not doc.get("split"):
                    doc.update(split_group=group, split=side)

            try:
                await self._edit(image_id, keep_first)  # serialised with label/score edits, any host
            except (UnknownImage, StorageError, ValueError) as exc:  # deleted meanwhile, or unreadable
                log.warning("split of %s not written to its metadata file: %s", image_id, exc)
        return changed

    async def get_metadata(self, image_id: str) -> ImageMetadata | None:
        row = await self.index.get(image_id)
        if row is None:
            return None
        try:
            raw = await asyncio.to_thread(self.storage.get, row["meta_key"])
            return cast(ImageMetadata, read_metadata(raw, row["meta_key"]))  # a JSON object, as written
        except StorageKeyError:
            log.warning("image %s has an index row but no metadata file: run `check`", image_id)
            return None

    async def read_image(self, image_id: str) -> bytes:
        row = await self._row(image_id)
        return await asyncio.to_thread(self.storage.get, row["image_key"])

    async def has_image_file(self, image_id: str) -> bool:
        """Whether the image has a row and its file is still there (cheap: no bytes read)."""
        row = await self.index.get(image_id)
        return row is not None and await asyncio.to_thread(self.storage.exists, row["image_key"])

    # ---- updates ------------------------------------------------------------------------------

    async def set_label(self, image_id: str, label: str, label_source: dict) -> ImageMetadata:
        """A person's (or reviewer's) label: recorded with who and when, in file and index."""
        if label not in LABELS:
            raise ValueError(f"label {label!r} is not one of {', '.join(LABELS)}")
        source = {"at": iso(utc_now()), **label_source}
        return await self._edit(
            image_id,
            lambda d: d.update(label=label, label_source=source),
            label=label,
            person_label=person_label(source),
        )

    async def set_score(self, image_id: str, confidence: float, scorer: dict) -> ImageMetadata:
        """A model's P(ai): stored as confidence; the label is never touched."""
        if not 0.0 <= float(confidence) <= 1.0:
            raise ValueError(f"confidence {confidence!r} must be between 0 and 1")
        scored_by = {"at": iso(utc_now()), **scorer}
        return await self._edit(
            image_id,
            lambda d: d.update(confidence=float(confidence), scored_by=scored_by),
            confidence=float(confidence),
            scorer=scorer_json(scorer),
        )

    async def index_scorer(self, image_id: str, scored_by: dict) -> None:
        """Copy a metadata file's ``scored_by`` into the index: rows scored before it had the column."""
        await self.index.update(image_id, scorer=scorer_json(scored_by))

    async def _edit(self, image_id: str, change: Callable[[dict], None], **index_values) -> ImageMetadata:
        """Read-modify-write of one image's metadata file and index row, never losing a concurrent edit.

        One host (SQLite): a process lock plus a file lock under DATASET_DIR. Shared database
        (PostgreSQL, several hosts): the row's ``SELECT ... FOR UPDATE`` is held from reading the
        file until the row is updated and committed, so edits of one image queue across hosts.
        """
        if not self.index.shared:
            async with self._metadata_update():
                doc = await self._rewrite_meta(image_id, change)
                if index_values:
                    await self.index.update(image_id, **index_values)
            return cast(ImageMetadata, doc)  # the file's JSON object, as written back
        async with self.index.locked_row(image_id) as (conn, row):
            if row is None:
                raise UnknownImage(f"no image with id {image_id!r}")
            doc = read_metadata(await asyncio.to_thread(self.storage.get, row["meta_key"]), row["meta_key"])
            change(doc)
            await asyncio.to_thread(self.storage.put, row["meta_key"], json_bytes(doc))
            if index_values:
                await conn.execute(update(images).where(images.c.id == image_id).values(**index_values))
        return cast(ImageMetadata, doc)  # the file's JSON object, as written back

    @contextlib.asynccontextmanager
    async def _metadata_update(self):
        """Exclusive read-modify-write of metadata, within this process and across processes."""
        async with self._meta_lock:
            lock = FileLock(self._meta_lock_path)
            lock.open()
            try:
                await asyncio.to_thread(lock.acquire)
                yield
            finally:
                lock.release()

    async def _rewrite_meta(self, image_id: str, change) -> dict:
        row = await self._row(image_id)
        doc = read_metadata(await asyncio.to_thread(self.storage.get, row["meta_key"]), row["meta_key"])
        change(doc)
        await asyncio.to_thread(self.storage.put, row["meta_key"], json_bytes(doc))
        return doc

    async def _row(self, image_id: str) -> dict:
        row = await self.index.get(image_id)
        if row is None:
            raise UnknownImage(f"no image with id {image_id!r}")
        return row

    async def check(
        self, repair: bool = False, force: bool = False, rebuild_index: bool = False
    ) -> CheckReport:
        """Drift report (dataset/check.py); ``force`` also treats files younger than a few minutes
        as orphans and lifts the bound on destructive repair."""
        from dataset.check import check_dataset

        return await check_dataset(self, repair, force, rebuild_index=rebuild_index)


def _near_duplicate(near: NearMatch) -> IngestOutcome:
    return IngestOutcome(
        "near_duplicate",
        id=near.id,
        distance=near.distance,
        message=f"within {near.distance} bits of image {near.id}",
    )


def _same_or_near(a: ImageInfo, b: ImageInfo, max_distance: int) -> bool:
    return a.sha256 == b.sha256 or (max_distance > 0 and (a.phash ^ b.phash).bit_count() <= max_distance)


def _duplicate(existing_id: str) -> IngestOutcome:
    return IngestOutcome("duplicate", id=existing_id, message=f"identical to image {existing_id}")


def build_metadata(given: dict, image_id: str, now: datetime, info: ImageInfo) -> dict[str, Any]:
    """The metadata schema (docs/dataset.md) plus the given extra fields and image facts."""
    doc: dict[str, Any] = {
        "id": image_id,
        "source": str(given.get("source") or "unknown"),
        "label": given["label"],
        "confidence": _confidence(given.get("confidence")),
        "timestamp": iso(now),
        "hash": info.sha256,
        "attribution": given.get("attribution") or {},
        "api_data": given.get("api_data") or {},
    }
    doc["generator"] = generator_for(given)
    if (hint := group_hint_for(given)) is not None:
        doc["group_hint"] = hint
    extras = {k: v for k, v in given.items() if k not in doc}
    image = {"format": info.format, "width": info.width, "height": info.height, "phash": f"{info.phash:016x}"}
    doc.update({k: v for k, v in image.items() if k not in extras}, **extras)
    return doc


def _confidence(value: object) -> float | None:
    """A score as a number, or None when it is not one (NaN and infinities included: JSON has no
    spelling for them, and no score is infinite)."""
    try:
        number = None if value is None else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def person_label(label_source: object) -> int:
    """The index's ``person_label``: 1 when the label is a person's (the review queue leaves it alone)."""
    return int(isinstance(label_source, dict) and label_source.get("kind") == "person")


def index_row(doc: dict, info: ImageInfo, keys: tuple[str, str], data: bytes | None = None) -> dict:
    facts = {} if data is None else {"size_bytes": len(data), "has_exif": int(has_exif(data))}
    return dict(
        **facts,
        generator=doc.get("generator"),
        group_hint=doc.get("group_hint"),
        id=doc["id"],
        sha256=info.sha256,
        phash=info.phash,
        label=doc["label"],
        person_label=person_label(doc.get("label_source")),
        confidence=doc.get("confidence"),
        scorer=scorer_json(doc.get("scored_by")),
        source=doc["source"],
        image_key=keys[0],
        meta_key=keys[1],
        format=info.format,
        width=info.width,
        height=info.height,
        created_at=doc["timestamp"],
    )


def load_ingest_libraries() -> None:
    """Load what validating and looking up the first image would load (scipy's DCT under imagehash,
    faiss), for a process that then wants its start-up done (``exposr-trainer scrape``)."""
    from dataset.images import phash_int
    from dataset.nearindex import NearIndex

    phash_int(Image.new("RGB", (32, 32)))
    NearIndex()


async def run_check(
    settings: Settings, repair: bool = False, force: bool = False, rebuild_index: bool = False
) -> CheckReport:
    """Entry point for `exposr-trainer check [--rebuild-index] [--repair] [--force]`: a rebuild (or
    repair) of an index that cannot be read moves the damaged file aside and starts a fresh one."""
    moved = None
    try:
        dm = await DatasetManager(settings).open()
    except IndexUnusable:
        if not (repair or rebuild_index):
            raise
        moved = move_index_aside(settings.db_url)
        dm = await DatasetManager(settings).open()
    try:
        report = await dm.check(repair, force, rebuild_index=rebuild_index)
    finally:
        await dm.close()
    if moved:
        report["index_moved_aside"] = str(moved)
    return report


async def verify_dataset(settings: Settings) -> None:
    """Start-up check: IndexUnusable when the index cannot be read, or has lost its rows while the
    metadata files remain (the service would otherwise show an empty dataset)."""
    async with DatasetManager(settings) as dm:
        await dm.verify()


def move_index_aside(db_url: str) -> Path:
    """Rename a damaged SQLite index (and its -wal/-shm files) to ``<name>.corrupt-<time>``."""
    path = sqlite_path(db_url)
    if path is None:
        raise IndexUnusable(
            f"the dataset index {describe_db(db_url)} cannot be read; restore the "
            "database from a backup or point DATABASE_URL at an empty one, then run "
            "`exposr-trainer check --rebuild-index`"
        )
    target = path.with_name(f"{path.name}.corrupt-{utc_now():%Y%m%dT%H%M%SZ}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(target.with_name(target.name + suffix))
    log.warning("moved the unreadable index %s aside to %s", path, target)
    return target
