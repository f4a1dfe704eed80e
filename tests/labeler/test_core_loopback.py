"""One run against a real HTTP server on 127.0.0.1: a stand-in Exposr-Core that reads the multipart file."""

from __future__ import annotations

import hashlib
import socket
import threading

import pytest
import uvicorn
from fastapi import FastAPI, UploadFile

from dataset.manager import DatasetManager
from labeler.scoring import run_labeler
from tests.images import jpeg, png


def fake_core() -> tuple[FastAPI, list[dict]]:
    """Answers a stable P(ai) derived from the bytes, nested as {"result": {"ai_probability": p}}."""
    app, seen = FastAPI(), []

    @app.post("/api/v1/analyze")
    async def analyze(file: UploadFile) -> dict:
        data = await file.read()
        seen.append({"filename": file.filename, "content_type": file.content_type, "size": len(data)})
        return {"result": {"ai_probability": probability(data)}, "model_version": "stand-in-1"}

    return app, seen


def probability(data: bytes) -> float:
    return hashlib.sha256(data).digest()[0] / 255


@pytest.fixture
def core_url():
    app, seen = fake_core()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        threading.Event().wait(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/api/v1/analyze", seen
    server.should_exit = True
    thread.join(60)
    sock.close()


async def test_labeler_against_a_real_server(make_settings, core_url):
    url, seen = core_url
    settings = make_settings(exposr_core_endpoint=url, exposr_core_score_field="result.ai_probability")
    images = {"jpeg": jpeg(1), "png": png(2)}
    async with DatasetManager(settings) as dm:
        ids = {
            kind: (await dm.ingest(data, {"source": "upload", "label": "unlabeled"})).id
            for kind, data in images.items()
        }

    report = await run_labeler(settings)

    assert report["scorer"] == {"name": "exposr-core", "version": "stand-in-1"}
    assert report["scored"] == 2 and report["errors"] == {}
    assert sorted((s["content_type"], s["size"]) for s in seen) == sorted(
        [("image/jpeg", len(images["jpeg"])), ("image/png", len(images["png"]))]
    )
    assert {s["filename"] for s in seen} == {f"{ids['jpeg']}.jpg", f"{ids['png']}.png"}
    async with DatasetManager(settings) as dm:
        for kind, image_id in ids.items():
            assert (await dm.get_metadata(image_id))["confidence"] == pytest.approx(probability(images[kind]))
