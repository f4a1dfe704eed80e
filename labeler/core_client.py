"""Exposr-Core's analyze endpoint as a scorer: one image in, P(ai-generated) out.

Request: ``POST {EXPOSR_CORE_ENDPOINT}`` with a multipart ``file`` part holding the original bytes.
Answer: JSON with the probability at ``EXPOSR_CORE_SCORE_FIELD`` (a dotted path such as
``result.ai_probability``) and, optionally, a ``model_version`` (or ``version``) string at the top level.

Retries follow the source APIs' policy (``scraper.http.RetryPolicy``): exponential backoff with
full jitter, ``Retry-After`` honoured (a longer one than the policy waits gives up at once),
bounded attempts.

Exceptions: the core branch, drawn in ``labeler/errors.py`` (``CoreError`` is a ``FetchError``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import dataclass

import httpx

from config.settings import Settings
from labeler.errors import CoreBadAnswer, CoreError, CoreUnavailable
from scraper.errors import TryAgain
from scraper.http import RetryPolicy, Sleep, parse_retry_after, retrying

log = logging.getLogger(__name__)

# Core is a sibling service, not a rate-limited public API: shorter waits than the sources'.
CORE_RETRY = RetryPolicy(attempts=4, base_delay=0.5, max_delay=30.0, max_retry_after=120.0)
MAX_ATTEMPTS = CORE_RETRY.attempts


@dataclass(frozen=True)
class CoreScore:
    probability: float
    version: str | None


class CoreClient:
    """Scores images with Exposr-Core through a caller-owned ``httpx.AsyncClient``."""

    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        retry: RetryPolicy = CORE_RETRY,
    ) -> None:
        self.endpoint = settings.exposr_core_endpoint
        self.shown_endpoint = redact_url(self.endpoint)  # for logs and reports
        self.score_field = settings.exposr_core_score_field
        self.timeout = settings.exposr_core_timeout
        self._client = client
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._retry = retry

    async def score(self, data: bytes, filename: str, content_type: str) -> CoreScore:
        response = await self._post_with_retries(data, filename, content_type)
        return parse_answer(response, self.score_field)

    async def _post_with_retries(self, data: bytes, filename: str, content_type: str) -> httpx.Response:
        async def once(attempt: int) -> httpx.Response:
            # Waits as the sources do (RetryPolicy.delay): Retry-After plus a little jitter, else full
            # jitter, so concurrent workers that failed together do not retry together.
            try:
                response = await self._client.post(
                    self.endpoint, files={"file": (filename, data, content_type)}, timeout=self.timeout
                )
            except httpx.DecodingError as exc:  # a body its Content-Encoding cannot decode: garbage
                raise CoreBadAnswer("bad_json", f"Exposr-Core's answer could not be decoded ({exc})") from exc
            except httpx.TimeoutException as exc:
                failure: CoreError = CoreUnavailable(
                    "timeout", f"Exposr-Core timed out after {self.timeout}s ({exc!r})"
                )
                raise TryAgain(failure, self._retry.delay(attempt, self._rng)) from None
            except httpx.TransportError as exc:
                failure = CoreUnavailable("unreachable", f"Exposr-Core at {self.shown_endpoint}: {exc!r}")
                raise TryAgain(failure, self._retry.delay(attempt, self._rng)) from None
            if response.status_code < 400:
                return response
            failure = _status_failure(response)
            if isinstance(failure, CoreBadAnswer):
                raise failure  # a 4xx will not change on retry
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None and retry_after > self._retry.max_retry_after:
                failure.message += f" (Retry-After {retry_after:.0f}s is longer than the labeler waits)"
                raise failure
            raise TryAgain(failure, self._retry.delay(attempt, self._rng, retry_after))

        def note(error: Exception, attempt: int, wait: float) -> None:
            log.info(
                "Exposr-Core %s, attempt %d/%d, retrying in %.1fs",
                getattr(error, "kind", "error"),
                attempt + 1,
                self._retry.attempts,
                wait,
            )

        return await retrying(self._retry, once, self._sleep, note)


def redact_url(url: str) -> str:
    """The URL without user info or query string, which may carry credentials."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(invalid URL)"
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))


def _status_failure(response: httpx.Response) -> CoreError:
    code = response.status_code
    message = f"Exposr-Core answered HTTP {code}: {response.text[:200]!r}"
    if code == 429 or code >= 500:
        return CoreUnavailable(f"http_{code}", message)
    return CoreBadAnswer(f"http_{code}", message)


def parse_answer(response: httpx.Response, score_field: str) -> CoreScore:
    """The probability at the dotted ``score_field``; anything else is a CoreBadAnswer, never a score."""
    try:
        body = response.json()
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep to parse
        raise CoreBadAnswer("bad_json", f"Exposr-Core answered non-JSON: {response.text[:200]!r}") from exc
    value = _dig(body, score_field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CoreBadAnswer("not_a_number", f"Exposr-Core's {score_field!r} is {value!r}, not a number")
    probability = float(value)
    if not math.isfinite(probability):
        raise CoreBadAnswer("not_a_number", f"Exposr-Core's {score_field!r} is {probability}")
    if not 0.0 <= probability <= 1.0:
        raise CoreBadAnswer("out_of_range", f"Exposr-Core's {score_field!r} is {probability}, outside [0, 1]")
    return CoreScore(probability, _version(body))


def _dig(body: object, dotted: str) -> object:
    node = body
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise CoreBadAnswer(
                "missing_field", f"Exposr-Core's answer has no {dotted!r} (set EXPOSR_CORE_SCORE_FIELD)"
            )
        node = node[part]
    return node


def _version(body: object) -> str | None:
    if not isinstance(body, dict):
        return None
    for key in ("model_version", "version"):
        value = body.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    return None
