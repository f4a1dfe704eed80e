"""Screenshots of every console page, for docs/console.md: ``python scripts/screenshots.py [OUT_DIR]``.

Starts the service on 127.0.0.1 with a demo dataset in a temporary folder (labelled images over a
few days, unlabeled ones to review, a real scrape of two folder sources), trains two real (tiny)
versions through the service so the model pages show real evidence (plots from their report.json)
and the compare page two real versions, starts a third training so the overview shows a job in
progress, and drives Debian's headless Chromium through each page. Needs chromium and
chromium-driver (apt) and the test extras (selenium). Nothing leaves the machine.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from app.jobs import JOB_KINDS  # noqa: E402
from config.settings import Settings  # noqa: E402
from tests.browser.harness import missing_browser, running_server, seed, start_browser  # noqa: E402
from tests.images import encode, jpeg, scene  # noqa: E402

TOKEN = "screenshot-demo-key"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WIDTH = 1280


def demo_settings(root: Path) -> Settings:
    for label, make in (
        ("real", lambda i: jpeg(7000 + i, (120, 90))),
        ("ai", lambda i: encode(scene(8000 + i, (120, 90)), "PNG")),
    ):
        folder = root / "import" / label
        folder.mkdir(parents=True)
        for i in range(30):
            (folder / f"{label}-{i}.{'jpg' if label == 'real' else 'png'}").write_bytes(make(i))
        (folder / "broken.jpg").write_bytes(b"not an image")
    sources = root / "sources.yaml"
    entries = [
        {"name": "folder", "label": label, "path": str(root / "import" / label)} for label in ("real", "ai")
    ]
    sources.write_text(yaml.safe_dump({"sources": entries}))
    return Settings(
        _env_file=None,
        dataset_dir=root / "datasets",
        models_dir=root / "models",
        log_dir=root / "logs",
        sources_config=sources,
        scheduler_enabled=False,
        trainer_api_key=TOKEN,
        train_arch="test_resnet",
        train_pretrained=False,
        train_image_size=32,
        train_epochs=4,
        train_batch_size=4,
        train_workers=0,
        train_device="cpu",
        min_train_samples=8,
        eval_min_per_class=5,
        min_image_side=16,
        exposr_core_endpoint="http://127.0.0.1:9/none",
    )


def shoot(browser, out: Path, name: str) -> None:
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WIDTH, min(max(height, 700), 2200))
    time.sleep(0.3)
    browser.save_screenshot(str(out / f"console-{name}.png"))
    browser.set_window_size(WIDTH, 900)
    print(f"wrote {out / f'console-{name}.png'}")


def wait_for(check, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the demo did not get there in time")
        time.sleep(0.2)


def main(out: Path) -> int:
    reason = missing_browser()
    if reason:
        print(f"cannot take screenshots: {reason}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = demo_settings(Path(tmp))
        seed(settings, versions=False)
        browser = start_browser(WIDTH, 900)
        try:
            with running_server(settings, job_kinds=demo_kinds()) as base:
                run_demo(browser, base, out)
        finally:
            browser.quit()
    return 0


def demo_kinds() -> dict:
    """The real jobs; the third training runs long, so the overview can show it in progress."""
    trainings = []

    async def train(settings, progress):
        trainings.append(1)
        epochs = settings.train_epochs if len(trainings) <= 2 else 500
        return await JOB_KINDS["train"](settings.model_copy(update={"train_epochs": epochs}), progress)

    return {**JOB_KINDS, "train": train}


def run_demo(browser, base: str, out: Path) -> None:
    wait = WebDriverWait(browser, 120)
    client = httpx.Client(base_url=base, headers=AUTH, timeout=30)
    scrape = client.post("/scrape").json()["job_id"]
    wait_for(lambda: client.get(f"/jobs/{scrape}").json()["state"] == "succeeded")
    for _ in range(2):  # two real versions: the model pages draw their own report.json
        wait_for(lambda: client.post("/train").status_code == 202, 300)
        wait_for(lambda: not client.get("/status").json()["running_jobs"], 600)
    browser.get(f"{base}/ui/login")
    shoot(browser, out, "login")
    browser.find_element(By.NAME, "api_key").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait.until(EC.url_to_be(f"{base}/ui/"))
    wait_for(lambda: client.post("/train").status_code == 202, 300)
    wait.until(lambda b: "images/s" in b.find_element(By.ID, "running-list").text)
    shoot(browser, out, "overview")
    for name, path in (
        ("models", "/ui/models"),
        ("model", "/ui/models/vit/v2"),
        ("compare", "/ui/models/compare?a=v1&b=v2"),
        ("jobs", "/ui/jobs"),
        ("job", f"/ui/jobs/{scrape}"),
        ("review", "/ui/review"),
    ):
        browser.get(f"{base}{path}")
        if name == "review":
            wait.until(
                lambda b: b.execute_script(
                    "return [...document.querySelectorAll('#review-grid img')]"
                    ".filter(i => i.getBoundingClientRect().top < innerHeight)"
                    ".every(i => i.complete && i.naturalWidth > 0)"  # lazy: those in view
                )
            )
            browser.find_element(By.TAG_NAME, "body").send_keys("r")
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "article.item.done"))
        shoot(browser, out, name)
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ENTER)  # the viewer on the next image
    wait.until(lambda b: b.execute_script("return document.getElementById('viewer-image').naturalWidth > 0"))
    wait.until(lambda b: "source" in b.find_element(By.ID, "viewer-facts").text)
    time.sleep(0.3)
    browser.save_screenshot(str(out / "console-viewer.png"))
    print(f"wrote {out / 'console-viewer.png'}")
    browser.get(f"{base}/ui/act/scrape")
    shoot(browser, out, "act")
    browser.get(f"{base}/ui/upload")
    upload_dir = Path(tempfile.mkdtemp())
    files = [upload_dir / "street.jpg", upload_dir / "portrait.jpg", upload_dir / "notes.txt"]
    files[0].write_bytes(jpeg(9001, (200, 150)))
    files[1].write_bytes(jpeg(9002, (200, 150)))
    files[2].write_text("not an image")
    browser.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in files))
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#outcomes li:not(.outcome-pending)")) == 3)
    shoot(browser, out, "upload")
    browser.get(f"{base}/docs")
    wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info .title")))
    shoot(browser, out, "docs")


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "img"))
