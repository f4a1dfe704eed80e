"""A real console in a real browser: the service under uvicorn on 127.0.0.1 (a free port, in a
thread of this process), Debian's Chromium driven through its chromedriver by Selenium, and a
small demo dataset. Used by the browser tests and by scripts/screenshots.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from app.main import create_app
from config.settings import Settings
from dataset.manager import DatasetManager
from tests.app.console_data import EVIL, register_version, report_for
from tests.images import encode, jpeg, scene

CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).is_file() or shutil.which(path)):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


def start_browser(width: int = 1280, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*CHROMIUM_ARGS, f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    return driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(settings: Settings, job_kinds: dict | None = None) -> Iterator[str]:
    """The app under uvicorn on 127.0.0.1; yields its base URL and stops it afterwards."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, job_kinds=job_kinds),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="console-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the console server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=120)


def seed_queue(settings: Settings, n: int) -> list[str]:
    """``n`` unlabeled images to review (fewer if two happen to be near duplicates), from two
    sources, every other one scored; returns the stored ids."""

    async def ingest_all() -> list[str]:
        stored = []
        async with DatasetManager(settings) as dataset:
            for i in range(n):
                meta = {"source": "folder" if i % 4 == 0 else "pexels", "label": "unlabeled"}
                outcome = await dataset.ingest(jpeg(50_000 + i, (64, 48)), meta)
                if outcome.status != "stored":
                    continue
                stored.append(outcome.id)
                if i % 2:
                    await dataset.set_score(outcome.id, (i % 97) / 97, {"kind": "test"})
        return stored

    return asyncio.run(ingest_all())


def folder_sources(root: Path, per_label: int = 6) -> Path:
    """A sources.yaml with two folder sources (real JPEGs, AI PNGs) under ``root``."""
    import yaml

    entries = []
    for label in ("real", "ai"):
        folder = root / "import" / label
        folder.mkdir(parents=True)
        for i in range(per_label):
            data = jpeg(7000 + i, (120, 90)) if label == "real" else encode(scene(8000 + i, (120, 90)), "PNG")
            (folder / f"{label}-{i}.{'jpg' if label == 'real' else 'png'}").write_bytes(data)
        entries.append({"name": "folder", "label": label, "path": str(folder)})
    path = root / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": entries}))
    return path


def assert_clean(browser, base: str) -> None:
    """Nothing went wrong in the page's scripts and no request left this service on 127.0.0.1.
    (The browser's log is emptied by reading it: each call covers what happened since the last.)"""
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    urls = browser.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]"
    )
    assert all(url.startswith(base) or url.startswith("data:") for url in urls), urls


def seed(settings: Settings, unlabeled: int = 6, versions: bool = True) -> None:
    """Labelled images over a few days, unlabeled ones for review (one credited to `<script>`),
    and (``versions``) two registered model versions, the second with an evaluation report."""

    async def ingest_all() -> None:
        async with DatasetManager(settings) as dataset:
            for i in range(12):
                label = "real" if i % 3 else "ai"
                data = jpeg(1000 + i) if label == "real" else encode(scene(2000 + i), "PNG")
                source = "folder" if i % 2 else "pexels"
                outcome = await dataset.ingest(
                    data,
                    {
                        "source": source,
                        "label": label,
                        "attribution": {"platform": "Pexels", "photographer": f"P{i}"},
                    },
                )
                # Spread over four days, so the growth plot has a history to draw.
                await dataset.index.update(outcome.id, created_at=f"2026-11-{10 + i // 3:02d}T12:00:00Z")
            for i in range(unlabeled):
                photographer = EVIL if i == 0 else f"Photographer {i}"
                await dataset.ingest(
                    jpeg(3000 + i, (320, 240)),
                    {
                        "source": "upload",
                        "label": "unlabeled",
                        "attribution": {
                            "platform": "upload",
                            "photographer": photographer,
                            "url": "javascript:alert(1)" if i == 0 else "https://example.org/p",
                        },
                    },
                )

    asyncio.run(ingest_all())
    if not versions:
        return
    register_version(settings.models_dir, val_auc=0.82, promoted=True, reason="first model: nothing to beat")
    register_version(
        settings.models_dir,
        val_auc=0.79,
        promoted=False,
        compared_with="v1",
        reason="AUC 0.79 is below v1's 0.82",
        report=report_for("v2", 0.79),
    )
