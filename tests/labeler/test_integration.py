"""The labeler inside the service and the CLI: POST /label, follow-up runs, `label` and `review` commands."""

from __future__ import annotations

import asyncio

import pytest
import respx
from fastapi.testclient import TestClient

from app.cli import main
from app.jobs import JobRunner
from app.jobstore import JobStore, make_engine
from app.main import create_app
from dataset.manager import DatasetManager
from tests.images import jpeg

AUTH = {"Authorization": "Bearer test-token-0123456789"}
ENDPOINT = "https://core.test/api/v1/analyze"


def test_post_label_runs_the_labeler_in_a_worker_process(make_settings):
    with TestClient(create_app(make_settings())) as client:
        accepted = client.post("/label", headers=AUTH)
        assert accepted.status_code == 202
        job_id = accepted.json()["job_id"]
        assert accepted.json()["kind"] == "label"
        job = client.portal.call(client.app.state.runner.wait, job_id)
    assert job["state"] == "succeeded", job
    assert job["result"]["total"] == 0
    assert "no images" in job["result"]["reason"]


def test_post_label_is_single_flight(make_settings):
    release = {"open": False}

    async def held(settings, progress):
        while not release["open"]:
            await asyncio.sleep(0.01)
        return {}

    with TestClient(create_app(make_settings(), job_kinds={"label": held})) as client:
        first = client.post("/label", headers=AUTH).json()
        conflict = client.post("/label", headers=AUTH)
        assert conflict.status_code == 409
        assert first["job_id"] in conflict.json()["detail"]
        release["open"] = True
        client.portal.call(client.app.state.runner.wait, first["job_id"])


@pytest.mark.parametrize(
    ("kind", "result", "labels"),
    [
        ("scrape", {"stored": 3}, True),
        ("train", {"promoted": True, "version": "v2"}, True),
        ("train", {"promoted": False, "version": "v3"}, False),
    ],
)
async def test_a_label_run_follows_each_scrape_and_each_promotion(settings, kind, result, labels):
    ran = []

    async def finished(settings, progress):
        return result

    async def label(settings, progress):
        ran.append("label")
        return {"scored": 0}

    engine = make_engine(settings)
    runner = JobRunner(settings, JobStore(engine), {"scrape": finished, "train": finished, "label": label})
    await runner.start()
    try:
        job = await runner.submit(kind)
        await runner.wait(job["id"])
        follow_ups = await runner.list(kind="label")
        for row in follow_ups:
            await runner.wait(row["id"])
        assert ran == (["label"] if labels else [])
        assert [row["trigger"] for row in follow_ups] == (["scheduled"] if labels else [])
    finally:
        await runner.shutdown()
        await engine.dispose()


@pytest.fixture
def cli_env(tmp_path, monkeypatch, settings):
    """The CLI reads the environment: point it at the test's folders."""
    monkeypatch.chdir(tmp_path)  # no developer .env
    for name, value in {
        "DATASET_DIR": settings.dataset_dir,
        "MODELS_DIR": settings.models_dir,
        "LOG_DIR": settings.log_dir,
        "EXPOSR_CORE_ENDPOINT": ENDPOINT,
        "SCHEDULER_ENABLED": "false",
        "MIN_IMAGE_SIDE": "16",
    }.items():
        monkeypatch.setenv(name, str(value))
    if settings.database_url:
        monkeypatch.setenv("DATABASE_URL", settings.database_url)
    return settings


async def ingest(settings, labels: list[str]) -> list[str]:
    async with DatasetManager(settings) as dm:
        return [
            (await dm.ingest(jpeg(seed), {"source": "upload", "label": label})).id
            for seed, label in enumerate(labels)
        ]


async def test_a_scrape_that_ends_during_a_label_run_gets_a_label_run_after_it(settings):
    """The running label job listed its images before the scrape stored new ones: one more run follows."""
    gate = {"label_started": asyncio.Event(), "scrape_done": asyncio.Event()}
    label_runs = []

    async def scrape(settings, progress):
        await gate["label_started"].wait()
        return {"stored": 2}

    async def label(settings, progress):
        label_runs.append(len(label_runs))
        gate["label_started"].set()
        if len(label_runs) == 1:
            await gate["scrape_done"].wait()  # still running when the scrape ends
        return {"scored": 0}

    engine = make_engine(settings)
    runner = JobRunner(settings, JobStore(engine), {"scrape": scrape, "label": label})
    await runner.start()
    try:
        first_label = await runner.submit("label")
        scraped = await runner.submit("scrape")
        await runner.wait(scraped["id"])
        gate["scrape_done"].set()
        await runner.wait(first_label["id"])
        rows = await runner.list(kind="label")
        for row in rows:
            await runner.wait(row["id"])
        rows = await runner.list(kind="label")
        assert label_runs == [0, 1]
        assert sorted((row["trigger"], row["state"]) for row in rows) == [
            ("manual", "succeeded"),
            ("scheduled", "succeeded"),
        ]
    finally:
        await runner.shutdown()
        await engine.dispose()


@respx.mock
def test_cli_label_then_review(cli_env, capsys):
    ids = asyncio.run(ingest(cli_env, ["unlabeled", "real"]))
    respx.post(ENDPOINT).respond(json={"ai_probability": 0.97, "model_version": "core-9"})

    assert main(["label"]) == 0
    out = capsys.readouterr().out
    assert "Labeler report" in out and "core-9" in out

    assert main(["review", "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "Review queue (all): 1-2 of 2" in out
    assert out.index(ids[1]) < out.index(ids[0])  # the disputed "real" first, then the unlabeled one


@respx.mock
def test_cli_label_without_any_scorer_fails_with_the_reason(cli_env, capsys):
    asyncio.run(ingest(cli_env, ["unlabeled"]))
    respx.post(ENDPOINT).respond(404)  # a wrong EXPOSR_CORE_ENDPOINT: not retried
    assert main(["label"]) == 1
    err = capsys.readouterr().err
    assert "nothing scored" in err and "HTTP 404" in err and "POST /train" in err
