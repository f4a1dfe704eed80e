"""STORAGE_DRIVER=s3: models trained on one host are served by every replica from the bucket
(trainer/model_store.py), with the same bytes, Content-Length and ETag; versions never repeat
across hosts; a conditional write refuses a registry another host changed meanwhile."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from dataset.manager import DatasetManager
from tests.images import encode, jpeg
from tests.trainer.builders import textured
from trainer.model_store import REGISTRY_KEY, RegistryConflict, SharedModelStore, train_with_shared_store

AUTH = {"Authorization": "Bearer test-token-0123456789"}
N_PER_CLASS = 24


@pytest.fixture
def host(make_settings, s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    db = f"sqlite+aiosqlite:///{tmp_path}/shared.db"  # one index for the dataset, as a fleet shares one

    def build(n: int):
        root = tmp_path / f"host{n}"
        return make_settings(
            dataset_dir=root / "datasets",
            models_dir=root / "models",
            log_dir=root / "logs",
            database_url=db,
            storage_driver="s3",
            s3_bucket=bucket,
            s3_prefix="fleet/",
            s3_endpoint_url=endpoint,
            train_arch="resnet10t",
            train_image_size=32,
            train_epochs=5,
            train_batch_size=8,
            train_lr=3e-3,
            min_train_samples=8,
            val_fraction=0.25,
            train_seed=1,
        )

    return build


async def fill(settings) -> None:
    async with DatasetManager(settings) as dm:
        for i in range(2 * N_PER_CLASS):
            label = ("real", "ai")[i % 2]
            data = jpeg(100 + i) if label == "real" else encode(textured(200 + i, "ai", size=(72, 72)), "PNG")
            outcome = await dm.ingest(data, {"source": "folder", "label": label})
            assert outcome.status == "stored", outcome


@pytest.mark.slow
def test_every_replica_serves_the_model_another_host_trained(host):
    trainer_host = host(1)
    asyncio.run(fill(trainer_host))
    first = train_with_shared_store(trainer_host, lambda data: None)
    assert first["version"] == "v1" and first["promoted"], first.get("promotion_reason")
    store = SharedModelStore(trainer_host)
    registry = store.load_registry()
    assert [e["version"] for e in registry] == ["v1"]
    files = set(store.storage.list("models/vit/v1/"))
    assert {"models/vit/v1/weights.pt", "models/vit/v1/model.json"} <= files

    answers = []
    for n in (2, 3):  # replicas that never trained: empty MODELS_DIR of their own
        with TestClient(create_app(host(n))) as client:
            latest = client.get("/models/latest", headers=AUTH)
            card = client.get("/models/vit/v1/model.json", headers=AUTH)
            weights = client.get(latest.json()["download_url"], headers=AUTH)
            again = client.get(
                latest.json()["download_url"], headers={**AUTH, "If-None-Match": weights.headers["etag"]}
            )
            status = client.get("/metrics", headers=AUTH).json()
        assert latest.status_code == 200 and card.status_code == 200 and weights.status_code == 200
        assert again.status_code == 304
        assert status["models_trained"] == 1
        answers.append(
            (
                latest.json(),
                card.json(),
                weights.content,
                weights.headers["etag"],
                weights.headers["content-length"],
            )
        )
        assert not (host(n).models_dir / "registry.json").exists()  # served from the bucket
    assert answers[0] == answers[1]
    local_weights = (trainer_host.models_dir / "vit" / "v1" / "weights.pt").read_bytes()
    assert answers[0][2] == local_weights and answers[0][4] == str(len(local_weights))
    assert answers[0][3] == f'"{registry[0]["sha256"]}"'

    second_host = host(2)
    second = train_with_shared_store(second_host, lambda data: None)  # another host's training
    assert second["version"] == "v2"  # continues the fleet's numbering
    assert [e["version"] for e in store.load_registry()] == ["v1", "v2"]
    # The trainer host's own MODELS_DIR still has a readable registry.json (single-host layout).
    local = json.loads((trainer_host.models_dir / "registry.json").read_text())
    assert [e["version"] for e in local] == ["v1"]


def test_a_registry_changed_since_the_pull_is_not_overwritten(host):
    settings = host(1)
    store = SharedModelStore(settings)
    etag = store.pull()  # nothing in the bucket yet
    assert etag is None
    store.storage.put(REGISTRY_KEY, b"[]\n")  # another host publishes first
    folder = settings.models_dir / "vit" / "v1"
    folder.mkdir(parents=True)
    (folder / "weights.pt").write_bytes(b"w")
    (settings.models_dir / "registry.json").write_text(json.dumps([{"model": "vit", "version": "v1"}]))
    with pytest.raises(RegistryConflict, match="another host published"):
        store.publish("v1", "vit", etag)
    assert store.load_registry() == []


def _commit(settings, n: int, compared_with):
    import hashlib

    from trainer.registry import commit_version, make_staging_dir

    payload = f"weights {n}".encode()
    staging = make_staging_dir(settings.models_dir)
    (staging / "weights.pt").write_bytes(payload)
    (staging / "model.json").write_text("{}")
    entry = {"model": "vit", "promoted": True, "sha256": hashlib.sha256(payload).hexdigest()}
    return commit_version(settings.models_dir, staging, entry, compared_with=compared_with)


def test_the_bucket_keeps_the_alias_history_and_a_rollback_there_holds(host):
    from trainer.model_store import ModelRegistry

    trainer_host, operator_host = host(1), host(2)
    store = SharedModelStore(trainer_host)
    for n in (1, 2):  # two trainings on the trainer host, each beating the champion it pulled
        etag = store.pull()
        _commit(trainer_host, n, compared_with=f"v{n - 1}" if n > 1 else None)
        store.publish(f"v{n}", "vit", etag)
    fleet = ModelRegistry(operator_host)  # any replica reads the bucket's history
    assert [(r["from"], r["to"], r["cause"]) for r in fleet.history()] == [
        (None, "v1", "promotion"),
        ("v1", "v2", "promotion"),
    ]
    etag = store.pull()  # a third training starts: it will be scored against v2 ...
    fleet.move_alias(
        "vit", "champion", "v1", reason="v2 misbehaves", actor="api"
    )  # ... rolled back meanwhile
    _commit(trainer_host, 3, compared_with="v2")  # locally, v2 was still the champion
    store.publish("v3", "vit", etag)
    assert fleet.champion()["version"] == "v1"  # the rollback holds: v3 never beat v1
    assert [r["to"] for r in fleet.history()] == ["v1", "v2", "v1"]
    store.pull()  # the next training on the trainer host compares with the served version
    assert ModelRegistry.local(trainer_host).champion()["version"] == "v1"
    assert (trainer_host.models_dir / "vit" / "v1" / "weights.pt").is_file()
