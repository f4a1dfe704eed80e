"""The local-model fallback: a tiny model really trained (test_resnet, 32 px), Exposr-Core down."""

from __future__ import annotations

import shutil

import httpx
import pytest
import respx

from dataset.manager import DatasetManager
from labeler.scoring import run_labeler
from tests.images import encode
from tests.trainer.builders import tinted
from trainer.predict import load_promoted
from trainer.train import train_model

ENDPOINT = "https://core.test/api/v1/analyze"
N_PER_CLASS = 12
ALL = 2 * N_PER_CLASS + 2  # both classes plus two unlabeled images
# One trained dataset is copied per test as files (the SQLite index with it); the labeler's
# database work runs against PostgreSQL in test_integration.py and test_scorer_index.py.
# One test process runs this module: its module-scoped fixture is costly (make test: --dist loadgroup).
pytestmark = [pytest.mark.xdist_group("labeler.test_local_model"), pytest.mark.sqlite_only]


async def no_sleep(_seconds: float) -> None:
    return None


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A folder for one dataset and one promoted model, built once per module (training is slow)."""
    return tmp_path_factory.mktemp("local-model")


@pytest.fixture
async def settings_with_model(make_settings, pristine, tmp_path):
    """Settings on a fresh copy of the pristine dataset and models: each test starts unscored."""

    def tiny(root):
        return make_settings(
            dataset_dir=root / "datasets",
            models_dir=root / "models",
            exposr_core_endpoint=ENDPOINT,
            train_arch="test_resnet",
            train_image_size=32,
            train_epochs=4,
            train_batch_size=8,
            train_lr=3e-3,
            train_workers=0,
            min_train_samples=8,
            val_fraction=0.25,
            eval_min_per_class=5,
            # why: the labeler's fallback needs a served model, not a decision; at 5 + 5 evaluation
            # images the paired interval against the content-only baseline is too wide to clear 0
            promotion_content_baseline=False,
        )

    if not (pristine / "models" / "registry.json").exists():
        await build_dataset_and_model(tiny(pristine))
    for folder in ("datasets", "models"):
        shutil.copytree(pristine / folder, tmp_path / "copy" / folder)
    return tiny(tmp_path / "copy")


async def build_dataset_and_model(settings) -> None:
    async with DatasetManager(settings) as dm:
        for i in range(ALL):
            label = ("real", "ai")[i % 2] if i < 2 * N_PER_CLASS else "unlabeled"
            drawn = label if label != "unlabeled" else "ai"
            # A colour cast: what a 4-epoch model learns for sure (the gate's content check is off).
            outcome = await dm.ingest(encode(tinted(i, drawn), "JPEG"), {"source": "folder", "label": label})
            assert outcome.status == "stored", outcome
    result = train_model(settings)
    assert result["promoted"] is True, result["promotion_reason"]


async def stored_images(settings) -> dict[str, tuple[bytes, dict]]:
    async with DatasetManager(settings) as dm:
        samples = await dm.samples(labels=("real", "ai", "unlabeled"))
        return {s.id: (await dm.read_image(s.id), await dm.get_metadata(s.id)) for s in samples}


@respx.mock
async def test_local_model_scores_when_core_is_down_then_skips_what_it_scored(settings_with_model):
    settings = settings_with_model
    respx.post(ENDPOINT).mock(side_effect=httpx.ConnectError("connection refused"))
    labels_before = {
        image_id: meta["label"] for image_id, (_, meta) in (await stored_images(settings)).items()
    }

    report = await run_labeler(settings, sleep=no_sleep)
    assert report["scorer"] == {"name": "local-model", "model": "vit", "version": "v1"}
    assert report["core"]["error"] == "unreachable"
    assert (report["total"], report["scored"], report["errors"]) == (ALL, ALL, {})

    images = await stored_images(settings)
    expected = load_promoted(settings).predict_bytes([data for data, _ in images.values()])
    stored = [meta["confidence"] for _, meta in images.values()]
    assert stored == pytest.approx(expected, abs=1e-6)  # exactly what the promoted model says
    for _, meta in images.values():
        assert meta["scored_by"]["name"] == "local-model" and meta["scored_by"]["version"] == "v1"
    assert {image_id: meta["label"] for image_id, (_, meta) in images.items()} == labels_before
    assert sorted(labels_before.values()).count("unlabeled") == 2  # every kind of label was there to keep

    again = await run_labeler(settings, sleep=no_sleep)
    assert (again["scored"], again["skipped"]) == (0, ALL)


@respx.mock
async def test_core_back_up_rescores_over_the_local_model(settings_with_model):
    settings = settings_with_model
    respx.post(ENDPOINT).mock(side_effect=httpx.ConnectError("connection refused"))
    await run_labeler(settings, sleep=no_sleep)
    respx.post(ENDPOINT).mock(
        side_effect=None,
        return_value=httpx.Response(200, json={"ai_probability": 0.42, "model_version": "core-1"}),
    )

    report = await run_labeler(settings, sleep=no_sleep)
    assert report["scorer"]["name"] == "exposr-core"
    assert report["scored"] == ALL
    assert {meta["confidence"] for _, meta in (await stored_images(settings)).values()} == {0.42}


@respx.mock
async def test_an_undecodable_file_costs_one_score_not_the_batch(settings_with_model):
    settings = settings_with_model
    respx.post(ENDPOINT).mock(side_effect=httpx.ConnectError("connection refused"))
    async with DatasetManager(settings) as dm:
        victim = (await dm.samples(labels=("unlabeled",)))[0]
        dm.storage.put(victim.image_key, b"\xff\xd8 this is no longer a jpeg")

    report = await run_labeler(settings, sleep=no_sleep)
    assert report["errors"] == {"prediction_failed": 1}
    assert report["scored"] == ALL - 1
