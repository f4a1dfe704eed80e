"""Public /status carries job states and times, never progress, results or error texts."""

from __future__ import annotations

import asyncio

from tests.app.conftest import AUTH

SECRET_PATH = "/srv/private/exposr/endpoint-config"


def test_status_shows_job_states_and_times_only(make_client, gate):
    async def scrape(settings, progress):
        progress({"source": SECRET_PATH})
        return {"core_endpoint": "http://core.internal:8000/api/v1/analyze", "path": SECRET_PATH}

    async def train(settings, progress):
        raise RuntimeError(f"cannot read {SECRET_PATH}")

    async def label(settings, progress):
        progress({"stage": SECRET_PATH})
        while not gate.open:
            await asyncio.sleep(0.01)
        return {}

    client = make_client(job_kinds={"scrape": scrape, "train": train, "label": label})
    ids = {}
    for kind in ("scrape", "train"):
        ids[kind] = client.post(f"/{kind}", headers=AUTH).json()["job_id"]
        client.portal.call(client.app.state.runner.wait, ids[kind])
    # A succeeded scrape starts a label job (a follow-up): it holds, running, with its progress.
    running = client.get("/jobs", headers=AUTH, params={"kind": "label"}).json()["jobs"][0]["id"]
    try:
        body = client.get("/status")
        assert SECRET_PATH not in body.text and "core.internal" not in body.text
        status = body.json()
        allowed = {"id", "kind", "trigger", "state", "created_at", "started_at", "finished_at"}
        for job in [*status["last_jobs"].values(), *status["running_jobs"]]:
            assert set(job) <= allowed, job
        assert status["last_jobs"]["train"]["state"] == "failed"
        assert status["last_jobs"]["train"]["finished_at"]
        assert status["last_jobs"]["scrape"]["state"] == "succeeded"
        assert [job["id"] for job in status["running_jobs"]] == [running]
        # With the token the details are all there.
        assert SECRET_PATH in client.get(f"/jobs/{ids['train']}", headers=AUTH).json()["error"]
        assert client.get(f"/jobs/{ids['scrape']}", headers=AUTH).json()["result"]["path"] == SECRET_PATH
    finally:
        gate.open = True
