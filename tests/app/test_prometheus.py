"""GET /metrics/prometheus: the text format, parsed back with prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.app.conftest import AUTH
from tests.app.console_data import image_bytes, register_version


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def test_prometheus_needs_the_bearer_token_and_fails_closed(client, make_client):
    assert client.get("/metrics/prometheus").status_code == 401
    assert make_client(trainer_api_key=None).get("/metrics/prometheus", headers=AUTH).status_code == 503


def test_prometheus_reports_counts_outcomes_jobs_models_and_latency(make_client):
    async def scrape(settings, progress):
        return {
            "sources": {
                "pexels": {
                    "label": "real",
                    "stored": 4,
                    "duplicates": 2,
                    "near_duplicates": 1,
                    "rejected": {"too_small": 3},
                    "errors": {"timeout": 1},
                }
            }
        }

    async def train(settings, progress):
        raise RuntimeError("too small")

    client = make_client(job_kinds={"scrape": scrape, "train": train})
    for kind in ("scrape", "train"):
        job = client.post(f"/{kind}", headers=AUTH).json()
        client.portal.call(client.app.state.runner.wait, job["job_id"])
    for i, label in enumerate(["real", "real", "ai"]):
        client.post(
            "/upload", headers=AUTH, data={"label": label}, files={"file": (f"{i}.png", image_bytes(i))}
        )
    client.post("/upload", headers=AUTH, data={"label": "ai"}, files={"file": ("x.txt", b"text")})
    client.post("/upload", headers=AUTH, data={"label": "ai"}, files={"file": ("0.png", image_bytes(0))})
    models_dir = client.app.state.settings.models_dir
    register_version(models_dir, val_auc=0.84, promoted=True, reason="first")
    register_version(models_dir, val_auc=0.8, promoted=False, reason="worse", compared_with="v1")
    client.get("/status")

    answer = client.get("/metrics/prometheus", headers=AUTH)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    found = samples(answer.text)
    assert value(found, "exposr_dataset_images", label="real", source="upload") == 2
    assert value(found, "exposr_dataset_images", label="ai_generated", source="upload") == 1
    assert value(found, "exposr_ingest_outcomes_total", source="upload", outcome="stored", reason="") == 3
    assert (
        value(
            found, "exposr_ingest_outcomes_total", source="upload", outcome="rejected", reason="not_an_image"
        )
        == 1
    )
    assert value(found, "exposr_ingest_outcomes_total", source="upload", outcome="duplicate", reason="") == 1
    assert (
        value(found, "exposr_scrape_ingest_outcomes_total", source="pexels", outcome="stored", reason="") == 4
    )
    assert (
        value(
            found,
            "exposr_scrape_ingest_outcomes_total",
            source="pexels",
            outcome="rejected",
            reason="too_small",
        )
        == 3
    )
    assert (
        value(
            found, "exposr_scrape_ingest_outcomes_total", source="pexels", outcome="error", reason="timeout"
        )
        == 1
    )
    assert value(found, "exposr_jobs", kind="scrape", state="succeeded") == 1
    assert value(found, "exposr_jobs", kind="train", state="failed") == 1
    assert value(found, "exposr_job_duration_seconds_count", kind="train", state="failed") == 1
    assert value(found, "exposr_job_duration_seconds_sum", kind="scrape", state="succeeded") >= 0
    assert (
        value(
            found,
            "exposr_model_version_info",
            model="vit",
            version="v1",
            architecture="resnet10t",
            promoted="true",
        )
        == 1
    )
    assert (
        value(
            found,
            "exposr_model_version_info",
            model="vit",
            version="v2",
            architecture="resnet10t",
            promoted="false",
        )
        == 1
    )
    assert value(found, "exposr_model_val_auc", model="vit", version="v2") == 0.8
    assert value(found, "exposr_model_served_info", model="vit", version="v1") == 1
    # Latency by route template, never by raw path (ids would explode the label values).
    assert (
        value(
            found, "exposr_http_request_duration_seconds_count", method="GET", route="/status", status="200"
        )
        == 1
    )
    assert (
        value(
            found, "exposr_http_request_duration_seconds_count", method="POST", route="/upload", status="201"
        )
        == 3
    )
    assert not any(
        "job_id" in dict(labels).get("route", "")
        and name.endswith("_count")
        and dict(labels)["route"] != "/jobs/{job_id}"
        for name, labels in found
    )


def test_json_metrics_keep_their_fields(client):
    body = client.get("/metrics", headers=AUTH).json()
    assert {"total_images", "models_trained", "last_training", "validation_accuracy"} <= set(body)
