"""Unsplash: /search/photos with page numbers (docs/sources.md, Unsplash).

Auth is ``Authorization: Client-ID <key>`` plus ``Accept-Version: v1``. Pages hold at most 30
photos and search stops at page 200. Rate limiting comes back as 429 or as a 403 whose plain-text
body says "Rate Limit Exceeded"; both are treated alike: the limit is an hourly window with no
reset time, so the source stops for the run (``X-Ratelimit-Remaining: 0`` stops it before that,
a rejected key as well). Each *stored* image triggers one authorised call to its
``download_location``, as the API guidelines require.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import Field

from config.sources import SourceOptions
from scraper.base_fetcher import BaseFetcher
from scraper.errors import FetchError, RateLimited

PER_PAGE_MAX = 30
PAGE_CAP = 200
UTM = "utm_source=exposr_trainer&utm_medium=referral"


def is_unsplash_rate_limited(response: httpx.Response) -> bool:
    if response.status_code == 429:
        return True
    return response.status_code == 403 and (
        "rate limit exceeded" in response.text.lower() or response.headers.get("X-Ratelimit-Remaining") == "0"
    )


class UnsplashOptions(SourceOptions):
    content_filter: Literal["high", "low"] = "high"  # Unsplash's own safety filter
    image_width: int = Field(1600, ge=100, le=10000)  # width of the rendition downloaded (px)


class UnsplashFetcher(BaseFetcher[UnsplashOptions]):
    options_model = UnsplashOptions
    required_key = "unsplash_access_key"
    is_rate_limited = staticmethod(is_unsplash_rate_limited)
    # The limit is an hourly window and Unsplash sends no reset time: a rate-limited answer
    # stops the source for this run at once (unless it carries Retry-After).
    retry_rate_limited = False
    fatal_statuses = frozenset({401})

    def get_source_name(self) -> str:
        return "unsplash"

    @property
    def content_filter(self) -> str:
        return self.options.content_filter

    @property
    def image_width(self) -> int:
        return self.options.image_width

    def api_headers(self) -> dict[str, str]:
        return {"Authorization": f"Client-ID {self.secret()}", "Accept-Version": "v1"}

    def iter_images(self, limit: int) -> AsyncIterator[tuple[bytes, dict]]:
        return self.spread_over_queries(limit, self._query_images)

    async def _query_images(self, query: str, wanted: int) -> AsyncIterator[tuple[bytes, dict]]:
        # One page size for the whole query: the API pages by offset (page - 1) * per_page.
        page, per_page = 1, min(PER_PAGE_MAX, wanted)
        while wanted > 0 and page <= PAGE_CAP and not self.stopped:
            body = await self._search_page(query, page, per_page)
            if body is None:
                return
            listed = [pair for photo in body["results"][:wanted] if (pair := self._listing(photo, query))]
            async for item in self.download_all(listed):
                wanted -= 1
                yield item
            if not body["results"] or page >= int(body.get("total_pages") or 0):
                return
            page += 1

    async def _search_page(self, query: str, page: int, per_page: int) -> dict | None:
        params = {"query": query, "page": page, "per_page": per_page, "content_filter": self.content_filter}
        return await self.get_list_page(
            f"{self.settings.unsplash_api_url}/search/photos",
            params,
            self.api_headers(),
            f"search {query!r} page {page}",
            "results",
        )

    def note_quota(self, response: httpx.Response) -> None:
        """Search answers and download events both carry the hourly quota left; stop at 0."""
        if response.headers.get("X-Ratelimit-Remaining", "").strip() == "0":
            self.stop("hourly quota used up (X-Ratelimit-Remaining: 0); the next scrape continues")

    def _listing(self, photo: Any, query: str) -> tuple[str, dict] | None:
        """(download URL, metadata) for one search result, or None (counted) when fields are missing."""
        try:
            raw = photo["urls"]["raw"]
            user = photo.get("user") or {}
            metadata = {
                **self.base_metadata(),
                "attribution": {
                    "platform": "Unsplash",
                    "photographer": user.get("name") or user.get("username"),
                    "photographer_url": _with_utm((user.get("links") or {}).get("html")),
                    "license": "Unsplash License (API terms restrict ML use; see README.md)",
                    "url": _with_utm(photo["links"]["html"]),
                },
                "api_data": {
                    "photo_id": photo["id"],
                    "width": photo.get("width"),
                    "height": photo.get("height"),
                    "username": user.get("username"),
                    "query": query,
                    "download_location": photo["links"].get("download_location"),
                },
            }
        except (KeyError, TypeError) as exc:
            self.count_error("missing_fields", f"search result without {exc}: skipped")
            return None
        width = self.image_width
        # raw is an imgix URL: add size parameters and keep ixid, as the guidelines require.
        return str(httpx.URL(raw).copy_merge_params({"w": width, "fm": "jpg", "q": 85})), metadata

    async def on_stored(self, metadata: dict) -> None:
        """Report the download to Unsplash: authorised, once per stored image."""
        api = metadata.get("api_data") or {}
        url = self._download_event_url(api)
        if url is None:
            return
        try:
            self.note_quota(await self.http.api_get(url, headers=self.api_headers()))
        except RateLimited as exc:
            self.count_error(
                f"download_event_{exc.kind}", f"download event for {api.get('photo_id')}: {exc.message}"
            )
            self.stop_rate_limited(exc)
        except FetchError as exc:
            self.count_error(
                f"download_event_{exc.kind}", f"download event for {api.get('photo_id')}: {exc.message}"
            )

    def _download_event_url(self, api: dict) -> str | None:
        """download_location rebuilt on our own API base, so the key only goes to the API host."""
        location = api.get("download_location")
        if not location or not api.get("photo_id"):
            return None
        query = urlsplit(location).query
        base = f"{self.settings.unsplash_api_url}/photos/{api['photo_id']}/download"
        return f"{base}?{query}" if query else base


def _with_utm(url: str | None) -> str | None:
    if not url:
        return url
    return f"{url}{'&' if '?' in url else '?'}{UTM}"
