from __future__ import annotations

import random

import pytest

from config.sources import SourceConfig, SourcesFile
from dataset.manager import DatasetManager
from scraper.fetcher_manager import FetcherManager
from scraper.http import RetryPolicy, reset_buckets


@pytest.fixture(autouse=True)
def _fresh_buckets():
    """Token buckets are per process by design; each test starts with full ones."""
    reset_buckets()
    yield
    reset_buckets()


@pytest.fixture
def settings(make_settings):
    """Scraper tests run with (fake) keys for every source; a test that needs none builds its own."""
    return make_settings(unsplash_access_key="unsplash-test-key", pexels_api_key="pexels-test-key")


@pytest.fixture
async def dataset(settings):
    async with DatasetManager(settings) as dm:
        yield dm


def source(name: str, **fields) -> SourceConfig:
    values = {
        "name": name,
        "label": "real",
        "queries": ["nature"],
        "limit_per_query": 5,
        "rate_limit_per_hour": 0,
    }
    values.update(fields)
    return SourceConfig(**values)


def folder_source(path, label: str = "real", **fields) -> SourceConfig:
    """A folder entry as a user writes it: no queries, no limit (the whole folder)."""
    return SourceConfig(name="folder", label=label, path=str(path), **fields)


@pytest.fixture
def make_manager(settings, dataset, sleeps):
    """A FetcherManager over the real DatasetManager, with recorded sleeps and seeded jitter."""

    def build(*entries: SourceConfig, settings_=None, client=None) -> FetcherManager:
        manager = FetcherManager(
            settings_ or settings,
            SourcesFile(sources=list(entries)),
            dataset,
            client,
            sleep=sleeps,
            retry=RetryPolicy(attempts=3),
        )
        return manager

    return build


@pytest.fixture
def rng() -> random.Random:
    return random.Random(0)
