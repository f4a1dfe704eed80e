"""End to end over real sockets: the three API clients talk to a fake API on 127.0.0.1 and store JPEGs."""

from __future__ import annotations

import pytest

from tests.images import jpeg
from tests.scraper.fake_api import FakeSourceApi

PER_SOURCE = 7


def image_for(index: int) -> bytes:
    # CivitAI's first image repeats Unsplash's first: one duplicate across sources.
    return jpeg(0 if index == 2 * PER_SOURCE else index, size=(160, 120))


@pytest.mark.slow
async def test_scrape_three_sources_over_real_http(make_settings, tmp_path):
    from dataset.manager import DatasetManager
    from scraper.fetcher_manager import run_scrape

    config = tmp_path / "sources.yaml"
    config.write_text(
        "sources:\n"
        "  - {name: unsplash, label: real, queries: [street], limit_per_query: 20, rate_limit_per_hour: 0}\n"
        "  - {name: pexels, label: real, queries: [city], limit_per_query: 20, rate_limit_per_hour: 0}\n"
        "  - {name: civitai, label: ai, queries: [portrait], limit_per_query: 20, rate_limit_per_hour: 0}\n"
    )
    events: list[dict] = []
    with FakeSourceApi(PER_SOURCE, image_for) as api:
        settings = make_settings(sources_config=config, **api.settings_overrides())
        report = await run_scrape(settings, events.append)

    s = report["sources"]
    # Sources run side by side, so either Unsplash or CivitAI gets the shared image first.
    assert s["pexels"]["stored"] == PER_SOURCE
    assert s["unsplash"]["stored"] + s["civitai"]["stored"] == 2 * PER_SOURCE - 1
    assert report["totals"]["duplicates"] == 1 and report["totals"]["downloaded"] == 3 * PER_SOURCE
    assert report["totals"]["errors"] == {} and report["totals"]["rejected"] == {}
    assert api.hits["unsplash_download_event"] == s["unsplash"]["stored"]  # stored ones only
    assert api.hits["cdn"] == 3 * PER_SOURCE
    assert api.hits["civitai_models"] == 1 and api.hits["civitai_images"] == 1
    assert events[-1]["done"] == PER_SOURCE
    async with DatasetManager(settings) as dm:
        counts = await dm.counts()
    assert counts["total"] == 3 * PER_SOURCE - 1
    assert counts["ai_generated"] == s["civitai"]["stored"]
