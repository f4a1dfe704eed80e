"""The one source registry, and the scrape run: every enabled source, ingested as it arrives.

To add a source, write ``scraper/mysource_fetcher.py`` (a ``BaseFetcher``), add one line to
``FETCHERS`` below, and an entry to ``sources.yaml`` (docs/sources.md, "Adding a source").

``FetcherManager.run()`` runs the enabled sources side by side on one shared ``httpx.AsyncClient``;
a source that is skipped (no key) or fails never stops the others. Downloaded images are handed to
``DatasetManager.ingest_many`` in batches of what has arrived (at most INGEST_BATCH), so memory
holds a batch or two of images at most.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import httpx

from config.errors import ConfigError, SourceUnavailable
from config.progress import Progress
from config.settings import Settings
from config.sources import SourceConfig, SourcesFile, load_sources
from scraper.base_fetcher import BaseFetcher, source_options
from scraper.civitai_fetcher import CivitaiFetcher
from scraper.folder_fetcher import FolderFetcher
from scraper.http import RetryPolicy, Sleep, SourceHttp, bucket_for, make_client
from scraper.pexels_fetcher import PexelsFetcher
from scraper.report import (
    ScrapeReport,
    SourceReport,
    format_report_table,
    note_storage_errors,
    overall_status,
    totals,
)
from scraper.unsplash_fetcher import UnsplashFetcher

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from dataset.images import ImageInfo
    from dataset.manager import DatasetManager, IngestOutcome

__all__ = [
    "FETCHERS",
    "FetcherManager",
    "format_report_table",
    "get_fetcher_class",
    "known_source_names",
    "run_scrape",
]

logger = logging.getLogger(__name__)

# Images ingested together at most (DatasetManager.ingest_many): enough to spread the fixed costs of
# a batch (catch-up query, transaction, folder fsyncs) to well under a millisecond per image, while a
# batch's bytes (at most this many downloads of UPLOAD_MAX_BYTES) stay a modest amount of memory.
INGEST_BATCH = 32
INGEST_PIPELINE = 2  # batches being ingested at once (see FetcherManager._pump)

# An image from a source, its metadata and its validation (started as it arrived)
Arrival = tuple[bytes, dict, "asyncio.Future[ImageInfo | IngestOutcome]"]


FETCHERS: dict[str, type[BaseFetcher[Any]]] = {
    "unsplash": UnsplashFetcher,
    "pexels": PexelsFetcher,
    "civitai": CivitaiFetcher,
    "folder": FolderFetcher,
}


def get_fetcher_class(name: str) -> type[BaseFetcher]:
    try:
        return FETCHERS[name]
    except KeyError:
        raise KeyError(f"unknown source {name!r}; known sources: {', '.join(sorted(FETCHERS))}") from None


def known_source_names() -> list[str]:
    return sorted(FETCHERS)


def validate_sources_file(settings: Settings) -> SourcesFile:
    """``settings.sources_config`` checked at start-up: registered names, each entry's options
    (ConfigError naming the file, the entry and the field otherwise)."""
    return load_sources(settings.sources_config, FETCHERS)


class FetcherManager:
    def __init__(
        self,
        settings: Settings,
        sources: SourcesFile,
        dataset: DatasetManager,
        client: httpx.AsyncClient | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        retry: RetryPolicy | None = None,
        download_concurrency: int = 4,
        rate_engine: AsyncEngine | None = None,
    ):
        """``rate_engine``: the database replicas share (PostgreSQL), where the sources' token
        buckets live (``rate_buckets``); None keeps them in this process."""
        self.settings = settings
        self.rate_engine = rate_engine
        self.sources = sources
        self.dataset = dataset
        self.client = client
        self.sleep = sleep  # injectable so tests never really wait
        self.retry = retry or RetryPolicy()
        self.download_concurrency = download_concurrency

    async def run(self, progress: Progress | None = None) -> ScrapeReport:
        """Scrape every enabled source; returns {"sources": {key: report}, "totals": {...}, "duration_s"}."""
        started = time.monotonic()
        client = self.client or make_client()
        try:
            entries = _unique_keys(self.sources.enabled())
            reports = await asyncio.gather(
                *(self._run_source(key, cfg, client, progress) for key, cfg in entries)
            )
        finally:
            if self.client is None:  # close only what this run created
                await client.aclose()
        by_key = {key: r.to_dict() for (key, _), r in zip(entries, reports, strict=True)}
        result: ScrapeReport = {
            "sources": by_key,
            "totals": totals(list(by_key.values())),
            "status": overall_status(list(by_key.values())),
            "duration_s": round(time.monotonic() - started, 3),
        }
        logger.info("scrape finished in %.1fs: %s", result["duration_s"], result["totals"])
        return result

    async def _run_source(
        self, key: str, cfg: SourceConfig, client: httpx.AsyncClient, progress: Progress | None
    ) -> SourceReport:
        report = SourceReport(source=key, label=cfg.label)
        started = time.monotonic()
        fetcher: BaseFetcher | None = None
        try:
            fetcher = self._build(cfg, client)
            fetcher.check_available()
            await self._pump(fetcher, report, progress)
        except SourceUnavailable as exc:
            report.status, report.message = "skipped", str(exc)
        except Exception as exc:  # noqa: BLE001 - a broken (user-written) source must not stop the others
            report.status, report.message = "failed", f"{type(exc).__name__}: {exc}"
            report.errors["source_failed"] += 1
            logger.exception("source %s failed", key)
        finally:
            if fetcher is not None:
                if fetcher.stop_reason and report.status == "ok":
                    report.status, report.message = "stopped", fetcher.stop_reason
                report.rejected.update(fetcher.rejected)
                report.errors.update(fetcher.errors)
                report.api_requests = fetcher.http.stats.api_requests
                report.retries = fetcher.http.stats.retries
            note_storage_errors(report)
            report.duration_s = time.monotonic() - started
        (logger.warning if report.status != "ok" else logger.info)("%s", report.summary())
        # A last event per source, so a progress display can show a source that was skipped or stopped.
        _notify(
            progress,
            {"source": key, "done": report.downloaded, "stored": report.stored, "status": report.status},
        )
        return report

    def _build(self, cfg: SourceConfig, client: httpx.AsyncClient) -> BaseFetcher:
        cls = get_fetcher_class(cfg.name)
        http = SourceHttp(
            client,
            self._bucket(cfg),
            max_bytes=self.settings.upload_max_bytes,
            retry=self.retry,
            sleep=self.sleep,
            is_rate_limited=cls.is_rate_limited,
            retry_rate_limited=cls.retry_rate_limited,
            download_concurrency=source_options(cls.options_model, cfg).download_concurrency
            or self.download_concurrency,
        )
        return cls(config=cfg, settings=self.settings, http=http)

    def _bucket(self, cfg: SourceConfig):
        """The source's rate limit: in the database when replicas share it (PostgreSQL), else in-process."""
        if self.rate_engine is not None:
            from scraper.shared_rate import SharedTokenBucket

            return SharedTokenBucket(self.rate_engine, cfg.name, cfg.rate_limit_per_hour)
        return bucket_for(cfg.name, cfg.rate_limit_per_hour)

    async def _pump(self, fetcher: BaseFetcher, report: SourceReport, progress: Progress | None) -> None:
        """Downloads (the fetcher's iterator) run beside ingest, at most ``fetcher.read_ahead`` images
        ahead, each validated as it arrives (DatasetManager.validate). A network source (read_ahead
        1) is ingested image by image as it arrives; a local folder in batches of up to INGEST_BATCH
        that pay for the index round trips and durability once (DatasetManager.ingest_many)."""
        total = await asyncio.to_thread(fetcher.planned_limit)  # the folder source walks its folder
        name = fetcher.config.name
        _notify(progress, {"source": report.source, "done": 0, "total": total, "stored": 0})
        # on_stored hooks (Unsplash's download event) run beside the next downloads, not before them.
        # Only the unfinished ones are held: one task per stored image would grow with the run.
        hooks: set[asyncio.Task] = set()
        # each image with its validation, started as it arrives (DatasetManager.validate): the decode
        # threads work on the next images while a batch's files and rows are written
        arrived: asyncio.Queue[Arrival | None] = asyncio.Queue()
        room = asyncio.Semaphore(max(1, fetcher.read_ahead))  # fetched, not yet ingested
        batch_waiting = asyncio.Event()  # a whole batch, or the end, is in `arrived`
        end_queued = False

        def finished(task: asyncio.Task) -> None:
            hooks.discard(task)
            if not task.cancelled() and isinstance(task.exception(), Exception):
                report.errors[f"on_stored_{type(task.exception()).__name__}"] += 1

        async def download() -> None:
            nonlocal end_queued
            images = aiter(fetcher.iter_images(total))
            try:
                while True:
                    await room.acquire()
                    try:
                        data, metadata = await anext(images)
                    except StopAsyncIteration:
                        break
                    metadata.setdefault("source", name)
                    metadata.setdefault("label", fetcher.config.label)
                    arrived.put_nowait((data, metadata, self.dataset.validate(data, metadata)))
                    if arrived.qsize() >= INGEST_BATCH:
                        batch_waiting.set()
            finally:
                await arrived.put(None)  # the end, also after a failure (re-raised by `await downloads`)
                end_queued = True
                batch_waiting.set()

        async def settle(batch: list[Arrival], ingest: asyncio.Task[list[bool]]) -> None:
            for (_data, metadata, _checked), stored in zip(batch, await ingest, strict=True):
                if stored:
                    hook = asyncio.ensure_future(fetcher.on_stored(metadata))
                    hooks.add(hook)
                    hook.add_done_callback(finished)
                room.release()
            _notify(
                progress,
                {"source": report.source, "done": report.downloaded, "total": total, "stored": report.stored},
            )

        downloads = asyncio.create_task(download())
        # Up to INGEST_PIPELINE batches in flight: one's files and rows are written while the next
        # is checked, and the decode threads validate what arrives meanwhile, so a folder import
        # keeps the cores busy. A further batch starts as soon as a whole one is waiting (or the
        # source has ended), not when the oldest is done; so batches stay full. Racing batches are
        # safe: the index decides exact duplicates, the near re-check after the rows the near ones.
        ingesting: deque[tuple[list[Arrival], asyncio.Task[list[bool]]]] = deque()

        def whole() -> bool:
            return arrived.qsize() >= INGEST_BATCH or end_queued

        try:
            ended = False  # the end of the downloads was taken from the queue
            while not ended or ingesting:
                if ingesting:
                    if not ended and len(ingesting) < INGEST_PIPELINE and not whole():
                        batch_waiting.clear()  # no await since whole(): the source cannot run between
                        waiter = asyncio.ensure_future(batch_waiting.wait())
                        try:  # the oldest batch done, or a whole new one waiting: whichever is first
                            await asyncio.wait((ingesting[0][1], waiter), return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            waiter.cancel()
                    if ended or len(ingesting) >= INGEST_PIPELINE or not whole():
                        await settle(*ingesting.popleft())  # also frees room for the source to read ahead
                        continue
                batch: list[Arrival] = []
                item = await arrived.get()
                while item is not None:
                    batch.append(item)
                    if len(batch) == INGEST_BATCH or arrived.empty():
                        break
                    item = arrived.get_nowait()
                ended = item is None
                if batch:
                    report.downloaded += len(batch)
                    ingesting.append((batch, asyncio.create_task(self._ingest(batch, report))))
            await downloads  # a source's failure is raised here, after what it downloaded was stored
            await asyncio.gather(*hooks, return_exceptions=True)  # `finished` counts the failures
        finally:
            downloads.cancel()
            for batch, task in ingesting:
                task.cancel()
                for *_item, checked in batch:  # a batch whose task never ran still holds its validations
                    checked.cancel()
            while not arrived.empty():  # a failure left images unbatched: their decodes are not wanted
                if (left := arrived.get_nowait()) is not None:
                    left[2].cancel()
            for task in list(hooks):
                task.cancel()

    async def _ingest(self, batch: list[Arrival], report: SourceReport) -> list[bool]:
        """Hand a batch to the dataset and count the outcomes; True for each image that was stored."""
        try:
            outcomes = await self.dataset.ingest_many(
                [(data, metadata) for data, metadata, _checked in batch],
                [checked for *_item, checked in batch],
            )
        except Exception as exc:  # noqa: BLE001 - a storage fault is counted per image; the run goes on
            report.errors[f"ingest_{type(exc).__name__}"] += len(batch)
            logger.warning("%s: ingest of %d images failed: %s", report.source, len(batch), exc)
            return [False] * len(batch)
        for outcome in outcomes:
            status = outcome.status
            if status == "stored":
                report.stored += 1
            elif status == "duplicate":
                report.duplicates += 1
            elif status == "near_duplicate":
                report.near_duplicates += 1
            elif status == "rejected":
                report.rejected[outcome.reason or "rejected"] += 1
            else:
                report.errors[f"ingest_{outcome.reason or status}"] += 1
        return [outcome.status == "stored" for outcome in outcomes]


def _notify(progress: Progress | None, event: dict) -> None:
    if progress is not None:
        progress(event)


def _unique_keys(entries: list[SourceConfig]) -> list[tuple[str, SourceConfig]]:
    """Report keys: the source name, with ``#2``, ``#3`` ... when a name is configured twice."""
    seen: dict[str, int] = {}
    keyed = []
    for cfg in entries:
        seen[cfg.name] = seen.get(cfg.name, 0) + 1
        keyed.append((cfg.name if seen[cfg.name] == 1 else f"{cfg.name}#{seen[cfg.name]}", cfg))
    return keyed


async def run_scrape(
    settings: Settings,
    progress: Progress | None = None,
    client: httpx.AsyncClient | None = None,
    only: Collection[str] | None = None,
) -> ScrapeReport:
    """Load ``settings.sources_config``, open the dataset, scrape every enabled source (job runner, CLI);
    ``only``: just the enabled entries with these names (ConfigError for a name that is not one)."""
    # Deferred: the registry (used to validate sources.yaml) stays importable without the database layer.
    from dataset.manager import DatasetManager

    sources = load_sources(settings.sources_config, FETCHERS)
    if only:
        sources = only_sources(sources, set(only), settings)
    async with DatasetManager(settings) as dataset:
        manager = FetcherManager(settings, sources, dataset, client, rate_engine=dataset.shared_engine)
        return await manager.run(progress)


def only_sources(sources: SourcesFile, names: set[str], settings: Settings) -> SourcesFile:
    """The enabled entries named in ``names``; ConfigError naming the enabled ones for a name that is not."""
    enabled = {s.name for s in sources.enabled()}
    if missing := names - enabled:
        raise ConfigError(
            f"--source {', '.join(sorted(missing))}: no enabled source of that name in "
            f"{settings.sources_config}; enabled: {', '.join(sorted(enabled)) or 'none'}"
        )
    return sources.model_copy(update={"sources": [s for s in sources.sources if s.name in names]})
