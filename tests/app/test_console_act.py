"""Acting from the console: a confirmed, CSRF-checked start of a scrape (all or one source), a
training or a labeler run that answers with the job's page; the job page and the overview."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.app.conftest import AUTH
from tests.app.console_data import register_version
from tests.app.test_console import login


class Recorded:
    """Job kinds that record the options they were started with and finish at once."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def kinds(self) -> dict:
        def kind(name):
            async def run(settings, progress, **options):
                self.calls.append((name, options))
                progress({"stage": name, "done": 1, "total": 1})
                await asyncio.sleep(0)
                if name == "scrape":
                    only = options.get("only") or ["unsplash", "pexels"]
                    return {
                        "status": "ok",
                        "sources": {
                            s: {"label": "real", "status": "ok", "stored": 4, "duplicates": 1} for s in only
                        },
                        "totals": {"stored": 4 * len(only), "duplicates": len(only)},
                    }
                return {"scored": 3, "errors": {}}

            return run

        return {name: kind(name) for name in ("scrape", "train", "label")}


@pytest.fixture
def recorded():
    return Recorded()


@pytest.fixture
def act_client(make_client, recorded):
    return make_client(job_kinds=recorded.kinds())


def start(client, csrf: str, kind: str, **fields):
    return client.post(
        f"/ui/act/{kind}", data={"csrf_token": csrf, "confirm": "yes", **fields}, follow_redirects=False
    )


def test_a_scrape_of_one_source_is_confirmed_and_answers_with_its_job_page(act_client, recorded):
    csrf = login(act_client)
    confirm = act_client.get("/ui/act/scrape", params={"source": "pexels"})
    assert confirm.status_code == 200 and '<option value="pexels" selected>' in confirm.text
    answer = start(act_client, csrf, "scrape", source="pexels")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/jobs/")
    job_id = answer.headers["location"].rsplit("/", 1)[1]
    job = act_client.portal.call(act_client.app.state.runner.wait, job_id)
    assert job["state"] == "succeeded" and job["trigger"] == "console"
    assert recorded.calls[0] == ("scrape", {"only": ["pexels"]})
    page = act_client.get(answer.headers["location"]).text
    assert "images per source" in page and "<td>pexels</td>" in page and "<td>4</td>" in page
    listed = act_client.get("/jobs", headers=AUTH).json()["jobs"]  # the API shows the new trigger
    assert {job["id"]: job["trigger"] for job in listed}[job_id] == "console"


def test_scrape_all_train_and_label_start_from_the_page(act_client, recorded):
    csrf = login(act_client)
    runner = act_client.app.state.runner
    for kind in ("train", "label", "scrape"):
        answer = start(act_client, csrf, kind)
        assert answer.status_code == 303, kind
        act_client.portal.call(runner.wait, answer.headers["location"].rsplit("/", 1)[1])
    assert recorded.calls[:3] == [("train", {}), ("label", {}), ("scrape", {})]


def test_nothing_starts_without_the_token_or_the_confirmation(act_client, recorded):
    csrf = login(act_client)
    assert act_client.post("/ui/act/train", data={"confirm": "yes"}).status_code == 403
    assert act_client.post("/ui/act/train", data={"confirm": "yes", "csrf_token": "stale"}).status_code == 403
    unconfirmed = act_client.post("/ui/act/train", data={"csrf_token": csrf})
    assert unconfirmed.status_code == 400 and "confirm with the button" in unconfirmed.text
    assert recorded.calls == [] and act_client.get("/jobs", headers=AUTH).json()["jobs"] == []


@pytest.mark.parametrize(
    ("kind", "fields", "status", "text"),
    [
        ("scrape", {"source": "nowhere"}, 400, "no enabled source called &#39;nowhere&#39;"),
        ("deploy", {}, 404, "no action &#39;deploy&#39;"),
    ],
)
def test_bad_input_is_answered_on_the_page(act_client, kind, fields, status, text):
    csrf = login(act_client)
    answer = start(act_client, csrf, kind, **fields)
    assert answer.status_code == status and text in answer.text and "Traceback" not in answer.text


def test_a_busy_kind_names_the_running_job(client, gate):
    csrf = login(client)
    running = client.post("/train", headers=AUTH).json()["job_id"]
    answer = start(client, csrf, "train")
    assert answer.status_code == 409 and running in answer.text
    gate.open = True


def test_an_unknown_job_is_a_page_that_says_so(act_client):
    login(act_client)
    answer = act_client.get("/ui/jobs/not-a-job")
    assert answer.status_code == 404 and "no job &#39;not-a-job&#39;" in answer.text
    assert act_client.get("/ui/api/jobs/not-a-job").status_code == 404


def test_jobs_page_shows_a_trigger_it_does_not_know(act_client):
    login(act_client)
    store = act_client.app.state.runner.store
    act_client.portal.call(
        lambda: store.insert(
            id="11111111-2222-3333-4444-555555555555",
            kind="train",
            trigger="cli",
            state="succeeded",
            result={"version": "v1", "model": "vit", "promoted": False, "val_auc": 0.7},
        )
    )
    page = act_client.get("/ui/jobs")
    assert page.status_code == 200 and "<td>cli</td>" in page.text
    assert "the trained version" in act_client.get("/ui/jobs/11111111-2222-3333-4444-555555555555").text


def test_overview_says_why_no_model_is_served_and_puts_running_jobs_first(client):
    login(client)
    models = client.app.state.settings.models_dir
    for auc in (0.6, 0.62, 0.64):
        register_version(models, val_auc=auc, promoted=False, reason=f"not promoted: AUC {auc} near chance")
    client.app.state.overview.invalidate()
    page = client.get("/ui/").text
    served = re.search(r'id="served">(.*?)</div>', page, re.S)[1]
    assert "none — 3 trained, none passed the gate" in served
    assert 'href="/ui/models/vit/v3"' in served and "AUC 0.64 near chance" in served
    assert page.index('id="running"') < page.index('class="cards"')
    for key in ("s", "t"):  # this client runs scrape and train jobs only: no labeler action
        assert f'data-key="{key}"' in page
    assert 'data-key="l"' not in page  # absent, not a dead button
