"""The operator console (/ui/) through TestClient: login, sessions, CSRF, pages, labels, uploads.

The browser tests (tests/browser) drive the same pages in Chromium; these check each rule and
each piece of bad input on its own.
"""

from __future__ import annotations

import asyncio
import re
import time
from io import BytesIO

import pytest
from PIL import Image

from app.ui.session import SESSION_COOKIE, issue_token
from app.ui.thumbnails import cache_path
from tests.app.conftest import AUTH, TOKEN
from tests.app.console_data import EVIL, image_bytes, register_version, report_for
from tests.images import jpeg

CSRF_INPUT = re.compile(r'<input type="hidden" name="csrf_token" value="([^"]+)">')


def login(client, key: str = TOKEN) -> str:
    """Log in through the form; returns the session's CSRF token (from the page's meta tag)."""
    form = client.get("/ui/login")
    token = CSRF_INPUT.search(form.text)[1]
    answer = client.post("/ui/login", data={"api_key": key, "csrf_token": token}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/"
    page = client.get("/ui/")
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)[1]


def ingest(client, data: bytes, **metadata) -> str:
    meta = {"source": "folder", "label": "unlabeled", "attribution": {"platform": "test"}, **metadata}
    outcome = client.portal.call(client.app.state.dataset.ingest, data, meta)
    assert outcome.status == "stored", outcome
    client.app.state.overview.invalidate()
    return outcome.id


def test_without_a_session_pages_redirect_to_the_login_form(client):
    for path in ("/ui/", "/ui/models", "/ui/jobs", "/ui/review", "/ui/upload", "/ui"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"] in ("/ui/login", "/ui/"), path
    form = client.get("/ui/login")
    assert form.status_code == 200
    assert re.search(r'<input type="password" name="api_key"', form.text)
    assert CSRF_INPUT.search(form.text)
    assert client.get("/ui/api/jobs").status_code == 401  # the page's poller gets JSON, not HTML


def test_login_sets_a_signed_httponly_strict_cookie_that_expires(client):
    form = client.get("/ui/login")
    token = CSRF_INPUT.search(form.text)[1]
    answer = client.post("/ui/login", data={"api_key": TOKEN, "csrf_token": token}, follow_redirects=False)
    cookie = next(v for v in answer.headers.get_list("set-cookie") if v.startswith(SESSION_COOKIE + "="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert re.search(r"Max-Age=28800\b", cookie)  # UI_SESSION_HOURS=8 by default
    assert TOKEN not in cookie
    assert client.get("/ui/").status_code == 200


def test_a_wrong_key_or_a_missing_login_token_sets_no_session(client):
    token = CSRF_INPUT.search(client.get("/ui/login").text)[1]
    wrong = client.post("/ui/login", data={"api_key": "nope", "csrf_token": token}, follow_redirects=False)
    assert wrong.status_code == 401 and "Wrong key" in wrong.text
    no_csrf = client.post("/ui/login", data={"api_key": TOKEN}, follow_redirects=False)
    assert no_csrf.status_code == 403
    for answer in (wrong, no_csrf):
        assert not any(v.startswith(SESSION_COOKIE + "=") for v in answer.headers.get_list("set-cookie"))
    assert client.get("/ui/", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("cookie", ["forged", "expired", "other-key", "garbage"])
def test_a_forged_or_expired_session_cookie_redirects_to_login(client, cookie):
    if cookie == "forged":
        value, _ = issue_token(TOKEN, "session", 3600)
        body, signature = value.rsplit(".", 1)
        value = f"{body}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    elif cookie == "expired":
        value, _ = issue_token(TOKEN, "session", 3600, now=time.time() - 7200)
    elif cookie == "other-key":
        value, _ = issue_token("another-key", "session", 3600)
    else:
        value = "not-a-cookie"
    client.cookies.set(SESSION_COOKIE, value, path="/ui")
    answer = client.get("/ui/", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"


def test_a_login_form_token_is_not_a_session(client):
    value, _ = issue_token(TOKEN, "login", 3600)
    client.cookies.set(SESSION_COOKIE, value, path="/ui")
    assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_without_a_configured_key_the_console_says_so(make_client):
    client = make_client(trainer_api_key=None)
    for path in ("/ui/login", "/ui/"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 503, path
        assert "TRAINER_API_KEY is not set" in answer.text
    assert client.post("/ui/login", data={"api_key": "", "csrf_token": ""}).status_code == 503


def test_logout_needs_the_csrf_token_and_the_old_cookie_is_refused_after(client):
    csrf = login(client)
    old = client.cookies.get(SESSION_COOKIE)
    refused = client.post("/ui/logout", follow_redirects=False)
    assert refused.status_code == 403
    assert client.get("/ui/").status_code == 200  # still logged in
    out = client.post("/ui/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert client.get("/ui/", follow_redirects=False).status_code == 303
    client.cookies.set(SESSION_COOKIE, old, path="/ui")  # replaying the logged-out cookie
    assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_state_changes_without_the_csrf_token_are_refused_and_change_nothing(client):
    login(client)
    image_id = ingest(client, image_bytes(1))
    for answer in (
        client.post("/ui/review/label", data={"id": image_id, "label": "real"}),
        client.post("/ui/review/label", data={"id": image_id, "label": "real", "csrf_token": "wrong"}),
        client.post("/ui/api/label", json={"id": image_id, "label": "real"}),
        client.post("/ui/api/label", json={"id": image_id, "label": "real"}, headers={"X-CSRF-Token": "x"}),
        client.post("/ui/upload", data={"label": "real"}, files={"files": ("a.png", image_bytes(3))}),
    ):
        assert answer.status_code == 403, answer.text
        assert "CSRF" in answer.text
    counts = client.get("/status").json()["dataset_counts"]
    assert counts == {"total": 1, "real": 0, "ai_generated": 0, "unlabeled": 1}


def test_labels_from_the_review_page_move_the_counts(client):
    csrf = login(client)
    ids = [ingest(client, image_bytes(i)) for i in range(3)]
    page = client.get("/ui/review")
    assert all(f'data-id="{i}"' in page.text for i in ids)
    assert all(f'src="/ui/thumbs/{i}"' in page.text for i in ids)
    answer = client.post("/ui/api/label", json={"id": ids[0], "label": "ai"}, headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 200 and answer.json()["label"] == "ai"
    assert answer.json()["counts"]["ai_generated"] == 1
    form = client.post("/ui/review/label", data={"id": ids[1], "label": "real", "csrf_token": csrf})
    assert form.status_code == 200 and f"{ids[1]} labelled real" in form.text
    counts = client.get("/status").json()["dataset_counts"]
    assert counts == {"total": 3, "real": 1, "ai_generated": 1, "unlabeled": 1}
    meta = client.get(f"/images/{ids[0]}", headers=AUTH)
    assert meta.status_code == 200


@pytest.mark.parametrize("bad_id", ["3f0c4a5e-0000-4000-8000-000000000000", "../../etc/passwd", "x" * 300])
def test_a_label_for_an_unknown_id_is_a_message_and_changes_nothing(client, bad_id):
    csrf = login(client)
    known = ingest(client, image_bytes(5))
    before = client.get("/status").json()["dataset_counts"]
    page = client.post("/ui/review/label", data={"id": bad_id, "label": "real", "csrf_token": csrf})
    assert page.status_code == 404
    assert "nothing was changed" in page.text and 'id="message"' in page.text
    assert f'data-id="{known}"' in page.text  # the review grid is still there
    api = client.post("/ui/api/label", json={"id": bad_id, "label": "real"}, headers={"X-CSRF-Token": csrf})
    assert api.status_code == 404 and "nothing was changed" in api.json()["detail"]
    assert client.get("/status").json()["dataset_counts"] == before
    assert client.portal.call(client.app.state.dataset.get_metadata, known)["label"] == "unlabeled"


def test_a_label_other_than_real_or_ai_is_refused(client):
    csrf = login(client)
    image_id = ingest(client, image_bytes(6))
    answer = client.post(
        "/ui/api/label", json={"id": image_id, "label": "unlabeled"}, headers={"X-CSRF-Token": csrf}
    )
    assert answer.status_code == 400 and "real or ai" in answer.json()["detail"]


def test_upload_reports_each_file_with_its_outcome(client):
    csrf = login(client)
    files = [
        ("files", ("one.png", image_bytes(11), "image/png")),
        ("files", ("two.jpg", image_bytes(12), "image/jpeg")),
        ("files", ("notes.txt", b"just text, not an image", "text/plain")),
        ("files", ("again.png", image_bytes(11), "image/png")),
    ]
    answer = client.post(
        "/ui/upload",
        data={"label": "real", "csrf_token": csrf},
        files=files,
        headers={"Accept": "application/json"},
    )
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [(r["file"], r["status"]) for r in results] == [
        ("one.png", "stored"),
        ("two.jpg", "stored"),
        ("notes.txt", "rejected"),
        ("again.png", "duplicate"),
    ]
    assert results[2]["reason"] == "not_an_image" and results[2]["message"]
    assert client.get("/status").json()["dataset_counts"]["real"] == 2
    # The plain form (no script) gets the same outcomes on the page, each reason beside its file.
    html = client.post(
        "/ui/upload",
        data={"label": "ai", "csrf_token": csrf},
        files=[("files", ("bad.gif", b"GIF89a but not really", "image/gif"))],
    )
    assert html.status_code == 200
    assert re.search(
        r'<span class="file">bad.gif</span>: <span class="status">rejected</span> '
        r'<span class="reason">\w+</span>',
        html.text,
    )


def test_upload_with_a_bad_label_stores_nothing(client):
    csrf = login(client)
    answer = client.post(
        "/ui/upload",
        data={"label": "maybe"},
        files={"files": ("a.png", image_bytes(2))},
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    assert answer.status_code == 400 and "label must be one of" in answer.json()["detail"]
    assert client.get("/status").json()["dataset_counts"]["total"] == 0


def test_html_in_source_metadata_is_escaped_everywhere(make_client):
    async def failing(settings, progress):
        progress({"stage": EVIL})
        raise RuntimeError(f"source said {EVIL}")

    async def reporting(settings, progress):
        return {
            "sources": {
                "folder": {
                    "label": "real",
                    "status": "stopped",
                    "message": EVIL,
                    "stored": 1,
                    "duplicates": 0,
                    "near_duplicates": 0,
                    "rejected": {EVIL: 2},
                    "errors": {},
                }
            }
        }

    client = make_client(job_kinds={"scrape": reporting, "train": failing})
    login(client)
    ingest(
        client,
        image_bytes(7),
        attribution={"platform": EVIL, "photographer": EVIL, "url": "javascript:alert(1)", "license": EVIL},
    )
    for kind in ("scrape", "train"):
        job = client.post(f"/{kind}", headers=AUTH).json()
        client.portal.call(client.app.state.runner.wait, job["job_id"])
    register_version(client.app.state.settings.models_dir, val_auc=0.8, promoted=True, reason=EVIL)
    for path in ("/ui/", "/ui/review", "/ui/jobs", "/ui/models", "/ui/models/vit/v1"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text, path
        assert "javascript:alert" not in page.text, path
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert "&lt;script&gt;" in client.get("/ui/review").text
    assert "&lt;script&gt;" in client.get("/ui/jobs").text
    assert "&lt;script&gt;" in client.get("/ui/").text


def test_overview_plots_dataset_size_by_label(client):
    login(client)
    for i, label in enumerate(["real", "real", "ai", "unlabeled"]):
        ingest(client, image_bytes(20 + i), label=label)
    page = client.get("/ui/").text
    svg = page[page.index('<figure id="growth">') : page.index("</figure>")]
    assert '<svg class="chart"' in svg
    # All ingested today: bars per hour, stacked by label, not three lone dots.
    per_label = {
        name: sum(int(v) for v in values.split())
        for name, values in re.findall(r'<g class="series" data-name="(\w+)" data-values="([^"]*)"', svg)
    }
    assert per_label == {"real": 2, "ai": 1, "unlabeled": 1}
    assert "images added per hour" in svg and "12:00" in svg
    assert re.search(r'data-count="real">2<', page) and re.search(r'data-count="total">4<', page)


def test_models_page_lists_versions_with_plot_report_and_downloads(client):
    login(client)
    models_dir = client.app.state.settings.models_dir
    register_version(models_dir, val_auc=0.81, promoted=True, reason="first model")
    register_version(
        models_dir,
        val_auc=0.77,
        promoted=False,
        reason="AUC lower than v1's",
        compared_with="v1",
        report=report_for("v2", 0.77),
    )
    page = client.get("/ui/models").text
    assert re.search(r'data-name="val_auc" data-points="2"', page)
    assert "AUC lower than v1&#39;s" in page and "promoted" in page and "rejected" in page
    v2 = client.get("/ui/models/vit/v2").text
    assert 'id="report"' in v2 and "Flux.1 D" in v2 and "0.710" in v2 and "SDXL 1.0" in v2
    assert 'id="no-report"' in client.get("/ui/models/vit/v1").text
    weights = client.get("/ui/models/vit/v1/weights.pt")
    assert weights.status_code == 200 and weights.content.startswith(b"not a real state dict")
    assert client.get("/ui/models/vit/v2/report.json").json()["version"] == "v2"
    assert client.get("/ui/models/vit/v1/report.json").status_code == 404
    assert client.get("/ui/models/vit/v9").status_code == 404
    client.cookies.clear()
    assert client.get("/ui/models/vit/v1/weights.pt", follow_redirects=False).status_code == 303


def test_jobs_page_filters_by_kind_and_state_and_shows_result_or_error(make_client):
    async def ok(settings, progress):
        return {"stored": 3}

    async def broken(settings, progress):
        raise RuntimeError("the dataset is too small: 3 images")

    client = make_client(job_kinds={"scrape": ok, "train": broken})
    login(client)
    ids = {}
    for kind in ("scrape", "train"):
        ids[kind] = client.post(f"/{kind}", headers=AUTH).json()["job_id"]
        client.portal.call(client.app.state.runner.wait, ids[kind])
    everything = client.get("/ui/jobs").text
    assert ids["scrape"] in everything and ids["train"] in everything
    assert "the dataset is too small: 3 images" in everything
    assert "<td>stored</td><td>3</td>" in everything  # a small table, not folded JSON
    failed = client.get("/ui/jobs", params={"state": "failed"}).text
    assert ids["train"] in failed and ids["scrape"] not in failed
    scrapes = client.get("/ui/jobs", params={"kind": "scrape"}).text
    assert ids["scrape"] in scrapes and ids["train"] not in scrapes
    bad = client.get("/ui/jobs", params={"kind": "<b>"})
    assert bad.status_code == 400 and "unknown job kind" in bad.text and "<b>" not in bad.text


def test_running_jobs_are_polled_with_percent_stage_and_eta(make_client, gate):
    async def training(settings, progress):
        progress(
            {
                "stage": "train",
                "epoch": 1,
                "epochs": 2,
                "batch": 3,
                "batches": 10,
                "done": 3,
                "total": 20,
                "percent": 15.0,
                "images_per_s": 41.25,
                "eta_s": 125.0,
            }
        )
        while not gate.open:
            await asyncio.sleep(0.01)
        return {}

    client = make_client(job_kinds={"train": training})
    login(client)
    job_id = client.post("/train", headers=AUTH).json()["job_id"]
    try:
        deadline = time.monotonic() + 120
        while True:
            jobs = client.get("/ui/api/jobs").json()["jobs"]
            if (jobs and jobs[0]["percent"] is not None) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert jobs[0]["id"] == job_id
        assert jobs[0]["percent"] == 15.0 and jobs[0]["stage"] == "train"
        assert jobs[0]["eta"] == "2:05" and jobs[0]["rate"] == "41.2 images/s"
        page = client.get("/ui/").text
        assert f'data-job="{job_id}"' in page and "ETA 2:05" in page
    finally:
        gate.open = True


def test_thumbnails_are_made_small_and_cached(client):
    login(client)
    image_id = ingest(client, jpeg(31, (900, 600)))
    first = client.get(f"/ui/thumbs/{image_id}")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert max(Image.open(BytesIO(first.content)).size) == 256
    cached = cache_path(client.app.state.settings.dataset_dir, image_id)
    assert cached.read_bytes() == first.content
    cached.write_bytes(b"cached copy")  # served from the cache, not made again
    assert client.get(f"/ui/thumbs/{image_id}").content == b"cached copy"
    assert client.get("/ui/thumbs/3f0c4a5e-0000-4000-8000-000000000000").status_code == 404
    assert client.get("/ui/thumbs/..%2F..%2Fdedupe.db").status_code == 404


def test_upload_takes_an_optional_generator_and_refuses_a_bad_one(client):
    csrf = login(client)
    headers = {"X-CSRF-Token": csrf, "Accept": "application/json"}
    good = client.post(
        "/ui/upload",
        data={"label": "ai", "generator": "  SDXL   1.0 "},
        files={"files": ("a.png", image_bytes(41))},
        headers=headers,
    )
    stored = good.json()["results"][0]
    assert stored["status"] == "stored"
    assert client.portal.call(client.app.state.dataset.get_metadata, stored["id"])["generator"] == "SDXL 1.0"
    bad = client.post(
        "/ui/upload",
        data={"label": "ai", "generator": "<b>x</b>"},
        files={"files": ("b.png", image_bytes(42))},
        headers=headers,
    )
    assert bad.status_code == 400 and "generator" in bad.json()["detail"]
    assert client.get("/status").json()["dataset_counts"]["total"] == 1


def test_models_show_the_auc_interval_and_the_overview_a_shortcut_warning(client):
    login(client)
    register_version(
        client.app.state.settings.models_dir,
        val_auc=0.9,
        promoted=True,
        reason="first",
        val_auc_ci95=[0.85, 0.94],
        shortcut_warning="metadata alone separates the classes (AUC 0.97)",
    )
    client.app.state.overview.invalidate()
    assert "95% 0.850–0.940" in client.get("/ui/models").text
    overview = client.get("/ui/").text
    assert 'id="shortcut-warning"' in overview and "metadata alone separates the classes" in overview


def test_one_clock_per_request_feeds_the_log_line_and_prometheus(client, caplog):
    """The console and the API share one request timer: each request is logged once and counted
    once in the latency histogram, by its route template."""
    import logging

    from prometheus_client.parser import text_string_to_metric_families

    login(client)
    with caplog.at_level(logging.INFO, logger="app.requests"):
        for _ in range(3):
            assert client.get("/ui/jobs").status_code == 200
    lines = [
        r.getMessage() for r in caplog.records if r.name == "app.requests" and "/ui/jobs " in r.getMessage()
    ]
    assert len(lines) == 3
    text = client.get("/metrics/prometheus", headers=AUTH).text
    counts = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "exposr_http_request_duration_seconds_count"
        and sample.labels.get("route") == "/ui/jobs"
    ]
    assert counts == [3.0]
