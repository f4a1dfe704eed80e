"""The one source registry, and the scrape run: every enabled source, ingested as it arrives.

To add a source, write ``scraper/mysource_fetcher.py`` (a ``BaseFetcher``), add one line to
``FETCHERS`` below, and an entry to ``sources.yaml`` (docs/sources.md, "Adding a source").

``FetcherManager.run()`` runs the enabled sources side by side on one shared ``httpx.AsyncClient``;
a source that is skipped (no key) or fails never stops the others. Downloaded images are fed to
``DatasetManager.ingest_stream`` (which validates, batches and stores them, reading at most the
source's ``read_ahead`` images ahead); the scrape only counts the outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Collection
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

PROGRESS_EVERY = 32  # a progress event at least this often (images), and whenever ingest caught up


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
        """Feed the fetcher's images to the dataset's one door (DatasetManager.ingest_stream, which
        validates, reads ahead at most ``fetcher.read_ahead`` images and stores in batches) and count
        what comes back. A network source (read_ahead 1) fetches its next image only once the last
        one's outcome is in and its ``on_stored`` hook started; a local folder reads well ahead."""
        total = await asyncio.to_thread(fetcher.planned_limit)  # the folder source walks its folder
        name = fetcher.config.name
        _notify(progress, {"source": report.source, "done": 0, "total": total, "stored": 0})
        # on_stored hooks (Unsplash's download event) run beside the next downloads, not before them.
        # Only the unfinished ones are held: one task per stored image would grow with the run.
        hooks: set[asyncio.Task] = set()
        fed: deque[dict] = deque()  # the metadata of the images given and not yet answered, in order

        def finished(task: asyncio.Task) -> None:
            hooks.discard(task)
            if not task.cancelled() and isinstance(task.exception(), Exception):
                report.errors[f"on_stored_{type(task.exception()).__name__}"] += 1

        async def feed() -> AsyncIterator[tuple[bytes, dict]]:
            async for data, metadata in fetcher.iter_images(total):
                metadata.setdefault("source", name)
                metadata.setdefault("label", fetcher.config.label)
                fed.append(metadata)
                yield data, metadata

        try:
            stream = self.dataset.ingest_stream(feed(), read_ahead=fetcher.read_ahead)
            async with contextlib.aclosing(stream) as outcomes:
                async for outcome in outcomes:  # one per image, in the order they were fed
                    metadata = fed.popleft()
                    report.downloaded += 1
                    if _count(report, outcome):
                        hook = asyncio.ensure_future(fetcher.on_stored(metadata))
                        hooks.add(hook)
                        hook.add_done_callback(finished)
                    if not fed or report.downloaded % PROGRESS_EVERY == 0:  # caught up, or every so often
                        _notify(progress, _progress(report, total))
            await asyncio.gather(*hooks, return_exceptions=True)  # `finished` counts the failures
        finally:
            for task in list(hooks):
                task.cancel()


def _count(report: SourceReport, outcome: IngestOutcome) -> bool:
    """One image's outcome into the source's report; True when it was stored."""
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
    return status == "stored"


def _progress(report: SourceReport, total: int) -> dict:
    return {"source": report.source, "done": report.downloaded, "total": total, "stored": report.stored}


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
