from __future__ import annotations

import os

import pytest

from tests.browser.harness import missing_browser, running_server, seed, start_browser

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    reason = missing_browser()
    if reason:
        if os.environ.get("CI") == "true":  # under CI a missing part is a failure, not a skip
            pytest.fail(f"browser tests cannot run: {reason}")
        pytest.skip(reason)
    driver = start_browser()
    yield driver
    driver.quit()


@pytest.fixture
def console(make_settings, browser):
    """A seeded service on loopback; yields its base URL. The browser starts logged out."""
    settings = make_settings()
    seed(settings)
    with running_server(settings) as base:
        yield base
    browser.delete_all_cookies()
