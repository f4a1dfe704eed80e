"""Logging, configured once at the entry point (CLI, uvicorn app factory, training child).

Lines go to stderr and to ``LOG_DIR/trainer.log`` (rotated). A filter on every handler replaces
any configured secret value (API keys, tokens) with ``***`` as a safety net: no code path is meant
to log a secret, and this makes sure a mistake does not leak one. Another escapes control
characters, so text from outside (request paths, remote error bodies) cannot forge lines.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Iterable
from typing import TextIO

from config.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
_SECRET_FIELDS = ("trainer_api_key", "unsplash_access_key", "pexels_api_key", "civitai_api_key")
_HANDLER_MARK = "_exposr_handler"


class RedactSecretsFilter(logging.Filter):
    """Replace every known secret value in a record's final message with ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is redacted whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, "***")
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            for secret in self.secrets:
                record.exc_text = record.exc_text.replace(secret, "***")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}


def escape_controls(text: str) -> str:
    """Control characters (NUL, ESC, CR, LF, C1 ...) as ``\\xNN``: a request path or a remote error
    text can neither forge a log line nor send escape sequences to a terminal."""
    return text.translate(_CONTROL)


class EscapeControlsFilter(logging.Filter):
    """Escape control characters in every record's message (tracebacks keep their lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_controls(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


def secret_values(settings: Settings) -> list[str]:
    values = []
    for field in _SECRET_FIELDS:
        secret = getattr(settings, field, None)
        if secret is not None:
            values.append(secret.get_secret_value())
    return values


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, like ``logging.lastResort``.

    A plain StreamHandler keeps the stream it was created with. When that stream is swapped out
    and closed (rich's progress bar redirecting stderr, pytest's capture between tests), a thread
    still logging (aiosqlite's worker, the scheduler) hits the closed file and prints
    "--- Logging error ---" instead of the line.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current sys.stderr


def remove_handlers() -> None:
    """Take our handlers off the root logger and close them (before reconfiguring, and in tests)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
        handler.close()


def configure_logging(settings: Settings) -> None:
    """Install the stderr and rotating-file handlers on the root logger (replacing our earlier ones)."""
    root = logging.getLogger()
    remove_handlers()
    redact = RedactSecretsFilter(secret_values(settings))
    escape = EscapeControlsFilter()
    formatter = logging.Formatter(LOG_FORMAT)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        CurrentStderrHandler(),
        logging.handlers.RotatingFileHandler(
            settings.log_dir / "trainer.log", maxBytes=10_000_000, backupCount=5, encoding="utf-8"
        ),
    ]
    for handler in handlers:
        setattr(handler, _HANDLER_MARK, True)
        handler.setFormatter(formatter)
        handler.addFilter(redact)
        handler.addFilter(escape)
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    # Our own one-line-per-request log replaces uvicorn's access log (which logs query strings).
    logging.getLogger("uvicorn.access").disabled = True
    # httpx2/httpcore2: huggingface_hub's client (pretrained weights), one INFO line per request.
    noisy_loggers = (
        "httpx",
        "httpcore",
        "httpx2",
        "httpcore2",
        "botocore",
        "boto3",
        "urllib3",
        "PIL",
        "apscheduler",
    )
    for noisy in noisy_loggers:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Chatter of libraries we call (alembic's migration context lines, faiss's loader trying its
    # AVX variants) is for debugging: shown with `exposr-trainer --verbose` or LOG_LEVEL=DEBUG.
    chatty = logging.NOTSET if verbose() else max(logging.WARNING, root.level)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(chatty)


VERBOSE_ENV = "EXPOSR_VERBOSE"  # set by `exposr-trainer --verbose`; spawned job processes inherit it
CHATTY_LIBRARIES = ("alembic", "faiss", "timm")  # timm: "Loading pretrained weights from ..."


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"
