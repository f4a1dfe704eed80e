"""Pexels over respx: raw key and User-Agent, next_page paging, 429 without headers, faults per item."""

from __future__ import annotations

import httpx
import pytest
import respx

from tests.images import jpeg
from tests.scraper.apis import pexels_search
from tests.scraper.conftest import source

API = "https://api.pexels.com/v1"
PHOTO = r"https://images\.pexels\.com/photos/(?P<pid>\d+)/.*"


def serve_photos(images: dict[int, bytes | Exception]) -> respx.Route:
    def reply(request, pid):
        body = images[int(pid)]
        if isinstance(body, Exception):
            raise body
        return httpx.Response(200, content=body, headers={"Content-Type": "image/jpeg"})

    return respx.get(url__regex=PHOTO).mock(side_effect=reply)


@respx.mock
async def test_follows_next_page_to_the_end_with_raw_key_and_user_agent(make_manager, dataset):
    search = respx.get(f"{API}/search").mock(
        side_effect=[
            httpx.Response(
                200,
                json=pexels_search([1, 2, 3, 4], page=1, per_page=10, has_next=True),
                headers={"X-Ratelimit-Remaining": "19990", "X-Ratelimit-Reset": "1790000000"},
            ),
            httpx.Response(200, json=pexels_search([5, 6, 7], page=2, per_page=10, has_next=False)),
        ]
    )
    cdn = serve_photos({i: jpeg(20 + i) for i in range(1, 8)})

    report = await make_manager(source("pexels", limit_per_query=10)).run()

    r = report["sources"]["pexels"]
    assert (r["api_requests"], r["downloaded"], r["stored"]) == (2, 7, 7)
    first, second = (c.request for c in search.calls)
    assert first.headers["Authorization"] == "pexels-test-key"  # raw, no prefix
    assert first.headers["User-Agent"].startswith("ExposrTrainer/")
    assert first.url.params["per_page"] == "10" and second.url.params["page"] == "2"
    assert second.url.host == "api.pexels.com"
    assert all("size=large2x" in str(c.request.url) for c in cdn.calls)
    meta = await dataset.get_metadata((await dataset.samples())[0].id)
    assert meta["attribution"]["platform"] == "Pexels"
    assert meta["attribution"]["photographer"] == "Joey Farina"
    assert meta["api_data"]["photo_id"] in range(1, 8) and meta["api_data"]["width"] == 3024


@respx.mock
async def test_per_page_is_capped_at_80(make_manager):
    search = respx.get(f"{API}/search").mock(
        return_value=httpx.Response(200, json=pexels_search([], page=1, per_page=80, has_next=False))
    )
    await make_manager(source("pexels", limit_per_query=500)).run()
    assert search.calls[0].request.url.params["per_page"] == "80"


@respx.mock
async def test_429_without_headers_backs_off_then_succeeds(make_manager, sleeps):
    respx.get(f"{API}/search").mock(
        side_effect=[
            httpx.Response(429),
            httpx.Response(200, json=pexels_search([11], page=1, per_page=5, has_next=False)),
        ]
    )
    serve_photos({11: jpeg(31)})
    report = await make_manager(source("pexels")).run()
    assert report["sources"]["pexels"]["stored"] == 1
    assert report["sources"]["pexels"]["retries"] == 1 and len(sleeps.calls) == 1


@respx.mock
async def test_cloudflare_html_403_stops_the_source_with_its_reason(make_manager):
    search = respx.get(f"{API}/search").mock(
        return_value=httpx.Response(
            403,
            text="<!DOCTYPE html><html><title>Attention Required! | Cloudflare</title></html>",
            headers={"Content-Type": "text/html"},
        )
    )
    report = await make_manager(source("pexels", queries=["a", "b"])).run()
    r = report["sources"]["pexels"]
    assert r["errors"] == {"http_403": 1} and search.call_count == 1
    assert r["status"] == "stopped" and "HTTP 403: HTML error page" in r["message"]
    assert "PEXELS_API_KEY" in r["message"]


@respx.mock
async def test_429_that_outlasts_the_retries_stops_the_source(make_manager, sleeps):
    search = respx.get(f"{API}/search").mock(return_value=httpx.Response(429))
    report = await make_manager(source("pexels", queries=["a", "b"])).run()
    r = report["sources"]["pexels"]
    assert search.call_count == 3 and len(sleeps.calls) == 2  # RetryPolicy(attempts=3) in conftest
    assert (r["status"], r["errors"]) == ("stopped", {"rate_limited": 1})
    assert "rate limited by the API (HTTP 429)" in r["message"]


@respx.mock
async def test_html_body_with_200_is_an_html_page_error(make_manager):
    respx.get(f"{API}/search").mock(
        return_value=httpx.Response(
            200, text="<html>maintenance</html>", headers={"Content-Type": "text/html"}
        )
    )
    report = await make_manager(source("pexels")).run()
    assert report["sources"]["pexels"]["errors"] == {"html_page": 1}


@respx.mock
async def test_bad_bytes_and_timeouts_are_counted_per_image(make_manager):
    respx.get(f"{API}/search").mock(
        return_value=httpx.Response(200, json=pexels_search([1, 2, 3, 4], page=1, per_page=5, has_next=False))
    )
    serve_photos(
        {1: jpeg(41), 2: b"<html>not an image</html>", 3: jpeg(41)[:200], 4: httpx.ReadTimeout("slow CDN")}
    )
    report = await make_manager(source("pexels")).run()
    r = report["sources"]["pexels"]
    assert r["stored"] == 1 and r["downloaded"] == 3
    assert sum(r["rejected"].values()) == 2 and "not_an_image" in r["rejected"]
    assert r["errors"] == {"download_timeout": 1}


@respx.mock
async def test_quota_exhausted_on_a_2xx_stops_further_searches(make_manager):
    search = respx.get(f"{API}/search").mock(
        return_value=httpx.Response(
            200,
            json=pexels_search([9], page=1, per_page=5, has_next=True),
            headers={"X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": "1790000000"},
        )
    )
    serve_photos({9: jpeg(50)})
    report = await make_manager(source("pexels", queries=["a", "b"])).run()
    assert search.call_count == 1 and report["sources"]["pexels"]["stored"] == 1
    assert "X-Ratelimit-Reset=1790000000" in report["sources"]["pexels"]["message"]


@respx.mock
async def test_rate_limit_per_hour_paces_api_requests_across_runs_not_downloads(make_manager, sleeps):
    respx.get(f"{API}/search").mock(
        side_effect=[
            httpx.Response(200, json=pexels_search([1], page=1, per_page=1, has_next=True)),
            httpx.Response(200, json=pexels_search([2], page=2, per_page=1, has_next=False)),
            httpx.Response(200, json=pexels_search([3], page=1, per_page=1, has_next=False)),
        ]
    )
    serve_photos({1: jpeg(51), 2: jpeg(52), 3: jpeg(53)})
    await make_manager(source("pexels", limit_per_query=2, rate_limit_per_hour=60)).run()
    # Burst of one, then one a minute: the second search waits; the three downloads never do.
    assert sleeps.calls == [pytest.approx(60, abs=1)]
    report = await make_manager(source("pexels", limit_per_query=1, rate_limit_per_hour=60)).run()
    # A second run in the same process draws on the same bucket, so it waits too.
    assert sleeps.calls[1] == pytest.approx(120, abs=1)
    assert report["sources"]["pexels"]["stored"] == 1
