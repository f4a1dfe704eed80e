"""Exposr-Core client against respx: good answers, retries, timeouts and every kind of garbage."""

from __future__ import annotations

import httpx
import pytest
import respx

from labeler.core_client import MAX_ATTEMPTS, CoreBadAnswer, CoreClient, CoreUnavailable
from tests.images import jpeg

ENDPOINT = "https://core.test/api/v1/analyze"


class MaxJitter:
    """A random source pinned to the top of every jitter range."""

    def uniform(self, low: float, high: float) -> float:
        return high


@pytest.fixture
async def core(make_settings, sleeps):
    settings = make_settings(exposr_core_endpoint=ENDPOINT, exposr_core_score_field="result.ai_probability")
    async with httpx.AsyncClient() as client:
        yield CoreClient(settings, client, sleep=sleeps, rng=MaxJitter())


async def score(core: CoreClient):
    return await core.score(jpeg(1), "x.jpg", "image/jpeg")


@respx.mock
async def test_good_answer_reads_dotted_field_and_version(core, sleeps):
    route = respx.post(ENDPOINT).respond(json={"result": {"ai_probability": 0.83}, "model_version": "core-7"})
    result = await score(core)
    assert result.probability == pytest.approx(0.83)
    assert result.version == "core-7"
    assert sleeps.calls == []
    request = route.calls.last.request
    assert request.headers["content-type"].startswith("multipart/form-data")
    body = request.content
    assert b'name="file"; filename="x.jpg"' in body
    assert jpeg(1) in body


@respx.mock
async def test_retries_5xx_with_exponential_backoff_then_succeeds(core, sleeps):
    respx.post(ENDPOINT).side_effect = [
        httpx.Response(503),
        httpx.Response(502),
        httpx.Response(200, json={"result": {"ai_probability": 0}}),
    ]
    result = await score(core)
    assert result.probability == 0.0
    assert result.version is None
    assert sleeps.calls == [0.5, 1.0]  # the jitter's upper bounds: 0.5 s, then doubled


@respx.mock
async def test_retry_after_is_honoured(core, sleeps):
    respx.post(ENDPOINT).side_effect = [
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(200, json={"result": {"ai_probability": 1}}),
    ]
    assert (await score(core)).probability == 1.0
    assert sleeps.calls == [8.0]  # Retry-After plus at most 1 s of jitter, as for the sources


@respx.mock
async def test_a_retry_after_longer_than_the_labeler_waits_gives_up_at_once(core, sleeps):
    route = respx.post(ENDPOINT).respond(503, headers={"Retry-After": "3600"})
    with pytest.raises(CoreUnavailable, match="longer than the labeler waits") as info:
        await score(core)
    assert info.value.kind == "http_503"
    assert (route.call_count, sleeps.calls) == (1, [])


@respx.mock
async def test_attempts_are_bounded(core, sleeps):
    route = respx.post(ENDPOINT).respond(500, text="boom")
    with pytest.raises(CoreUnavailable) as info:
        await score(core)
    assert info.value.kind == "http_500"
    assert route.call_count == MAX_ATTEMPTS
    assert len(sleeps.calls) == MAX_ATTEMPTS - 1


@respx.mock
async def test_timeouts_are_retried_then_reported(core, sleeps):
    route = respx.post(ENDPOINT).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(CoreUnavailable) as info:
        await score(core)
    assert info.value.kind == "timeout"
    assert route.call_count == MAX_ATTEMPTS


@respx.mock
async def test_connection_refused_is_unreachable(core):
    respx.post(ENDPOINT).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(CoreUnavailable) as info:
        await score(core)
    assert info.value.kind == "unreachable"


@respx.mock
async def test_4xx_is_not_retried(core, sleeps):
    route = respx.post(ENDPOINT).respond(415, json={"detail": "unsupported"})
    with pytest.raises(CoreBadAnswer) as info:
        await score(core)
    assert info.value.kind == "http_415"
    assert route.call_count == 1
    assert sleeps.calls == []


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (httpx.Response(200, text="<html>oops</html>"), "bad_json"),
        (httpx.Response(200, json={"result": {}}), "missing_field"),
        (httpx.Response(200, json={"ai_probability": 0.5}), "missing_field"),
        (httpx.Response(200, json=[0.5]), "missing_field"),
        (httpx.Response(200, json={"result": {"ai_probability": "0.5"}}), "not_a_number"),
        (httpx.Response(200, json={"result": {"ai_probability": True}}), "not_a_number"),
        (httpx.Response(200, json={"result": {"ai_probability": None}}), "not_a_number"),
        (httpx.Response(200, text='{"result": {"ai_probability": NaN}}'), "not_a_number"),
        (httpx.Response(200, text='{"result": {"ai_probability": Infinity}}'), "not_a_number"),
        (httpx.Response(200, json={"result": {"ai_probability": 1.2}}), "out_of_range"),
        (httpx.Response(200, json={"result": {"ai_probability": -0.1}}), "out_of_range"),
    ],
)
@respx.mock
async def test_garbage_is_a_bad_answer_never_a_score(core, response, kind):
    respx.post(ENDPOINT).mock(return_value=response)
    with pytest.raises(CoreBadAnswer) as info:
        await score(core)
    assert info.value.kind == kind


@pytest.mark.parametrize(
    "response",
    [
        # A Content-Encoding the body does not match: httpx raises while reading the answer.
        httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(b"not gzip")),
        # JSON nested deeper than the parser's recursion limit.
        httpx.Response(200, content=b"[" * 100_000 + b"]" * 100_000),
    ],
    ids=["undecodable", "too_deep"],
)
@respx.mock
async def test_an_answer_that_cannot_be_read_is_a_bad_answer(core, sleeps, response):
    route = respx.post(ENDPOINT).mock(side_effect=lambda request: response)
    with pytest.raises(CoreBadAnswer) as info:
        await score(core)
    assert info.value.kind == "bad_json"
    assert (route.call_count, sleeps.calls) == (1, [])
