"""The fetch branch of the exception tree (drawn in config/errors.py): a request that failed.

    FetchError            a request that finally failed; ``kind`` is a short code for the report
    ├── RateLimited       429 (or a source-specific rate-limit answer) after the allowed retries
    ├── TryAgain          one try of ``retrying()`` failed with ``error``, which may go away: wait
    │                     ``wait`` seconds and try again (never escapes ``retrying()``)
    └── CoreError         labeler/errors.py: the same failure, from Exposr-Core (the labeler's
                          Core client uses the same retry loop)

``kind`` for a source: timeout, connection, http_<status>, server_error, bad_json, html_page,
too_large, bad_url, bad_encoding, too_many_redirects (these three are never retried), dns (the host
name does not resolve: never retried, the source stops).
"""

from __future__ import annotations

from config.errors import ExposrError


class FetchError(ExposrError):
    """A request that failed for good; ``kind`` goes into the report's ``errors`` counts."""

    def __init__(self, kind: str, message: str, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message  # callers may append detail to .message


class RateLimited(FetchError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__("rate_limited", message, status)


class TryAgain(FetchError):
    """Raised by one try of :func:`scraper.http.retrying`: ``error`` may go away; wait ``wait``
    seconds first. Its ``kind`` and ``status`` are the error's."""

    def __init__(self, error: Exception, wait: float):
        super().__init__(getattr(error, "kind", "try_again"), str(error), getattr(error, "status", None))
        self.error = error
        self.wait = wait
