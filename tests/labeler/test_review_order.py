"""The review queue's membership and order rules, on plain metadata dicts."""

from __future__ import annotations

import uuid

import pytest
from rich.console import Console

from labeler.review import InvalidImageId, build_queue, image_media_type, parse_image_id, review_table
from tests.images import encode, jpeg, png, scene


def meta(n: int, label: str, score: float | None, **extra) -> dict:
    return {
        "id": f"00000000-0000-4000-8000-{n:012d}",
        "label": label,
        "confidence": score,
        "source": "upload",
        "timestamp": f"2025-10-28T20:00:{n:02d}Z",
        **extra,
    }


def ids(queue: list[dict]) -> list[int]:
    return [int(item["id"][-12:]) for item in queue]


def test_unlabeled_most_uncertain_first_unscored_counts_as_fully_uncertain(settings):
    metas = [
        meta(1, "unlabeled", 0.95),
        meta(2, "unlabeled", 0.45),
        meta(3, "unlabeled", None),
        meta(4, "unlabeled", 0.1),
        meta(5, "unlabeled", 0.6),
    ]
    queue = build_queue(metas, settings)
    assert ids(queue) == [3, 2, 5, 4, 1]
    assert {item["reason"] for item in queue} == {"unlabeled"}


def test_disagreements_strongest_first_and_before_unlabeled(make_settings):
    settings = make_settings(review_real_max_score=0.8, review_ai_min_score=0.2)
    metas = [
        meta(1, "real", 0.85),  # disagreement 0.85
        meta(2, "ai", 0.02),  # disagreement 0.98
        meta(3, "real", 0.8),  # at the threshold: agrees enough
        meta(4, "ai", 0.2),  # at the threshold
        meta(5, "real", 0.1),  # agrees
        meta(6, "unlabeled", 0.5),
        meta(7, "ai", 0.15),  # disagreement 0.85, younger than 1
        meta(8, "real", None),  # never scored: nothing to disagree with
    ]
    queue = build_queue(metas, settings)
    assert ids(queue) == [2, 1, 7, 6]
    assert [item["reason"] for item in queue] == ["disagreement"] * 3 + ["unlabeled"]
    assert "REVIEW_AI_MIN_SCORE" in queue[0]["why"]


def test_thresholds_are_configurable(make_settings):
    metas = [meta(1, "real", 0.6), meta(2, "ai", 0.4)]
    assert build_queue(metas, make_settings()) == []
    strict = make_settings(review_real_max_score=0.5, review_ai_min_score=0.5)
    assert ids(build_queue(metas, strict)) == [1, 2]


def test_a_persons_label_is_settled(settings):
    person = {"kind": "person", "by": "ann", "at": "2025-10-29T08:00:00Z"}
    metas = [meta(1, "real", 0.99, label_source=person), meta(2, "real", 0.99)]
    assert ids(build_queue(metas, settings)) == [2]


def test_kind_filter(settings):
    metas = [meta(1, "real", 0.99), meta(2, "unlabeled", 0.5)]
    assert ids(build_queue(metas, settings, "disagreement")) == [1]
    assert ids(build_queue(metas, settings, "unlabeled")) == [2]


def test_entry_carries_what_a_reviewer_needs(settings):
    attribution = {"platform": "Pexels", "photographer": "Jo", "license": "Pexels", "url": "https://x"}
    [entry] = build_queue([meta(9, "unlabeled", 0.4, attribution=attribution, source="pexels")], settings)
    assert entry["image_url"] == "/images/00000000-0000-4000-8000-000000000009"
    assert entry["attribution"] == attribution
    assert (entry["source"], entry["label"], entry["score"]) == ("pexels", "unlabeled", 0.4)


def test_the_cli_table_keeps_whole_ids_and_the_reason_in_an_80_column_terminal(settings):
    attribution = {"platform": "Pexels", "photographer": "Jo Lee"}
    metas = [meta(1, "real", 0.97, attribution=attribution, source="pexels"), meta(2, "unlabeled", None)]
    page = {"total": 2, "limit": 50, "offset": 0, "kind": "all", "items": build_queue(metas, settings)}
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(review_table(page))
    text = console.export_text()
    assert "Review queue (all): 1-2 of 2" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    for item in page["items"]:
        assert item["id"] in text  # what PATCH /images/{id} takes, never cut
    assert "pexels (Jo Lee)" in text and "0.970" in text
    words = " ".join(text.split())
    assert "REVIEW_REAL_MAX" in words and "not scored yet" in words


@pytest.mark.parametrize("raw", ["", "abc", "../../etc/passwd", "123e4567-e89b-12d3-a456-42661417400Z"])
def test_non_uuid_ids_are_refused(raw):
    with pytest.raises(InvalidImageId, match="ids are UUIDs"):
        parse_image_id(raw)


def test_uuid_ids_are_canonicalised():
    value = uuid.uuid4()
    assert parse_image_id(str(value).upper()) == str(value)


def test_media_type_from_bytes():
    assert image_media_type(jpeg(1)) == "image/jpeg"
    assert image_media_type(png(1)) == "image/png"
    assert image_media_type(encode(scene(1), "WEBP")) == "image/webp"
    assert image_media_type(b"not an image") == "application/octet-stream"
