"""Response bodies in the real APIs' shapes, built from the captured fixtures (tests/scraper/fixtures).

Each builder copies a fixture item and changes only ids and URLs, so every key the real API sends
is still there. Image URLs point at ``cdn`` (a base URL) so tests can serve the bytes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def unsplash_photo(photo_id: str, cdn: str = "https://images.unsplash.com") -> dict:
    photo = copy.deepcopy(fixture("unsplash_search.json")["results"][0])
    photo["id"] = photo_id
    photo["urls"]["raw"] = f"{cdn}/photo-{photo_id}?ixid=IXID{photo_id}&ixlib=rb-4.1.0"
    photo["links"]["html"] = f"https://unsplash.com/photos/{photo_id}"
    photo["links"]["download_location"] = (
        f"https://api.unsplash.com/photos/{photo_id}/download?ixid=IXID{photo_id}"
    )
    return photo


def unsplash_search(ids: list[str], total_pages: int, cdn: str = "https://images.unsplash.com") -> dict:
    return {
        "total": total_pages * max(1, len(ids)),
        "total_pages": total_pages,
        "results": [unsplash_photo(i, cdn) for i in ids],
    }


def pexels_photo(photo_id: int, cdn: str = "https://images.pexels.com") -> dict:
    photo = copy.deepcopy(fixture("pexels_search.json")["photos"][1])
    photo["id"] = photo_id
    photo["url"] = f"https://www.pexels.com/photo/p-{photo_id}/"
    photo["src"] = {
        size: f"{cdn}/photos/{photo_id}/pexels-photo-{photo_id}.jpeg?size={size}" for size in photo["src"]
    }
    return photo


def pexels_search(
    ids: list[int],
    page: int,
    per_page: int,
    has_next: bool,
    query: str = "nature",
    cdn: str = "https://images.pexels.com",
) -> dict:
    body = {
        "total_results": 1000,
        "page": page,
        "per_page": per_page,
        "photos": [pexels_photo(i, cdn) for i in ids],
    }
    if has_next:
        body["next_page"] = (
            f"https://api.pexels.com/v1/search/?page={page + 1}&per_page={per_page}&query={query}"
        )
    return body


def civitai_image(
    image_id: int, level: int = 1, kind: str = "image", cdn: str = "https://image.civitai.com"
) -> dict:
    item = copy.deepcopy(fixture("civitai_images.json")["items"][0])
    item.update(
        id=image_id,
        type=kind,
        browsingLevel=level,
        nsfw=level != 1,
        nsfwLevel={1: "None", 2: "Soft", 4: "Mature", 8: "X", 16: "X"}.get(level, "Blocked"),
        url=f"{cdn}/xG1nkqKTMzGDvpLrqFT7WA/{image_id}/width=450/{image_id}.jpeg",
    )
    return item


def civitai_images(items: list[dict], next_cursor: str | None) -> dict:
    metadata = {}
    if next_cursor is not None:
        metadata = {
            "nextCursor": next_cursor,
            "nextPage": f"https://civitai.com/api/v1/images?limit=2&cursor={next_cursor}",
        }
    return {"items": items, "metadata": metadata}


def civitai_models(models: list[tuple[int, int, bool]]) -> dict:
    """/models answer: (model id, newest version id, nsfw) per model, in the real field names."""
    return {
        "items": [
            {
                "id": mid,
                "name": f"model {mid}",
                "type": "Checkpoint",
                "nsfw": nsfw,
                "modelVersions": [
                    {"id": vid, "name": "v2", "baseModel": "SDXL 1.0"},
                    {"id": vid - 1, "name": "v1", "baseModel": "SDXL 1.0"},
                ],
            }
            for mid, vid, nsfw in models
        ],
        "metadata": {"nextCursor": None},
    }
