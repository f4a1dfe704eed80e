"""The labeler job against a real dataset in tmp_path and Exposr-Core faked with respx."""

from __future__ import annotations

import httpx
import pytest
import respx

from dataset.manager import DatasetManager
from labeler.scoring import run_labeler
from tests.images import jpeg

ENDPOINT = "https://core.test/api/v1/analyze"
LABELS = ["real", "ai", "unlabeled", "real", "ai", "unlabeled"]


async def no_sleep(_seconds: float) -> None:
    return None


@pytest.fixture
def core_settings(make_settings):
    return make_settings(exposr_core_endpoint=ENDPOINT, exposr_core_concurrency=2)


@pytest.fixture
async def stored(core_settings) -> dict[int, str]:
    """Seed -> image id for six stored images; image seed n has label LABELS[n]."""
    ids = {}
    async with DatasetManager(core_settings) as dm:
        for seed, label in enumerate(LABELS):
            outcome = await dm.ingest(jpeg(seed), {"source": "upload", "label": label})
            assert outcome.status == "stored", outcome
            ids[seed] = outcome.id
    return ids


def seed_of(request: httpx.Request) -> int:
    """Which test image a Core request carries (the multipart body holds the original bytes)."""
    for seed in range(len(LABELS)):
        if jpeg(seed) in request.content:
            return seed
    raise AssertionError("request without a known image")


def core_answers(answer_for_seed):
    """A respx side effect: answer_for_seed(seed) -> httpx.Response (or raises)."""
    return lambda request: answer_for_seed(seed_of(request))


async def metadata(settings, ids: dict[int, str]) -> dict[int, dict]:
    async with DatasetManager(settings) as dm:
        return {seed: await dm.get_metadata(image_id) for seed, image_id in ids.items()}


async def label(settings, **kwargs) -> dict:
    return await run_labeler(settings, sleep=no_sleep, **kwargs)


@respx.mock
async def test_core_scores_every_image_and_records_the_scorer(core_settings, stored):
    respx.post(ENDPOINT).mock(
        side_effect=core_answers(
            lambda seed: httpx.Response(200, json={"ai_probability": seed / 10, "model_version": "core-3"})
        )
    )
    events = []
    report = await label(core_settings, progress=events.append)

    assert report["scorer"] == {"name": "exposr-core", "version": "core-3"}
    assert (report["total"], report["pending"], report["scored"], report["skipped"]) == (6, 6, 6, 0)
    assert report["errors"] == {}
    assert report["core"]["available"] is True
    metas = await metadata(core_settings, stored)
    for seed, meta in metas.items():
        assert meta["confidence"] == pytest.approx(seed / 10)
        assert meta["label"] == LABELS[seed]  # scoring never touches a label
        assert meta["scored_by"]["name"] == "exposr-core"
        assert meta["scored_by"]["version"] == "core-3"
        assert meta["scored_by"]["at"].endswith("Z")
    assert events[-1]["done"] == events[-1]["total"] == 6  # the probe image counts as done


@respx.mock
async def test_second_run_skips_what_the_current_scorer_scored_and_a_new_version_rescores(
    core_settings, stored
):
    version = {"now": "core-3"}
    route = respx.post(ENDPOINT).mock(
        side_effect=lambda request: httpx.Response(
            200, json={"ai_probability": 0.5, "model_version": version["now"]}
        )
    )
    await label(core_settings)
    calls_before = route.call_count

    again = await label(core_settings)
    assert (again["scored"], again["skipped"], again["pending"]) == (0, 6, 0)
    assert route.call_count - calls_before == 1  # only the probe

    version["now"] = "core-4"
    upgraded = await label(core_settings)
    assert upgraded["scored"] == 6
    assert {m["scored_by"]["version"] for m in (await metadata(core_settings, stored)).values()} == {"core-4"}


@respx.mock
async def test_garbage_answers_are_counted_errors_never_scores(core_settings, stored):
    garbage = {
        1: httpx.Response(200, text="<html>busy</html>"),
        2: httpx.Response(200, json={"other": 0.4}),
        3: httpx.Response(200, json={"ai_probability": 1.7}),
        4: httpx.Response(200, text='{"ai_probability": NaN}'),
    }
    respx.post(ENDPOINT).mock(
        side_effect=core_answers(
            lambda seed: garbage.get(seed, httpx.Response(200, json={"ai_probability": 0.25}))
        )
    )
    report = await label(core_settings)

    assert report["scored"] == 2
    assert report["errors"] == {
        "core_bad_json": 1,
        "core_missing_field": 1,
        "core_out_of_range": 1,
        "core_not_a_number": 1,
    }
    metas = await metadata(core_settings, stored)
    assert [metas[s]["confidence"] for s in range(6)] == [0.25, None, None, None, None, 0.25]
    assert all("scored_by" not in metas[s] for s in garbage)


@respx.mock
async def test_errors_are_retried_and_a_timing_out_image_is_counted(core_settings, stored):
    calls: dict[int, int] = {}

    def answer(seed: int) -> httpx.Response:
        calls[seed] = calls.get(seed, 0) + 1
        if seed == 2:
            raise httpx.ReadTimeout("core is slow")
        if seed == 3 and calls[seed] == 1:
            return httpx.Response(503, headers={"Retry-After": "1"})
        return httpx.Response(200, json={"ai_probability": 0.9})

    respx.post(ENDPOINT).mock(side_effect=core_answers(answer))
    report = await label(core_settings)

    assert report["scored"] == 5
    assert report["errors"] == {"core_timeout": 1}
    assert calls[3] == 2
    assert calls[2] == 4  # bounded attempts
    assert (await metadata(core_settings, stored))[2]["confidence"] is None


@respx.mock
async def test_core_that_stops_answering_ends_the_run_early(core_settings, stored, monkeypatch):
    monkeypatch.setattr("labeler.scoring.CORE_GIVE_UP_AFTER", 2)
    answered = {"n": 0}

    def answer(request: httpx.Request) -> httpx.Response:
        if answered["n"] == 0:
            answered["n"] += 1
            return httpx.Response(200, json={"ai_probability": 0.5})
        raise httpx.ConnectError("connection refused")

    respx.post(ENDPOINT).mock(side_effect=answer)
    report = await label(core_settings)

    assert report["scored"] == 1
    assert "stopped answering" in report["aborted"]
    assert 2 <= report["errors"]["core_unreachable"] < 5  # the rest were never tried


@respx.mock
async def test_no_core_and_no_model_says_why(core_settings, stored):
    respx.post(ENDPOINT).mock(side_effect=httpx.ConnectError("connection refused"))
    report = await label(core_settings)

    assert report["scorer"] is None
    assert report["scored"] == 0
    assert report["core"]["error"] == "unreachable"
    assert "POST /train" in report["reason"] and "EXPOSR_CORE_ENDPOINT" in report["reason"]
    assert all(m["confidence"] is None for m in (await metadata(core_settings, stored)).values())


async def test_empty_dataset_is_reported_not_an_error(core_settings):
    report = await label(core_settings)
    assert report["total"] == 0 and report["scored"] == 0
    assert "no images" in report["reason"]


@respx.mock
async def test_missing_image_file_is_counted_and_the_rest_go_on(core_settings, stored):
    respx.post(ENDPOINT).respond(json={"ai_probability": 0.3})
    async with DatasetManager(core_settings) as dm:
        [sample] = [s for s in await dm.samples(labels=("ai",)) if s.id == stored[1]]
        dm.storage.delete(sample.image_key)
    report = await label(core_settings)
    assert report["errors"] == {"unreadable_image": 1}
    assert report["scored"] == 5


@respx.mock
async def test_credentials_in_the_endpoint_stay_out_of_report_and_logs(make_settings, caplog):
    settings = make_settings(exposr_core_endpoint="https://bot:s3cret@core.test/api/v1/analyze?key=k3y")
    async with DatasetManager(settings) as dm:
        await dm.ingest(jpeg(1), {"source": "upload", "label": "unlabeled"})
    respx.route(host="core.test").mock(side_effect=httpx.ConnectError("connection refused"))

    with caplog.at_level("DEBUG"):
        report = await label(settings)

    assert report["core"]["endpoint"] == "https://core.test/api/v1/analyze"
    text = repr(report) + caplog.text
    assert "s3cret" not in text and "k3y" not in text


@respx.mock
async def test_garbage_for_the_first_images_tried_does_not_turn_core_off(core_settings, stored):
    calls: dict[int, int] = {}

    def answer(seed: int) -> httpx.Response:
        calls[seed] = calls.get(seed, 0) + 1
        if seed in (0, 1):  # the images the probe tries first (oldest first)
            return httpx.Response(415, json={"detail": "unsupported image"})
        return httpx.Response(200, json={"ai_probability": 0.6, "model_version": "core-3"})

    respx.post(ENDPOINT).mock(side_effect=core_answers(answer))
    report = await label(core_settings)

    assert report["scorer"] == {"name": "exposr-core", "version": "core-3"}
    assert (report["total"], report["pending"], report["scored"]) == (6, 6, 4)
    assert report["errors"] == {"core_http_415": 2}
    assert calls == {seed: 1 for seed in range(6)}  # refused images are not sent twice in one run
    metas = await metadata(core_settings, stored)
    assert [metas[s]["confidence"] for s in range(6)] == [None, None, 0.6, 0.6, 0.6, 0.6]


@respx.mock
async def test_core_that_answers_only_garbage_is_not_used_and_each_answer_is_counted(core_settings, stored):
    route = respx.post(ENDPOINT).respond(200, text="<html>maintenance</html>")
    report = await label(core_settings)

    assert report["scorer"] is None and report["scored"] == 0
    assert report["errors"] == {"core_bad_json": 3}  # PROBE_TRIES images, then Core is given up on
    assert route.call_count == 3
    assert report["core"]["error"] == "bad_json" and "maintenance" in report["core"]["message"]
    assert all(m["confidence"] is None for m in (await metadata(core_settings, stored)).values())
