from __future__ import annotations

import logging
import sqlite3
import threading
import time

import pytest

from tests.app.conftest import AUTH, TOKEN

PROTECTED = [
    ("GET", "/metrics"),
    ("POST", "/scrape"),
    ("POST", "/train"),
    ("GET", "/jobs"),
    ("GET", "/jobs/some-id"),
    ("POST", "/upload"),
    ("GET", "/models/latest"),
    ("GET", "/models/vit/v1/weights.pt"),
]


def test_status_and_healthz_are_public_and_report_the_seed_fields(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    body = client.get("/status").json()
    assert body["dataset_counts"] == {"total": 0, "real": 0, "ai_generated": 0, "unlabeled": 0}
    assert body["last_scrape"] is None and body["last_train"] is None
    assert body["uptime"] >= 0 and body["scheduler"]["state"] == "disabled"
    assert body["latest_model"] is None and body["running_jobs"] == []
    assert TOKEN not in client.get("/status").text


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_endpoints_need_the_bearer_token(client, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401, (path, headers)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "TRAINER_API_KEY" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_without_a_configured_key_protected_endpoints_fail_closed(make_client, method, path):
    client = make_client(trainer_api_key=None)
    response = client.request(method, path, headers=AUTH)
    assert response.status_code == 503
    assert "TRAINER_API_KEY is not set" in response.json()["detail"]
    assert client.get("/status").status_code == 200


def test_metrics_report_dataset_and_model_fields(client):
    body = client.get("/metrics", headers=AUTH).json()
    assert body["total_images"] == 0 and body["models_trained"] == 0
    assert body["last_training"] is None and body["validation_accuracy"] is None
    assert body["jobs_running"] == []


def test_two_workers_on_one_dataset_share_single_flight_and_running_jobs(make_client, gate):
    first, second = make_client(job_kinds=gate.kinds()), make_client(job_kinds=gate.kinds())
    job_id = first.post("/train", headers=AUTH).json()["job_id"]
    conflict = second.post("/train", headers=AUTH)
    assert conflict.status_code == 409 and job_id in conflict.json()["detail"]
    second.app.state.overview.invalidate()  # instead of waiting for the next background refresh
    assert [job["id"] for job in second.get("/status").json()["running_jobs"]] == [job_id]
    assert second.get("/metrics", headers=AUTH).json()["jobs_running"] == ["train"]
    gate.open = True


def test_job_endpoints_start_conflict_list_and_finish(client, gate):
    started = client.post("/scrape", headers=AUTH)
    assert started.status_code == 202
    job_id = started.json()["job_id"]
    assert started.json()["status_url"] == f"/jobs/{job_id}"
    conflict = client.post("/scrape", headers=AUTH)
    assert conflict.status_code == 409 and job_id in conflict.json()["detail"]
    assert client.get("/status").json()["running_jobs"][0]["id"] == job_id
    gate.open = True
    deadline = time.monotonic() + 120  # a bound, not a timing assertion: a loaded CI box is slow
    while True:
        job = client.get(f"/jobs/{job_id}", headers=AUTH).json()
        if job["state"] == "succeeded" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert job["state"] == "succeeded" and job["result"] == {"released": True}
    assert job["trigger"] == "manual" and job["progress"] == {"waiting": True}
    listed = client.get("/jobs", headers=AUTH, params={"kind": "scrape"}).json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]
    assert client.get("/status").json()["last_scrape"] == job["finished_at"]
    assert client.get("/jobs/nope", headers=AUTH).status_code == 404


def test_a_job_cut_off_by_shutdown_is_interrupted_after_restart(make_client, gate):
    first = make_client(job_kinds=gate.kinds())
    job_id = first.post("/train", headers=AUTH).json()["job_id"]
    first.__exit__(None, None, None)  # lifespan shutdown while the job runs
    second = make_client(job_kinds=gate.kinds())
    job = second.get(f"/jobs/{job_id}", headers=AUTH).json()
    assert job["state"] == "interrupted" and job["finished_at"]
    assert second.get("/status").json()["last_jobs"]["train"]["state"] == "interrupted"


def test_openapi_documents_every_endpoint_with_a_response_model(client):
    spec = client.get("/openapi.json").json()
    expected = {
        "/status",
        "/healthz",
        "/metrics",
        "/scrape",
        "/train",
        "/jobs",
        "/jobs/{job_id}",
        "/upload",
        "/models/latest",
        "/models/{name}/{version}/weights.pt",
    }
    assert expected <= set(spec["paths"])
    for path in expected - {"/models/{name}/{version}/weights.pt"}:
        for operation in spec["paths"][path].values():
            ok = (
                operation["responses"].get("200")
                or operation["responses"].get("201")
                or operation["responses"].get("202")
            )
            assert "$ref" in str(ok["content"]["application/json"]["schema"]), path
    assert "multipart/form-data" in spec["paths"]["/upload"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def test_one_log_line_per_request_without_headers(client, caplog):
    with caplog.at_level(logging.INFO, logger="app.requests"):
        client.get("/metrics", headers=AUTH, params={"q": "x"})
    lines = [r.getMessage() for r in caplog.records if r.name == "app.requests"]
    assert len(lines) == 1 and lines[0].startswith("GET /metrics 200 ")
    assert TOKEN not in caplog.text and "q=x" not in caplog.text


def test_an_unreadable_registry_is_a_503_with_the_reason(make_client):
    client = make_client(job_kinds={})
    models_dir = client.app.state.settings.models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / "registry.json").write_text("{not json", encoding="utf-8")
    for path in ("/models/latest", "/models/vit/v1/weights.pt", "/models/vit/v1/model.json"):
        response = client.get(path, headers=AUTH)
        assert response.status_code == 503, path
        assert "registry.json is not valid JSON" in response.json()["detail"], path
    assert client.get("/metrics", headers=AUTH).status_code == 200


@pytest.mark.sqlite_only  # holds SQLite's write lock from outside
def test_status_answers_while_a_new_job_waits_for_the_database(client, gate):
    """A submitted job is live before its row is written (the claim is what makes single flight
    safe); /status lists live jobs, so the claim must already be a complete job."""
    runner = client.app.state.runner
    database = sqlite3.connect(client.app.state.settings.dataset_dir / "dedupe.db")
    database.execute("BEGIN IMMEDIATE")  # another writer holds the database: the job's insert waits
    started = []
    poster = threading.Thread(target=lambda: started.append(client.post("/train", headers=AUTH)))
    poster.start()
    try:
        for _ in range(500):
            if runner.running("train"):
                break
            time.sleep(0.01)
        assert runner.running("train"), "the job was never claimed"
        status = client.get("/status")
        assert status.status_code == 200, status.text
        assert [job["kind"] for job in status.json()["running_jobs"]] == ["train"]
    finally:
        database.rollback()
        database.close()
        poster.join(timeout=120)
        gate.open = True
    assert started[0].status_code == 202
