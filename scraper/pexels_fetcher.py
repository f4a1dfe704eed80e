"""Pexels: /search with page numbers, following ``next_page`` (docs/sources.md, Pexels).

Auth is the raw key in ``Authorization`` and a descriptive ``User-Agent`` (Pexels' edge answers
403 to library defaults). Pages hold at most 80 photos. A 429 carries no headers, so the quota
left is read from each 2xx (``X-Ratelimit-Remaining``) and the source stops at zero; a 429 is
retried with backoff, and when it outlasts the retries the source stops for the run, as it does
when the key (401) or the client (403) is refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx

from config.sources import SourceOptions
from scraper.base_fetcher import BaseFetcher

PER_PAGE_MAX = 80
Size = Literal["original", "large2x", "large", "medium", "small", "portrait", "landscape", "tiny"]


class PexelsOptions(SourceOptions):
    image_size: Size = "large2x"  # which of the photo's `src` renditions is downloaded


class PexelsFetcher(BaseFetcher[PexelsOptions]):
    options_model = PexelsOptions
    required_key = "pexels_api_key"
    # 401: the key was refused; 403: Pexels' edge refused the client. Neither improves this run.
    fatal_statuses = frozenset({401, 403})

    def get_source_name(self) -> str:
        return "pexels"

    @property
    def image_size(self) -> str:
        return self.options.image_size

    def iter_images(self, limit: int) -> AsyncIterator[tuple[bytes, dict]]:
        return self.spread_over_queries(limit, self._query_images)

    async def _query_images(self, query: str, wanted: int) -> AsyncIterator[tuple[bytes, dict]]:
        # One page size for the whole query: the API pages by offset (page - 1) * per_page.
        page: int | None = 1
        per_page = min(PER_PAGE_MAX, wanted)
        while wanted > 0 and page is not None and not self.stopped:
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
        return await self.get_list_page(
            f"{self.settings.pexels_api_url}/search",
            params,
            {"Authorization": self.secret()},
            f"search {query!r} page {page}",
            "photos",
        )

    def note_quota(self, response: httpx.Response) -> None:
        """Only 2xx answers carry the (monthly) quota left, a 429 carries nothing: stop at 0."""
        if response.headers.get("X-Ratelimit-Remaining", "").strip() == "0":
            self.stop(
                f"monthly quota used up (X-Ratelimit-Remaining: 0) until X-Ratelimit-Reset="
                f"{response.headers.get('X-Ratelimit-Reset', '?')}"
            )

    def _listing(self, photo: Any, query: str) -> tuple[str, dict] | None:
        size = self.image_size
        try:
            url = photo["src"][size]
            metadata = {
                **self.base_metadata(),
                "attribution": {
                    "platform": "Pexels",
                    "photographer": photo.get("photographer"),
                    "photographer_url": photo.get("photographer_url"),
                    "license": "Pexels License (API terms restrict ML use; see README.md)",
                    "url": photo["url"],
                },
                "api_data": {
                    "photo_id": photo["id"],
                    "width": photo.get("width"),
                    "height": photo.get("height"),
                    "photographer_id": photo.get("photographer_id"),
                    "alt": photo.get("alt"),
                    "avg_color": photo.get("avg_color"),
                    "query": query,
                    "size": size,
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
