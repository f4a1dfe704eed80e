"""A small fake of the three source APIs and their image CDN, served by uvicorn on 127.0.0.1.

Used by the integration test (real sockets, real HTTP) and by ``bench/scrape_bench.py``. Each
source lists ``per_source`` images in the real response shapes (tests/scraper/apis.py), checks
the auth header the real API wants, pages the way the real API pages, and the CDN serves real
JPEG bytes from ``make_image(index)``.

    with FakeSourceApi(per_source=20, make_image=jpeg) as api:
        settings = make_settings(**api.settings_overrides())
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import lru_cache

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.scraper.apis import civitai_image, civitai_models, pexels_photo, unsplash_photo

UNSPLASH_KEY = "fake-unsplash-key"
PEXELS_KEY = "fake-pexels-key"
SOURCES = ("unsplash", "pexels", "civitai")


class FakeSourceApi:
    def __init__(self, per_source: int, make_image: Callable[[int], bytes]):
        self.per_source = per_source
        self.image = lru_cache(maxsize=None)(make_image)
        self.hits: Counter[str] = Counter()
        self.base_url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> FakeSourceApi:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        host, port = sock.getsockname()
        self.base_url = f"http://{host}:{port}"
        config = uvicorn.Config(
            self.app(), log_level="warning", lifespan="off", ws="none", http="h11", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake source API did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=60)

    def settings_overrides(self) -> dict[str, str]:
        return {
            "unsplash_api_url": f"{self.base_url}/unsplash",
            "unsplash_access_key": UNSPLASH_KEY,
            "pexels_api_url": f"{self.base_url}/pexels",
            "pexels_api_key": PEXELS_KEY,
            "civitai_api_url": f"{self.base_url}/civitai",
        }

    def image_ids(self, source: str) -> range:
        start = SOURCES.index(source) * self.per_source
        return range(start, start + self.per_source)

    def image_urls(self) -> list[str]:
        return [f"{self.base_url}/cdn/{i}.jpg" for s in SOURCES for i in self.image_ids(s)]

    # ---- the app ---------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/unsplash/search/photos", self.unsplash_search),
                Route("/unsplash/photos/{pid}/download", self.unsplash_download),
                Route("/pexels/search", self.pexels_search),
                Route("/civitai/models", self.civitai_models),
                Route("/civitai/images", self.civitai_images),
                Route("/cdn/{index:int}.jpg", self.cdn),
            ]
        )

    async def unsplash_search(self, request: Request) -> Response:
        self.hits["unsplash_search"] += 1
        if request.headers.get("Authorization") != f"Client-ID {UNSPLASH_KEY}":
            return JSONResponse({"errors": ["OAuth error: The access token is invalid"]}, status_code=401)
        ids = list(self.image_ids("unsplash"))
        page, per_page = int(request.query_params["page"]), min(30, int(request.query_params["per_page"]))
        chunk = ids[(page - 1) * per_page : page * per_page]
        total_pages = -(-len(ids) // per_page)
        cdn = f"{self.base_url}/cdn"
        results = []
        for i in chunk:
            photo = unsplash_photo(str(i), cdn)
            photo["urls"]["raw"] = f"{cdn}/{i}.jpg?ixid=IX{i}"
            photo["links"]["download_location"] = f"{self.base_url}/unsplash/photos/{i}/download?ixid=IX{i}"
            results.append(photo)
        return JSONResponse(
            {"total": len(ids), "total_pages": total_pages, "results": results},
            headers={"X-Ratelimit-Limit": "5000", "X-Ratelimit-Remaining": "4999"},
        )

    async def unsplash_download(self, request: Request) -> Response:
        if request.headers.get("Authorization") != f"Client-ID {UNSPLASH_KEY}":
            return PlainTextResponse("unauthorised", status_code=401)
        self.hits["unsplash_download_event"] += 1
        return JSONResponse({"url": f"{self.base_url}/cdn/{request.path_params['pid']}.jpg"})

    async def pexels_search(self, request: Request) -> Response:
        self.hits["pexels_search"] += 1
        if request.headers.get("Authorization") != PEXELS_KEY:
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        ids = list(self.image_ids("pexels"))
        page, per_page = int(request.query_params["page"]), min(80, int(request.query_params["per_page"]))
        chunk = ids[(page - 1) * per_page : page * per_page]
        photos = []
        for i in chunk:
            photo = pexels_photo(i)
            photo["src"] = {size: f"{self.base_url}/cdn/{i}.jpg?size={size}" for size in photo["src"]}
            photos.append(photo)
        body = {"total_results": len(ids), "page": page, "per_page": per_page, "photos": photos}
        if page * per_page < len(ids):
            body["next_page"] = f"https://api.pexels.com/v1/search/?page={page + 1}&per_page={per_page}"
        return JSONResponse(body, headers={"X-Ratelimit-Remaining": "19999"})

    async def civitai_models(self, request: Request) -> Response:
        self.hits["civitai_models"] += 1
        return JSONResponse(civitai_models([(1, 101, False), (2, 202, True)]))

    async def civitai_images(self, request: Request) -> Response:
        self.hits["civitai_images"] += 1
        params = request.query_params
        if params.get("type") != "image" or "browsingLevel" not in params:
            return JSONResponse({"error": "this fake only serves explicit image requests"}, status_code=400)
        ids = list(self.image_ids("civitai"))
        start = int(params.get("cursor", ids[0]))
        limit = int(params["limit"])
        chunk = [i for i in ids if i >= start][:limit]
        items = []
        for i in chunk:
            item = civitai_image(i)
            item["url"] = f"{self.base_url}/cdn/{i}.jpg"
            items.append(item)
        following = [i for i in ids if i > chunk[-1]] if chunk else []
        metadata = {"nextCursor": str(following[0])} if following else {}
        return JSONResponse({"items": items, "metadata": metadata})

    async def cdn(self, request: Request) -> Response:
        self.hits["cdn"] += 1
        return Response(self.image(request.path_params["index"]), media_type="image/jpeg")
