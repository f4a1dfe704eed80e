"""Attack 5: no paths or internals in answers, nothing raw in the log, exact HTTP semantics."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from app.logging_setup import configure_logging
from config.settings import ConfigError, load_settings
from tests.app.conftest import AUTH
from tests.images import jpeg


def _upload(client) -> str:
    response = client.post(
        "/upload", headers=AUTH, files={"file": ("a.jpg", jpeg(7))}, data={"label": "real"}
    )
    assert response.status_code == 201
    return response.json()["id"]


def _image_file(settings, image_id: str):
    return next(settings.dataset_dir.glob(f"images/**/{image_id}.*"))


def test_storage_errors_name_the_setting_not_the_path(make_client, make_settings):
    client = make_client()
    settings = client.app.state.settings
    image_id = _upload(client)
    path = _image_file(settings, image_id)
    path.unlink()
    path.mkdir()  # the file's place holds something unreadable: a real OSError from the driver
    response = client.get(f"/images/{image_id}", headers=AUTH)
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "under DATASET_DIR" in detail and str(settings.dataset_dir.resolve()) not in detail
    assert str(settings.dataset_dir.parent) not in response.text


def test_public_status_shows_no_server_paths(make_client):
    async def failing(settings, progress):
        raise RuntimeError(f"cannot write {settings.dataset_dir.resolve()}/images/x.jpg: disk full")

    client = make_client(job_kinds={"scrape": failing})
    settings = client.app.state.settings
    job_id = client.post("/scrape", headers=AUTH).json()["job_id"]
    for _ in range(200):
        if client.get(f"/jobs/{job_id}", headers=AUTH).json()["state"] == "failed":
            break
    status = client.get("/status")
    assert (
        str(settings.dataset_dir.resolve()) not in status.text
        and str(settings.log_dir.parent) not in status.text
    )
    assert status.json()["last_jobs"]["scrape"]["state"] == "failed"
    # Where an error text is shown (GET /jobs/{id}, behind the token), it names the setting too.
    detail = client.get(f"/jobs/{job_id}", headers=AUTH).json()["error"]
    assert "cannot write DATASET_DIR/images/x.jpg" in detail


def test_control_characters_from_a_request_are_escaped_in_the_log(make_client):
    client = make_client()
    settings = client.app.state.settings
    configure_logging(settings)
    client.get("/%00%1b%5B31mevil%0a2026-01-01 00:00:00 ERROR forged line")
    logging.getLogger("scraper.http").warning(
        "remote said: %s", "busy\r\n2026-01-01 00:00:00 ERROR forged line"
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = (settings.log_dir / "trainer.log").read_text(encoding="utf-8")
    assert "\x00" not in text and "\x1b" not in text
    assert "GET /\\x00\\x1b[31mevil" in text  # visible, harmless
    assert "remote said: busy\\x0d\\x0a2026-01-01 00:00:00 ERROR forged line" in text
    assert not any(line.startswith("2026-01-01 00:00:00 ERROR forged") for line in text.splitlines())


def _register(settings, card: bytes) -> str:
    folder = settings.models_dir / "vit" / "v1"
    folder.mkdir(parents=True)
    weights = b"weights bytes"
    (folder / "weights.pt").write_bytes(weights)
    (folder / "model.json").write_bytes(card)
    sha = hashlib.sha256(weights).hexdigest()
    entry = {
        "model": "vit",
        "version": "v1",
        "timestamp": "2026-01-01T00:00:00Z",
        "promoted": True,
        "weights_sha256": sha,
        "val_acc": 0.9,
    }
    (settings.models_dir / "registry.json").write_text(json.dumps([entry]))
    return sha


@pytest.mark.parametrize("card", [b"\xff\xfe{not utf-8", b'{"not": json', b"\x00\x00"])
def test_an_undecodable_model_json_is_a_json_503_with_the_reason(make_client, card):
    client = make_client()
    _register(client.app.state.settings, card)
    response = client.get("/models/vit/v1/model.json", headers=AUTH)
    assert response.status_code == 503 and response.headers["content-type"] == "application/json"
    assert "model.json cannot be decoded" in response.json()["detail"]
    assert str(client.app.state.settings.models_dir) not in response.text


def test_a_registry_that_is_not_utf8_is_a_503_naming_models_dir(make_client):
    client = make_client()
    settings = client.app.state.settings
    settings.models_dir.mkdir(parents=True)
    (settings.models_dir / "registry.json").write_bytes(b"\xff\xfe[]")
    response = client.get("/models/latest", headers=AUTH)
    assert response.status_code == 503 and "registry" in response.json()["detail"]
    assert str(settings.models_dir.resolve()) not in response.text


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("*", 304),
        ('W/"{sha}"', 304),
        ('"other", "{sha}"', 304),
        ('"a",W/"{sha}" , "b"', 304),
        ('"other"', 200),
        ('W/"other", "x"', 200),
        ("", 200),
        ('"{sha}x"', 200),
    ],
)
def test_if_none_match_follows_rfc_9110(make_client, header, status):
    client = make_client()
    sha = _register(client.app.state.settings, b'{"arch": "x"}')
    response = client.get(
        "/models/vit/v1/weights.pt", headers={**AUTH, "If-None-Match": header.format(sha=sha)}
    )
    assert response.status_code == status and response.headers["etag"] == f'"{sha}"'
    assert response.content == (b"" if status == 304 else b"weights bytes")


def test_patch_on_an_image_whose_file_is_gone_is_404(make_client):
    client = make_client()
    image_id = _upload(client)
    _image_file(client.app.state.settings, image_id).unlink()
    response = client.patch(f"/images/{image_id}", headers=AUTH, json={"label": "ai"})
    assert response.status_code == 404 and image_id in response.json()["detail"]


def test_patch_with_a_bad_body_is_still_a_422_listing_the_problem(make_client):
    client = make_client()
    image_id = _upload(client)
    response = client.patch(f"/images/{image_id}", headers=AUTH, json={"label": "maybe"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "label"
    assert client.patch(f"/images/{image_id}", headers=AUTH, content=b"\xff").status_code == 422


@pytest.mark.parametrize("key", ["x", "short-key-15chr"])
def test_a_short_api_key_stops_start_up_without_printing_it(monkeypatch, key):
    monkeypatch.setenv("TRAINER_API_KEY", key)
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None)
    message = str(refused.value)
    assert "TRAINER_API_KEY" in message and "at least 16 characters" in message and key not in message


def test_a_16_character_key_is_accepted(monkeypatch):
    monkeypatch.setenv("TRAINER_API_KEY", "k" * 16)
    assert load_settings(_env_file=None).trainer_api_key.get_secret_value() == "k" * 16
