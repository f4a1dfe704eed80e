from __future__ import annotations

import pytest

from dataset.storage import LocalStorage, StorageError
from tests.app.conftest import AUTH
from tests.images import encode, jpeg, png, scene


def upload(client, data: bytes, label: str = "real", name: str = "photo.jpg"):
    return client.post(
        "/upload", headers=AUTH, files={"file": (name, data, "image/jpeg")}, data={"label": label}
    )


def test_stored_then_duplicate_with_the_existing_id(client):
    first = upload(client, jpeg(1), "ai")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["status"] == "stored" and body["label"] == "ai"
    again = upload(client, jpeg(1), "real")
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate" and again.json()["id"] == body["id"]
    assert again.json()["label"] == "ai"  # the stored label, kept; not the one this upload asked for
    counts = client.get("/status").json()["dataset_counts"]
    assert counts == {"total": 1, "real": 0, "ai_generated": 1, "unlabeled": 0}


def test_near_duplicate_answers_200_with_the_existing_id(client):
    stored = upload(client, png(7, size=(128, 96)), "unlabeled").json()
    near = upload(client, encode(scene(7, size=(128, 96)), "JPEG", quality=70), "unlabeled")
    assert near.status_code == 200
    assert near.json()["status"] == "near_duplicate" and near.json()["id"] == stored["id"]
    assert near.json()["distance"] is not None


@pytest.mark.parametrize("label", ["fake", "", "REAL"])
def test_bad_label_is_400(client, label):
    response = upload(client, jpeg(2), label)
    assert response.status_code == 400 and "label must be one of" in response.json()["detail"]


def test_missing_file_and_wrong_content_type_are_400(client):
    response = client.post("/upload", headers=AUTH, data={"label": "real"}, files={"other": ("x", b"1")})
    assert response.status_code == 400 and "'file'" in response.json()["detail"]
    response = client.post("/upload", headers={**AUTH, "Content-Type": "application/json"}, content=b"{}")
    assert response.status_code == 400 and "multipart/form-data" in response.json()["detail"]


def test_not_an_image_is_415(client):
    response = upload(client, b"%PDF-1.4 definitely not an image" * 10, "real", "doc.pdf")
    assert response.status_code == 415
    assert response.json()["detail"].startswith("not_an_image")


def test_too_large_by_content_length_is_413(make_client):
    client = make_client(upload_max_bytes=1000)
    response = upload(client, jpeg(3, size=(400, 300)))
    assert response.status_code == 413 and "UPLOAD_MAX_BYTES" in response.json()["detail"]


def test_too_large_streamed_without_content_length_is_413(make_client):
    client = make_client(upload_max_bytes=1000)
    boundary = "xyzboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="label"\r\n\r\nreal\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def chunks():  # no Content-Length: the server must count while reading
        yield head
        for _ in range(200):
            yield b"\xff" * 1024

    response = client.post(
        "/upload",
        content=chunks(),
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413
    assert "UPLOAD_MAX_BYTES" in response.json()["detail"]


async def test_the_body_is_cut_off_while_streaming_not_read_to_the_end():
    """TestClient buffers request bodies, so drive read_upload with an ASGI receive of our own."""
    from fastapi import HTTPException
    from starlette.requests import Request

    from app.routes.upload import ENVELOPE_SLACK, read_upload

    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    received = []

    async def receive():
        received.append(1)
        return {
            "type": "http.request",
            "body": head if len(received) == 1 else b"\xff" * 65536,
            "more_body": len(received) < 1000,
        }

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "query_string": b"",
        "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
    }
    with pytest.raises(HTTPException) as err:
        await read_upload(Request(scope, receive), limit=100_000)
    assert err.value.status_code == 413
    assert len(received) <= 2 + (100_000 + ENVELOPE_SLACK) // 65536  # stopped just past the limit


class BrokenStorage(LocalStorage):
    def put(self, key: str, data: bytes) -> None:
        raise StorageError(f"cannot write {key}: No space left on device")


def test_storage_failure_is_503_and_nothing_is_counted(client, tmp_path):
    client.app.state.dataset.storage = BrokenStorage(tmp_path / "broken")
    response = upload(client, jpeg(4))
    assert response.status_code == 503
    assert "No space left on device" in response.json()["detail"]
    assert client.get("/status").json()["dataset_counts"]["total"] == 0
