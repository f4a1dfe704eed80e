"""Issue 21, attack 9 (the smaller ones): login guessing, a reused login form, Host reflected in
redirects, a wrongly shaped registry.json, a follow-up job lost on a full disk, start-up advice for a
garbled SQLite index and for S3 without credentials, and logouts forgotten by a restart."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.ui.session import LOGIN_COOKIE, SESSION_COOKIE
from tests.app.conftest import AUTH, TOKEN
from tests.app.test_console import CSRF_INPUT, login


@pytest.fixture
def client(make_client):
    return make_client()


def login_form(client) -> tuple[str, str]:
    """(csrf token, login cookie) of a fresh login form."""
    form = client.get("/ui/login")
    return CSRF_INPUT.search(form.text)[1], form.cookies[LOGIN_COOKIE]


def test_login_guesses_are_throttled_per_client(client):
    for _ in range(10):
        token, _cookie = login_form(client)
        answer = client.post("/ui/login", data={"api_key": "guess-" + token[:8], "csrf_token": token})
        assert answer.status_code == 401
    token, _cookie = login_form(client)
    throttled = client.post("/ui/login", data={"api_key": TOKEN, "csrf_token": token})
    assert throttled.status_code == 429 and "Too many failed logins" in throttled.text
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60
    assert SESSION_COOKIE not in throttled.cookies  # even the right key waits


def test_a_login_form_is_used_once(client):
    token, cookie = login_form(client)
    wrong = client.post("/ui/login", data={"api_key": "nope", "csrf_token": token})
    assert wrong.status_code == 401
    client.cookies.clear()  # the failed attempt sent a new form: send the used one again
    client.cookies.set(LOGIN_COOKIE, cookie, path="/ui")
    again = client.post("/ui/login", data={"api_key": TOKEN, "csrf_token": token}, follow_redirects=False)
    assert again.status_code == 403 and "already used" in again.text
    assert SESSION_COOKIE not in again.cookies


def test_a_logout_is_honoured_after_a_restart_and_by_another_replica(make_client, settings):
    first = make_client()
    csrf = login(first)
    cookie = first.cookies[SESSION_COOKIE]
    assert first.post("/ui/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    with TestClient(create_app(settings)) as restarted:  # a restart, or a replica on the database
        restarted.cookies.set(SESSION_COOKIE, cookie, path="/ui")
        answer = restarted.get("/ui/", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].endswith("/ui/login")


def test_redirects_never_carry_the_host_header(client):
    answer = client.get("/status/", headers={"host": "evil.example"}, follow_redirects=False)
    assert answer.status_code in (307, 308)
    assert answer.headers["location"] == "/status" and "evil" not in answer.headers["location"]


@pytest.mark.parametrize(
    "registry",
    [b"[1, 2, 3]", b"[null]", b"[" * 100_000 + b"]" * 100_000, b'[{"model": "vit"}]', b'{"model": "vit"}'],
    ids=["numbers", "null", "deep", "no-version", "object"],
)
def test_a_wrongly_shaped_registry_is_a_503_naming_the_file(client, registry):
    models = client.app.state.settings.models_dir
    models.mkdir(parents=True, exist_ok=True)
    (models / "registry.json").write_bytes(registry)
    for path in (
        "/models/latest",
        "/models/vit/v1/model.json",
        "/models/vit/v1/weights.pt",
        "/models/vit/v1/report",
    ):
        answer = client.get(path, headers=AUTH)
        assert answer.status_code == 503, (path, answer.text[:200])
        assert "MODELS_DIR/registry.json" in answer.json()["detail"]
    for path in ("/status", "/metrics", "/metrics/prometheus"):  # these say "no models" instead
        assert client.get(path, headers=AUTH).status_code == 200, path


def test_a_follow_up_that_cannot_start_on_a_full_disk_is_a_failed_job(make_client):
    async def scrape(settings, progress):
        return {"sources": {}}

    async def label(settings, progress):
        return {}

    client = make_client(job_kinds={"scrape": scrape, "label": label})
    lock = client.app.state.settings.dataset_dir / "job-label.lock"
    lock.mkdir(parents=True)  # where the label job's lock file must go: the OSError a full disk gives
    job = client.post("/scrape", headers=AUTH).json()
    client.portal.call(client.app.state.runner.wait, job["job_id"])
    for _ in range(600):  # the follow-up starts after the scrape's end: poll for its row
        labels = client.get("/jobs", headers=AUTH, params={"kind": "label"}).json()["jobs"]
        if labels:
            break
        client.portal.call(asyncio.sleep, 0.05)
    assert len(labels) == 1 and labels[0]["state"] == "failed"
    assert "follow-up of a scrape job could not start" in labels[0]["error"]


def _serve(settings, monkeypatch, capsys, **env) -> tuple[int, str]:
    from app import cli

    monkeypatch.chdir(settings.log_dir.parent)
    for name, value in {  # why: the test's folders and a key, as tests/attack/test_index_loss.py does
        "DATASET_DIR": settings.dataset_dir,
        "MODELS_DIR": settings.models_dir,
        "LOG_DIR": settings.log_dir,
        "TRAINER_API_KEY": "k" * 20,
        "SOURCES_CONFIG": settings.sources_config,
        **env,
    }.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(cli, "configure_logging", lambda s: None)
    code = cli.main(["serve", "--port", "1"])
    return code, capsys.readouterr().err


def test_a_garbled_sqlite_index_gets_the_rebuild_hint_not_the_postgresql_advice(
    settings, monkeypatch, capsys
):
    from app import cli

    settings.dataset_dir.mkdir(parents=True)
    (settings.dataset_dir / "dedupe.db").write_bytes(os.urandom(16384))
    code, err = _serve(settings, monkeypatch, capsys)
    assert code == cli.EXIT_CONFIG and "Traceback" not in err
    assert "check --rebuild-index" in err and "password" not in err


def test_s3_without_credentials_stops_start_up_naming_the_fix(settings, monkeypatch, capsys, s3_server):
    import boto3

    from app import cli

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # earlier tests' credentials stay cached there
    missing = settings.log_dir.parent / "no-such-aws-file"
    code, err = _serve(
        settings,
        monkeypatch,
        capsys,
        STORAGE_DRIVER="s3",  # why: the start-up under test is the bucket's
        S3_BUCKET="any-bucket",  # why: any name; it fails at the credentials first
        S3_ENDPOINT_URL=s3_server,  # why: loopback, never the network
        AWS_CONFIG_FILE=missing,  # why: no credentials anywhere
        AWS_SHARED_CREDENTIALS_FILE=missing,  # why: no credentials anywhere
        AWS_EC2_METADATA_DISABLED="true",  # why: no instance-metadata lookup off the machine
    )
    assert code == cli.EXIT_CONFIG and "Traceback" not in err
    assert "no S3 credentials found" in err and "AWS_ACCESS_KEY_ID" in err


def test_registry_json_is_read_as_entries_or_refused():
    from trainer.registry import parse_registry

    entries = [{"model": "vit", "version": "v1", "promoted": True}]
    assert parse_registry(json.dumps(entries).encode(), "r.json") == entries
    with pytest.raises(ValueError, match="entry 1 is not an object"):
        parse_registry(b'[{"model": "vit", "version": "v1"}, 7]', "r.json")
