"""Aliases with an append-only history (issue 23 points 2-3): /models/{name}/aliases, /history,
/models/latest?at=, POST /models/{name}/aliases/champion, the CLI's promote and rollback."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from app import cli
from tests.app.conftest import AUTH
from trainer.registry import commit_version, make_staging_dir, write_json_atomic


def staged(models_dir, payload: bytes):
    staging = make_staging_dir(models_dir)
    (staging / "weights.pt").write_bytes(payload)
    (staging / "model.json").write_text(json.dumps({"architecture": "resnet10t"}))
    (staging / "report.json").write_text(json.dumps({"promotion": {"promoted": True}}))
    return staging


def entry(payload: bytes, promoted=True, auc=0.9):
    return {
        "model": "vit",
        "timestamp": "2026-01-01T00:00:00Z",
        "val_auc": auc,
        "promoted": promoted,
        "promotion_reason": "beats the champion",
        "report": "report.json",
        "sha256": hashlib.sha256(payload).hexdigest(),
    }


def train_versions(models_dir, count: int) -> None:
    """v1..v{count}, each promoted against the one before (as trainings would commit them)."""
    for n in range(1, count + 1):
        payload = f"weights {n}".encode()
        commit_version(
            models_dir,
            staged(models_dir, payload),
            entry(payload),
            compared_with=f"v{n - 1}" if n > 1 else None,
        )


@pytest.fixture
def models(tmp_path):
    path = tmp_path / "models"
    train_versions(path, 3)
    return path


def history_file(models) -> list[dict]:
    return json.loads((models / "history.json").read_text())


def test_promotions_are_committed_as_champion_rows_with_their_report(client, models):
    aliases = client.get("/models/vit/aliases", headers=AUTH).json()["aliases"]
    assert aliases["champion"]["version"] == "v3" and aliases["champion"]["cause"] == "promotion"
    rows = client.get("/models/vit/history", headers=AUTH).json()["rows"]
    assert [(r["from"], r["to"]) for r in rows] == [("v2", "v3"), ("v1", "v2"), (None, "v1")]  # newest first
    assert rows[0]["report"]["url"] == "/models/vit/v3/report"
    assert rows[0]["actor"] == "scheduler" and rows[0]["reason"] == "beats the champion"
    assert client.get("/models/latest", headers=AUTH).json()["model_version"] == "v3"


def test_rollback_moves_the_champion_and_appends_without_rewriting(client, models):
    before = history_file(models)
    answer = client.post(
        "/models/vit/aliases/champion", json={"version": "v1", "reason": "v3 flags screenshots"}, headers=AUTH
    )
    assert answer.status_code == 200, answer.text
    row = answer.json()["row"]
    assert (row["alias"], row["from"], row["to"], row["cause"], row["actor"]) == (
        "champion",
        "v3",
        "v1",
        "rollback",
        "api",
    )
    assert row["reason"] == "v3 flags screenshots"
    after = history_file(models)
    assert after[: len(before)] == before and len(after) == len(before) + 1  # appended, never rewritten
    assert client.get("/models/latest", headers=AUTH).json()["model_version"] == "v1"
    assert client.get("/models/vit/v1/weights.pt", headers=AUTH).content == b"weights 1"
    forward = client.post(
        "/models/vit/aliases/champion", json={"version": "v2", "reason": "fixed"}, headers=AUTH
    )
    assert forward.json()["row"]["cause"] == "manual"


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"version": "v9", "reason": "x"}, 404, "no version 'v9'"),
        ({"version": "v1", "reason": "   "}, 422, "reason is required"),
        ({"version": "v1"}, 422, "reason"),
    ],
)
def test_move_refusals(client, models, body, code, words):
    answer = client.post("/models/vit/aliases/champion", json=body, headers=AUTH)
    assert answer.status_code == code, answer.text
    assert words in json.dumps(answer.json())
    assert client.get("/models/latest", headers=AUTH).json()["model_version"] == "v3"  # unchanged


def test_missing_or_changed_weights_are_refused_with_409(client, models):
    (models / "vit" / "v1" / "weights.pt").write_bytes(b"tampered")
    answer = client.post("/models/vit/aliases/champion", json={"version": "v1", "reason": "x"}, headers=AUTH)
    assert answer.status_code == 409 and "SHA-256" in answer.json()["detail"]
    (models / "vit" / "v2" / "weights.pt").unlink()
    answer = client.post("/models/vit/aliases/champion", json={"version": "v2", "reason": "x"}, headers=AUTH)
    assert answer.status_code == 409 and "missing" in answer.json()["detail"]
    assert len(history_file(models)) == 3


def test_moving_an_alias_needs_the_key(client, models):
    answer = client.post("/models/vit/aliases/champion", json={"version": "v1", "reason": "x"})
    assert answer.status_code == 401


def test_other_aliases_are_set_and_read_the_same_way(client, models):
    answer = client.post(
        "/models/vit/aliases/canary", json={"version": "v2", "reason": "try it"}, headers=AUTH
    )
    assert answer.status_code == 200 and answer.json()["row"]["cause"] == "manual"
    aliases = client.get("/models/vit/aliases", headers=AUTH).json()["aliases"]
    assert (aliases["canary"]["version"], aliases["champion"]["version"]) == ("v2", "v3")
    assert client.get("/models/latest", headers=AUTH).json()["model_version"] == "v3"
    bad = client.post("/models/vit/aliases/Bad%20Name", json={"version": "v2", "reason": "x"}, headers=AUTH)
    assert bad.status_code == 422
    only = client.get("/models/vit/history", params={"alias": "canary"}, headers=AUTH).json()
    assert [r["to"] for r in only["rows"]] == ["v2"]


def test_history_is_paged_newest_first(client, models):
    page = client.get("/models/vit/history", params={"limit": 2, "offset": 1}, headers=AUTH).json()
    assert page["total"] == 3 and [r["to"] for r in page["rows"]] == ["v2", "v1"]
    assert [r["seq"] for r in page["rows"]] == [2, 1]


def test_latest_at_an_instant_answers_the_version_served_then(client, models):
    rows = history_file(models)
    # Rows were written within milliseconds: move them apart in time to ask about the gaps.
    for row, at in zip(
        rows, ("2026-11-01T00:00:00Z", "2026-11-10T00:00:00Z", "2026-11-20T00:00:00Z"), strict=True
    ):
        row["at"] = at
    write_json_atomic(models / "history.json", rows)

    def at(instant):
        return client.get("/models/latest", params={"at": instant}, headers=AUTH)

    assert at("2026-10-01T00:00:00Z").status_code == 404
    assert at("2026-11-05T00:00:00Z").json()["model_version"] == "v1"
    assert at("2026-11-10T00:00:00+00:00").json()["model_version"] == "v2"  # the instant of the move
    assert at("2026-11-15T01:00:00+01:00").json()["model_version"] == "v2"
    assert at("2026-12-01T00:00:00Z").json()["model_version"] == "v3"
    bad = at("yesterday")
    assert bad.status_code == 422 and "RFC 3339" in bad.json()["detail"]
    assert at("2026-11-05T00:00:00").status_code == 422  # no timezone: ambiguous


def test_a_registry_written_before_aliases_loads_unchanged(client, tmp_path):
    models = tmp_path / "models"
    train_versions(models, 2)
    (models / "history.json").unlink()  # as a registry of the previous release
    registry = (models / "registry.json").read_bytes()
    rows = client.get("/models/vit/history", headers=AUTH).json()["rows"]
    assert [(r["from"], r["to"], r["cause"]) for r in rows] == [
        ("v1", "v2", "promotion"),
        (None, "v1", "promotion"),
    ]
    assert client.get("/models/latest", headers=AUTH).json()["model_version"] == "v2"
    client.post("/models/vit/aliases/champion", json={"version": "v1", "reason": "back"}, headers=AUTH)
    stored = history_file(models)
    assert [(r["to"], r["cause"]) for r in stored] == [
        ("v1", "promotion"),
        ("v2", "promotion"),
        ("v1", "rollback"),
    ]
    assert (models / "registry.json").read_bytes() == registry


def test_a_rollback_holds_until_a_challenger_beats_the_served_version(make_client, models):
    first = make_client()
    first.post(
        "/models/vit/aliases/champion", json={"version": "v2", "reason": "v3 misbehaves"}, headers=AUTH
    )
    first.__exit__(None, None, None)
    # A training that scored itself against v3 (the champion before the rollback) does not hold.
    stale = commit_version(models, staged(models, b"weights 4"), entry(b"weights 4"), compared_with="v3")
    assert stale["promoted"] is False
    again = make_client()  # a restart: the rollback is read back from history.json
    assert again.get("/models/latest", headers=AUTH).json()["model_version"] == "v2"
    # One that beat the served version (v2) under the rule is promoted.
    won = commit_version(models, staged(models, b"weights 5"), entry(b"weights 5"), compared_with="v2")
    assert won["promoted"] is True
    assert again.get("/models/latest", headers=AUTH).json()["model_version"] == "v5"


def test_the_promotion_rule_is_given_the_served_version_as_champion(models, make_settings):
    from trainer.registry import promoted_entry

    commit = make_settings(models_dir=models)
    from trainer.model_store import ModelRegistry

    ModelRegistry(commit).move_alias("vit", "champion", "v1", reason="rollback", actor="api")
    assert promoted_entry(models, "vit")["version"] == "v1"  # what trainer/promotion.py compares with


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


def test_cli_promote_and_rollback(env, models, capsys):
    assert cli.main(["rollback", "--reason", "v3 misbehaves"]) == cli.EXIT_OK
    assert history_file(models)[-1] | {"at": None} == {
        "seq": 4,
        "model": "vit",
        "alias": "champion",
        "from": "v3",
        "to": "v2",
        "at": None,
        "cause": "rollback",
        "actor": "cli",
        "reason": "v3 misbehaves",
        "report": None,
    }
    assert cli.main(["rollback", "--reason", "v2 too"]) == cli.EXIT_OK
    assert history_file(models)[-1]["to"] == "v1"
    assert cli.main(["promote", "v3", "--reason", "fixed upstream"]) == cli.EXIT_OK
    assert history_file(models)[-1]["cause"] == "manual"
    capsys.readouterr()
    assert cli.main(["promote", "v7", "--reason", "x"]) == cli.EXIT_FAILED
    assert "no version 'v7'" in capsys.readouterr().err
    assert cli.main(["promote", "v2", "--reason", ""]) == cli.EXIT_FAILED
    assert "reason is required" in capsys.readouterr().err
    assert len(history_file(models)) == 6


def test_check_rebuild_index_leaves_the_registry_and_history_alone(env, models, capsys):
    cli.main(["rollback", "--reason", "keep me"])
    before = {p.name: p.read_bytes() for p in models.iterdir() if p.is_file()}
    time.sleep(0.01)
    assert cli.main(["check", "--rebuild-index"]) in (0, 1)
    after = {p.name: p.read_bytes() for p in models.iterdir() if p.is_file()}
    assert after == before and "history.json" in after


def test_the_console_serves_a_version_with_csrf_and_confirmation_and_shows_the_trail(client, models):
    from tests.app.test_console import login

    csrf = login(client)
    page = client.get("/ui/models")
    assert page.status_code == 200 and 'id="trail"' in page.text
    assert page.text.count("Serve this version") == 2  # v1 and v2; v3 is served
    form = {"version": "v1", "reason": "v3 misbehaves", "csrf_token": csrf}
    unconfirmed = client.post("/ui/models/vit/serve", data=form)
    assert unconfirmed.status_code == 422 and "nothing was changed" in unconfirmed.text
    forged = client.post("/ui/models/vit/serve", data={**form, "confirm": "yes", "csrf_token": "x" * 20})
    assert forged.status_code == 403
    assert client.get("/models/latest", headers=AUTH).json()["model_version"] == "v3"
    served = client.post("/ui/models/vit/serve", data={**form, "confirm": "yes"})
    assert served.status_code == 200 and "vit v1 is served now (rollback; was v3)" in served.text
    row = history_file(models)[-1]
    assert (row["to"], row["cause"], row["actor"], row["reason"]) == (
        "v1",
        "rollback",
        "console",
        "v3 misbehaves",
    )
    assert client.get("/models/latest", headers=AUTH).json()["model_version"] == "v1"
    assert "v3 misbehaves" in client.get("/ui/models").text  # the trail shows the reason
    empty = client.post(
        "/ui/models/vit/serve", data={**form, "version": "v2", "reason": " ", "confirm": "yes"}
    )
    assert empty.status_code == 422 and "reason is required" in empty.text
