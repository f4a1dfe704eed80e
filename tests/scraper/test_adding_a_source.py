"""docs/sources.md "Adding a source", followed as written: its fetcher code, its registration in
FETCHERS and its sources.yaml entry, run end to end through run_scrape."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import httpx
import respx

from scraper.fetcher_manager import FETCHERS, run_scrape
from tests.images import jpeg

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "sources.md"


def guide_blocks(language: str) -> list[str]:
    after = GUIDE.read_text(encoding="utf-8").split("\n## Adding a source\n", 1)[1]
    section = re.split(r"\n#{2,3} ", after, maxsplit=1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


@respx.mock
async def test_the_guide_adds_a_working_source(make_settings, tmp_path, monkeypatch):
    # Step 1: the fetcher module, exactly as the guide shows it.
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "mysource_fetcher.py").write_text(guide_blocks("python")[0], encoding="utf-8")
    monkeypatch.syspath_prepend(str(package))
    module = importlib.import_module("mysource_fetcher")
    # Step 2: the one registry.
    monkeypatch.setitem(FETCHERS, "mysource", module.MySourceFetcher)
    # Step 3: the sources.yaml entry from the guide.
    config = tmp_path / "sources.yaml"
    config.write_text("sources:\n" + guide_blocks("yaml")[0], encoding="utf-8")

    photos = [
        {
            "id": i,
            "url": f"https://cdn.example.com/{i}.jpg",
            "author": "Ann",
            "license": "CC0",
            "page": f"https://example.com/p/{i}",
            "width": 96,
            "height": 72,
        }
        for i in range(3)
    ]
    api = respx.get("https://api.example.com/photos").mock(
        return_value=httpx.Response(200, json={"photos": photos})
    )
    respx.get("https://cdn.example.com/0.jpg").mock(return_value=httpx.Response(200, content=jpeg(200)))
    respx.get("https://cdn.example.com/1.jpg").mock(return_value=httpx.Response(404))
    respx.get("https://cdn.example.com/2.jpg").mock(return_value=httpx.Response(200, content=jpeg(201)))

    report = await run_scrape(make_settings(sources_config=config))

    r = report["sources"]["mysource"]
    assert (r["status"], r["stored"], r["downloaded"]) == ("ok", 2, 2)
    assert r["errors"] == {"download_http_404": 1} and r["api_requests"] == 1
    assert api.calls[0].request.url.params["per_page"] == "20"
