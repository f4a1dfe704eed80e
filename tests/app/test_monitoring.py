"""Live monitoring of the served model (issue 25 point 4): a new generator the champion never saw
arrives weeks after its training, the labeler's scores on it are poor, and the week's row says so,
fires model.degraded to a webhook subscriber, shows on /metrics and Prometheus, and (with
RETRAIN_ON_DEGRADATION) queues a training. Rows are written once and never recomputed."""

from __future__ import annotations

import asyncio
import json
import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from dataset import manager as manager_module
from dataset.manager import DatasetManager
from tests.app.conftest import AUTH
from tests.app.test_console import login
from tests.app.test_webhooks import FAST, Receiver, hooks, wait_for
from tests.images import jpeg
from trainer.monitoring import PSI_ALARM, Observation, degradation, psi, weekly_rows

NOW = datetime.now(UTC)


@pytest.fixture
def core():
    """A webhook receiver on 127.0.0.1 (tests/app/test_webhooks.py's)."""
    made = Receiver()
    yield made
    made.stop()


TRAINED = NOW - timedelta(weeks=6)


def _register_champion(models, rng: random.Random) -> None:
    folder = models / "vit" / "v1"
    folder.mkdir(parents=True)
    (folder / "weights.pt").write_bytes(b"w")
    (folder / "model.json").write_text(json.dumps({"architecture": "x"}))
    images = [{"id": f"r{i}", "label": "real", "p_ai": rng.uniform(0.01, 0.45)} for i in range(60)]
    images += [{"id": f"a{i}", "label": "ai", "p_ai": rng.uniform(0.55, 0.99)} for i in range(60)]
    for row in images:  # the rest of a report row: the console redraws its plots from them
        row.update(margin=math.log(row["p_ai"] / (1 - row["p_ai"])), p_ai_raw=row["p_ai"], generator=None)
    (folder / "report.json").write_text(json.dumps({"evaluation": {"images": images}}))
    entry = {
        "model": "vit",
        "version": "v1",
        "promoted": True,
        "timestamp": TRAINED.isoformat().replace("+00:00", "Z"),
        "val_auc": 0.95,
        "val_auc_ci95": [0.9, 0.99],
        "report": "report.json",
    }
    (models / "registry.json").write_text(json.dumps([entry]))


async def _store(settings, when: datetime, items: list[tuple[str, str | None, float]], seed: int) -> None:
    """Images stored at ``when`` with their label, generator and the labeler's score."""
    original = manager_module.utc_now
    manager_module.utc_now = lambda: when
    try:
        async with DatasetManager(settings) as dm:
            for i, (label, generator, score) in enumerate(items):
                meta = {"source": "folder", "label": label, **({"generator": generator} if generator else {})}
                outcome = await dm.ingest(jpeg(seed + i, size=(64, 48)), meta)
                assert outcome.status == "stored", outcome
                await dm.set_score(outcome.id, score, {"name": "local", "model": "vit", "version": "v1"})
    finally:
        manager_module.utc_now = original


def _week(rng, real_high: float, ai: tuple[str, float, float], n: int = 20) -> list:
    generator, low, high = ai
    return [("real", None, rng.uniform(0.0, real_high)) for _ in range(n)] + [
        ("ai", generator, rng.uniform(low, high)) for _ in range(n)
    ]


def test_a_new_generator_arriving_later_degrades_the_model_and_fires_the_event(
    make_client, make_settings, core, tmp_path
):
    rng = random.Random(25)
    _register_champion(tmp_path / "models", rng)
    settings = make_settings()
    # Week 1 (4 weeks ago): the generators the champion knew, scored as well as at evaluation.
    asyncio.run(_store(settings, NOW - timedelta(weeks=4), _week(rng, 0.45, ("SDXL 1.0", 0.55, 1.0)), 100))
    # Week 2 (2 weeks ago): a new generator the champion never saw: its images score like real ones.
    asyncio.run(_store(settings, NOW - timedelta(weeks=2), _week(rng, 0.45, ("Flux.2", 0.0, 0.5)), 200))
    # Before the champion's training: never counted.
    asyncio.run(_store(settings, TRAINED - timedelta(days=3), _week(rng, 1.0, ("Old", 0.0, 1.0), 5), 300))

    trained = []

    async def label(settings, progress):
        return {"scored": 0}

    async def train(settings, progress):
        trained.append(True)
        return {}

    target = core
    client = make_client(
        job_kinds={"label": label, "train": train},
        webhooks=hooks(target.url, ["model.degraded"]),
        retrain_on_degradation=True,  # why: the setting under test
        **FAST,
    )
    assert client.post("/label", headers=AUTH).status_code in (200, 201, 202)
    wait_for(lambda: target.events() == ["model.degraded"], "the model.degraded delivery")
    body = target.requests[0]["body"]["data"]
    assert body["version"] == "v1" and "below the lower bound 0.9" in body["reason"]
    assert body["week"]["n"] == {"real": 20, "ai": 20}

    answer = client.get("/models/vit/v1/monitoring", headers=AUTH).json()
    rows = answer["rows"]
    assert [r["n"] for r in rows] == [{"real": 20, "ai": 20}, {"real": 20, "ai": 20}]  # not the old ones
    first, second = rows
    assert first["auc"] > 0.95 and first["degraded"] is None and first["ks_p"] > 0.01
    assert second["auc"] < 0.8 and second["auc_ci95"][1] < 0.9 and second["degraded"] == body["reason"]
    assert set(second["by_generator"]) == {"Flux.2"} and set(first["by_generator"]) == {"SDXL 1.0"}
    assert second["ks_p"] < 0.01 and second["psi"] > PSI_ALARM and answer["degraded"] == second["degraded"]
    assert answer["promotion_auc_ci95"] == [0.9, 0.99]

    metrics = client.get("/metrics", headers=AUTH).json()
    assert metrics["live_auc"] == second["auc"] and metrics["live_week"] == second["week"]
    assert metrics["model_degraded"] == body["reason"]
    page = client.get("/metrics/prometheus", headers=AUTH).text
    assert (
        f'exposr_model_live_auc{{model="vit",version="v1",week="{second["week"]}"}} {second["auc"]}' in page
    )
    assert 'exposr_model_degraded{model="vit"} 1.0' in page and "exposr_score_psi{" in page
    wait_for(lambda: trained, "the training queued by RETRAIN_ON_DEGRADATION")
    login(client)  # the console's model page plots the weeks and says why the model degraded
    page = client.get("/ui/models/vit/v1").text
    assert 'id="monitoring-plot"' in page and second["week"] in page and 'id="degraded"' in page

    # A second run writes nothing new and fires nothing more: the rows stand as written.
    assert client.post("/label", headers=AUTH).status_code in (200, 201, 202)

    def labels_done() -> bool:
        jobs = [j for j in client.get("/jobs", headers=AUTH).json()["jobs"] if j["kind"] == "label"]
        return len(jobs) == 2 and all(j["state"] == "succeeded" for j in jobs)

    wait_for(labels_done, "the second label job")
    assert client.get("/models/vit/v1/monitoring", headers=AUTH).json()["rows"] == rows
    assert target.events() == ["model.degraded"]
    assert client.get("/models/vit/v9/monitoring", headers=AUTH).status_code == 404


def test_weekly_rows_psi_and_degradation_by_hand():
    base = datetime(2026, 11, 2, 12, tzinfo=UTC)  # a Monday: ISO week 2026-W45
    obs = [Observation((base + timedelta(days=d)).isoformat(), "real", 0.1 * (d % 3)) for d in range(6)]
    obs += [Observation((base + timedelta(days=d)).isoformat(), "ai", 0.8 + 0.01 * d) for d in range(6)]
    obs.append(Observation((base + timedelta(days=7)).isoformat(), "ai", 0.9))  # 2026-W46, not ended
    rows = weekly_rows(obs, [0.1, 0.9] * 20, 5, now=base + timedelta(days=8))
    assert [r["week"] for r in rows] == ["2026-W45"]
    assert rows[0]["auc"] == 1.0 and rows[0]["n"] == {"real": 6, "ai": 6} and rows[0]["psi"] is None  # < 20
    partial = weekly_rows(obs, [0.1, 0.9] * 20, 5, now=base + timedelta(days=8), include_open=True)
    assert partial[-1]["week"] == "2026-W46" and partial[-1]["partial"] is True
    # PSI of identical distributions is 0; half the mass moved from the low to the high half is large.
    ref = [i / 100 for i in range(100)]
    assert psi(ref, ref) == pytest.approx(0.0)
    assert psi(ref, [0.95] * 50 + ref[:50]) > PSI_ALARM
    assert degradation({"week": "w", "auc": 0.7, "auc_ci95": [0.6, 0.8], "psi": 0.1}, 0.85) is not None
    assert degradation({"week": "w", "auc": 0.8, "auc_ci95": [0.7, 0.9], "psi": 0.1}, 0.85) is None
    shifted = {"week": "w", "auc": None, "auc_ci95": None, "psi": 0.3, "ks_p": 0.001}
    assert "PSI 0.3" in degradation(shifted, 0.85)
    assert degradation({**shifted, "ks_p": 0.2}, 0.85) is None  # a PSI the sample size explains
