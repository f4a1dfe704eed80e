from __future__ import annotations

import io
import logging
import sys

from app.logging_setup import RedactSecretsFilter, configure_logging, remove_handlers


def test_filter_redacts_every_configured_secret_in_message_and_args():
    record = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        "calling with %s and key=%s",
        ("Bearer s3cr3t-token", "pexels-key-42"),
        None,
    )
    RedactSecretsFilter(["s3cr3t-token", "pexels-key-42", ""]).filter(record)
    assert record.getMessage() == "calling with Bearer *** and key=***"


def test_configured_logging_never_writes_the_api_key(make_settings, caplog):
    settings = make_settings(trainer_api_key="very-secret-key-123", pexels_api_key="px-999")
    configure_logging(settings)
    try:
        logging.getLogger("app.test").warning("header was Authorization: Bearer very-secret-key-123, px-999")
        try:
            raise RuntimeError("failed with very-secret-key-123")
        except RuntimeError:
            logging.getLogger("app.test").exception("boom")
        for handler in logging.getLogger().handlers:
            handler.flush()
        text = (settings.log_dir / "trainer.log").read_text()
        assert "Authorization: Bearer ***, ***" in text
        assert "failed with ***" in text
        assert "very-secret-key-123" not in text and "px-999" not in text
    finally:
        remove_handlers()


def test_stderr_handler_follows_a_swapped_stderr_and_never_writes_to_a_closed_one(make_settings, monkeypatch):
    # A CLI run (or rich's progress bar) configures logging while sys.stderr is one stream; that
    # stream is later closed while threads keep logging: lines must go to the current stderr.
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging(make_settings())
    try:
        monkeypatch.setattr(sys, "stderr", second)
        first.close()
        logging.getLogger("aiosqlite.test").warning("still running after the swap")
        assert "still running after the swap" in second.getvalue()
        assert "Logging error" not in second.getvalue()
    finally:
        remove_handlers()
