"""CivitAI over respx: queries mapped to models, cursor paging, explicit content filter, faults."""

from __future__ import annotations

import httpx
import respx

from tests.images import jpeg
from tests.scraper.apis import civitai_image, civitai_images, civitai_models
from tests.scraper.conftest import source

API = "https://civitai.com/api/v1"
CDN = r"https://image\.civitai\.com/xG1nkqKTMzGDvpLrqFT7WA/(?P<iid>\d+)/(?P<variant>[^/]+)/.*"


def serve_images(seed_offset: int = 0) -> respx.Route:
    return respx.get(url__regex=CDN).mock(
        side_effect=lambda request, iid, variant: httpx.Response(200, content=jpeg(seed_offset + int(iid)))
    )


@respx.mock
async def test_query_maps_to_models_and_pages_by_cursor_to_the_end(make_manager, dataset):
    models = respx.get(f"{API}/models").mock(
        return_value=httpx.Response(200, json=civitai_models([(10, 1002, False), (20, 2002, True)]))
    )
    images = respx.get(f"{API}/images").mock(
        side_effect=[
            httpx.Response(200, json=civitai_images([civitai_image(1), civitai_image(2)], "1|1784323241003")),
            httpx.Response(200, json=civitai_images([civitai_image(3)], None)),
        ]
    )
    cdn = serve_images()

    report = await make_manager(source("civitai", label="ai", queries=["portrait"], limit_per_query=10)).run()

    r = report["sources"]["civitai"]
    assert (r["api_requests"], r["stored"]) == (3, 3)
    assert models.calls[0].request.url.params["query"] == "portrait"
    first, second = (c.request.url.params for c in images.calls)
    assert first["modelVersionId"] == "1002"  # the nsfw model 20 was never listed
    for params in (first, second):
        assert (params["browsingLevel"], params["type"], params["sort"]) == ("1", "image", "Newest")
        assert (params["withMeta"], params["flatMeta"]) == ("true", "true")
        assert "query" not in params and "page" not in params and "nsfw" not in params
    assert "cursor" not in first and second["cursor"] == "1|1784323241003"
    # the same filters, sort and page size go with the cursor
    assert (second["modelVersionId"], first["limit"], second["limit"]) == ("1002", "10", "10")
    assert {c.request.url.path.split("/")[3] for c in cdn.calls} == {"original=true"}
    meta = await dataset.get_metadata((await dataset.samples(labels=("ai",)))[0].id)
    assert meta["label"] == "ai" and meta["attribution"]["platform"] == "CivitAI"
    assert meta["api_data"]["baseModel"] == "SDXL 1.0"
    assert meta["api_data"]["prompt"].startswith("portrait photo of an elderly fisherman")
    assert meta["attribution"]["url"] == f"https://civitai.com/images/{meta['api_data']['photo_id']}"


@respx.mock
async def test_client_side_filter_drops_nsfw_and_non_images(make_manager):
    respx.get(f"{API}/images").mock(
        return_value=httpx.Response(
            200,
            json=civitai_images(
                [
                    civitai_image(1),
                    civitai_image(2, level=2),
                    civitai_image(3, level=16),
                    civitai_image(4, kind="video"),
                    {**civitai_image(5), "browsingLevel": None, "nsfwLevel": "Mature"},
                    {**civitai_image(6), "id": {"nested": 6}},
                    {**civitai_image(9), "url": None},
                ],
                None,
            ),
        )
    )
    serve_images()
    report = await make_manager(source("civitai", label="ai", queries=[])).run()
    r = report["sources"]["civitai"]
    assert r["stored"] == 1
    assert r["rejected"] == {"nsfw_filtered": 3, "not_an_image_type": 1}
    assert r["errors"] == {"missing_fields": 2} and r["status"] == "ok"


@respx.mock
async def test_browsing_level_option_widens_the_filter_explicitly(make_manager):
    images = respx.get(f"{API}/images").mock(
        return_value=httpx.Response(
            200,
            json=civitai_images(
                [civitai_image(1), civitai_image(2, level=2), civitai_image(3, level=4)], None
            ),
        )
    )
    serve_images()
    report = await make_manager(source("civitai", label="ai", queries=[], browsing_level=3)).run()
    assert images.calls[0].request.url.params["browsingLevel"] == "3"
    assert report["sources"]["civitai"]["stored"] == 2
    assert report["sources"]["civitai"]["rejected"] == {"nsfw_filtered": 1}


@respx.mock
async def test_503_with_retry_after_then_success(make_manager, sleeps):
    respx.get(f"{API}/images").mock(
        side_effect=[
            httpx.Response(
                503, headers={"Retry-After": "2"}, json={"error": "Server busy, please retry shortly."}
            ),
            httpx.Response(200, json=civitai_images([civitai_image(7)], None)),
        ]
    )
    serve_images()
    report = await make_manager(source("civitai", label="ai", queries=[])).run()
    assert report["sources"]["civitai"]["stored"] == 1
    assert 2.0 <= sleeps.calls[0] <= 3.0


@respx.mock
async def test_malformed_json_and_missing_items_are_counted(make_manager):
    respx.get(f"{API}/models").mock(
        side_effect=[
            httpx.Response(200, text='{"items": [{"id": 1,', headers={"Content-Type": "application/json"}),
            httpx.Response(200, json={"message": "unexpected"}),
        ]
    )
    report = await make_manager(source("civitai", label="ai", queries=["a", "b"])).run()
    assert report["sources"]["civitai"]["errors"] == {"bad_json": 1, "missing_fields": 1}
    assert report["sources"]["civitai"]["status"] == "ok"


@respx.mock
async def test_legacy_nested_meta_is_unwrapped(make_manager, dataset):
    item = civitai_image(8)
    item["meta"] = {"id": 8, "meta": {"prompt": "a lighthouse at dusk"}}
    respx.get(f"{API}/images").mock(return_value=httpx.Response(200, json=civitai_images([item], None)))
    serve_images()
    await make_manager(source("civitai", label="ai", queries=[])).run()
    meta = await dataset.get_metadata((await dataset.samples(labels=("ai",)))[0].id)
    assert meta["api_data"]["prompt"] == "a lighthouse at dusk"


@respx.mock
async def test_api_key_is_sent_as_bearer_when_set(make_settings, dataset, sleeps):
    from config.sources import SourcesFile
    from scraper.fetcher_manager import FetcherManager

    settings = make_settings(civitai_api_key="civ-key")
    images = respx.get(f"{API}/images").mock(return_value=httpx.Response(200, json=civitai_images([], None)))
    sources = SourcesFile(sources=[source("civitai", label="ai", queries=[])])
    await FetcherManager(settings, sources, dataset, sleep=sleeps).run()
    assert images.calls[0].request.headers["Authorization"] == "Bearer civ-key"


@respx.mock
async def test_a_repeated_cursor_ends_the_stream_instead_of_looping(make_manager):
    images = respx.get(f"{API}/images").mock(
        side_effect=[
            httpx.Response(200, json=civitai_images([civitai_image(1)], "7|1")),
            httpx.Response(200, json=civitai_images([civitai_image(2)], "7|1")),
            httpx.Response(200, json=civitai_images([civitai_image(3)], "7|1")),
        ]
    )
    serve_images()
    report = await make_manager(source("civitai", label="ai", queries=[], limit_per_query=10)).run()
    assert images.call_count == 2 and report["sources"]["civitai"]["stored"] == 2


@respx.mock
async def test_a_refused_key_stops_the_source_and_names_the_variable(make_manager, make_settings):
    models = respx.get(f"{API}/models").mock(return_value=httpx.Response(401, json={"error": "Unauthorized"}))
    report = await make_manager(
        source("civitai", label="ai", queries=["a", "b"]), settings_=make_settings(civitai_api_key="bad-key")
    ).run()
    r = report["sources"]["civitai"]
    assert models.call_count == 1 and r["errors"] == {"http_401": 1}
    assert r["status"] == "stopped" and "Unauthorized; check CIVITAI_API_KEY" in r["message"]
    assert "bad-key" not in r["message"]


@respx.mock
async def test_a_429_that_outlasts_the_retries_stops_the_source(make_manager, sleeps):
    respx.get(f"{API}/models").mock(
        return_value=httpx.Response(200, json=civitai_models([(10, 1002, False), (11, 1102, False)]))
    )
    images = respx.get(f"{API}/images").mock(return_value=httpx.Response(429))
    report = await make_manager(source("civitai", label="ai", queries=["a", "b"])).run()
    r = report["sources"]["civitai"]
    assert images.call_count == 3 and len(sleeps.calls) == 2  # one stream's tries, no second model
    assert (r["status"], r["errors"]) == ("stopped", {"rate_limited": 1})


@respx.mock
async def test_models_with_odd_version_lists_are_passed_over(make_manager):
    body = civitai_models([(10, 1002, False)])
    body["items"] += [{"id": 11, "modelVersions": {"id": 5}}, {"id": 12, "modelVersions": []}, "junk"]
    respx.get(f"{API}/models").mock(return_value=httpx.Response(200, json=body))
    images = respx.get(f"{API}/images").mock(return_value=httpx.Response(200, json=civitai_images([], None)))
    report = await make_manager(source("civitai", label="ai", queries=["a"])).run()
    assert report["sources"]["civitai"]["status"] == "ok"
    assert [c.request.url.params["modelVersionId"] for c in images.calls] == ["1002"]
