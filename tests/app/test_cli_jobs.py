"""The CLI's scrape, train and label are jobs like the service's: a row with trigger ``cli``, the
same kind lock (refused while another process runs the kind, naming the job), visible on /jobs."""

from __future__ import annotations

import asyncio
import threading

import pytest
import yaml
from sqlalchemy.exc import DBAPIError

from app import cli
from app.jobs import JobRunner
from app.jobstore import JobStore, make_engine
from config.settings import load_settings
from tests.images import jpeg


@pytest.fixture
def env(monkeypatch, tmp_path, database_url):
    monkeypatch.chdir(tmp_path)  # no developer .env is picked up
    if database_url:
        monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DATASET_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("MIN_IMAGE_SIDE", "16")  # the test pictures are 96 x 72
    folder = tmp_path / "real"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(jpeg(700 + i))
    (tmp_path / "sources.yaml").write_text(
        yaml.safe_dump({"sources": [{"name": "folder", "label": "real", "path": str(folder)}]})
    )
    monkeypatch.setenv("SOURCES_CONFIG", str(tmp_path / "sources.yaml"))
    return monkeypatch


async def _rows(settings) -> list[dict]:
    engine = make_engine(settings)
    try:
        return await JobStore(engine).list(limit=10)
    finally:
        await engine.dispose()


def test_a_cli_scrape_is_a_job_row_with_trigger_cli(env, capsys):
    assert cli.main(["scrape"]) == 0
    rows = asyncio.run(_rows(load_settings()))
    assert [(r["kind"], r["trigger"], r["state"]) for r in rows] == [("scrape", "cli", "succeeded")]
    assert rows[0]["result"]["totals"]["stored"] == 3


def test_a_cli_training_while_another_process_trains_is_refused_naming_the_job(env, capsys):
    """The service (here: a JobRunner in another thread, on the same database and lock) runs a
    training; the CLI's is refused at once with the running job's id, and nothing is recorded."""
    settings = load_settings()
    started, release, held = threading.Event(), threading.Event(), {}

    async def slow_train(settings, progress):
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.05)
        return {"released": True}

    async def service() -> None:
        engine = make_engine(settings)
        runner = JobRunner(settings, JobStore(engine), kinds={"train": slow_train})
        await runner.start()
        held["job"] = await runner.submit("train", trigger="manual")
        await runner.wait(held["job"]["id"])
        await runner.shutdown()
        await engine.dispose()

    thread = threading.Thread(target=asyncio.run, args=(service(),))
    thread.start()
    try:
        assert started.wait(120), "the service's training never started"
        assert cli.main(["train"]) == cli.EXIT_FAILED
        err = capsys.readouterr().err
        assert f"a train job is already running: {held['job']['id']}" in err and "trigger manual" in err
    finally:
        release.set()
        thread.join(120)
    rows = asyncio.run(_rows(settings))
    assert [(r["trigger"], r["state"]) for r in rows] == [("manual", "succeeded")]  # the CLI's left no row


def test_status_command_shows_models_scrape_scheduler_and_running_jobs(env, capsys):
    assert cli.main(["scrape"]) == 0
    capsys.readouterr()
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    for heading in ("Served model", "Versions", "Last scrape", "Scheduler", "Running jobs"):
        assert heading in out, out
    assert "no 'vit' model trained yet" in out and "none running" in out
    assert "scrape every 12 h" in out and "train every 7 d" in out


def test_no_library_chatter_unless_verbose(env, capsys):
    from app.logging_setup import VERBOSE_ENV

    env.setenv(VERBOSE_ENV, "0")  # restored after the test: --verbose below sets it for the process
    assert cli.main(["status"]) == 0  # a fresh database: alembic runs its migrations
    quiet = capsys.readouterr().err
    assert "database schema migrated" in quiet  # our own line stays
    assert "alembic" not in quiet and "Could not load library" not in quiet
    env.setenv("DATASET_DIR", str(load_settings().dataset_dir) + "-2")  # migrate again, verbosely
    assert cli.main(["--verbose", "status"]) == 0
    assert "alembic.runtime.migration" in capsys.readouterr().err


def test_an_unknown_architecture_stops_train_and_serve_at_once_naming_the_setting(env, capsys):
    assert cli.main(["train", "--arch", "resnet10"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "TRAIN_ARCH='resnet10' is not a timm architecture; did you mean 'resnet10t'" in err
    try:  # refused before any job or data work: not even the jobs table was made
        assert asyncio.run(_rows(load_settings())) == []
    except DBAPIError as exc:
        assert "jobs" in str(exc)
    env.setenv("TRAIN_ARCH", "not_a_model")
    assert cli.main(["serve", "--port", "1"]) == cli.EXIT_CONFIG
    assert "TRAIN_ARCH='not_a_model'" in capsys.readouterr().err


def test_the_service_shows_the_cli_jobs(env, make_client, capsys):
    assert cli.main(["scrape"]) == 0
    settings = load_settings()
    client = make_client(
        **{k: getattr(settings, k) for k in ("dataset_dir", "models_dir", "log_dir", "sources_config")}
    )
    status = client.get("/status")
    assert status.status_code == 200, status.text
    assert status.json()["last_jobs"]["scrape"]["trigger"] == "cli"
    jobs = client.get("/jobs", headers={"Authorization": "Bearer test-token-0123456789"}).json()["jobs"]
    assert [(j["kind"], j["trigger"], j["state"]) for j in jobs] == [("scrape", "cli", "succeeded")]
