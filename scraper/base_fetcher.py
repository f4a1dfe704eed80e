"""The source contract (docs/sources.md, "Adding a source") and what every fetcher shares.

A source implements one iteration method, ``iter_images(limit)`` (an async generator of
``(bytes, metadata)``), and ``get_source_name()``, as the guide in docs/sources.md shows; the scrape
feeds what it yields to the dataset as it arrives (memory stays bounded). A source may override
``on_stored`` (Unsplash reports the download).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, ClassVar, Generic, TypeVar, cast

import httpx

from config.errors import OptionsInvalid, SourceUnavailable
from config.settings import Settings
from config.sources import SourceConfig, SourceOptions, read_options
from scraper.errors import FetchError, RateLimited
from scraper.http import SourceHttp, decode_json, default_is_rate_limited

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
OptionsT = TypeVar("OptionsT", bound=SourceOptions)


def source_options(model: type[SourceOptions], config: SourceConfig) -> SourceOptions:
    """The entry's options as ``model``, or SourceUnavailable naming each bad option and its rule.

    ``load_sources`` already refused such a file at start-up; this covers entries built in code."""
    try:
        return read_options(model, config)
    except OptionsInvalid as exc:
        raise SourceUnavailable(
            "; ".join(
                f"option {p.key!r} of source '{config.name}' in sources.yaml"
                f"{' ' if p.message.startswith('must') else ': '}{p.detail}"
                for p in exc.problems
            )
        ) from exc


class BaseFetcher(ABC, Generic[OptionsT]):
    """One source of labelled images.

    The manager builds it as ``cls(config=..., settings=..., http=...)``: ``config`` is the
    `sources.yaml` entry, ``http`` the source's rate-limited view of the shared client.
    ``options_model`` declares the source's own options (a ``SourceOptions`` subclass, checked by
    ``load_sources`` at start-up); ``self.options`` holds them, typed.
    """

    #: The pydantic model of this source's options beyond the common fields.
    options_model: ClassVar[type[SourceOptions]] = SourceOptions

    #: Settings field that must be set for the source to run (e.g. "pexels_api_key"), or None.
    required_key: str | None = None
    #: Which failed responses mean "rate limited" (retried with backoff) for this source's API.
    is_rate_limited = staticmethod(default_is_rate_limited)
    #: Whether a rate-limited answer without Retry-After is retried at all (see SourceHttp).
    retry_rate_limited = True
    #: API statuses that will not change for the rest of the run (a rejected key): they stop the source.
    fatal_statuses: frozenset[int] = frozenset()
    #: How many images may be fetched ahead of the dataset's ingest. 1 (the default): the next one is
    #: fetched once the last was stored and its ``on_stored`` hook started, so an answer that ends
    #: the source (a quota used up by a download event) stops it before another request. A source
    #: whose reads cost no API quota (a local folder) reads ahead so ingest can take whole batches.
    read_ahead: ClassVar[int] = 1

    def __init__(self, config: SourceConfig, settings: Settings, http: SourceHttp):
        self.config = config
        self.settings = settings
        self.http = http
        # Per-item outcomes the fetcher decides itself (filtered items, failed downloads).
        self.rejected: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        # Set when the source gave up early (rate limit, quota, a rejected key); the report shows it.
        self.stop_reason: str | None = None
        self._options: OptionsT | None = None

    @property
    def options(self) -> OptionsT:
        """This entry's options, validated by ``options_model`` (SourceUnavailable when bad)."""
        if self._options is None:
            self._options = cast(OptionsT, source_options(self.options_model, self.config))
        return self._options

    @abstractmethod
    def iter_images(self, limit: int) -> AsyncIterator[tuple[bytes, dict]]:
        """Up to ``limit`` images as (bytes, metadata) pairs, one by one as they arrive (an async
        generator); metadata as docs/dataset.md describes."""

    @abstractmethod
    def get_source_name(self) -> str:
        """The name this source is registered under in ``FETCHERS``."""

    async def spread_over_queries(
        self, limit: int, images_for: Callable[[str, int], AsyncIterator[tuple[bytes, dict]]]
    ) -> AsyncIterator[tuple[bytes, dict]]:
        """Each configured query in turn, up to ``limit_per_query`` images each, until ``limit``
        images or the source stops; ``images_for(query, wanted)`` yields one query's images."""
        for query in self.config.queries:
            if limit <= 0 or self.stopped:
                return
            async for item in images_for(query, min(limit, self.config.limit_per_query)):
                limit -= 1
                yield item

    async def on_stored(self, metadata: dict) -> None:
        """Called once for each image the dataset stored (not for duplicates or rejects)."""
        return None

    def check_available(self) -> None:
        """Raise SourceUnavailable with a message for a person when the source cannot run."""
        if self.required_key and getattr(self.settings, self.required_key, None) is None:
            raise SourceUnavailable(
                f"{self.required_key.upper()} is not set; skipping source '{self.get_source_name()}' "
                f"(set it in the environment or .env, or disable the source in "
                f"{self.settings.sources_config})"
            )
        self.check_options()

    def check_options(self) -> None:
        """Read the per-source options once, so a bad value skips the source before any request."""
        self.options  # noqa: B018 - read to validate

    def planned_limit(self) -> int:
        """How many images one run asks for: limit_per_query for each query (or once without)."""
        return self.config.limit_per_query * max(1, len(self.config.queries))

    def key_variable(self) -> str:
        """The environment variable that holds the source's key, for messages."""
        return (self.required_key or f"{self.get_source_name()}_api_key").upper()

    def secret(self) -> str:
        """The source's key in clear, for a request header only."""
        value = getattr(self.settings, self.required_key or "", None)
        return value.get_secret_value() if value is not None else ""

    def base_metadata(self) -> dict[str, Any]:
        base = {"source": self.get_source_name(), "label": self.config.label}
        if self.config.generator:  # sources.yaml says what made these images (held-out generators)
            base["generator"] = self.config.generator
        return base

    def count_error(self, kind: str, message: str) -> None:
        self.errors[kind] += 1
        logger.warning("%s: %s", self.get_source_name(), message)

    def stop(self, reason: str) -> None:
        """End this source for the run: no further API requests; the report says why."""
        if self.stop_reason is None:
            self.stop_reason = reason
            logger.warning("%s: stopping for this run: %s", self.get_source_name(), reason)

    def stop_rate_limited(self, exc: RateLimited) -> None:
        self.stop(f"rate limited by the API (HTTP {exc.status}); the next scrape continues")

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def count_rejected(self, reason: str, message: str) -> None:
        self.rejected[reason] += 1
        logger.info("%s: %s", self.get_source_name(), message)

    async def get_page(
        self, url: str, params: dict[str, Any], headers: dict[str, str], what: str
    ) -> Any | None:
        """One API page's JSON, or None with the failure counted; a rate limit that outlasted the
        retries, or a status in ``fatal_statuses``, also stops the source for the run."""
        try:
            response = await self.http.api_get(url, params, headers)
            self.note_quota(response)
            return decode_json(response)
        except RateLimited as exc:
            self.count_error(exc.kind, f"{what}: {exc.message}")
            self.stop_rate_limited(exc)
        except FetchError as exc:
            self.count_error(exc.kind, f"{what}: {exc.message}")
            if exc.status in self.fatal_statuses:
                self.stop(f"{exc.message}; check {self.key_variable()}")
            elif exc.kind == "dns":
                self.stop(exc.message)
        return None

    async def get_list_page(
        self, url: str, params: dict[str, Any], headers: dict[str, str], what: str, list_key: str
    ) -> dict | None:
        """Like get_page, for answers that must be an object holding a list under ``list_key``;
        any other shape is counted as ``missing_fields`` and gives None."""
        body = await self.get_page(url, params, headers, what)
        if body is not None and not (isinstance(body, dict) and isinstance(body.get(list_key), list)):
            self.count_error("missing_fields", f"{what}: no {list_key!r} list")
            return None
        return body

    def note_quota(self, response: httpx.Response) -> None:
        """Read the API's quota headers from a successful answer (sources that have them)."""
        return None

    async def download_item(self, url: str, metadata: dict) -> tuple[bytes, dict] | None:
        """Download one listed image; a failure is counted and gives None, never an exception."""
        try:
            return await self.http.download(url), metadata
        except FetchError as exc:
            self.count_error(f"download_{exc.kind}", exc.message)
            if exc.kind == "dns":
                self.stop(exc.message)
            return None

    async def download_all(self, listed: list[tuple[str, dict]]) -> AsyncIterator[tuple[bytes, dict]]:
        """Download (url, metadata) pairs with the source's bounded concurrency."""
        async for result in bounded_map(
            listed, lambda pair: self.download_item(*pair), self.http.download_concurrency
        ):
            if result is not None:
                yield result

    async def collect(self, limit: int) -> list[tuple[bytes, dict]]:
        """All that ``iter_images`` yields, as a list (for a look at a source's images)."""
        return [item async for item in self.iter_images(limit)]


async def bounded_map(
    items: Iterable[T], func: Callable[[T], Awaitable[R]], concurrency: int
) -> AsyncIterator[R]:
    """Run ``func`` over ``items`` with at most ``concurrency`` in flight, yielding in completion order.

    A new call starts only after a result was handed on, so at most ``concurrency`` results
    (downloaded images) are held at any time.
    """
    pending: set[asyncio.Task[R]] = set()
    iterator = iter(items)
    try:
        for item in iterator:
            pending.add(asyncio.ensure_future(func(item)))
            if len(pending) >= concurrency:
                break
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                yield task.result()
                nxt = next(iterator, None)
                if nxt is not None:
                    pending.add(asyncio.ensure_future(func(nxt)))
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
