"""The whole service on real parts: folder sources -> scrape job -> training job (separate process)
-> /models/latest -> weights over HTTP -> the model rebuilt from model.json predicts."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import yaml

from app.jobs import scrape_job, train_job
from tests.app.conftest import AUTH
from tests.images import encode, jpeg
from tests.trainer.builders import textured

pytestmark = pytest.mark.slow
KINDS = {"scrape": scrape_job, "train": train_job}  # without follow-up label jobs
TINY = dict(
    train_arch="resnet10t",
    train_image_size=32,
    train_epochs=4,
    train_batch_size=8,
    train_lr=3e-3,
    min_train_samples=12,
    val_fraction=0.25,
    train_seed=1,
)


def write_sources(tmp_path, n: int = 24):
    real, ai = tmp_path / "real", tmp_path / "ai"
    real.mkdir()
    ai.mkdir()
    for i in range(n):
        (real / f"r{i}.jpg").write_bytes(jpeg(100 + i))
        (ai / f"a{i}.png").write_bytes(encode(textured(200 + i, "ai", size=(72, 72)), "PNG"))
    config = tmp_path / "sources.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "sources": [
                    {"name": "folder", "label": "real", "path": str(real)},
                    {"name": "folder", "label": "ai", "path": str(ai)},
                ]
            }
        )
    )
    return config


def wait_for(client, job_id: str, seconds: float = 900) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}", headers=AUTH).json()
        if job["state"] not in ("queued", "running"):
            return job
        assert client.get("/status").status_code == 200  # the API answers while the job runs
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['state']} after {seconds}s")


# torchvision 0.29 deprecates its JPEG codec, which the trainer's transforms use.
@pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
)
def test_scrape_train_download_predict(make_client, tmp_path):
    client = make_client(job_kinds=KINDS, sources_config=write_sources(tmp_path), **TINY)

    too_small = wait_for(client, client.post("/train", headers=AUTH).json()["job_id"])
    assert too_small["state"] == "failed" and "MIN_TRAIN_SAMPLES=12" in too_small["error"]
    assert client.get("/models/latest", headers=AUTH).status_code == 404

    scrape = wait_for(client, client.post("/scrape", headers=AUTH).json()["job_id"])
    assert scrape["state"] == "succeeded", scrape["error"]
    assert scrape["result"]["totals"]["stored"] == 48
    counts = client.get("/status").json()["dataset_counts"]
    assert counts == {"total": 48, "real": 24, "ai_generated": 24, "unlabeled": 0}

    train = wait_for(client, client.post("/train", headers=AUTH).json()["job_id"])
    assert train["state"] == "succeeded", train["error"]
    assert train["result"]["promoted"] is True, train["result"]["promotion_reason"]
    # The job's progress carries the per-batch numbers (kept through the later reports).
    assert train["progress"]["images_per_s"] > 0 and train["progress"]["percent"] == 100.0

    latest = client.get("/models/latest", headers=AUTH).json()
    assert latest["model_version"] == "v1"
    assert latest["download_url"] == "/models/vit/v1/weights.pt"
    metrics = client.get("/metrics", headers=AUTH).json()
    assert metrics["models_trained"] == 1 and metrics["validation_accuracy"] == latest["metrics"]["val_acc"]
    assert client.get("/status").json()["last_train"] is not None

    weights = client.get(latest["download_url"], headers=AUTH)
    assert weights.status_code == 200
    assert int(weights.headers["content-length"]) == len(weights.content)
    sha = hashlib.sha256(weights.content).hexdigest()
    assert weights.headers["etag"] == f'"{sha}"' and latest["sha256"] == sha
    not_modified = client.get(latest["download_url"], headers={**AUTH, "If-None-Match": f'"{sha}"'})
    assert not_modified.status_code == 304
    card = client.get("/models/vit/v1/model.json", headers=AUTH).json()
    report = client.get("/models/vit/v1/report", headers=AUTH).json()
    assert len(report["evaluation"]["image_ids"]) == train["result"]["val_size"] == 20
    assert report["evaluation"]["n"] == latest["evaluation"]["n"] == {"real": 10, "ai": 10}
    ci = report["evaluation"]["auc_ci95"]
    assert latest["evaluation"]["auc_ci95"] == metrics["validation_auc_ci95"] == ci
    assert card["temperature"] == report["evaluation"]["temperature"] == latest["temperature"]
    # JPEG photos against PNG textured scenes: the metadata-only probe sees the format shortcut and says so.
    assert report["shortcut"]["metadata_probe_auc"] > 0.9
    assert "without looking at pixels" in client.get("/status").json()["shortcut_warning"]
    assert client.get("/models/vit/v1/report").status_code == 401

    # Exposr-Core's side: rebuild from model.json + the downloaded weights, then predict.
    from trainer.predict import Predictor

    folder = tmp_path / "core"
    folder.mkdir()
    (folder / "weights.pt").write_bytes(weights.content)
    (folder / "model.json").write_text(json.dumps(card))
    scores = Predictor(folder, device="cpu").predict_bytes(
        [jpeg(999), encode(textured(999, "ai", size=(72, 72)), "PNG")]
    )
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)

    for bad in (
        "/models/vit/v2/weights.pt",
        "/models/other/v1/weights.pt",
        "/models/vit/..%2F..%2Fx/weights.pt",
        "/models/vit/v1/../../../registry.json",
    ):
        assert client.get(bad, headers=AUTH).status_code == 404
