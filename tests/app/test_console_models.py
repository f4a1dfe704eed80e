"""The console's model pages: plots redrawn from report.json, and two versions compared.

Each check recomputes what a plot shows from the report's own rows with an independent tool
(scikit-learn's roc_curve, numpy counts) or with promotion's own test (trainer.stats).
"""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from tests.app.console_data import epoch_rows, image_rows, register_version, report_for
from tests.app.test_console import login
from trainer.stats import paired_auc_difference


def report_with_rows(version: str, seed: int, skill: float = 1.5, **rows) -> dict:
    report = report_for(version, 0.8)
    report["evaluation"]["images"] = image_rows(seed, skill=skill, **rows)
    report["training"] = {"epochs": epoch_rows()}
    return report


def values(page: str, element_id: str, name: str | None = None) -> list[tuple[float, float]]:
    """The data values of the first polyline (or the one called ``name``) inside ``element_id``."""
    figure = re.search(rf'id="{element_id}">(.*?)</figure>', page, re.S)[1]
    pattern = r'<polyline class="series" data-name="([^"]*)" data-points="\d+" data-values="([^"]*)"'
    for found, raw in re.findall(pattern, figure):
        if name is None or html.unescape(found) == name:
            return [tuple(map(float, pair.split(","))) for pair in raw.split()]
    raise AssertionError(f"no series {name!r} in {element_id}")


@pytest.fixture
def two_versions(client, tmp_path):
    first = report_with_rows("v1", 1)
    second = report_with_rows("v2", 2, skill=2.5)
    models = client.app.state.settings.models_dir
    register_version(models, val_auc=0.8, promoted=True, reason="first promoted version", report=first)
    register_version(
        models, val_auc=0.85, promoted=False, reason="not promoted: AUC not better", report=second
    )
    client.app.state.overview.invalidate()
    login(client)
    return first, second


def test_the_roc_curve_on_the_model_page_is_the_reports_own(client, two_versions):
    report = two_versions[1]
    page = client.get("/ui/models/vit/v2").text
    rows = report["evaluation"]["images"]
    labels = np.array([r["label"] == "ai" for r in rows], dtype=int)
    fpr, tpr, _ = roc_curve(labels, [r["margin"] for r in rows], drop_intermediate=False)
    drawn = values(page, "roc-plot")
    assert len(drawn) == len(fpr)
    assert np.allclose(drawn, np.column_stack([fpr, tpr]), atol=1e-6)


def test_the_confusion_matrix_counts_at_the_served_threshold(client, two_versions):
    rows = two_versions[1]["evaluation"]["images"]
    page = client.get("/ui/models/vit/v2").text
    cells = {
        (row, col): int(n)
        for row, col, n in re.findall(r'data-row="([^"]+)" data-column="([^"]+)" data-value="(\d+)"', page)
    }
    ai = np.array([r["label"] == "ai" for r in rows])
    called = np.array([r["p_ai"] >= 0.5 for r in rows])
    assert cells[("true real", "called ai")] == int((~ai & called).sum())
    assert cells[("true ai", "called ai")] == int((ai & called).sum())
    assert cells[("true ai", "called real")] == int((ai & ~called).sum())
    assert "the trainer&#39;s decision threshold" in page or "the trainer's decision threshold" in page


def test_model_json_threshold_is_the_one_drawn(client, two_versions):
    folder = client.app.state.settings.models_dir / "vit" / "v2"
    card = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**card, "threshold": 0.8}))
    page = client.get("/ui/models/vit/v2").text
    rows = two_versions[1]["evaluation"]["images"]
    called_ai = sum(r["p_ai"] >= 0.8 for r in rows)
    cells = re.findall(r'data-column="called ai" data-value="(\d+)"', page)
    assert sum(map(int, cells)) == called_ai and "model.json threshold" in page


def test_every_plot_is_drawn_and_the_verdict_is_said_once(client, two_versions):
    page = client.get("/ui/models/vit/v2").text
    for figure in (
        "roc",
        "pr",
        "histogram",
        "reliability",
        "confusion",
        "generator",
        "source",
        "loss",
        "auc",
    ):
        assert re.search(rf'id="{figure}-plot"><svg', page), figure
    assert re.search(r'id="decision">Not promoted: AUC not better<', page)
    loss = values(page, "loss-plot", "train_loss")
    assert [x for x, _ in loss] == [1, 2, 3, 4] and loss[0][1] == 0.7
    interval = re.search(r'class="interval" data-name="Flux.1 D \(held out\)" data-values="([^"]+)"', page)
    assert interval[1] == "0.6,0.8"


def test_an_older_report_says_the_plot_needs_a_newer_training(client, two_versions):
    register_version(
        client.app.state.settings.models_dir,
        val_auc=0.7,
        promoted=False,
        reason="x",
        report=report_for("v3", 0.7),
    )
    page = client.get("/ui/models/vit/v3")
    assert page.status_code == 200
    assert "this plot needs a newer training" in page.text
    assert not re.search(r'id="roc-plot"><svg', page.text)


@pytest.mark.parametrize("path", ["/ui/models/vit/v9", "/ui/models/other-model/v1"])
def test_an_unknown_version_is_a_page_that_says_so(client, two_versions, path):
    answer = client.get(path)
    assert answer.status_code == 404 and "<h1>No such version</h1>" in answer.text
    assert "Traceback" not in answer.text


def test_compare_gives_promotions_paired_difference_on_the_images_both_evaluated(client, two_versions):
    first, second = two_versions
    page = client.get("/ui/models/compare", params={"a": "v1", "b": "v2"}).text
    a = {r["id"]: r for r in first["evaluation"]["images"]}
    b = {r["id"]: r for r in second["evaluation"]["images"]}
    common = sorted(set(a) & set(b))
    labels = [int(b[i]["label"] == "ai") for i in common]
    expected = paired_auc_difference(
        labels, [b[i]["margin"] for i in common], [a[i]["margin"] for i in common]
    )
    lo, hi = expected.ci()
    shown = re.search(r'id="difference"><strong>([^<]+)</strong> <span>95% CI \[([^,]+), ([^\]]+)\]', page)
    assert [float(x) for x in shown.groups()] == pytest.approx([expected.difference, lo, hi], abs=6e-5)
    assert re.search(rf'id="n-common">{len(common)}<', page)
    assert values(page, "compare-roc", "first") and values(page, "compare-roc", "second")


def test_compare_only_counts_images_both_versions_evaluated(client, tmp_path):
    login(client)
    models = client.app.state.settings.models_dir
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(60)]
    first = report_with_rows("v1", 1, ids=ids[:40], n_real=20, n_ai=20)
    second = report_with_rows("v2", 2, ids=ids[10:20] + ids[30:60], n_real=10, n_ai=30)
    register_version(models, val_auc=0.8, promoted=True, reason="r", report=first)
    register_version(models, val_auc=0.8, promoted=True, reason="r", report=second)
    page = client.get("/ui/models/compare?a=v1&b=v2").text
    assert re.search(r'id="n-common">20<', page)  # ids 10-19 and 30-39


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        ({"a": "v1", "b": "v1"}, 400, "choose two different versions"),
        ({"a": "v1", "b": "v8"}, 404, "no model &#39;vit&#39; version &#39;v8&#39;"),
    ],
)
def test_compare_answers_bad_choices_on_the_page(client, two_versions, query, status, text):
    answer = client.get("/ui/models/compare", params=query)
    assert answer.status_code == status and text in answer.text and "Traceback" not in answer.text


def test_compare_without_per_image_rows_says_why(client, two_versions):
    register_version(
        client.app.state.settings.models_dir,
        val_auc=0.7,
        promoted=False,
        reason="x",
        report=report_for("v3", 0.7),
    )
    page = client.get("/ui/models/compare?a=v3&b=v2").text
    assert "No paired difference" in page and "trained before reports kept them" in page
