"""Attack-suite fixtures: the dataset ones (both storage drivers) plus a local-only manager."""

from __future__ import annotations

import pytest

from dataset.manager import DatasetManager
from tests.app.conftest import gate, make_client  # noqa: F401 - fixtures reused
from tests.dataset.conftest import driver_settings, s3_bucket  # noqa: F401 - fixtures reused


@pytest.fixture
async def dm(driver_settings):  # noqa: F811
    async with DatasetManager(driver_settings) as manager:
        yield manager
