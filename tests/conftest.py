from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest

import trainer  # noqa: F401  first, so OpenMP's wait policy (trainer/__init__.py) holds before torch loads
from config.settings import Settings

# Suites that run against SQLite and a real PostgreSQL server (tests/pgserver.py) alike.
POSTGRES_SUITES = (
    "tests/dataset/test_index.py",
    "tests/dataset/test_manager.py",
    "tests/dataset/test_ingest_batch.py",
    "tests/dataset/test_schema.py",
    "tests/dataset/test_metadata_lock.py",
    "tests/labeler/test_review_sql.py",
    "tests/app/",
    "tests/labeler/",
)
ROOT = Path(__file__).resolve().parents[1]


def pytest_generate_tests(metafunc):
    if "db_backend" not in metafunc.fixturenames or any(
        metafunc.definition.get_closest_marker(m) for m in ("sqlite_only", "postgres_only")
    ):
        return
    path = metafunc.definition.path.relative_to(ROOT).as_posix()
    if any(path.startswith(suite) for suite in POSTGRES_SUITES):
        metafunc.parametrize("db_backend", ["sqlite", "postgres"], indirect=True)


def missing_part(reason: str):
    """A real part the tests need is missing: skip with the reason, but fail under CI."""
    import os

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing part is a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server():
    from tests.pgserver import PostgresServer, missing_reason

    reason = missing_reason()
    if reason:
        missing_part(reason)
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def db_backend(request) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(db_backend, request) -> str | None:
    """None (the default SQLite file under DATASET_DIR) or a fresh database on the test server."""
    if db_backend == "sqlite":
        return None
    return request.getfixturevalue("postgres_server").new_database()


@pytest.fixture
def make_settings(tmp_path: Path, database_url):
    """Build Settings rooted in tmp_path; keyword overrides win. Never reads the developer's .env."""

    def build(**overrides) -> Settings:
        values = dict(
            dataset_dir=tmp_path / "datasets",
            models_dir=tmp_path / "models",
            log_dir=tmp_path / "logs",
            sources_config=Path(__file__).resolve().parents[1] / "config" / "sources.yaml",
            scheduler_enabled=False,
            trainer_api_key="test-token-0123456789",
            train_pretrained=False,
            train_device="cpu",
            min_image_side=16,
            database_url=database_url,
        )
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return build


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


@pytest.fixture(autouse=True)
def _no_ambient_env(monkeypatch):
    """Tests build their own Settings; keys from the developer's shell must not leak in."""
    import os

    for name in list(os.environ):
        if name.endswith(("_API_KEY", "_ACCESS_KEY")) or name in {
            "TRAINER_API_KEY",
            "STORAGE_DRIVER",
            "DATABASE_URL",
            "DATASET_DIR",
            "MODELS_DIR",
        }:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _logging_restored():
    """A test that runs the CLI configures logging for the whole process: undo it afterwards, so
    later tests inherit neither its handlers (its log file, its closed capture) nor its root level."""
    from app.logging_setup import remove_handlers

    root = logging.getLogger()
    level = root.level
    yield
    remove_handlers()
    root.setLevel(level)


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch):
    # Dummy credentials for the loopback server; boto3 reads them through its usual chain.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)


_bucket_numbers = itertools.count()


@pytest.fixture
def s3_bucket(request, aws_env):
    """A fresh bucket on the loopback server; returns (endpoint, bucket)."""
    import boto3

    endpoint = request.getfixturevalue("s3_server")
    bucket = f"test-bucket-{next(_bucket_numbers)}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return endpoint, bucket


class SleepRecorder:
    """An injectable ``sleep`` that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()
