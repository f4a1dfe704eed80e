"""Unsplash over respx: headers, page sizes and paging to the end, rate-limit 403/429, download events."""

from __future__ import annotations

import re

import httpx
import respx

from tests.images import jpeg
from tests.scraper.apis import unsplash_search
from tests.scraper.conftest import source

API = "https://api.unsplash.com"
PHOTO = re.compile(r"https://images\.unsplash\.com/photo-(?P<pid>[^?]+)")


def serve_photos(images: dict[str, bytes]) -> respx.Route:
    return respx.get(url__regex=PHOTO.pattern).mock(
        side_effect=lambda request, pid: httpx.Response(200, content=images[pid],
                                                   headers={"Content-Type": "image/jpeg"}))


def download_events() -> respx.Route:
    return respx.get(url__regex=rf"{API}/photos/[^/]+/download").mock(
        return_value=httpx.Response(200, json={"url": "https://images.unsplash.com/x"}))


@respx.mock
async def test_pages_to_the_end_with_capped_page_size_and_one_download_event_per_stored(make_manager):
    ids = [f"u{i}" for i in range(33)]
    search = respx.get(f"{API}/search/photos").mock(side_effect=[
        httpx.Response(200, json=unsplash_search(ids[:30], total_pages=2),
                       headers={"X-Ratelimit-Remaining": "48"}),
        httpx.Response(200, json=unsplash_search(ids[30:], total_pages=2)),
    ])
    images = {pid: jpeg(i) for i, pid in enumerate(ids)}
    images["u32"] = images["u0"]   # same bytes as another photo: a duplicate, no download event
    cdn, events = serve_photos(images), download_events()

    report = await make_manager(source("unsplash", limit_per_query=40)).run()

    r = report["sources"]["unsplash"]
    assert (r["api_requests"], r["downloaded"], r["stored"], r["duplicates"]) == (2 + 32, 33, 32, 1)
    first, second = (call.request for call in search.calls)
    assert first.url.params["per_page"] == "30" and first.url.params["page"] == "1"
    # the page size stays 30: the API pages by offset, so a smaller last page would repeat photos
    assert second.url.params["per_page"] == "30" and second.url.params["page"] == "2"
    assert first.headers["Authorization"] == "Client-ID unsplash-test-key"
    assert first.headers["Accept-Version"] == "v1"
    assert events.call_count == 32
    assert {c.request.headers["Authorization"] for c in events.calls} == {"Client-ID unsplash-test-key"}
    assert events.calls[0].request.url.params["ixid"].startswith("IXID")
    photo_url = cdn.calls[0].request.url
    assert photo_url.params["ixid"].startswith("IXID") and photo_url.params["w"] == "1600"
    assert "Authorization" not in cdn.calls[0].request.headers


@respx.mock
async def test_metadata_carries_attribution_and_api_data(make_manager, dataset):
    respx.get(f"{API}/search/photos").mock(
        return_value=httpx.Response(200, json=unsplash_search(["abc"], total_pages=1)))
    serve_photos({"abc": jpeg(1)})
    download_events()
    await make_manager(source("unsplash")).run()
    [sample] = await dataset.samples()
    meta = await dataset.get_metadata(sample.id)
    assert meta["source"] == "unsplash" and meta["label"] == "real"
    assert meta["attribution"]["platform"] == "Unsplash"
    assert meta["attribution"]["photographer"] == "Samsung Memory"
    assert meta["attribution"]["photographer_url"].startswith("https://unsplash.com/@samsungmemory?utm_source=")
    assert meta["api_data"]["photo_id"] == "abc"
    assert (meta["api_data"]["width"], meta["api_data"]["height"]) == (4000, 6000)


@respx.mock
async def test_rate_limit_403_with_plain_text_body_stops_the_source(make_manager, sleeps):
    search = respx.get(f"{API}/search/photos").mock(
        return_value=httpx.Response(403, text="Rate Limit Exceeded", headers={"Content-Type": "text/plain"}))
    report = await make_manager(source("unsplash", queries=["a", "b", "c"])).run()
    r = report["sources"]["unsplash"]
    assert r["errors"] == {"rate_limited": 1}
    assert search.call_count == 3            # the retries of the first query, then no other query
    assert len(sleeps.calls) == 2
    assert r["stored"] == 0 and r["status"] == "ok"


@respx.mock
async def test_429_with_retry_after_then_success(make_manager, sleeps):
    respx.get(f"{API}/search/photos").mock(side_effect=[
        httpx.Response(429, headers={"Retry-After": "5"}),
        httpx.Response(200, json=unsplash_search(["p1"], total_pages=1)),
    ])
    serve_photos({"p1": jpeg(3)})
    download_events()
    report = await make_manager(source("unsplash")).run()
    assert report["sources"]["unsplash"]["stored"] == 1
    assert 5.0 <= sleeps.calls[0] <= 6.0


@respx.mock
async def test_remaining_zero_stops_before_the_next_request(make_manager):
    search = respx.get(f"{API}/search/photos").mock(return_value=httpx.Response(
        200, json=unsplash_search(["a1", "a2"], total_pages=5), headers={"X-Ratelimit-Remaining": "0"}))
    serve_photos({"a1": jpeg(4), "a2": jpeg(5)})
    download_events()
    report = await make_manager(source("unsplash", queries=["x", "y"], limit_per_query=4)).run()
    assert search.call_count == 1
    assert report["sources"]["unsplash"]["downloaded"] == 2


@respx.mock
async def test_a_bad_key_is_counted_and_the_next_query_still_runs(make_manager):
    search = respx.get(f"{API}/search/photos").mock(side_effect=[
        httpx.Response(401, json={"errors": ["OAuth error: The access token is invalid"]}),
        httpx.Response(200, json=unsplash_search(["q1"], total_pages=1)),
    ])
    serve_photos({"q1": jpeg(6)})
    download_events()
    report = await make_manager(source("unsplash", queries=["x", "y"])).run()
    r = report["sources"]["unsplash"]
    assert r["errors"] == {"http_401": 1} and r["stored"] == 1 and search.call_count == 2


@respx.mock
async def test_search_result_missing_fields_is_counted_not_fatal(make_manager):
    body = unsplash_search(["ok1", "broken"], total_pages=1)
    del body["results"][1]["urls"]
    respx.get(f"{API}/search/photos").mock(return_value=httpx.Response(200, json=body))
    serve_photos({"ok1": jpeg(7)})
    download_events()
    report = await make_manager(source("unsplash")).run()
    r = report["sources"]["unsplash"]
    assert r["errors"] == {"missing_fields": 1} and r["stored"] == 1


@respx.mock
async def test_search_never_asks_beyond_page_200(make_manager):
    search = respx.get(f"{API}/search/photos").mock(side_effect=lambda request: httpx.Response(
        200, json=unsplash_search([f"p{request.url.params['page']}"], total_pages=500)))
    respx.get(url__regex=PHOTO.pattern).mock(return_value=httpx.Response(404))
    report = await make_manager(source("unsplash", limit_per_query=100000)).run()
    assert search.call_count == 200
    assert search.calls.last.request.url.params["page"] == "200"
    assert report["sources"]["unsplash"]["errors"] == {"download_http_404": 200}
