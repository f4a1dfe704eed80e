"""CivitAI: AI-generated images from /images, cursor paging only (docs/sources.md, CivitAI).

/images has no keyword search (unknown parameters are silently dropped and return the global
feed), so each configured query is mapped onto what the API can filter by: ``/models?query=...``
finds models, and the images made with each model's newest version are listed by
``modelVersionId``. Without queries the global ``sort=Newest`` feed is used.

The content filter is explicit on both sides: every request sends ``browsingLevel`` (default 1 =
PG) and ``type=image``, and every item is checked again here, since the server cap is not
reliably enforced. Paging uses ``metadata.nextCursor`` only, on our own base URL.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field

from config.sources import SourceOptions
from scraper.base_fetcher import BaseFetcher

logger = logging.getLogger(__name__)

LIMIT_MAX = 200
LEGACY_LEVELS = {"None": 1, "Soft": 2, "Mature": 4, "X": 8, "Blocked": 32}


class CivitaiOptions(SourceOptions):
    # A bitmask of CivitAI's content levels, by CivitAI's own names: PG=1, PG-13=2, R=4, X=8 and
    # "XXX"=16 (the explicit level above X). Blocked (32) is never asked for.
    browsing_level: int = Field(1, ge=1, le=31)
    # /images has no keyword search: each query picks this many models.
    models_per_query: int = Field(3, ge=1, le=100)


class CivitaiFetcher(BaseFetcher[CivitaiOptions]):
    options_model = CivitaiOptions
    required_key = None  # the API is public; CIVITAI_API_KEY is sent as a Bearer token when set
    fatal_statuses = frozenset({401})  # only possible with a key set, and then that key is wrong

    def get_source_name(self) -> str:
        return "civitai"

    @property
    def browsing_level(self) -> int:
        return self.options.browsing_level

    @property
    def models_per_query(self) -> int:
        return self.options.models_per_query

    def api_headers(self) -> dict[str, str]:
        key = self.settings.civitai_api_key
        return {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}

    async def iter_images(self, limit: int) -> AsyncIterator[tuple[bytes, dict]]:
        self.seen: set[Any] = set()
        if not self.config.queries:
            async for item in self._image_stream({}, None, limit):
                yield item
            return
        async for item in self.spread_over_queries(limit, self._query_images):
            yield item

    async def _query_images(self, query: str, wanted: int) -> AsyncIterator[tuple[bytes, dict]]:
        """/images has no keyword search: the images of the models that match the query."""
        for version_id in await self._model_versions(query):
            if wanted <= 0 or self.stopped:
                return
            async for item in self._image_stream({"modelVersionId": version_id}, query, wanted):
                wanted -= 1
                yield item

    async def _model_versions(self, query: str) -> list[int]:
        """Newest version ids of the SFW models that match ``query``."""
        params = {"query": query, "limit": self.models_per_query, "nsfw": "false", "sort": "Most Downloaded"}
        body = await self.get_list_page(
            f"{self.settings.civitai_api_url}/models",
            params,
            self.api_headers(),
            f"model lookup {query!r}",
            "items",
        )
        if body is None:
            return []
        versions = []
        for model in body["items"]:
            if not isinstance(model, dict) or model.get("nsfw"):
                continue
            listed = model.get("modelVersions")
            first = listed[0] if isinstance(listed, list) and listed else None
            if isinstance(first, dict) and isinstance(first.get("id"), int):
                versions.append(first["id"])
        if not versions:
            logger.info("civitai: no SFW model matches %r", query)
        return versions

    async def _image_stream(
        self, filters: dict, query: str | None, wanted: int
    ) -> AsyncIterator[tuple[bytes, dict]]:
        cursor: Any = None
        limit = min(LIMIT_MAX, wanted)  # fixed for the stream: every cursor goes with the same params
        while wanted > 0 and not self.stopped:
            page = await self._images_page(filters, cursor, limit)
            if page is None:
                return
            items, next_cursor = page
            listed = [pair for item in items if (pair := self._listing(item, query))][:wanted]
            async for result in self.download_all(listed):
                wanted -= 1
                yield result
            if next_cursor is None or next_cursor == cursor or not items:
                return  # the end, or a feed that repeats its cursor (would loop forever)
            cursor = next_cursor

    async def _images_page(self, filters: dict, cursor: Any, limit: int) -> tuple[list, Any] | None:
        # The same filters and sort go with every cursor, as the pagination guide requires.
        params = {
            **filters,
            "limit": limit,
            "sort": "Newest",
            "type": "image",
            "browsingLevel": self.browsing_level,
            "withMeta": "true",
            "flatMeta": "true",
        }
        if cursor is not None:
            params["cursor"] = cursor
        body = await self.get_page(
            f"{self.settings.civitai_api_url}/images",
            params,
            self.api_headers(),
            f"images {filters or 'feed'}",
        )
        if body is None:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            self.count_error("missing_fields", f"images {filters or 'feed'}: no 'items' list")
            return None
        raw = body.get("metadata")
        metadata: dict[str, Any] = raw if isinstance(raw, dict) else {}
        return body["items"], metadata.get("nextCursor")

    def allowed(self, item: dict) -> str | None:
        """None when the item passes the content filter, else the reason it does not."""
        if item.get("type", "image") != "image":
            return "not_an_image_type"
        level = item.get("browsingLevel")
        if not isinstance(level, int):
            legacy = item.get("nsfwLevel")
            level = LEGACY_LEVELS.get(legacy) if isinstance(legacy, str) else None
        if level is None:
            return "nsfw_level_unknown"
        if level <= 0 or level & ~self.browsing_level:
            return "nsfw_filtered"
        return None

    def _listing(self, item: Any, query: str | None) -> tuple[str, dict] | None:
        try:
            image_id, url = item["id"], item["url"]
        except (KeyError, TypeError) as exc:
            self.count_error("missing_fields", f"image without {exc}: skipped")
            return None
        if not isinstance(image_id, int | str) or not isinstance(url, str):
            self.count_error(
                "missing_fields", f"image with an id {image_id!r} or url {url!r} of the wrong type: skipped"
            )
            return None
        if image_id in self.seen:
            return None
        self.seen.add(image_id)
        reason = self.allowed(item)
        if reason:
            self.count_rejected(reason, f"image {image_id} skipped: {reason}")
            return None
        return _original_url(url), self._metadata(item, query)

    def _metadata(self, item: dict, query: str | None) -> dict:
        meta = _unwrap_meta(item.get("meta"))
        return {
            **self.base_metadata(),
            "attribution": {
                "platform": "CivitAI",
                "photographer": item.get("username"),
                "license": None,  # /images carries no licence field; rights stay with the uploader
                "url": f"https://civitai.com/images/{item['id']}",
            },
            "api_data": {
                "photo_id": item["id"],
                "width": item.get("width"),
                "height": item.get("height"),
                "baseModel": item.get("baseModel"),
                "prompt": meta.get("prompt"),
                "browsingLevel": item.get("browsingLevel"),
                "postId": item.get("postId"),
                "modelVersionIds": item.get("modelVersionIds"),
                "query": query,
            },
        }


def _unwrap_meta(meta: Any) -> dict:
    """Generation metadata; the legacy path nests it as {id, meta} even when flatMeta was asked."""
    if not isinstance(meta, dict):
        return {}
    if set(meta) == {"id", "meta"}:
        return meta["meta"] if isinstance(meta["meta"], dict) else {}
    return meta


def _original_url(url: str) -> str:
    """Older responses carry /width=450/ in the URL; ask for the original instead."""
    return re.sub(r"/width=\d+/", "/original=true/", url)
