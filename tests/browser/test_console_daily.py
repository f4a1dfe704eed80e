"""Daily work in headless Chromium: page through 500 images, filter, view, undo, bulk label with
/status following; a model's ROC curve checked against its report; two versions compared; a scrape
started from the page and followed to its end. Every page: no script error, no request that leaves
127.0.0.1."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select
from sklearn.metrics import roc_curve

from app.jobs import scrape_job
from tests.app.conftest import AUTH
from tests.app.console_data import epoch_rows, image_rows, register_version, report_for
from tests.browser.harness import assert_clean, folder_sources, running_server, seed_queue
from tests.browser.test_console_browser import counts, log_in, wait
from trainer.stats import paired_auc_difference

# One test process runs this module: its module-scoped fixture is costly (make test: --dist loadgroup).
pytestmark = [pytest.mark.xdist_group("browser.test_console_daily"), pytest.mark.slow]


def press(browser, *keys) -> None:
    chain = ActionChains(browser)
    for key in keys:
        chain.send_keys(key)
    chain.perform()


def grid_ids(browser) -> list[str]:
    return browser.execute_script(
        "return [...document.querySelectorAll('#review-grid article.item')].map(n => n.dataset.id)"
    )


def test_page_filter_view_undo_and_bulk_label_500_images(browser, make_settings):
    settings = make_settings()
    ids = seed_queue(settings, 500)
    with running_server(settings) as base:
        log_in(browser, base)
        browser.get(f"{base}/ui/review?per=96")
        assert f"1–96 of {len(ids)}" in browser.find_element(By.ID, "shown").text
        seen = grid_ids(browser)
        while browser.find_elements(By.ID, "next-page"):
            press(browser, "n")  # the key of the "next" link
            start = f"{len(seen) + 1}–"
            wait(browser, lambda b, start=start: start in b.find_element(By.ID, "shown").text)
            seen += grid_ids(browser)
        assert sorted(seen) == sorted(ids)  # every image once, on 6 pages
        assert_clean(browser, base)

        browser.get(f"{base}/ui/review")
        Select(browser.find_element(By.ID, "f-source")).select_by_value("folder")
        Select(browser.find_element(By.ID, "f-sort")).select_by_value("newest")
        browser.find_element(By.ID, "apply-filters").click()
        wait(browser, lambda b: "source=folder" in b.current_url and "sort=newest" in b.current_url)
        api = httpx.get(
            f"{base}/review", headers=AUTH, params={"source": "folder", "sort": "newest", "limit": 48}
        )
        assert grid_ids(browser) == [item["id"] for item in api.json()["items"]]
        browser.get(browser.current_url)  # the URL alone brings the same filter back
        assert Select(browser.find_element(By.ID, "f-source")).first_selected_option.text == "folder"
        assert grid_ids(browser) == [item["id"] for item in api.json()["items"]]

        press(browser, Keys.ENTER)  # the viewer: the stored image, fitted, with its facts
        viewer = wait(browser, EC.visibility_of_element_located((By.ID, "viewer")))
        wait(
            browser,
            lambda b: b.execute_script("return document.getElementById('viewer-image').naturalWidth") > 0,
        )
        wait(browser, lambda b: "folder" in b.find_element(By.ID, "viewer-facts").text)
        press(browser, Keys.ESCAPE)
        wait(browser, lambda b: not viewer.is_displayed())

        before = counts(base)
        first = grid_ids(browser)[0]
        press(browser, "r")
        wait(browser, lambda b: counts(base)["real"] == before["real"] + 1)
        press(browser, "u")  # undo: back to unlabeled, back in the grid
        wait(browser, lambda b: counts(base) == before)
        wait(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, "article.item.done"))
        assert first in grid_ids(browser)

        browser.execute_script("performance.clearResourceTimings()")
        press(browser, "x", Keys.ARROW_RIGHT, "x", Keys.ARROW_RIGHT, "x")
        assert browser.find_element(By.ID, "selected-count").text == "3"
        press(browser, "a")
        wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "article.item.done")) == 3)
        after = counts(base)
        assert (after["ai_generated"], after["unlabeled"]) == (
            before["ai_generated"] + 3,
            before["unlabeled"] - 3,
        )
        posts = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".filter(u => u.includes('/ui/api/label'))"
        )
        assert [url.rsplit("/", 1)[1] for url in posts] == ["labels"]  # one request for the three

        current = browser.execute_script("return document.querySelector('article.item.current').dataset.id")
        press(browser, "s")  # skipped, and still skipped after a reload (this session)
        browser.refresh()
        skipped = browser.find_elements(By.CSS_SELECTOR, "article.item.skipped")
        assert [n.get_attribute("data-id") for n in skipped] == [current]
        assert_clean(browser, base)
        browser.delete_all_cookies()


def _versions(settings) -> tuple[dict, dict]:
    first, second = report_for("v1", 0.8), report_for("v2", 0.85)
    first["evaluation"]["images"], second["evaluation"]["images"] = image_rows(1), image_rows(2, skill=2.5)
    first["training"] = second["training"] = {"epochs": epoch_rows()}
    register_version(settings.models_dir, val_auc=0.8, promoted=True, reason="first", report=first)
    register_version(
        settings.models_dir, val_auc=0.85, promoted=False, reason="not promoted: x", report=second
    )
    return first, second


def test_the_roc_curve_matches_the_report_and_two_versions_compare(browser, make_settings):
    settings = make_settings()
    first, second = _versions(settings)
    with running_server(settings) as base:
        log_in(browser, base)
        browser.get(f"{base}/ui/models/vit/v2")
        line = browser.find_element(By.CSS_SELECTOR, "#roc-plot polyline.series")
        assert line.size["width"] > 100  # drawn, not just in the markup
        drawn = [tuple(map(float, p.split(","))) for p in line.get_attribute("data-values").split()]
        rows = second["evaluation"]["images"]
        fpr, tpr, _ = roc_curve(
            [r["label"] == "ai" for r in rows], [r["margin"] for r in rows], drop_intermediate=False
        )
        assert np.allclose(drawn, np.column_stack([fpr, tpr]), atol=1e-6)

        browser.get(f"{base}/ui/models")
        Select(browser.find_element(By.ID, "pick-a")).select_by_value("v1")
        Select(browser.find_element(By.ID, "pick-b")).select_by_value("v2")
        browser.find_element(By.TAG_NAME, "body").click()
        press(browser, "c")
        shown = wait(browser, EC.visibility_of_element_located((By.ID, "difference"))).text
        a = {r["id"]: r for r in first["evaluation"]["images"]}
        b = {r["id"]: r for r in second["evaluation"]["images"]}
        common = sorted(set(a) & set(b))
        expected = paired_auc_difference(
            [int(b[i]["label"] == "ai") for i in common],
            [b[i]["margin"] for i in common],
            [a[i]["margin"] for i in common],
        )
        assert float(re.match(r"([+-][\d.]+)", shown)[1]) == pytest.approx(expected.difference, abs=6e-5)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#compare-roc polyline.series")) == 2
        assert_clean(browser, base)
        browser.delete_all_cookies()


def test_start_a_scrape_from_the_page_and_watch_it_finish(browser, make_settings, tmp_path):
    settings = make_settings(sources_config=folder_sources(tmp_path))  # why: folders instead of the web
    with running_server(settings, job_kinds={"scrape": scrape_job}) as base:
        log_in(browser, base)
        before = counts(base)
        press(browser, "s")  # "Scrape all sources": the confirmation page
        confirm = wait(browser, EC.visibility_of_element_located((By.ID, "confirm")))
        confirm.send_keys(Keys.ENTER)
        wait(browser, lambda b: "/ui/jobs/" in b.current_url)
        wait(browser, lambda b: b.find_element(By.ID, "job-state").text == "succeeded", seconds=120)
        table = wait(browser, EC.visibility_of_element_located((By.ID, "result-1")))
        assert "folder" in table.text
        after = counts(base)
        assert after["total"] == before["total"] + 12
        assert_clean(browser, base)
        browser.delete_all_cookies()
