"""Issue 22 point 5 through the service: GET /models/{name}/benchmark and the console's benchmark
plot; versions registered before the benchmark was set are scored in the background at start-up."""

from __future__ import annotations

import re
import time

from dataset.storage import LocalStorage
from tests.app.conftest import AUTH
from tests.app.test_console import login
from tests.trainer.builders import make_samples
from tests.trainer.test_benchmark import copy_version, write_benchmark
from trainer.train import train_on_samples

TRAIN = dict(
    train_arch="test_resnet",
    train_image_size=32,
    train_epochs=4,
    train_batch_size=16,
    train_lr=3e-3,
    min_train_samples=20,
    val_fraction=0.25,
)


def scored(client, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get("/models/vit/benchmark", headers=AUTH)
        assert answer.status_code == 200, answer.text
        view = answer.json()
        if not view["pending"] or time.monotonic() > deadline:
            return view
        time.sleep(0.5)


def test_older_versions_are_scored_in_the_background_and_plotted_one_point_each(
    make_settings, make_client, tmp_path
):
    settings = make_settings(**TRAIN)
    # The training set lives outside the service's DATASET_DIR: only the models are shared.
    storage = LocalStorage(tmp_path / "trained-on")
    train_on_samples(settings, make_samples(storage, 48, seed=11), storage)  # v1
    copy_version(settings.models_dir, "v1")  # v2
    bench = tmp_path / "bench"
    write_benchmark(bench, n=8)

    client = make_client(eval_benchmark_dir=bench, **TRAIN)  # why: the setting under test
    view = scored(client)
    assert view["pending"] is False and view["n"] == {"real": 8, "ai": 8}
    assert [v["version"] for v in view["versions"]] == ["v1", "v2"]
    for v in view["versions"]:
        assert v["n"] == {"real": 8, "ai": 8}
        assert v["auc_ci95"][0] <= v["auc"] <= v["auc_ci95"][1]
        assert v["excluded"] == {"same_sha256": 0, "copy_of_training_image": 0}

    login(client)
    page = client.get("/ui/models").text
    figure = re.search(r'id="benchmark-chart">(.*?)</figure>', page, re.S)[1]
    points = re.findall(r'<circle class="estimate" data-name="([^"]*)" data-value="([^"]*)"', figure)
    assert [name for name, _ in points] == ["vit v1", "vit v2"]  # one point per version
    assert [float(value) for _, value in points] == [float(f"{v['auc']:.4g}") for v in view["versions"]]


def test_without_a_benchmark_the_endpoint_says_how_to_set_one(client):
    answer = client.get("/models/vit/benchmark", headers=AUTH)
    assert answer.status_code == 404 and "EVAL_BENCHMARK_DIR" in answer.json()["detail"]
    assert client.get("/models/vit/benchmark").status_code == 401
