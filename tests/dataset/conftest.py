"""Dataset fixtures: every storage test runs against both drivers.

The S3 run talks HTTP to moto's standalone server on 127.0.0.1 (a free port), exactly as the
product talks to MinIO or AWS; nothing in boto3 is patched.
"""

from __future__ import annotations

import pytest

from dataset.manager import DatasetManager
from dataset.storage import LocalStorage, S3Storage

DRIVERS = ["local", "s3"]


@pytest.fixture(params=DRIVERS)
def driver_settings(request, make_settings):
    """Settings for each storage driver (local folder, S3 on loopback under a prefix)."""
    if request.param == "local":
        return make_settings()
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return make_settings(storage_driver="s3", s3_bucket=bucket, s3_prefix="ds/", s3_endpoint_url=endpoint)


@pytest.fixture
def storage(driver_settings):
    from dataset.storage import make_storage

    driver = make_storage(driver_settings)
    assert isinstance(driver, LocalStorage if driver_settings.storage_driver == "local" else S3Storage)
    return driver


@pytest.fixture
async def dm(driver_settings):
    async with DatasetManager(driver_settings) as manager:
        yield manager


def meta_in(label: str = "real", source: str = "test", **extra) -> dict:
    return {
        "source": source,
        "label": label,
        "attribution": {"platform": "Test", "url": "http://x/1"},
        "api_data": {"photo_id": 1},
        **extra,
    }
