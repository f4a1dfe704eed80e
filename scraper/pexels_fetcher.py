"""Pexels: /search with page numbers, following ``next_page`` (source-apis.md section 2).

Auth is the raw key in ``Authorization`` and a descriptive ``User-Agent`` (Pexels' edge answers
403 to library defaults). Pages hold at most 80 photos. A 429 carries no headers, so the quota
left is remembered from the last 2xx (``X-Ratelimit-Remaining``) and the source stops at zero.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from scraper.base_fetcher import BaseFetcher
from scraper.http import FetchError, RateLimited, decode_json

logger = logging.getLogger(__name__)

PER_PAGE_MAX = 80
SIZES = ("original", "large2x", "large", "medium", "small", "portrait", "landscape", "tiny")


class PexelsFetcher(BaseFetcher):
    required_key = "pexels_api_key"
    quota_left: int | None = None   # from X-Ratelimit-Remaining; 0 stops the source

    def get_source_name(self) -> str:
        return "pexels"

    async def fetch_images(self, limit: int) -> list[tuple[bytes, dict]]:
        return await self.collect(limit)

    async def iter_images(self, limit: int) -> AsyncIterator[tuple[bytes, dict]]:
        for query in self.config.queries:
            if limit <= 0 or self.quota_left == 0:
                break
            async for item in self._query_images(query, min(limit, self.config.limit_per_query)):
                limit -= 1
                yield item

    async def _query_images(self, query: str, wanted: int) -> AsyncIterator[tuple[bytes, dict]]:
        # One page size for the whole query: the API pages by offset (page - 1) * per_page.
        page: int | None = 1
        per_page = min(PER_PAGE_MAX, wanted)
        while wanted > 0 and page is not None and self.quota_left != 0:
            body = await self._search_page(query, page, per_page)
            if body is None:
                return
            listed = [pair for photo in body["photos"][:wanted] if (pair := self._listing(photo, query))]
            async for item in self.download_all(listed):
                wanted -= 1
                yield item
            following = _next_page_number(body.get("next_page")) if body["photos"] else None
            page = following if following is not None and following > page else None

    async def _search_page(self, query: str, page: int, per_page: int) -> dict | None:
        params = {"query": query, "page": page, "per_page": per_page}
        headers = {"Authorization": self.secret()}
        try:
            response = await self.http.api_get(f"{self.settings.pexels_api_url}/search", params, headers)
            self._note_quota(response)
            body = decode_json(response)
        except RateLimited as exc:
            self.quota_left = 0
            self.count_error(exc.kind, f"{exc.message}; stopping Pexels for this run")
            return None
        except FetchError as exc:
            self.count_error(exc.kind, f"search {query!r} page {page}: {exc.message}")
            return None
        if not isinstance(body, dict) or not isinstance(body.get("photos"), list):
            self.count_error("missing_fields", f"search {query!r} page {page}: no 'photos' list")
            return None
        return body

    def _note_quota(self, response: httpx.Response) -> None:
        remaining = response.headers.get("X-Ratelimit-Remaining", "")
        if remaining.isdigit():
            self.quota_left = int(remaining)
            if self.quota_left == 0:
                logger.warning("pexels: monthly quota used up until X-Ratelimit-Reset=%s; stopping",
                               response.headers.get("X-Ratelimit-Reset"))

    def _listing(self, photo: Any, query: str) -> tuple[str, dict] | None:
        size = self.config.option("image_size", "large2x")
        if size not in SIZES:
            size = "large2x"
        try:
            url = photo["src"][size]
            metadata = {
                **self.base_metadata(),
                "attribution": {
                    "platform": "Pexels",
                    "photographer": photo.get("photographer"),
                    "photographer_url": photo.get("photographer_url"),
                    "license": "Pexels License (API terms restrict ML use; see docs/sources.md)",
                    "url": photo["url"],
                },
                "api_data": {
                    "photo_id": photo["id"], "width": photo.get("width"), "height": photo.get("height"),
                    "photographer_id": photo.get("photographer_id"), "alt": photo.get("alt"),
                    "avg_color": photo.get("avg_color"), "query": query, "size": size,
                },
            }
        except (KeyError, TypeError) as exc:
            self.count_error("missing_fields", f"search result without {exc}: skipped")
            return None
        return url, metadata


def _next_page_number(next_page: Any) -> int | None:
    """The page number in ``next_page``; the request is rebuilt on our own base URL, never followed."""
    if not isinstance(next_page, str) or not next_page:
        return None
    value = httpx.URL(next_page).params.get("page", "")
    return int(value) if value.isdigit() else None
