"""GET /review, GET /images/{id}, PATCH /images/{id} through the real app (lifespan, dataset in tmp_path)."""

from __future__ import annotations

import io
import uuid

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from dataset.storage import StorageError
from tests.images import jpeg, png, scene
from trainer.train import load_samples

AUTH = {"Authorization": "Bearer test-token-0123456789"}
SCORER = {"name": "exposr-core", "version": "core-1"}


@pytest.fixture
def client(make_settings):
    settings = make_settings(review_real_max_score=0.8, review_ai_min_score=0.2)
    with TestClient(create_app(settings)) as client:
        yield client


def upload(client: TestClient, data: bytes, label: str, name: str = "x.jpg") -> str:
    response = client.post("/upload", headers=AUTH, files={"file": (name, data)}, data={"label": label})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def set_score(client: TestClient, image_id: str, score: float) -> None:
    client.portal.call(client.app.state.dataset.set_score, image_id, score, SCORER)


def test_endpoints_need_the_bearer_token(client):
    image_id = upload(client, jpeg(1), "unlabeled")
    assert client.get("/review").status_code == 401
    assert client.get(f"/images/{image_id}").status_code == 401
    response = client.patch(
        f"/images/{image_id}", json={"label": "ai"}, headers={"Authorization": "Bearer wrong"}
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_queue_order_fields_and_pagination(client):
    unsure = upload(client, jpeg(1), "unlabeled")
    sure = upload(client, jpeg(2), "unlabeled")
    wrong_real = upload(client, jpeg(3), "real")
    fine_ai = upload(client, jpeg(4), "ai")
    set_score(client, unsure, 0.55)
    set_score(client, sure, 0.97)
    set_score(client, wrong_real, 0.9)
    set_score(client, fine_ai, 0.9)

    page = client.get("/review", headers=AUTH).json()
    assert page["total"] == 3
    assert [item["id"] for item in page["items"]] == [wrong_real, unsure, sure]
    first = page["items"][0]
    assert (first["reason"], first["label"], first["score"], first["source"]) == (
        "disagreement",
        "real",
        0.9,
        "upload",
    )
    assert first["image_url"] == f"/images/{wrong_real}"
    assert first["attribution"] == {"platform": "upload"}
    assert first["scored_by"]["version"] == "core-1"

    second = client.get("/review", headers=AUTH, params={"limit": 1, "offset": 1}).json()
    assert (second["total"], [i["id"] for i in second["items"]]) == (3, [unsure])
    only = client.get("/review", headers=AUTH, params={"kind": "unlabeled"}).json()
    assert [i["id"] for i in only["items"]] == [unsure, sure]
    assert client.get("/review", headers=AUTH, params={"limit": 0}).status_code == 422


def test_image_bytes_with_their_content_type(client):
    as_jpeg = upload(client, jpeg(5), "unlabeled")
    as_png = upload(client, png(6), "real", name="y.png")
    response = client.get(f"/images/{as_jpeg}", headers=AUTH)
    assert response.status_code == 200
    assert response.content == jpeg(5)
    assert response.headers["content-type"] == "image/jpeg"
    response = client.get(f"/images/{as_png}", headers=AUTH)
    assert (response.content, response.headers["content-type"]) == (png(6), "image/png")


def test_a_camera_jpeg_with_extra_frames_is_served_as_jpeg(client):
    """Pillow names a JPEG with embedded preview/stereo frames 'MPO'; browsers know it as image/jpeg."""
    buffer = io.BytesIO()
    scene(7, (320, 240)).save(buffer, "MPO", save_all=True, append_images=[scene(8, (320, 240))])
    image_id = upload(client, buffer.getvalue(), "real", name="camera.jpg")
    response = client.get(f"/images/{image_id}", headers=AUTH)
    assert (response.content, response.headers["content-type"]) == (buffer.getvalue(), "image/jpeg")


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "..settings", "1234", "%00"])
def test_ids_that_are_not_uuids_are_404_with_a_reason(client, bad_id):
    for response in (
        client.get(f"/images/{bad_id}", headers=AUTH),
        client.patch(f"/images/{bad_id}", headers=AUTH, json={"label": "ai"}),
    ):
        assert response.status_code == 404
        assert "ids are UUIDs" in response.json()["detail"]


def test_a_path_in_the_id_never_reaches_a_lookup(client):
    response = client.get("/images/..%2F..%2Fsettings", headers=AUTH)
    assert response.status_code == 404  # the slash splits the path: no route matches


def test_unknown_image_is_404(client):
    missing = str(uuid.uuid4())
    assert client.get(f"/images/{missing}", headers=AUTH).status_code == 404
    response = client.patch(f"/images/{missing}", headers=AUTH, json={"label": "ai"})
    assert response.status_code == 404
    assert missing in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"label": "maybe"},
        {"label": "unlabeled"},
        {},
        {"label": "ai", "x": 1},
        {"label": "ai", "reviewer": "<script>"},
    ],
)
def test_invalid_label_bodies_are_422(client, body):
    image_id = upload(client, jpeg(7), "unlabeled")
    response = client.patch(f"/images/{image_id}", headers=AUTH, json=body)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_a_persons_label_moves_status_counts_and_enters_training(client):
    upload(client, jpeg(8), "real")
    image_id = upload(client, jpeg(9), "unlabeled")
    before = client.get("/status").json()["dataset_counts"]
    assert before == {"total": 2, "real": 1, "ai_generated": 0, "unlabeled": 1}
    settings = client.app.state.settings
    assert image_id not in {s.id for s in load_samples(settings)[0]}  # unlabeled: never trained on

    response = client.patch(f"/images/{image_id}", headers=AUTH, json={"label": "ai", "reviewer": "ann"})
    assert response.status_code == 200
    body = response.json()
    assert body["label"] == "ai"
    assert (body["label_source"]["kind"], body["label_source"]["by"]) == ("person", "ann")
    assert body["label_source"]["at"].endswith("Z")

    counts = client.get("/status").json()["dataset_counts"]
    assert counts == {"total": 2, "real": 1, "ai_generated": 1, "unlabeled": 0}
    dataset = client.app.state.dataset
    samples, _ = load_samples(settings)  # what the next training reads
    assert {(s.id, s.label) for s in samples} >= {(image_id, "ai")}
    meta = client.portal.call(dataset.get_metadata, image_id)
    assert meta["label"] == "ai" and meta["label_source"]["by"] == "ann"
    assert client.get("/review", headers=AUTH).json()["total"] == 0


def test_confirming_a_disputed_label_settles_it(client):
    image_id = upload(client, jpeg(10), "real")
    set_score(client, image_id, 0.99)
    assert client.get("/review", headers=AUTH).json()["total"] == 1
    assert client.patch(f"/images/{image_id}", headers=AUTH, json={"label": "real"}).status_code == 200
    assert client.get("/review", headers=AUTH).json()["total"] == 0


def test_storage_failure_is_503_with_the_reason(client):
    image_id = upload(client, jpeg(11), "unlabeled")

    class Broken(type(client.app.state.dataset.storage)):
        def get(self, key: str) -> bytes:
            raise StorageError(f"disk unavailable while reading {key}")

    dataset = client.app.state.dataset
    dataset.storage = Broken(client.app.state.settings.dataset_dir)
    for response in (
        client.get(f"/images/{image_id}", headers=AUTH),
        client.get("/review", headers=AUTH),
        client.patch(f"/images/{image_id}", headers=AUTH, json={"label": "ai"}),
    ):
        assert response.status_code == 503
        assert "storage unavailable" in response.json()["detail"]
