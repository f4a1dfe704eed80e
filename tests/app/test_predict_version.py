"""Scoring with a registered version that is not served: the CLI's `predict --version`, the API's
POST /models/{name}/{version}/predict, and the 404 of /models/latest that says why none is served."""

from __future__ import annotations

import pytest

from app import cli
from dataset.storage import LocalStorage
from tests.app.conftest import AUTH
from tests.images import encode, noise, scene
from tests.trainer.builders import make_samples
from trainer.predict import load_version
from trainer.train import train_on_samples

pytestmark = pytest.mark.slow
TINY = dict(
    train_arch="test_resnet",
    train_image_size=32,
    train_epochs=2,
    train_batch_size=16,
    train_pretrained=False,
    min_train_samples=20,  # a 40-image dataset: the default 50 would refuse it
    val_fraction=0.25,  # 10 + 10 evaluation images out of 40: the gate's minimum, EVAL_MIN_PER_CLASS
)
IMAGES = [encode(scene(11, (64, 48)), "JPEG"), encode(scene(12, (80, 60)), "PNG")]


@pytest.fixture
def unserved(make_settings):
    """v1 trained on random labels: registered, refused by the promotion gate (no signal)."""
    settings = make_settings(**TINY)
    storage = LocalStorage(settings.dataset_dir)
    result = train_on_samples(settings, make_samples(storage, 40, learnable=False), storage)
    assert result["version"] == "v1" and not result["promoted"], result["promotion_reason"]
    return settings


def test_latest_says_how_many_were_trained_and_why_none_is_served(unserved, make_client):
    client = make_client(**{k: getattr(unserved, k) for k in ("dataset_dir", "models_dir", "log_dir")})
    answer = client.get("/models/latest", headers=AUTH)
    assert answer.status_code == 404
    detail = answer.json()["detail"]
    assert "1 version(s) trained (v1), none passed the promotion gate" in detail
    assert "/models/vit/v1/report" in detail and "not promoted:" in detail
    assert client.get("/models/vit/v1/report", headers=AUTH).status_code == 200  # the URL it names


def test_api_scores_with_an_unserved_version_and_says_so(unserved, make_client):
    client = make_client(**{k: getattr(unserved, k) for k in ("dataset_dir", "models_dir", "log_dir")})
    files = [
        ("file", ("a.jpg", IMAGES[0])),
        ("file", ("b.png", IMAGES[1])),
        ("file", ("c.txt", b"not a picture")),
    ]
    answer = client.post("/models/vit/v1/predict", headers=AUTH, files=files)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["version"], body["served"], body["served_version"]) == ("v1", False, None)
    assert "not the served version" in body["note"]
    expected = load_version(unserved, "v1").predict_bytes(IMAGES)
    assert [p["p_ai"] for p in body["predictions"][:2]] == pytest.approx(expected, abs=1e-5)
    assert body["predictions"][2]["p_ai"] is None and body["predictions"][2]["reason"] == "not_an_image"

    # A photo-sized file (past the 64 KB body limit of the JSON routes) is read like an upload.
    large = encode(noise(13, size=(400, 300)), "PNG")
    assert len(large) > 64 * 1024
    big = client.post("/models/vit/v1/predict", headers=AUTH, files=[("file", ("big.png", large))])
    assert big.status_code == 200, big.text
    assert big.json()["predictions"][0]["p_ai"] == pytest.approx(
        load_version(unserved, "v1").predict_bytes([large])[0], abs=1e-5
    )

    unknown = client.post("/models/vit/v9/predict", headers=AUTH, files=files[:1])
    assert unknown.status_code == 404 and "registered: v1" in unknown.json()["detail"]
    assert client.post("/models/vit/v1/predict", files=files[:1]).status_code == 401


def test_cli_predict_with_a_version_and_without_one(unserved, tmp_path, monkeypatch, capsys):
    for key in ("dataset_dir", "models_dir", "log_dir"):
        monkeypatch.setenv(key.upper(), str(getattr(unserved, key)))
    monkeypatch.chdir(tmp_path)  # no .env here
    image = tmp_path / "photo.jpg"
    image.write_bytes(IMAGES[0])

    assert cli.main(["predict", str(image)]) == 1
    assert "none passed the promotion gate" in capsys.readouterr().err

    assert cli.main(["predict", "--version", "v1", str(image)]) == 0
    out, err = capsys.readouterr()
    expected = load_version(unserved, "v1").predict_bytes(IMAGES[:1])[0]
    assert float(out.split()[0]) == pytest.approx(expected, abs=1e-4)
    assert "not the served version" in err and "none is served yet" in err
