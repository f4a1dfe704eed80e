"""HTTP plumbing shared by the fetchers: rate limits, retries, bounded downloads.

Exceptions: the fetch branch, drawn in ``scraper/errors.py`` (``FetchError``, ``RateLimited``,
``TryAgain``).

Callers catch ``FetchError`` per item or per page and count ``exc.kind``; nothing here logs a secret
(headers are never logged, URLs are logged without their query string).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from scraper.errors import FetchError, RateLimited, TryAgain

logger = logging.getLogger(__name__)

USER_AGENT = "ExposrTrainer/0.1 (+https://github.com/exposr/exposr-trainer; image dataset collector)"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")
Clock = Callable[[], float]


def make_client() -> httpx.AsyncClient:
    """The one shared client: TLS verification on, timeouts on every request, a descriptive UA."""
    return httpx.AsyncClient(
        timeout=DEFAULT_TIMEOUT,
        verify=True,
        follow_redirects=True,
        headers={"User-Agent": USER_AGENT},
    )


class TokenBucket:
    """At most ``per_hour`` requests an hour, with a burst of one minute's worth (at least one).

    Each caller takes its token at once, going into debt when the bucket is empty, and then
    sleeps until that debt is repaid: callers are served in order and no one polls. No lock is
    needed: asyncio runs one coroutine at a time and nothing awaits between reading and taking.
    ``per_hour == 0`` means no client-side limit.
    """

    def __init__(self, per_hour: int, clock: Clock = time.monotonic):
        self.clock = clock
        self.per_hour = per_hour
        self.capacity = max(1.0, per_hour / 60)
        self.tokens = self.capacity
        self.updated = clock()

    def set_rate(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self.capacity = max(1.0, per_hour / 60)
        self.tokens = min(self.tokens, self.capacity)

    async def acquire(self, sleep: Sleep) -> float:
        """Take one token, sleeping until it is ours; returns the seconds waited."""
        if self.per_hour <= 0:
            return 0.0
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_hour / 3600)
        self.updated = now
        self.tokens -= 1
        if self.tokens >= 0:
            return 0.0
        delay = -self.tokens * 3600 / self.per_hour
        await sleep(delay)
        return delay


# One bucket per source name for the whole process, so a scheduled and a manual scrape (or two
# fetchers of the same source) draw on the same hourly budget.
_BUCKETS: dict[str, TokenBucket] = {}


def bucket_for(source: str, per_hour: int) -> TokenBucket:
    bucket = _BUCKETS.get(source)
    if bucket is None:
        bucket = _BUCKETS[source] = TokenBucket(per_hour)
    elif bucket.per_hour != per_hour:
        bucket.set_rate(per_hour)
    return bucket


def reset_buckets() -> None:
    """Forget every bucket (tests; a process that reloads its sources)."""
    _BUCKETS.clear()


@dataclass
class RetryPolicy:
    attempts: int = 5  # total tries per request
    base_delay: float = 1.0  # first backoff, doubled each try, with full jitter
    max_delay: float = 60.0
    max_retry_after: float = 300.0  # a longer Retry-After gives up rather than stall the job

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """The wait before the next try: a Retry-After plus up to 1 s of jitter, else the backoff."""
        return retry_after + rng.uniform(0, 1) if retry_after is not None else self.backoff(attempt, rng)


async def retrying(
    policy: RetryPolicy,
    try_once: Callable[[int], Awaitable[T]],
    sleep: Sleep,
    on_retry: Callable[[Exception, int, float], None] | None = None,
) -> T:
    """``try_once(attempt)`` up to ``policy.attempts`` times: what it returns is the answer, what it
    raises ends the loop, except TryAgain, which waits and tries again (the last one's error is raised).
    The one retry loop of the scraper's HTTP and the labeler's Exposr-Core client."""
    for attempt in range(policy.attempts):
        try:
            return await try_once(attempt)
        except TryAgain as again:
            if attempt == policy.attempts - 1:
                raise again.error from again.__cause__
            if on_retry is not None:
                on_retry(again.error, attempt, again.wait)
            await sleep(again.wait)
    raise AssertionError("unreachable: the loop returns or raises")


@dataclass
class HttpStats:
    api_requests: int = 0
    downloads: int = 0
    retries: int = 0
    waited_s: float = 0.0
    last_headers: dict[str, str] = field(default_factory=dict)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def default_is_rate_limited(response: httpx.Response) -> bool:
    return response.status_code == 429


def _is_retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _dns_failure(exc: BaseException) -> str | None:
    """The resolver's message when ``exc`` (or what it wraps) is a name-resolution failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return str(current)
        current = current.__cause__ or current.__context__
    text = str(exc)
    markers = (
        "Name or service not known",
        "Temporary failure in name resolution",
        "nodename nor servname",
        "getaddrinfo failed",
        "No address associated with hostname",
    )
    return text if any(m in text for m in markers) else None


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host or _strip_query_safe(url)
    except httpx.InvalidURL:
        return _strip_query_safe(url)


def _strip_query(url: httpx.URL | str) -> str:
    return str(httpx.URL(str(url)).copy_with(query=None))


def _strip_query_safe(url: str) -> str:
    """For a URL httpx may refuse to parse: everything before the query string, kept short."""
    return url.split("?", 1)[0][:200]


ERROR_BODY_BYTES = 64 * 1024  # an error page is read this far, for the message only


async def _read_at_most(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of a streamed response's decoded body, and whether that was all of it."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        if size + len(chunk) > limit:
            chunks.append(chunk[: limit - size])
            return b"".join(chunks), False
        size += len(chunk)
        chunks.append(chunk)
    return b"".join(chunks), True


def _detached(response: httpx.Response, body: bytes) -> httpx.Response:
    """A closed-over copy of a streamed response with its already-decoded body: the encoding
    headers go, or httpx would decode the body a second time."""
    headers = [
        (k, v)
        for k, v in response.headers.multi_items()
        if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(response.status_code, headers=headers, content=body, request=response.request)


class SourceHttp:
    """One source's view of the shared client: its token bucket, retries, headers and size limit."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        bucket: TokenBucket,
        *,
        max_bytes: int,
        headers: dict[str, str] | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        is_rate_limited: Callable[[httpx.Response], bool] = default_is_rate_limited,
        retry_rate_limited: bool = True,
        download_concurrency: int = 4,
        rng: random.Random | None = None,
    ):
        self.client = client
        self.bucket = bucket
        self.max_bytes = max_bytes
        self.headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.is_rate_limited = is_rate_limited
        # False for an API whose limit is a whole window with no reset time (Unsplash): retrying
        # a rate-limited answer without Retry-After only spends requests that cannot succeed.
        self.retry_rate_limited = retry_rate_limited
        self.download_slots = asyncio.Semaphore(download_concurrency)
        self.download_concurrency = download_concurrency
        self.rng = rng or random.Random()
        self.stats = HttpStats()

    async def get_json(
        self, url: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        """GET an API URL (rate-limited, retried) and decode its JSON body."""
        response = await self._request(url, params, {**self.headers, **(headers or {})}, api=True)
        return decode_json(response)

    async def api_get(
        self, url: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """GET an API URL (rate-limited, retried) when the caller wants the response itself."""
        return await self._request(url, params, {**self.headers, **(headers or {})}, api=True)

    async def download(self, url: str) -> bytes:
        """Download image bytes (retried, not rate-limited: CDNs are not API quota), at most max_bytes.

        Only the User-Agent goes to the CDN: API keys never leave the API host.
        """
        async with self.download_slots:
            self.stats.downloads += 1
            response = await self._with_retries(url, lambda: self._stream_once(url))
            return response.content

    async def _request(self, url: str, params, headers, *, api: bool) -> httpx.Response:
        async def once() -> httpx.Response:
            if api:
                self.stats.waited_s += await self.bucket.acquire(self.sleep)
                self.stats.api_requests += 1
            response = await self.client.get(url, params=params, headers=headers)
            self.stats.last_headers = dict(response.headers)
            return response

        return await self._with_retries(url, once)

    async def _stream_once(self, url: str) -> httpx.Response:
        headers = {"User-Agent": self.headers["User-Agent"]}
        async with self.client.stream("GET", url, headers=headers) as response:
            if response.status_code >= 400:  # only its start is kept: enough for the message
                return _detached(response, (await _read_at_most(response, ERROR_BODY_BYTES))[0])
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise FetchError("too_large", f"{_strip_query(url)}: {declared} bytes > {self.max_bytes}")
            body, complete = await _read_at_most(response, self.max_bytes)
            if not complete:
                raise FetchError("too_large", f"{_strip_query(url)}: more than {self.max_bytes} bytes")
            return _detached(response, body)

    async def _with_retries(self, url: str, send: Callable[[], Awaitable[httpx.Response]]) -> Any:
        async def once(attempt: int) -> httpx.Response:
            try:
                response = await send()
            except httpx.TimeoutException as exc:
                raise TryAgain(
                    FetchError("timeout", f"{_strip_query(url)}: timed out ({exc!r})"),
                    self.retry.backoff(attempt, self.rng),
                ) from None
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:  # the same on every try
                raise FetchError("bad_url", f"{_strip_query_safe(url)}: not a usable URL ({exc})") from exc
            except httpx.DecodingError as exc:
                raise FetchError("bad_encoding", f"{_strip_query(url)}: undecodable body ({exc})") from exc
            except httpx.TooManyRedirects as exc:
                raise FetchError("too_many_redirects", f"{_strip_query(url)}: {exc}") from exc
            except httpx.TransportError as exc:
                if (dns := _dns_failure(exc)) is not None:  # retrying will not make a name resolve
                    raise FetchError(
                        "dns",
                        f"{_host(url)}: name resolution failed ({dns}); offline? check "
                        "the network and DNS, or the source's *_API_URL",
                    ) from exc
                raise TryAgain(
                    FetchError("connection", f"{_strip_query(url)}: connection failed ({exc!r})"),
                    self.retry.backoff(attempt, self.rng),
                ) from None
            if response.status_code < 400:
                return response
            error, wait = self._classify(url, response, attempt)
            if wait is None:
                raise error
            raise TryAgain(error, wait)

        return await retrying(self.retry, once, self.sleep, self._note_retry)

    def _note_retry(self, error: Exception, attempt: int, wait: float) -> None:
        self.stats.retries += 1
        logger.info("%s; retry %d/%d in %.1fs", error, attempt + 1, self.retry.attempts - 1, wait)

    def _classify(self, url: str, response: httpx.Response, attempt: int) -> tuple[FetchError, float | None]:
        """The error for a failed response and how long to wait before retrying (None: don't)."""
        status = response.status_code
        where = f"{_strip_query(url)}: HTTP {status}"
        rate_limited = self.is_rate_limited(response)
        if not (rate_limited or _is_retryable(status)):
            return FetchError(f"http_{status}", f"{where}: {error_text(response)}", status), None
        error = (
            RateLimited(f"{where}: rate limited", status)
            if rate_limited
            else FetchError("server_error", f"{where}: {error_text(response)}", status)
        )
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is not None and retry_after > self.retry.max_retry_after:
            error.message += f" (Retry-After {retry_after:.0f}s is longer than this run waits)"
            return error, None
        if retry_after is None and rate_limited and not self.retry_rate_limited:
            return error, None
        return error, self.retry.delay(attempt, self.rng, retry_after)


def decode_json(response: httpx.Response) -> Any:
    """The JSON body, or FetchError('html_page' / 'bad_json') saying what came back instead."""
    ctype = response.headers.get("Content-Type", "")
    if "html" in ctype or response.content.lstrip()[:1] == b"<":
        raise FetchError("html_page", f"{_strip_query(response.url)}: got an HTML page instead of JSON")
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FetchError("bad_json", f"{_strip_query(response.url)}: malformed JSON ({exc})") from exc


def error_text(response: httpx.Response) -> str:
    """A short, safe description of an error body: the API's message, or the start of the text."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = response.text.strip()
        return "HTML error page" if text[:1] == "<" else (text[:200] or "(empty body)")
    if isinstance(body, dict):
        for key in ("error", "message", "errors"):
            if body.get(key):
                value = body[key]
                return "; ".join(map(str, value)) if isinstance(value, list) else str(value)[:200]
    return str(body)[:200]
