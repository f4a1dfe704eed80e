"""FetcherManager: the registry, skipped and failing sources, folder import, duplicates across sources,
progress events, the report table, and the client it owns (or not)."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from rich.console import Console

from config.settings import ConfigError
from config.sources import SourceConfig, load_sources
from dataset import manager as manager_module
from scraper.base_fetcher import BaseFetcher
from scraper.fetcher_manager import (
    FETCHERS,
    FetcherManager,
    format_report_table,
    get_fetcher_class,
    known_source_names,
    run_scrape,
)
from scraper.folder_fetcher import FolderFetcher
from tests.images import jpeg, png
from tests.scraper.apis import pexels_search
from tests.scraper.conftest import folder_source, source


def test_registry_lookup_lists_valid_names_on_error():
    assert get_fetcher_class("pexels").__name__ == "PexelsFetcher"
    with pytest.raises(KeyError, match="known sources: civitai, folder, pexels, unsplash"):
        get_fetcher_class("flickr")
    assert known_source_names() == sorted(FETCHERS)


def test_sources_yaml_with_an_unknown_source_names_the_entry(tmp_path):
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n  - {name: flickr, label: real}\n")
    with pytest.raises(ConfigError, match=r"sources\[0\] \(name 'flickr'\).*known sources: civitai, folder"):
        load_sources(path, known_source_names())


def test_shipped_sources_yaml_loads_with_the_registry(settings):
    names = [s.name for s in load_sources(settings.sources_config, known_source_names()).sources]
    assert {"unsplash", "pexels", "civitai"} <= set(names)


def write_folder(root, images: dict[str, bytes]):
    for rel, data in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


async def test_folder_source_imports_recursively_with_label(make_manager, dataset, tmp_path):
    root = write_folder(
        tmp_path / "photos",
        {
            "a.jpg": jpeg(1),
            "trip/b.PNG": png(2),
            "trip/deeper/c.jpeg": jpeg(3),
            ".hidden/d.jpg": jpeg(4),
            "notes.txt": b"hello",
            "broken.jpg": b"not an image",
            "phone/IMG_1.HEIC": b"\x00\x00\x00\x18ftypheic" + bytes(64),
        },
    )
    report = await make_manager(folder_source(root, label="ai")).run()
    r = report["sources"]["folder"]
    assert (r["downloaded"], r["stored"], r["api_requests"]) == (5, 3, 0)
    # Every file is accounted for: HEIC is read and refused with the dataset's reason, not skipped unseen.
    assert r["rejected"] == {"not_an_image": 1, "other_file_type": 1, "unsupported_format": 1}
    counts = await dataset.counts()
    assert counts["ai_generated"] == 3 and counts["real"] == 0
    paths = {(await dataset.get_metadata(s.id))["api_data"]["path"] for s in await dataset.samples()}
    assert paths == {"a.jpg", "trip/b.PNG", "trip/deeper/c.jpeg"}


async def test_folder_limit_applies_only_when_set(make_manager, tmp_path):
    root = write_folder(tmp_path / "p", {f"{i}.jpg": jpeg(60 + i) for i in range(4)})
    report = await make_manager(folder_source(root, limit_per_query=2)).run()
    assert report["sources"]["folder"]["stored"] == 2


async def test_folder_is_walked_once_and_off_the_event_loop(make_manager, tmp_path, monkeypatch):
    # Scrapes run in the service's event loop: listing a big folder (a stat per file) must not stall
    # the API, and the walk for the progress total is the one the import uses.
    root = write_folder(tmp_path / "p", {f"{i}.jpg": jpeg(80 + i) for i in range(3)})
    walks, original = [], FolderFetcher.files

    def files(self):
        walks.append(threading.get_ident())
        yield from original(self)

    monkeypatch.setattr(FolderFetcher, "files", files)
    report = await make_manager(folder_source(root)).run()
    assert report["sources"]["folder"]["stored"] == 3
    assert len(walks) == 1 and walks[0] != threading.get_ident()


async def test_missing_keys_and_folder_are_skipped_with_a_message_and_others_run(
    make_settings, dataset, sleeps, tmp_path
):
    root = write_folder(tmp_path / "p", {"x.jpg": jpeg(70)})
    from config.sources import SourcesFile

    sources = SourcesFile(
        sources=[
            source("unsplash"),
            source("pexels"),
            folder_source(tmp_path / "missing"),
            folder_source(root),
        ]
    )
    report = await FetcherManager(make_settings(), sources, dataset, sleep=sleeps).run()
    s = report["sources"]
    assert s["unsplash"]["status"] == "skipped"
    assert "UNSPLASH_ACCESS_KEY is not set" in s["unsplash"]["message"]
    assert s["pexels"]["status"] == "skipped" and "PEXELS_API_KEY" in s["pexels"]["message"]
    assert s["folder"]["status"] == "skipped" and "is not a folder" in s["folder"]["message"]
    assert s["folder#2"]["stored"] == 1
    assert report["totals"]["stored"] == 1


class ExplodingFetcher(BaseFetcher):
    def get_source_name(self) -> str:
        return "exploding"

    async def iter_images(self, limit: int) -> AsyncIterator[tuple[bytes, dict]]:
        raise RuntimeError("the upstream SDK broke")
        yield  # an async generator, as the contract asks


async def test_a_crashing_source_is_reported_and_never_stops_the_others(make_manager, monkeypatch, tmp_path):
    monkeypatch.setitem(FETCHERS, "exploding", ExplodingFetcher)
    root = write_folder(tmp_path / "p", {"x.jpg": jpeg(80)})
    report = await make_manager(source("exploding"), folder_source(root)).run()
    assert report["sources"]["exploding"]["status"] == "failed"
    assert "the upstream SDK broke" in report["sources"]["exploding"]["message"]
    assert report["sources"]["folder"]["stored"] == 1


class HookedFolder(FolderFetcher):
    """A folder source whose on_stored hook fails once and counts the earlier hook tasks still held."""

    held: list[int] = []

    def get_source_name(self) -> str:
        return "hooked"

    async def on_stored(self, metadata: dict) -> None:
        self.held.append(sum(ref() is not None for ref in self.refs))
        self.refs.append(weakref.ref(asyncio.current_task()))
        if metadata["api_data"]["path"] == "0.jpg":
            raise RuntimeError("download event endpoint down")


async def test_finished_on_stored_hooks_are_let_go_and_their_failures_counted(
    make_manager, monkeypatch, tmp_path
):
    # One hook task per stored image: held until the run ended, they grew with the import
    # (about 0.7 kB each, 700 MB for a folder of a million images). Now at most two batches' are.
    monkeypatch.setattr(manager_module, "INGEST_BATCH", 2)
    monkeypatch.setitem(FETCHERS, "hooked", HookedFolder)
    monkeypatch.setattr(HookedFolder, "held", [])
    monkeypatch.setattr(HookedFolder, "refs", [], raising=False)
    root = write_folder(tmp_path / "p", {f"{i}.jpg": jpeg(120 + i) for i in range(12)})
    report = await make_manager(SourceConfig(name="hooked", label="real", path=str(root))).run()
    r = report["sources"]["hooked"]
    assert r["stored"] == 12 and r["errors"] == {"on_stored_RuntimeError": 1}
    # At most the hooks of the batch being settled and of the one before (whose done-callbacks may
    # not have run yet): 2 x 2, where holding every hook would reach 11.
    assert len(HookedFolder.held) == 12 and max(HookedFolder.held) <= 4


@respx.mock
async def test_duplicates_across_sources_are_counted_once_stored(make_manager, dataset, tmp_path):
    shared = jpeg(90)
    root = write_folder(tmp_path / "p", {"same.jpg": shared})
    respx.get("https://api.pexels.com/v1/search").mock(
        return_value=httpx.Response(200, json=pexels_search([1, 2], page=1, per_page=5, has_next=False))
    )
    respx.get(url__regex=r"https://images\.pexels\.com/photos/1/.*").mock(
        return_value=httpx.Response(200, content=shared)
    )
    respx.get(url__regex=r"https://images\.pexels\.com/photos/2/.*").mock(
        return_value=httpx.Response(200, content=jpeg(91))
    )
    first = await make_manager(folder_source(root)).run()
    second = await make_manager(source("pexels")).run()
    assert first["sources"]["folder"]["stored"] == 1
    assert (second["sources"]["pexels"]["stored"], second["sources"]["pexels"]["duplicates"]) == (1, 1)
    assert (await dataset.counts())["total"] == 2


async def test_progress_events_and_report_table(make_manager, make_settings, tmp_path):
    root = write_folder(tmp_path / "p", {f"{i}.jpg": jpeg(100 + i) for i in range(3)})
    (root / "bad.jpg").write_bytes(b"not an image")
    events: list[dict] = []
    report = await make_manager(folder_source(root), source("pexels"), settings_=make_settings()).run(
        events.append
    )
    folder = [e for e in events if e["source"] == "folder"]  # sources run side by side: interleaved
    assert folder[0] == {"source": "folder", "done": 0, "total": 4, "stored": 0}
    assert folder[-2] == {"source": "folder", "done": 4, "total": 4, "stored": 3}
    assert folder[-1] == {"source": "folder", "done": 4, "stored": 3, "status": "ok"}
    assert [e for e in events if e["source"] == "pexels"] == [
        {"source": "pexels", "done": 0, "stored": 0, "status": "skipped"}
    ]
    console = Console(record=True, width=80)
    console.print(format_report_table(report))
    lines = [line.split() for line in console.export_text().splitlines()]
    assert ["folder", "pexels", "total"] in lines
    assert ["stored", "3", "0", "3"] in lines and ["rejected", "1", "0", "1"] in lines
    assert ["status", "ok", "skipped"] in lines
    # reasons and messages get rows of their own, never cut to fit a column
    assert ["folder", "rejected", "not_an_image", "1"] in lines
    assert ["pexels", "skipped", "PEXELS_API_KEY", "is", "not", "set;"] in [line[:6] for line in lines]


async def test_a_client_passed_in_stays_open_and_one_created_is_closed(make_manager, tmp_path):
    root = write_folder(tmp_path / "p", {"x.jpg": jpeg(110)})
    async with httpx.AsyncClient() as client:
        await make_manager(folder_source(root), client=client).run()
        assert not client.is_closed
    manager = make_manager(folder_source(root))
    await manager.run()
    assert manager.client is None


async def test_run_scrape_loads_the_sources_file_and_opens_the_dataset(make_settings, tmp_path):
    root = write_folder(tmp_path / "p", {"x.jpg": jpeg(120), "y.jpg": jpeg(121)})
    config = tmp_path / "sources.yaml"
    config.write_text(
        f"reddit: {{enabled: false}}\nsources:\n"
        f"  - {{name: folder, label: real, path: '{root}'}}\n"
        f"  - {{name: pexels, enabled: false, label: real}}\n"
    )
    report = await run_scrape(make_settings(sources_config=config))
    assert list(report["sources"]) == ["folder"]
    assert report["totals"]["stored"] == 2


@respx.mock
@pytest.mark.parametrize(
    ("name", "option", "value", "expected"),
    [
        (
            "civitai",
            "browsing_level",
            "PG",
            "'browsing_level' of source 'civitai' in sources.yaml "
            "must be a whole number from 1 to 31 (got 'PG')",
        ),
        ("civitai", "browsing_level", 32, "from 1 to 31 (got 32)"),
        (
            "pexels",
            "image_size",
            "huge",
            "'image_size' of source 'pexels' in sources.yaml must be one of original, large2x",
        ),
        ("unsplash", "content_filter", "medium", "must be one of high, low (got 'medium')"),
        ("unsplash", "image_width", "wide", "from 100 to 10000 (got 'wide')"),
        ("pexels", "download_concurrency", 0, "'download_concurrency' of source 'pexels'"),
    ],
)
async def test_a_bad_option_skips_the_source_before_any_request(make_manager, name, option, value, expected):
    report = await make_manager(source(name, **{option: value})).run()
    r = report["sources"][name]
    assert r["status"] == "skipped" and expected in r["message"]
    assert r["api_requests"] == 0 and len(respx.calls) == 0


@respx.mock
async def test_a_folder_is_ingested_in_full_batches_and_a_network_source_image_by_image(
    make_manager, dataset, monkeypatch, tmp_path
):
    # The folder reads ahead, so the dataset gets whole batches (the fixed costs of a batch paid once
    # per INGEST_BATCH images); an API source is ingested as each image arrives.
    monkeypatch.setattr(manager_module, "INGEST_BATCH", 8)
    sizes, real_ingest_checked = [], dataset._ingest_checked

    async def measured(items, checked):
        sizes.append(len(items))
        return await real_ingest_checked(items, checked)

    monkeypatch.setattr(dataset, "_ingest_checked", measured)
    root = write_folder(tmp_path / "p", {f"{i:02d}.jpg": jpeg(700 + i) for i in range(40)})
    report = await make_manager(folder_source(root)).run()
    assert report["sources"]["folder"]["stored"] == 40 and sum(sizes) == 40
    assert max(sizes) == 8 and sizes.count(8) >= 3  # the first batch may be smaller: nothing read yet

    sizes.clear()
    respx.get("https://api.pexels.com/v1/search").mock(
        return_value=httpx.Response(200, json=pexels_search([1, 2, 3, 4], page=1, per_page=5, has_next=False))
    )
    for photo in range(1, 5):
        respx.get(url__regex=rf"https://images\.pexels\.com/photos/{photo}/.*").mock(
            return_value=httpx.Response(200, content=jpeg(800 + photo))
        )
    report = await make_manager(source("pexels")).run()
    assert report["sources"]["pexels"]["stored"] == 4 and sizes == [1, 1, 1, 1]


async def test_a_folder_keeps_two_batches_in_flight_and_validates_ahead_of_them(
    make_manager, dataset, monkeypatch, tmp_path
):
    # While the first batch is being stored, the next whole batch starts (INGEST_PIPELINE) and the
    # images after it are already being validated: the pump must not wait for the oldest batch.
    monkeypatch.setattr(manager_module, "INGEST_BATCH", 4)
    real_ingest_arrived, real_validate = dataset._ingest_arrived, dataset._validate
    first_may_finish = asyncio.Event()
    calls, validated_while_first_held = [], []

    def counted_validate(data, metadata):
        if calls and not first_may_finish.is_set():
            validated_while_first_held.append(metadata["api_data"]["path"])
        return real_validate(data, metadata)

    async def held(batch):  # a batch as it starts (DatasetManager.ingest_stream), validations pending
        calls.append(len(batch))
        if len(calls) == 1:  # held until the second batch starts (a pump that waits fails here)
            await asyncio.wait_for(first_may_finish.wait(), 10)
        elif len(calls) == 2:
            await asyncio.sleep(0.2)  # give the source time to read and validate what follows
            first_may_finish.set()
        return await real_ingest_arrived(batch)

    monkeypatch.setattr(dataset, "_validate", counted_validate)
    monkeypatch.setattr(dataset, "_ingest_arrived", held)
    root = write_folder(tmp_path / "p", {f"{i:02d}.jpg": jpeg(900 + i) for i in range(20)})
    report = await make_manager(folder_source(root)).run()
    assert report["sources"]["folder"]["stored"] == 20 and sum(calls) == 20
    assert len(calls) >= 2 and first_may_finish.is_set()  # the 2nd batch began before the 1st ended
    assert len(validated_while_first_held) >= 4  # a whole batch beyond the first was validated meanwhile
