"""Cheap polling (issue 23 point 5): ETag and 304 on /models/latest and model.json, Range and the
SHA-256 header on weights, from MODELS_DIR and from the bucket (every replica answers the same)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.app.conftest import AUTH
from tests.app.test_aliases import entry, staged
from trainer.model_store import SharedModelStore
from trainer.registry import commit_version

WEIGHTS = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture(params=["local", "s3"])
def served(request, make_client, make_settings, tmp_path):
    """A client serving v1 (and its settings), from MODELS_DIR or from a bucket another host published to."""
    if request.param == "local":
        models = tmp_path / "models"
        commit_version(models, staged(models, WEIGHTS), entry(WEIGHTS), compared_with=None)
        return make_client(), models
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    # why: the polling contract must hold on a fleet's replicas, which read the bucket (STORAGE_DRIVER=s3)
    shared = dict(storage_driver="s3", s3_bucket=bucket, s3_endpoint_url=endpoint)
    trainer_host = make_settings(models_dir=tmp_path / "trainer-models", **shared)
    store = SharedModelStore(trainer_host)
    etag = store.pull()
    models = tmp_path / "trainer-models"
    commit_version(models, staged(models, WEIGHTS), entry(WEIGHTS), compared_with=None)
    store.publish("v1", "vit", etag)
    # why: the replica has its own empty MODELS_DIR, so every answer below comes from the bucket
    return make_client(models_dir=tmp_path / "replica-models", **shared), models


def test_latest_answers_an_etag_and_304_while_unchanged(served):
    client, _ = served
    first = client.get("/models/latest", headers=AUTH)
    assert first.status_code == 200 and first.json()["model_version"] == "v1"
    etag = first.headers["etag"]
    again = client.get("/models/latest", headers={**AUTH, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert client.get("/models/latest", headers={**AUTH, "If-None-Match": '"other"'}).status_code == 200


def test_latest_etag_changes_when_the_champion_moves(served):
    client, models = served
    etag = client.get("/models/latest", headers=AUTH).headers["etag"]
    client.post("/models/vit/aliases/canary", json={"version": "v1", "reason": "mirror"}, headers=AUTH)
    assert client.get("/models/latest", headers={**AUTH, "If-None-Match": etag}).status_code == 304
    rows = client.get("/models/vit/history", headers=AUTH).json()["rows"]
    assert [r["alias"] for r in rows] == ["canary", "champion"]


def test_model_json_answers_an_etag_and_304(served):
    client, models = served
    card = client.get("/models/vit/v1/model.json", headers=AUTH)
    assert card.status_code == 200 and card.json()["architecture"] == "resnet10t"
    expected = hashlib.sha256((models / "vit" / "v1" / "model.json").read_bytes()).hexdigest()
    assert card.headers["etag"] == f'"{expected}"'
    again = client.get("/models/vit/v1/model.json", headers={**AUTH, "If-None-Match": card.headers["etag"]})
    assert again.status_code == 304


def test_weights_give_their_sha256_and_resume_with_range(served):
    client, _ = served
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    whole = client.get("/models/vit/v1/weights.pt", headers=AUTH)
    assert whole.content == WEIGHTS and whole.headers["etag"] == f'"{sha}"'
    assert whole.headers["repr-digest"] == f"sha-256=:{base64.b64encode(bytes.fromhex(sha)).decode()}:"
    assert whole.headers["accept-ranges"] == "bytes"
    part = client.get("/models/vit/v1/weights.pt", headers={**AUTH, "Range": "bytes=4000-"})
    assert part.status_code == 206 and part.content == WEIGHTS[4000:]
    assert part.headers["content-range"] == f"bytes 4000-{len(WEIGHTS) - 1}/{len(WEIGHTS)}"
    assert WEIGHTS[:4000] + part.content == WEIGHTS  # a cut download, resumed
    middle = client.get("/models/vit/v1/weights.pt", headers={**AUTH, "Range": "bytes=10-19"})
    assert middle.status_code == 206 and middle.content == WEIGHTS[10:20]
    tail = client.get("/models/vit/v1/weights.pt", headers={**AUTH, "Range": "bytes=-100"})
    assert tail.content == WEIGHTS[-100:]
    # If-Range with another ETag: the file changed since the first part, so the whole file comes back.
    stale = client.get(
        "/models/vit/v1/weights.pt", headers={**AUTH, "Range": "bytes=4000-", "If-Range": '"x"'}
    )
    assert stale.status_code == 200 and stale.content == WEIGHTS
    fresh = client.get(
        "/models/vit/v1/weights.pt", headers={**AUTH, "Range": "bytes=4000-", "If-Range": f'"{sha}"'}
    )
    assert fresh.status_code == 206
    past = client.get("/models/vit/v1/weights.pt", headers={**AUTH, "Range": f"bytes={len(WEIGHTS)}-"})
    assert past.status_code == 416
