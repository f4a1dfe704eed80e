"""The core branch of the exception tree (drawn in config/errors.py): Exposr-Core failed us.

A ``CoreError`` is a :class:`scraper.errors.FetchError` from one remote service: the same ``kind`` and
``message`` (``status`` stays None), the same retry loop (``scraper.http.retrying``). ``kind`` is the
name the labeler counts the failure under::

    CoreError                 (a FetchError)
    ├── CoreUnavailable       no usable answer after bounded retries: ``timeout``, ``unreachable``,
    │                         ``http_429``, ``http_5xx`` (the real status code)
    └── CoreBadAnswer         Core answered, but not with a probability: ``http_4xx`` (the real
                              status code), ``bad_json``, ``missing_field``, ``not_a_number``,
                              ``out_of_range``
"""

from __future__ import annotations

from scraper.errors import FetchError


class CoreError(FetchError):
    """A request to Exposr-Core that failed; str(exc) is ``message``, which may gain detail later."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)


class CoreUnavailable(CoreError):
    """Core did not answer usefully even after retries (network, timeouts, 429, 5xx)."""


class CoreBadAnswer(CoreError):
    """Core answered, but the answer is not a probability we may store."""
