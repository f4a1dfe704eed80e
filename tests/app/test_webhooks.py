"""Signed webhooks with retries (issue 23 points 4 and 6), against a real HTTP receiver on 127.0.0.1:
signatures verified with the Standard Webhooks library, 500 twice then 200, a receiver down across
a restart, a re-send, two replicas on one PostgreSQL delivering each event once."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from app import cli
from app.main import create_app
from app.webhooks import Outbox, WebhookSender, backoff, sign, training_events
from config.settings import ConfigError
from config.webhooks import load_subscribers
from tests.app.conftest import AUTH
from tests.app.test_aliases import train_versions

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class BurstServer(ThreadingHTTPServer):
    request_queue_size = 128  # a burst of deliveries (2 senders x 16) is not refused by the backlog
    daemon_threads = True


class Receiver:
    """An HTTP server on 127.0.0.1 that answers the scripted statuses (then 200), verifies each
    request's signature as a receiver would (the standardwebhooks library) and records it."""

    def __init__(self, script=(), port: int = 0) -> None:
        self.script = list(script)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    Webhook(SECRET).verify(body, headers)
                    verified = True
                except Exception:
                    verified = False
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else 200
                    receiver.requests.append(
                        {
                            "headers": headers,
                            "raw": body,
                            "body": json.loads(body),
                            "verified": verified,
                            "status": status,
                        }
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = BurstServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[str]:
        with self.lock:
            return [r["body"]["type"] for r in self.requests if r["status"] == 200]


@pytest.fixture
def receiver():
    made = []

    def build(script=(), port=0):
        made.append(Receiver(script, port))
        return made[-1]

    yield build
    for r in made:
        r.stop()


def hooks(url: str, events=("*",)) -> str:
    return json.dumps([{"name": "core", "url": url, "secret": SECRET, "events": list(events)}])


# why (each override below): WEBHOOKS points at the receiver under test; the retry and poll
# settings make the schedule's seconds fractions of a second so a test observes several attempts.
FAST = dict(webhook_retry_base_seconds=0.2, webhook_retry_max_seconds=1, webhook_poll_seconds=0.1)


def wait_for(predicate, what: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def deliveries(client, **params) -> list[dict]:
    return client.get("/webhooks/deliveries", params=params, headers=AUTH).json()["deliveries"]


def test_signature_is_what_standard_webhooks_libraries_verify():
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    body = b'{"type":"model.promoted"}'
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(time.time()))}
    headers["webhook-signature"] = sign(key, "msg_1", int(headers["webhook-timestamp"]), body)
    assert Webhook(SECRET).verify(body, headers) == {"type": "model.promoted"}
    headers["webhook-signature"] = sign(key, "msg_1", int(headers["webhook-timestamp"]), body + b" ")
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(body, headers)


def test_backoff_doubles_with_jitter_and_is_capped():
    low = [backoff(n, 5, 3600, rand=lambda: 0.0) for n in range(1, 12)]
    high = [backoff(n, 5, 3600, rand=lambda: 1.0) for n in range(1, 12)]
    assert low[:4] == [2.5, 5, 10, 20] and high[:4] == [5, 10, 20, 40]
    assert high[-1] == 3600 and low[-1] == 1800  # capped at WEBHOOK_RETRY_MAX_SECONDS


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"url": "ftp://core/x", "secret": SECRET, "events": ["*"]}, "WEBHOOKS[0].url"),
        ({"url": "https://u:p@core/x", "secret": SECRET, "events": ["*"]}, "credentials"),
        (
            {"url": "https://core/x", "secret": "not-a-whsec-secret-value", "events": ["*"]},
            "WEBHOOKS[0].secret",
        ),
        ({"url": "https://core/x", "secret": SECRET, "events": ["model.exploded"]}, "model.exploded"),
        ({"url": "https://core/x", "secret": SECRET}, "WEBHOOKS[0].events"),
    ],
)
def test_bad_subscribers_stop_start_up_naming_the_field(make_settings, entry, words):
    settings = make_settings(webhooks=json.dumps([entry]))  # why: the configuration under test
    pattern = words.replace(".", r"\.").replace("[", r"\[")
    with pytest.raises(ConfigError, match=pattern) as caught, TestClient(create_app(settings)):
        pass
    assert "not-a-whsec" not in str(caught.value) and SECRET not in str(caught.value)


def test_subscribers_from_a_yaml_file(make_settings, tmp_path):
    path = tmp_path / "webhooks.yaml"
    path.write_text(
        f"subscribers:\n  - url: https://core.example/hooks\n    secret: {SECRET}\n    events: ['*']\n"
    )
    (subscriber,) = load_subscribers(make_settings(webhooks_file=path))  # why: the file under test
    assert subscriber.url == "https://core.example/hooks" and SECRET not in repr(subscriber)


def test_a_rollback_is_delivered_signed_with_the_version_facts(make_client, receiver, tmp_path):
    train_versions(tmp_path / "models", 2)
    target = receiver()
    client = make_client(webhooks=hooks(target.url), public_url="http://trainer.test:8001", **FAST)
    answer = client.post(
        "/models/vit/aliases/champion", json={"version": "v1", "reason": "v2 bad"}, headers=AUTH
    )
    assert answer.status_code == 200
    wait_for(lambda: len(target.events()) == 2, "two events")
    assert sorted(target.events()) == ["alias.changed", "model.rolled_back"]
    assert all(r["verified"] for r in target.requests)
    body = next(r["body"] for r in target.requests if r["body"]["type"] == "model.rolled_back")
    data = body["data"]
    assert (data["version"], data["from"], data["cause"], data["actor"], data["reason"]) == (
        "v1",
        "v2",
        "rollback",
        "api",
        "v2 bad",
    )
    assert data["weights_url"] == "http://trainer.test:8001/models/vit/v1/weights.pt"
    assert data["model_json_url"] == "http://trainer.test:8001/models/vit/v1/model.json"
    assert data["sha256"] and data["auc"] == 0.9
    listed = wait_for(lambda: [d for d in deliveries(client) if d["state"] == "delivered"], "delivered rows")
    assert {d["event"] for d in listed} == {"alias.changed", "model.rolled_back"}
    assert all(d["attempts"] == 1 and d["attempt_log"][0]["status"] == 200 for d in listed)
    check_with_the_documented_snippets(target.requests[0])
    raw = client.get("/webhooks/deliveries", headers=AUTH).text
    assert SECRET not in raw and SECRET.removeprefix("whsec_") not in raw
    assert client.get("/webhooks/deliveries").status_code == 401


def check_with_the_documented_snippets(request: dict) -> None:
    """docs/exposr-core.md's verification snippets, run as written on a real delivery (and a forged one)."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "exposr-core.md").read_text(encoding="utf-8")
    library, by_hand = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len([line for line in library.splitlines() if line.strip()]) <= 3  # "in three lines of Python"
    for snippet in (library, by_hand):
        exec(snippet, {"secret": SECRET, "body": request["raw"], "headers": request["headers"]})
        with pytest.raises(Exception):  # noqa: B017 (the library raises its own, the snippet AssertionError)
            exec(snippet, {"secret": SECRET, "body": request["raw"] + b" ", "headers": request["headers"]})


def test_500_twice_then_200_is_three_attempts_of_one_event(make_client, receiver, tmp_path):
    train_versions(tmp_path / "models", 2)
    target = receiver(script=[500, 500])
    client = make_client(webhooks=hooks(target.url, ["model.rolled_back"]), **FAST)
    client.post("/models/vit/aliases/champion", json={"version": "v1", "reason": "x"}, headers=AUTH)
    (row,) = wait_for(lambda: deliveries(client, state="delivered"), "the delivery", seconds=120)
    assert row["attempts"] == 3 and [a["status"] for a in row["attempt_log"]] == [500, 500, 200]
    assert [a["error"] for a in row["attempt_log"]] == ["HTTP 500", "HTTP 500", None]
    assert [r["status"] for r in target.requests] == [500, 500, 200]
    assert len({r["headers"]["webhook-id"] for r in target.requests}) == 1  # one event, retried
    assert len({json.dumps(r["body"]) for r in target.requests}) == 1  # the same body every time


def test_a_receiver_down_across_a_restart_gets_the_event_after(
    env, make_client, receiver, tmp_path, make_settings
):
    train_versions(tmp_path / "models", 2)
    gone = receiver()
    port, url = gone.port, gone.url
    gone.stop()  # nothing listens on the port: connections are refused
    env.setenv("WEBHOOKS", hooks(url))  # why: the CLI reads its settings from the environment
    assert cli.main(["rollback", "--reason", "while Core is down"]) == cli.EXIT_OK
    first = make_client(webhooks=hooks(url), **FAST)
    wait_for(
        lambda: all(d["attempts"] >= 1 for d in deliveries(first)) and deliveries(first), "a refused attempt"
    )
    refused = deliveries(first)[0]["attempt_log"][0]
    assert refused["status"] is None and "Connect" in refused["error"]
    first.__exit__(None, None, None)  # the service stops with the deliveries pending
    back = receiver(port=port)
    second = make_client(webhooks=hooks(url), **FAST)  # a restart: the outbox is read again
    wait_for(lambda: len(back.events()) == 2, "both events after the restart", seconds=120)
    assert sorted(back.events()) == ["alias.changed", "model.rolled_back"]
    rows = deliveries(second)
    assert all(d["state"] == "delivered" and d["attempts"] >= 2 for d in rows)
    assert {d["payload"]["data"]["actor"] for d in rows} == {"cli"}


def test_a_failed_delivery_can_be_resent(make_client, receiver, tmp_path):
    train_versions(tmp_path / "models", 2)
    target = receiver(script=[503] * 100)
    # why: a retry window of about a second, so the delivery is given up within the test
    client = make_client(webhooks=hooks(target.url, ["alias.changed"]), webhook_retry_hours=0.0003, **FAST)
    client.post("/models/vit/aliases/champion", json={"version": "v1", "reason": "x"}, headers=AUTH)
    (failed,) = wait_for(lambda: deliveries(client, state="failed"), "the delivery to be given up")
    assert failed["next_try"] is None and failed["last_status"] == 503
    target.script.clear()
    again = client.post(f"/webhooks/deliveries/{failed['id']}/resend", headers=AUTH)
    assert again.status_code == 200 and again.json()["state"] == "pending"
    (done,) = wait_for(lambda: deliveries(client, state="delivered"), "the re-sent delivery")
    assert done["id"] == failed["id"] and done["attempts"] == failed["attempts"] + 1
    assert client.post("/webhooks/deliveries/msg_nope/resend", headers=AUTH).status_code == 404


def test_training_events(make_settings):
    settings = make_settings()
    job = {"id": "j1", "kind": "train", "trigger": "scheduled", "state": "succeeded"}
    result = {
        "version": "v4",
        "model": "vit",
        "promoted": False,
        "promotion_reason": "not better",
        "val_auc": 0.7,
    }
    events = training_events(settings, {**job, "result": result}, champion={"version": "v3"})
    assert [e for e, _ in events] == ["training.not_promoted"]
    assert events[0][1]["promotion_reason"] == "not better" and events[0][1]["version"] == "v4"
    promoted = {
        **result,
        "promoted": True,
        "compared_with": "v3",
        "shortcut_warning": "EXIF predicts the label",
    }
    events = training_events(settings, {**job, "result": promoted}, champion={"version": "v4"})
    assert [e for e, _ in events] == ["model.promoted", "alias.changed", "shortcut.warning"]
    assert events[0][1]["from"] == "v3" and events[0][1]["cause"] == "promotion"
    failed = training_events(settings, {**job, "state": "failed", "error": "too few images"}, None)
    assert failed == [
        ("training.failed", {"job_id": "j1", "trigger": "scheduled", "error": "too few images"})
    ]


@pytest.mark.postgres_only
async def test_two_replicas_on_one_postgres_deliver_each_event_once(make_settings, postgres_server, receiver):
    from app.jobstore import make_engine
    from dataset.db import migrate

    target = receiver()
    url = postgres_server.new_database()
    settings = make_settings(database_url=url, webhooks=hooks(target.url), **FAST)
    subscribers = load_subscribers(settings)
    engines = [make_engine(settings), make_engine(settings)]
    await migrate(engines[0])
    outboxes = [Outbox(engine, settings, subscribers) for engine in engines]
    senders = [WebhookSender(outbox) for outbox in outboxes]
    for sender in senders:
        await sender.start()
    try:
        for n in range(40):  # events enqueued on both replicas, both senders claiming at once
            await outboxes[n % 2].enqueue("alias.changed", {"n": n})
            senders[(n + 1) % 2].poke()
        deadline = time.monotonic() + 120
        while len(target.requests) < 40 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)  # a duplicate would arrive now
    finally:
        for sender in senders:
            await sender.stop()
        for engine in engines:
            await engine.dispose()
    ids = Counter(r["headers"]["webhook-id"] for r in target.requests)
    assert len(ids) == 40 and set(ids.values()) == {1}
    assert sorted(r["body"]["data"]["n"] for r in target.requests) == list(range(40))


@pytest.fixture
def env(monkeypatch, tmp_path, database_url):
    monkeypatch.chdir(tmp_path)
    if database_url:
        monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DATASET_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(cli, "configure_logging", lambda settings: None)
    return monkeypatch


async def test_the_cli_training_outcome_is_queued_for_the_senders(make_settings, tmp_path):
    from app.jobstore import make_engine

    train_versions(tmp_path / "models", 1)
    settings = make_settings(webhooks=hooks("https://core.example/hooks"))  # why: a subscriber to queue for

    async def trained(settings, progress):  # what the train job answers for v1, promoted
        return {"version": "v1", "model": "vit", "promoted": True, "val_auc": 0.9}

    async def failed(settings, progress):
        raise RuntimeError("too few images")

    done = await cli.run_as_job(settings, "train", trained, lambda data: None)
    assert done["state"] == "succeeded" and done["trigger"] == "cli"
    assert (await cli.run_as_job(settings, "train", failed, lambda data: None))["state"] == "failed"
    engine = make_engine(settings)
    try:
        total, rows = await Outbox(engine, settings, load_subscribers(settings)).list()
    finally:
        await engine.dispose()
    assert sorted(r["event"] for r in rows) == ["alias.changed", "model.promoted", "training.failed"]
    assert all(r["state"] == "pending" for r in rows) and total == 3
    failure = next(r for r in rows if r["event"] == "training.failed")["payload"]["data"]
    assert failure["trigger"] == "cli" and "too few images" in failure["error"]


def test_the_console_lists_deliveries_and_sends_one_again(make_client, receiver, tmp_path):
    from tests.app.test_console import login

    train_versions(tmp_path / "models", 2)
    target = receiver(script=[500] * 100)
    client = make_client(webhooks=hooks(target.url, ["model.rolled_back"]), **FAST)
    assert client.get("/ui/webhooks", follow_redirects=False).status_code == 303  # login first
    csrf = login(client)
    client.post("/models/vit/aliases/champion", json={"version": "v1", "reason": "x"}, headers=AUTH)
    wait_for(lambda: len(target.requests) >= 2, "two refused attempts")
    page = client.get("/ui/webhooks")
    assert page.status_code == 200 and "model.rolled_back v1" in page.text and "500, 500" in page.text
    assert SECRET not in page.text
    (row,) = deliveries(client)
    target.script.clear()
    forged = client.post(f"/ui/webhooks/{row['id']}/resend", data={"csrf_token": "y" * 20})
    assert forged.status_code == 403
    again = client.post(f"/ui/webhooks/{row['id']}/resend", data={"csrf_token": csrf})
    assert again.status_code == 200 and "sending again" in again.text
    wait_for(lambda: deliveries(client, state="delivered"), "the delivery")
