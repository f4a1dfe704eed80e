"""The shared HTTP helper: token bucket, retries and backoff, Retry-After, size limit, error bodies."""

from __future__ import annotations

import random

import httpx
import pytest
import respx

from scraper.http import (
    FetchError,
    RateLimited,
    RetryPolicy,
    SourceHttp,
    TokenBucket,
    bucket_for,
    make_client,
    parse_retry_after,
)

API = "https://api.example.test/v1/items"
CDN = "https://cdn.example.test/a.jpg"


class FakeClock:
    """A clock that only moves when the injected sleep is awaited."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_http(client, sleeps, **kwargs) -> SourceHttp:
    kwargs.setdefault("max_bytes", 1000)
    return SourceHttp(
        client,
        TokenBucket(0),
        sleep=sleeps,
        rng=random.Random(0),
        retry=RetryPolicy(attempts=4, base_delay=1.0, max_delay=8.0),
        **kwargs,
    )


async def test_token_bucket_allows_a_burst_then_paces_at_the_hourly_rate():
    clock = FakeClock()
    bucket = TokenBucket(120, clock=clock)  # 2 per minute: burst of 2, then one every 30 s
    for _ in range(4):
        await bucket.acquire(clock.sleep)
    assert clock.sleeps == [pytest.approx(30.0), pytest.approx(30.0)]
    assert clock.now == pytest.approx(1060.0)


async def test_token_bucket_zero_means_no_limit():
    clock = FakeClock()
    bucket = TokenBucket(0, clock=clock)
    for _ in range(1000):
        await bucket.acquire(clock.sleep)
    assert clock.sleeps == []


def test_one_bucket_per_source_name_for_the_process():
    first = bucket_for("pexels", 200)
    assert bucket_for("pexels", 200) is first
    assert bucket_for("pexels", 400) is first and first.per_hour == 400
    assert bucket_for("unsplash", 200) is not first


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@respx.mock
async def test_5xx_then_success_retries_with_growing_jittered_backoff(sleeps):
    route = respx.get(API).mock(
        side_effect=[httpx.Response(502), httpx.Response(503), httpx.Response(200, json={"ok": 1})]
    )
    async with make_client() as client:
        http = make_http(client, sleeps)
        assert await http.get_json(API) == {"ok": 1}
    assert route.call_count == 3
    assert http.stats.api_requests == 3 and http.stats.retries == 2
    assert 0 <= sleeps.calls[0] <= 1.0 and 0 <= sleeps.calls[1] <= 2.0


@respx.mock
async def test_retry_after_is_honoured_on_503(sleeps):
    respx.get(API).mock(
        side_effect=[
            httpx.Response(503, headers={"Retry-After": "2"}, json={"error": "busy"}),
            httpx.Response(200, json=[]),
        ]
    )
    async with make_client() as client:
        assert await make_http(client, sleeps).get_json(API) == []
    assert 2.0 <= sleeps.calls[0] <= 3.0


@respx.mock
async def test_429_without_retry_after_backs_off_then_gives_up_as_rate_limited(sleeps):
    route = respx.get(API).mock(return_value=httpx.Response(429))
    async with make_client() as client:
        with pytest.raises(RateLimited) as info:
            await make_http(client, sleeps).get_json(API)
    assert info.value.kind == "rate_limited" and info.value.status == 429
    assert route.call_count == 4 and len(sleeps.calls) == 3


@respx.mock
async def test_a_retry_after_longer_than_the_run_waits_gives_up_at_once(sleeps):
    route = respx.get(API).mock(return_value=httpx.Response(429, headers={"Retry-After": "7200"}))
    async with make_client() as client:
        with pytest.raises(RateLimited, match="longer than this run waits"):
            await make_http(client, sleeps).get_json(API)
    assert route.call_count == 1 and sleeps.calls == []


@respx.mock
async def test_other_4xx_is_not_retried_and_names_the_api_message(sleeps):
    route = respx.get(API).mock(return_value=httpx.Response(401, json={"errors": ["OAuth error: invalid"]}))
    async with make_client() as client:
        with pytest.raises(FetchError) as info:
            await make_http(client, sleeps).get_json(API)
    assert info.value.kind == "http_401" and "OAuth error" in info.value.message
    assert route.call_count == 1 and sleeps.calls == []


@respx.mock
async def test_timeouts_and_connection_errors_are_retried_then_reported(sleeps):
    respx.get(API).mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.ReadTimeout("slow"),
            httpx.Response(200, json={"a": 1}),
        ]
    )
    respx.get(CDN).mock(side_effect=httpx.ReadTimeout("slow"))
    async with make_client() as client:
        http = make_http(client, sleeps)
        assert await http.get_json(API) == {"a": 1}
        with pytest.raises(FetchError) as info:
            await http.download(CDN)
    assert info.value.kind == "timeout"


@respx.mock
async def test_html_error_page_and_malformed_json_are_typed_errors(sleeps):
    respx.get(API).mock(
        side_effect=[
            httpx.Response(
                200, text="<html><body>Cloudflare</body></html>", headers={"Content-Type": "text/html"}
            ),
            httpx.Response(200, text='{"items": [', headers={"Content-Type": "application/json"}),
        ]
    )
    async with make_client() as client:
        http = make_http(client, sleeps)
        with pytest.raises(FetchError) as html:
            await http.get_json(API)
        with pytest.raises(FetchError) as bad:
            await http.get_json(API)
    assert html.value.kind == "html_page" and bad.value.kind == "bad_json"


@respx.mock
async def test_download_stops_past_max_bytes_even_without_content_length(sleeps):
    async def body():
        for _ in range(10):
            yield b"x" * 300

    respx.get(CDN).mock(return_value=httpx.Response(200, content=body()))
    respx.get("https://cdn.example.test/small.jpg").mock(return_value=httpx.Response(200, content=b"y" * 900))
    async with make_client() as client:
        http = make_http(client, sleeps)
        with pytest.raises(FetchError) as info:
            await http.download(CDN)
        assert await http.download("https://cdn.example.test/small.jpg") == b"y" * 900
    assert info.value.kind == "too_large"


@respx.mock
async def test_downloads_send_no_api_key_to_the_cdn(sleeps):
    cdn = respx.get(CDN).mock(return_value=httpx.Response(200, content=b"img"))
    async with make_client() as client:
        http = make_http(client, sleeps, headers={"Authorization": "secret-key"})
        await http.download(CDN)
    assert "Authorization" not in cdn.calls.last.request.headers
    assert cdn.calls.last.request.headers["User-Agent"].startswith("ExposrTrainer/")


def test_shared_client_verifies_tls():
    client = make_client()
    try:
        pool = client._transport._pool  # noqa: SLF001 - no public accessor for the SSL context
        assert pool._ssl_context.verify_mode.name == "CERT_REQUIRED"  # noqa: SLF001
    finally:
        import asyncio

        asyncio.run(client.aclose())


async def test_bounded_map_keeps_at_most_n_in_flight_and_yields_everything():
    import asyncio

    from scraper.base_fetcher import bounded_map

    in_flight, peak = 0, 0

    async def work(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(i % 3 + 1):
            await asyncio.sleep(0)
        in_flight -= 1
        return i * 10

    results = [r async for r in bounded_map(range(20), work, 3)]
    assert sorted(results) == [i * 10 for i in range(20)]
    assert peak == 3


async def test_token_bucket_serves_simultaneous_callers_in_turn():
    import asyncio

    async def no_sleep(seconds: float) -> None:
        await asyncio.sleep(0)

    bucket = TokenBucket(60, clock=lambda: 1000.0)  # one a minute, burst of one; time stands still
    waits = await asyncio.gather(*(bucket.acquire(no_sleep) for _ in range(3)))
    assert waits == [0.0, pytest.approx(60.0), pytest.approx(120.0)]


@respx.mock
async def test_rate_limits_without_a_reset_time_can_be_left_unretried_but_retry_after_still_counts(sleeps):
    route = respx.get(API).mock(
        side_effect=[
            httpx.Response(429),
            httpx.Response(429, headers={"Retry-After": "3"}),
            httpx.Response(200, json={"ok": 1}),
        ]
    )
    async with make_client() as client:
        http = make_http(client, sleeps, retry_rate_limited=False)
        with pytest.raises(RateLimited):
            await http.get_json(API)
        assert sleeps.calls == []
        assert await http.get_json(API) == {"ok": 1}
    assert route.call_count == 3 and 3.0 <= sleeps.calls[0] <= 4.0


@respx.mock
async def test_a_compressed_download_is_decoded_once(sleeps):
    import gzip

    respx.get(CDN).mock(
        return_value=httpx.Response(
            200, content=gzip.compress(b"z" * 900), headers={"Content-Encoding": "gzip"}
        )
    )
    async with make_client() as client:
        assert await make_http(client, sleeps).download(CDN) == b"z" * 900


@respx.mock
async def test_undecodable_bodies_and_redirect_loops_are_fetch_errors_never_retried(sleeps):
    broken = respx.get(CDN).mock(
        return_value=httpx.Response(
            200, stream=httpx.ByteStream(b"this is not gzip"), headers={"Content-Encoding": "gzip"}
        )
    )
    loop = respx.get("https://cdn.example.test/loop.jpg").mock(
        return_value=httpx.Response(302, headers={"Location": "https://cdn.example.test/loop.jpg"})
    )
    async with make_client() as client:
        http = make_http(client, sleeps)
        kinds = []
        for url in (CDN, "https://cdn.example.test/loop.jpg"):
            with pytest.raises(FetchError) as info:
                await http.download(url)
            kinds.append(info.value.kind)
    assert kinds == ["bad_encoding", "too_many_redirects"]
    assert broken.call_count == 1 and loop.call_count > 1 and sleeps.calls == []


async def test_a_url_with_an_unusable_scheme_is_a_bad_url_never_retried(sleeps):
    # No mock needed: httpx refuses the scheme before opening any connection.
    async with make_client() as client:
        with pytest.raises(FetchError) as info:
            await make_http(client, sleeps).download("ftp://cdn.example.test/a.jpg?token=x")
    assert info.value.kind == "bad_url" and sleeps.calls == []
    assert "token" not in info.value.message


@respx.mock
async def test_an_error_page_is_read_only_as_far_as_the_message_needs(sleeps):
    route = respx.get(CDN).mock(return_value=httpx.Response(500, content=b"E" * 5_000_000))
    async with make_client() as client:
        with pytest.raises(FetchError) as info:
            await make_http(client, sleeps).download(CDN)
    assert info.value.kind == "server_error" and route.call_count == 4
    assert "EEEE" in info.value.message and len(info.value.message) < 400
