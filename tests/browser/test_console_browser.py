"""The console in headless Chromium: log in, overview with a rendered plot, a model's report,
keyboard labelling that moves /status, uploads through the file input, live job progress, logout,
and the API docs with no network."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.app.conftest import AUTH, TOKEN
from tests.browser.harness import running_server, seed
from tests.images import jpeg

# One test process runs this module: its module-scoped fixture is costly (make test: --dist loadgroup).
pytestmark = [pytest.mark.xdist_group("browser.test_console_browser"), pytest.mark.slow]
WAIT = 120  # seconds: a bound for a loaded machine (20x an idle wait), not a timing assertion


def wait(browser, condition, seconds: float = WAIT):
    # A progress update re-renders the list: an element read in the middle of it is stale, so the
    # condition is simply asked again.
    return WebDriverWait(browser, seconds, ignored_exceptions=(StaleElementReferenceException,)).until(
        condition
    )


def _text_with(browser, selector: str, part: str) -> str | None:
    text = browser.find_element(By.CSS_SELECTOR, selector).text
    return text if part in text else None


def log_in(browser, base: str) -> None:
    browser.get(f"{base}/ui/")
    wait(browser, EC.url_to_be(f"{base}/ui/login"))
    browser.find_element(By.NAME, "api_key").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait(browser, EC.url_to_be(f"{base}/ui/"))


def counts(base: str) -> dict:
    return httpx.get(f"{base}/status").json()["dataset_counts"]


def test_log_in_see_the_plot_open_a_model_and_log_out(browser, console):
    log_in(browser, console)
    lines = browser.find_elements(By.CSS_SELECTOR, "#growth svg.chart polyline.series")
    assert [line.get_attribute("data-name") for line in lines] == ["real", "ai", "unlabeled"]
    assert lines[0].get_attribute("data-points") == "5"  # four seeded days and today
    assert all(line.size["width"] > 100 for line in lines)  # drawn, not just in the markup
    assert browser.find_element(By.CSS_SELECTOR, '[data-count="total"]').text == "18"

    browser.find_element(By.LINK_TEXT, "Models").click()
    wait(browser, EC.presence_of_element_located((By.ID, "models")))
    points = browser.find_elements(By.CSS_SELECTOR, '#metrics-chart polyline[data-name="val_auc"]')
    assert points and points[0].get_attribute("data-points") == "2"
    browser.find_element(By.LINK_TEXT, "vit v2").click()
    report = wait(browser, EC.visibility_of_element_located((By.ID, "report")))
    assert "Flux.1 D" in report.text and "0.790" in report.text
    assert "below v1" in browser.find_element(By.ID, "decision").text
    browser.get(f"{console}/ui/models/vit/v1")
    assert "no report" in browser.find_element(By.ID, "no-report").text

    browser.find_element(By.ID, "logout").click()
    wait(browser, EC.url_to_be(f"{console}/ui/login"))
    browser.get(f"{console}/ui/models")
    wait(browser, EC.url_to_be(f"{console}/ui/login"))  # refused: back at the login form
    assert browser.find_elements(By.NAME, "api_key")


def test_label_three_images_by_keyboard_and_status_moves(browser, console):
    before = counts(console)
    log_in(browser, console)
    browser.get(f"{console}/ui/review")
    items = wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#review-grid article.item"))
    assert len(items) == 6
    wait(
        browser,
        lambda b: b.execute_script(
            "return [...document.querySelectorAll('#review-grid img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"
        ),
    )  # the thumbnails loaded
    # The photographer called <script> is text on the page, and no script of theirs ran.
    assert "<script>alert('x')</script>" in browser.find_element(By.ID, "review-grid").text
    assert browser.execute_script("return document.scripts.length") == 1
    ids = [item.get_attribute("data-id") for item in items]
    keys = ActionChains(browser)
    for key in ("r", "s", "a", "r"):  # real, skip one, ai, real
        keys.send_keys(key)  # no pause: a label on its way never blocks or doubles the next
    keys.perform()
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "article.item.done")) == 3)
    done = [i.get_attribute("data-id") for i in browser.find_elements(By.CSS_SELECTOR, "article.item.done")]
    assert done == [ids[0], ids[2], ids[3]]  # the skipped one is still to do
    shown = browser.find_element(By.CSS_SELECTOR, '[data-count="unlabeled"]').text
    assert shown == str(before["unlabeled"] - 3)
    after = counts(console)
    assert after["unlabeled"] == before["unlabeled"] - 3
    assert (after["real"], after["ai_generated"]) == (before["real"] + 2, before["ai_generated"] + 1)
    queue = httpx.get(f"{console}/review", headers=AUTH, params={"limit": 100}).json()
    assert {item["id"] for item in queue["items"]} & set(done) == set()  # settled: out of the queue


def test_upload_two_files_through_the_file_input(browser, console, tmp_path):
    before = counts(console)
    log_in(browser, console)
    browser.get(f"{console}/ui/upload")
    paths = [tmp_path / "first.jpg", tmp_path / "second.jpg"]
    for seed_value, path in enumerate(paths):
        path.write_bytes(jpeg(5000 + seed_value, (200, 150)))
    browser.find_element(By.ID, "upload-label").send_keys("real")
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
    wait(
        browser,
        lambda b: (
            [e.text for e in b.find_elements(By.CSS_SELECTOR, "#outcomes .status")] == ["stored", "stored"]
        ),
    )
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#outcomes .file")]
    assert names == ["first.jpg", "second.jpg"]
    after = counts(console)
    assert after["real"] == before["real"] + 2 and after["total"] == before["total"] + 2

    text = tmp_path / "notes.txt"
    text.write_text("not an image at all")
    browser.find_element(By.ID, "files").send_keys(str(text))
    rejected = wait(
        browser, EC.presence_of_element_located((By.CSS_SELECTOR, "#outcomes li.outcome-rejected"))
    )
    assert "notes.txt" in rejected.text and "not_an_image" in rejected.text
    assert counts(console)["total"] == after["total"]


def test_running_job_progress_updates_without_reloading(browser, make_settings):
    release = threading.Event()

    async def training(settings, progress):
        for batch in range(1, 4):
            progress(
                {
                    "stage": "train",
                    "epoch": 1,
                    "epochs": 1,
                    "batch": batch,
                    "batches": 4,
                    "done": batch,
                    "total": 4,
                    "percent": 25.0 * batch,
                    "images_per_s": 12.5,
                    "eta_s": 30 - batch,
                }
            )
            await asyncio.sleep(0.3)
        while not release.is_set():
            await asyncio.sleep(0.05)
        return {}

    settings = make_settings()
    seed(settings, unlabeled=0)
    with running_server(settings, job_kinds={"train": training}) as base:
        try:
            log_in(browser, base)
            assert browser.find_element(By.ID, "no-running").is_displayed()
            marker = browser.execute_script("window.__same_page = true; return window.__same_page")
            httpx.post(f"{base}/train", headers=AUTH).raise_for_status()
            wait(browser, EC.visibility_of_element_located((By.CSS_SELECTOR, "#running-list li")))
            # Each update re-renders the item: the text is read afresh, in the same look as the 75 %.
            text = wait(browser, lambda b: _text_with(b, "#running-list li", "75"))
            assert "ETA 0:27" in text and "12.5 images/s" in text
            assert browser.execute_script("return window.__same_page") is marker is True  # no reload
        finally:
            release.set()
            browser.delete_all_cookies()


@pytest.mark.parametrize(
    ("path", "selector", "text"),
    [("/docs", ".swagger-ui .info .title", "Exposr Trainer"), ("/redoc", "h1", "Exposr Trainer")],
)
def test_api_docs_render_with_no_network(browser, make_settings, path, selector, text):
    settings = make_settings()
    with running_server(settings) as base:
        browser.get(f"{base}{path}")
        title = wait(browser, EC.visibility_of_element_located((By.CSS_SELECTOR, selector)))
        assert text in title.text
        requests = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => [e.name, e.transferSize])"
        )
        assert any(url.startswith(base) for url, _ in requests)
        # Redoc's footer asks for a logo on a CDN; the page's CSP stops it before any byte moves.
        blocked = " ".join(entry["message"] for entry in browser.get_log("browser"))
        for url, size in requests:
            assert url.startswith(base) or (size == 0 and url in blocked and "blocked" in blocked), url
