"""GET /models/{name}/{version}/report and the evaluation inputs people type (generator names)."""

from __future__ import annotations

import asyncio
import json

import pytest

from config.settings import ConfigError, load_settings
from config.sources import parse_sources
from dataset.manager import DatasetManager
from tests.app.conftest import AUTH
from tests.images import jpeg


def _register(models_dir, version: str, report: bytes | None) -> None:
    folder = models_dir / "vit" / version
    folder.mkdir(parents=True)
    (folder / "weights.pt").write_bytes(b"w")
    (folder / "model.json").write_text(json.dumps({"architecture": "x", "version": version}))
    if report is not None:
        (folder / "report.json").write_bytes(report)
    registry = models_dir / "registry.json"
    entries = json.loads(registry.read_text()) if registry.exists() else []
    registry.write_text(json.dumps([*entries, {"model": "vit", "version": version, "promoted": True}]))


def test_report_is_served_and_an_older_version_without_one_is_a_404_that_says_why(make_client, tmp_path):
    client = make_client()
    models = tmp_path / "models"
    _register(models, "v1", None)
    _register(models, "v2", json.dumps({"version": "v2", "evaluation": {"auc": 0.9}}).encode())
    _register(models, "v3", b"\xff\xfe not json")

    assert client.get("/models/vit/v2/report", headers=AUTH).json()["evaluation"]["auc"] == 0.9
    old = client.get("/models/vit/v1/report", headers=AUTH)
    assert old.status_code == 404 and "trained before reports existed" in old.json()["detail"]
    broken = client.get("/models/vit/v3/report", headers=AUTH)
    assert broken.status_code == 500 and "not valid JSON" in broken.json()["detail"]
    assert client.get("/models/vit/v9/report", headers=AUTH).status_code == 404
    assert client.get("/models/vit/v2/report").status_code == 401


async def _metadata(settings, image_id: str) -> dict:
    async with DatasetManager(settings) as dm:
        return await dm.get_metadata(image_id)


def test_upload_takes_a_generator_and_an_edit_of_and_refuses_odd_names(make_client, make_settings):
    client = make_client()
    first = client.post(
        "/upload",
        headers=AUTH,
        files={"file": ("a.jpg", jpeg(1), "image/jpeg")},
        data={"label": "ai", "generator": "Midjourney v6"},
    )
    assert first.status_code == 201
    edit = client.post(
        "/upload",
        headers=AUTH,
        files={"file": ("b.jpg", jpeg(2), "image/jpeg")},
        data={"label": "ai", "edit_of": first.json()["id"]},
    )
    assert edit.status_code == 201
    meta = asyncio.run(_metadata(make_settings(), edit.json()["id"]))
    assert meta["group_hint"] == f"image:{first.json()['id']}" and meta["generator"] == "unknown"
    assert asyncio.run(_metadata(make_settings(), first.json()["id"]))["generator"] == "Midjourney v6"

    odd = client.post(
        "/upload",
        headers=AUTH,
        files={"file": ("c.jpg", jpeg(3), "image/jpeg")},
        data={"label": "ai", "generator": "<script>alert(1)</script>"},
    )
    assert odd.status_code == 400 and odd.json()["detail"].startswith("generator:")
    ghost = client.post(
        "/upload",
        headers=AUTH,
        files={"file": ("d.jpg", jpeg(4), "image/jpeg")},
        data={"label": "ai", "edit_of": "no-such-id"},
    )
    assert ghost.status_code == 400 and "edit_of" in ghost.json()["detail"]
    assert client.get("/status").json()["dataset_counts"]["total"] == 2  # nothing stored by the refusals


def test_odd_generator_names_stop_start_up_naming_file_entry_field_or_variable(monkeypatch):
    with pytest.raises(ConfigError) as info:
        parse_sources(
            {"sources": [{"name": "folder", "label": "ai", "path": "/x", "generator": "a\nb;rm"}]},
            "sources.yaml",
        )
    assert "sources.yaml: sources[0] (name 'folder'): generator" in str(info.value)
    monkeypatch.setenv("EVAL_HOLDOUT_GENERATORS", "SDXL 1.0,$(boom)")
    with pytest.raises(ConfigError, match="EVAL_HOLDOUT_GENERATORS"):
        load_settings(_env_file=None)
