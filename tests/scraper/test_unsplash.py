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
        side_effect=lambda request, pid: httpx.Response(
            200, content=images[pid], headers={"Content-Type": "image/jpeg"}
        )
    )


def download_events() -> respx.Route:
    return respx.get(url__regex=rf"{API}/photos/[^/]+/download").mock(
        return_value=httpx.Response(200, json={"url": "https://images.unsplash.com/x"})
    )


@respx.mock
async def test_pages_to_the_end_with_capped_page_size_and_one_download_event_per_stored(make_manager):
    ids = [f"u{i}" for i in range(33)]
    search = respx.get(f"{API}/search/photos").mock(
        side_effect=[
            httpx.Response(
                200, json=unsplash_search(ids[:30], total_pages=2), headers={"X-Ratelimit-Remaining": "48"}
            ),
            httpx.Response(200, json=unsplash_search(ids[30:], total_pages=2)),
        ]
    )
    images = {pid: jpeg(i) for i, pid in enumerate(ids)}
    images["u32"] = images["u0"]  # same bytes as another photo: a duplicate, no download event
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
        return_value=httpx.Response(200, json=unsplash_search(["abc"], total_pages=1))
    )
    serve_photos({"abc": jpeg(1)})
    download_events()
    await make_manager(source("unsplash")).run()
    [sample] = await dataset.samples()
    meta = await dataset.get_metadata(sample.id)
    assert meta["source"] == "unsplash" and meta["label"] == "real"
    assert meta["attribution"]["platform"] == "Unsplash"
    assert meta["attribution"]["photographer"] == "Samsung Memory"
    assert meta["attribution"]["photographer_url"].startswith(
        "https://unsplash.com/@samsungmemory?utm_source="
    )
    assert meta["api_data"]["photo_id"] == "abc"
    assert (meta["api_data"]["width"], meta["api_data"]["height"]) == (4000, 6000)


@respx.mock
async def test_rate_limit_403_with_plain_text_body_stops_the_source_at_once(make_manager, sleeps):
    search = respx.get(f"{API}/search/photos").mock(
        return_value=httpx.Response(403, text="Rate Limit Exceeded", headers={"Content-Type": "text/plain"})
    )
    report = await make_manager(source("unsplash", queries=["a", "b", "c"])).run()
    r = report["sources"]["unsplash"]
    assert r["errors"] == {"rate_limited": 1}
    # An hourly window with no reset time: no retries, no other query.
    assert search.call_count == 1 and sleeps.calls == []
    assert r["status"] == "stopped" and "rate limited by the API (HTTP 403)" in r["message"]
    assert r["stored"] == 0


@respx.mock
async def test_a_plain_429_stops_the_source_too(make_manager, sleeps):
    search = respx.get(f"{API}/search/photos").mock(return_value=httpx.Response(429))
    report = await make_manager(source("unsplash", queries=["a", "b"])).run()
    r = report["sources"]["unsplash"]
    assert search.call_count == 1 and sleeps.calls == []
    assert (r["status"], r["errors"]) == ("stopped", {"rate_limited": 1})


@respx.mock
async def test_a_forbidden_answer_that_is_not_a_rate_limit_is_counted_per_query(make_manager):
    search = respx.get(f"{API}/search/photos").mock(
        side_effect=[
            httpx.Response(403, json={"errors": ["You do not have access to this resource"]}),
            httpx.Response(200, json=unsplash_search([], total_pages=0)),
        ]
    )
    report = await make_manager(source("unsplash", queries=["a", "b"])).run()
    r = report["sources"]["unsplash"]
    assert search.call_count == 2
    assert (r["status"], r["errors"]) == ("ok", {"http_403": 1})


@respx.mock
async def test_429_with_retry_after_then_success(make_manager, sleeps):
    respx.get(f"{API}/search/photos").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "5"}),
            httpx.Response(200, json=unsplash_search(["p1"], total_pages=1)),
        ]
    )
    serve_photos({"p1": jpeg(3)})
    download_events()
    report = await make_manager(source("unsplash")).run()
    assert report["sources"]["unsplash"]["stored"] == 1
    assert 5.0 <= sleeps.calls[0] <= 6.0


@respx.mock
async def test_remaining_zero_stops_before_the_next_request(make_manager):
    search = respx.get(f"{API}/search/photos").mock(
        return_value=httpx.Response(
            200, json=unsplash_search(["a1", "a2"], total_pages=5), headers={"X-Ratelimit-Remaining": "0"}
        )
    )
    serve_photos({"a1": jpeg(4), "a2": jpeg(5)})
    download_events()
    report = await make_manager(source("unsplash", queries=["x", "y"], limit_per_query=4)).run()
    assert search.call_count == 1
    assert report["sources"]["unsplash"]["downloaded"] == 2
    assert report["sources"]["unsplash"]["status"] == "stopped"


@respx.mock
async def test_a_rejected_key_stops_the_source_and_names_the_variable(make_manager):
    search = respx.get(f"{API}/search/photos").mock(
        return_value=httpx.Response(401, json={"errors": ["OAuth error: The access token is invalid"]})
    )
    report = await make_manager(source("unsplash", queries=["x", "y"])).run()
    r = report["sources"]["unsplash"]
    assert r["errors"] == {"http_401": 1} and search.call_count == 1
    assert r["status"] == "stopped"
    assert "OAuth error: The access token is invalid" in r["message"]
    assert "UNSPLASH_ACCESS_KEY" in r["message"] and "unsplash-test-key" not in r["message"]


@respx.mock
async def test_quota_used_up_by_a_download_event_stops_the_source(make_manager):
    search = respx.get(f"{API}/search/photos").mock(
        return_value=httpx.Response(
            200, json=unsplash_search(["d1"], total_pages=1), headers={"X-Ratelimit-Remaining": "1"}
        )
    )
    serve_photos({"d1": jpeg(8)})
    respx.get(url__regex=rf"{API}/photos/[^/]+/download").mock(
        return_value=httpx.Response(
            200, json={"url": "https://images.unsplash.com/x"}, headers={"X-Ratelimit-Remaining": "0"}
        )
    )
    report = await make_manager(source("unsplash", queries=["x", "y", "z"])).run()
    r = report["sources"]["unsplash"]
    # The event runs beside the next search, so that one search may still go out; no more after it.
    assert search.call_count <= 2 and r["stored"] == 1
    assert r["status"] == "stopped" and "X-Ratelimit-Remaining: 0" in r["message"]


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
    search = respx.get(f"{API}/search/photos").mock(
        side_effect=lambda request: httpx.Response(
            200, json=unsplash_search([f"p{request.url.params['page']}"], total_pages=500)
        )
    )
    respx.get(url__regex=PHOTO.pattern).mock(return_value=httpx.Response(404))
    report = await make_manager(source("unsplash", limit_per_query=100000)).run()
    assert search.call_count == 200
    assert search.calls.last.request.url.params["page"] == "200"
    assert report["sources"]["unsplash"]["errors"] == {"download_http_404": 200}
