"""/docs and /redoc work offline (assets from the package); the OpenAPI schema documents auth
errors, conditional downloads, filter enums and the typed answers; HEAD on weights."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.api_docs import VENDOR_DIR
from tests.app.conftest import AUTH
from tests.app.console_data import register_version


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_load_every_asset_from_this_service(client, path):
    page = client.get(path)
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets, page.text
    for asset in assets:
        assert asset.startswith("/"), f"{path} loads {asset} from elsewhere"
        fetched = client.get(asset)
        assert fetched.status_code == 200 and len(fetched.content) > 500, asset
    assert "fonts.googleapis" not in page.text and "cdn.jsdelivr" not in page.text


def test_vendored_files_ship_with_their_licences():
    vendor = VENDOR_DIR
    for name in (
        "swagger-ui/swagger-ui-bundle.js",
        "swagger-ui/swagger-ui.css",
        "swagger-ui/LICENSE",
        "redoc/redoc.standalone.js",
        "redoc/LICENSE",
    ):
        assert (vendor / name).is_file(), name
    assert "Apache License" in (vendor / "swagger-ui" / "LICENSE").read_text()
    assert "MIT" in (vendor / "redoc" / "LICENSE").read_text()


def test_every_protected_operation_documents_401_and_503(client):
    spec = client.get("/openapi.json").json()
    protected = [
        (path, method, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if op.get("security")
    ]
    assert len(protected) >= 12
    for path, method, op in protected:
        for code in ("401", "503"):
            assert code in op["responses"], (method, path, code)
            assert op["responses"][code]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorOut"
            }
    assert not spec["paths"]["/status"]["get"].get("security")
    assert "401" not in spec["paths"]["/status"]["get"]["responses"]


def test_openapi_has_conditional_weights_enums_and_typed_answers(client):
    spec = client.get("/openapi.json").json()
    weights = spec["paths"]["/models/{name}/{version}/weights.pt"]
    assert "304" in weights["get"]["responses"] and "head" in weights
    params = {p["name"]: p for p in spec["paths"]["/jobs"]["get"]["parameters"]}
    schemas = spec["components"]["schemas"]

    def enum_of(param: dict) -> list[str]:
        ref = next(s["$ref"] for s in param["schema"]["anyOf"] if "$ref" in s)
        return schemas[ref.rsplit("/", 1)[1]]["enum"]

    assert enum_of(params["kind"]) == ["scrape", "train", "label"]
    assert set(enum_of(params["state"])) == {
        "queued",
        "running",
        "succeeded",
        "failed",
        "interrupted",
        "skipped",
    }
    card = spec["paths"]["/models/{name}/{version}/model.json"]["get"]["responses"]["200"]
    assert card["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ModelCard"}
    image = spec["paths"]["/images/{image_id}"]["get"]["responses"]["200"]["content"]
    assert image["image/jpeg"]["schema"] == {"type": "string", "format": "binary"}
    assert client.get("/jobs", headers=AUTH, params={"kind": "bogus"}).status_code == 422


def test_head_on_weights_gives_size_and_etag_without_the_body(client):
    entry = register_version(
        Path(client.app.state.settings.models_dir), val_auc=0.8, promoted=True, reason="first"
    )
    url = "/models/vit/v1/weights.pt"
    got = client.get(url, headers=AUTH)
    head = client.head(url, headers=AUTH)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == got.headers["etag"] == f'"{entry["sha256"]}"'
    assert int(head.headers["content-length"]) == len(got.content)
    again = client.head(url, headers={**AUTH, "If-None-Match": got.headers["etag"]})
    assert again.status_code == 304
    assert client.head(url).status_code == 401
    card = client.get("/models/vit/v1/model.json", headers=AUTH).json()
    assert card["architecture"] == "resnet10t" and "temperature" not in card  # the file, as written
