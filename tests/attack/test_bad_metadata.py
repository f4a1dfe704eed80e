"""Issue 21, attacks 5 and 6: one bad metadata file must not block the documented recovery, and a
partial index must not be served.

Bad files: nested 100,000 deep, ``"width": 1e999``, a confidence of ``10**400``, a width of
2**64 - 1. ``check`` lists each with its file name and reason (no traceback); ``--rebuild-index``
and ``--repair`` set them apart beside the index (``quarantine/<id>/``) and rebuild every other row.
A rebuild cut off, or an index far short of the metadata files, stops start-up naming the command."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from app.main import create_app
from dataset.index import IndexUnusable, images
from dataset.manager import DatasetManager, verify_dataset
from tests.app.conftest import AUTH
from tests.attack.test_index_loss import _cli, _db, _fill, _truncate

NESTED = "[" * 100_000 + "]" * 100_000


def _spoil(settings, image_id: str, how: str) -> str:
    """Rewrite one metadata file the way an attacker (or a broken tool) would; returns its key."""
    path = next((settings.dataset_dir / "meta").rglob(f"{image_id}.json"))
    doc = json.loads(path.read_text())
    text = json.dumps(doc)
    if how == "nested":
        text = text[:-1] + f', "api_data": {NESTED}}}'
    elif how == "width_inf":
        text = text.replace(f'"width": {doc["width"]}', '"width": 1e999')
    elif how == "confidence_huge":
        text = text.replace('"confidence": null', f'"confidence": {10**400}')
        text = text.replace(f'"confidence": {doc["confidence"]}', f'"confidence": {10**400}')
    elif how == "width_u64":
        text = text.replace(f'"width": {doc["width"]}', f'"width": {2**64 - 1}')
    assert text != json.dumps(doc), how
    path.write_text(text)
    return path.relative_to(settings.dataset_dir).as_posix()


SPOILS = ("nested", "width_inf", "confidence_huge", "width_u64")


def test_bad_metadata_files_are_listed_set_apart_and_every_other_row_rebuilt(settings, monkeypatch):
    monkeypatch.setenv("COLUMNS", "3000")  # the report's table, unwrapped, for the file names
    ids = asyncio.run(_fill(settings, 12))
    bad = {ids[3 + i]: (how, _spoil(settings, ids[3 + i], how)) for i, how in enumerate(SPOILS)}
    _truncate(_db(settings))

    found = _cli(settings)  # the report alone
    assert found.returncode == 1 and "Traceback" not in found.stderr, found.stderr[-2000:]
    for _how, key in bad.values():
        assert key in found.stdout  # each bad file named ...
    for reason in ("nested too deep", "'width' inf is out of range", "'confidence' 1000", "'width' 1844"):
        assert reason in found.stdout  # ... with its reason

    rebuilt = _cli(settings, "--rebuild-index")
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-2000:]
    quarantine = settings.dataset_dir / "quarantine"
    for image_id, (_how, key) in bad.items():
        folder = quarantine / image_id
        assert (folder / f"{image_id}.json").is_file() and (folder / "reason.txt").is_file()
        assert len(list(folder.glob(f"{image_id}.*"))) == 2  # the image went with its record
        assert not (settings.dataset_dir / key).exists()

    async def indexed() -> set[str]:
        async with DatasetManager(settings) as dm:
            return {r["id"] for r in await dm.index.all_rows()}

    assert asyncio.run(indexed()) == set(ids) - set(bad)
    asyncio.run(verify_dataset(settings))  # start-up accepts the rebuilt index


def test_patch_on_an_indexed_image_with_a_nested_metadata_file_is_409_and_repair_fixes_it(make_client):
    client = make_client()
    settings = client.app.state.settings
    upload = client.post(
        "/upload", headers=AUTH, data={"label": "real"}, files={"file": ("a.jpg", _image(1))}
    ).json()
    _spoil(settings, upload["id"], "nested")
    answer = client.patch(f"/images/{upload['id']}", headers=AUTH, json={"label": "ai"})
    assert answer.status_code == 409 and "check --repair" in answer.json()["detail"]
    client.__exit__(None, None, None)  # the service stops; the operator repairs
    repaired = _cli(settings, "--repair")
    assert repaired.returncode == 0, repaired.stdout[-3000:] + repaired.stderr[-2000:]
    assert (settings.dataset_dir / "quarantine" / upload["id"] / "reason.txt").is_file()
    with TestClient(create_app(settings)) as again:
        fixed = again.patch(f"/images/{upload['id']}", headers=AUTH, json={"label": "ai"})
    assert fixed.status_code == 200 and fixed.json()["label"] == "ai"


def _image(seed: int) -> bytes:
    from tests.images import jpeg

    return jpeg(seed)


def test_a_rebuild_cut_off_leaves_an_index_that_start_up_refuses(settings, monkeypatch):
    ids = asyncio.run(_fill(settings, 12))
    _truncate(_db(settings))

    async def cut_off_rebuild() -> None:
        from dataset.check import check_dataset

        async with DatasetManager(settings) as dm:
            real_insert, inserted = dm.index.insert, []

            async def insert(row):
                if len(inserted) == 4:
                    raise KeyboardInterrupt  # kill -9 after 4 of 12 rows: nothing after this runs
                inserted.append(row["id"])
                return await real_insert(row)

            monkeypatch.setattr(dm.index, "insert", insert)
            with pytest.raises(KeyboardInterrupt):
                await check_dataset(dm, repair=False, rebuild_index=True)

    asyncio.run(cut_off_rebuild())
    with pytest.raises(IndexUnusable, match="did not finish") as refused:
        asyncio.run(verify_dataset(settings))
    assert "check --rebuild-index" in str(refused.value)
    assert _cli(settings, "--rebuild-index").returncode == 0
    asyncio.run(verify_dataset(settings))  # complete now: accepted

    async def count() -> int:
        async with DatasetManager(settings) as dm:
            return await dm.index.row_count()

    assert asyncio.run(count()) == len(ids)


def test_an_index_far_short_of_the_metadata_files_is_refused_at_start_up(settings):
    ids = asyncio.run(_fill(settings, 30))

    async def drop_most() -> None:
        async with DatasetManager(settings) as dm, dm.index.engine.begin() as conn:
            keep = (await conn.execute(select(images.c.id).limit(5))).scalars().all()
            await conn.execute(delete(images).where(images.c.id.not_in(keep)))

    asyncio.run(drop_most())
    with pytest.raises(IndexUnusable, match="is partial: it has 5 rows") as refused:
        asyncio.run(verify_dataset(settings))
    assert "check --rebuild-index" in str(refused.value)
    assert _cli(settings, "--rebuild-index").returncode == 0
    asyncio.run(verify_dataset(settings))
    assert len(ids) == 30
