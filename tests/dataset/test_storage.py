"""One suite, both drivers (local folder and S3 over HTTP on loopback)."""

from __future__ import annotations

import os
import pickle
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from dataset.storage import (
    LocalStorage,
    S3Storage,
    StorageError,
    StorageKeyError,
    image_key,
    make_storage,
    meta_key,
)


def test_put_get_exists_delete(storage):
    storage.put("images/2025/10/28/a.jpg", b"\xff\xd8abc")
    assert storage.exists("images/2025/10/28/a.jpg")
    assert storage.get("images/2025/10/28/a.jpg") == b"\xff\xd8abc"
    storage.put("images/2025/10/28/a.jpg", b"new")  # overwrite replaces the whole object
    assert storage.get("images/2025/10/28/a.jpg") == b"new"
    storage.delete("images/2025/10/28/a.jpg")
    assert not storage.exists("images/2025/10/28/a.jpg")


def test_missing_key_is_storage_key_error_and_key_error(storage):
    with pytest.raises(StorageKeyError) as info:
        storage.get("meta/2025/01/01/nope.json")
    assert isinstance(info.value, KeyError)
    assert "nope.json" in str(info.value)
    storage.delete("meta/2025/01/01/nope.json")  # deleting a missing key is not an error
    assert not storage.exists("meta/2025/01/01/nope.json")


def test_modified_is_the_write_time_in_utc(storage):
    before = datetime.now(UTC) - timedelta(seconds=5)  # S3 (and some filesystems) keep whole seconds
    storage.put("images/2025/01/01/m.jpg", b"x")
    when = storage.modified("images/2025/01/01/m.jpg")
    assert when.tzinfo is not None and before <= when <= datetime.now(UTC) + timedelta(seconds=5)
    with pytest.raises(StorageKeyError, match="gone.jpg"):
        storage.modified("images/2025/01/01/gone.jpg")


def test_list_returns_relative_keys_under_prefix(storage):
    keys = ["images/2025/01/01/a.jpg", "images/2025/01/02/b.png", "meta/2025/01/01/a.json"]
    for k in keys:
        storage.put(k, b"x")
    assert sorted(storage.list("images/")) == keys[:2]
    assert list(storage.list("meta/")) == keys[2:]
    assert list(storage.list("nothing/")) == []


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "images/../../x", "a//b", "a\\b"])
def test_keys_that_could_escape_are_refused(storage, bad):
    with pytest.raises(ValueError, match="invalid storage key"):
        storage.put(bad, b"x")


def test_key_layout():
    when = datetime(2025, 10, 28, 20, 0, tzinfo=UTC)
    assert image_key("u-1", "jpg", when) == "images/2025/10/28/u-1.jpg"
    assert meta_key("u-1", when) == "meta/2025/10/28/u-1.json"


def test_driver_survives_pickling(storage):
    storage.put("images/2025/01/01/p.jpg", b"pickled")
    copy = pickle.loads(pickle.dumps(storage))
    assert copy.get("images/2025/01/01/p.jpg") == b"pickled"
    assert copy.describe() == storage.describe()


def test_describe_names_the_place_and_no_secret(storage, driver_settings):
    text = storage.describe()
    if driver_settings.storage_driver == "local":
        assert text == f"local:{driver_settings.dataset_dir.resolve()}"
    else:
        assert text == f"s3://{driver_settings.s3_bucket}/ds/"
        assert "testing-secret" not in text


def test_s3_keys_live_under_the_prefix(make_settings, s3_bucket):
    import boto3

    endpoint, bucket = s3_bucket
    driver = make_storage(
        make_settings(storage_driver="s3", s3_bucket=bucket, s3_prefix="/team/ds", s3_endpoint_url=endpoint)
    )
    driver.put("images/2025/01/01/a.jpg", b"x")
    listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["team/ds/images/2025/01/01/a.jpg"]
    assert list(driver.list("images/")) == ["images/2025/01/01/a.jpg"]


def test_s3_driver_talks_http_to_the_loopback_server(make_settings, s3_bucket):
    # Not a patched client: what the driver writes is on the server, readable with a plain HTTP GET.
    endpoint, bucket = s3_bucket
    assert endpoint.startswith("http://127.0.0.1:")
    driver = make_storage(make_settings(storage_driver="s3", s3_bucket=bucket, s3_endpoint_url=endpoint))
    driver.put("images/2025/01/01/h.jpg", b"over the wire")
    url = driver.client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "images/2025/01/01/h.jpg"}, ExpiresIn=60
    )
    assert url.startswith(f"{endpoint}/")
    answer = httpx.get(url)
    assert (answer.status_code, answer.content) == (200, b"over the wire")


def test_s3_failure_is_storage_error(s3_server, aws_env):
    driver = S3Storage("no-such-bucket", "", s3_server)
    with pytest.raises(StorageError, match="no-such-bucket") as info:
        driver.put("images/2025/01/01/a.jpg", b"x")
    assert not isinstance(info.value, StorageKeyError)


def test_local_put_is_atomic_when_the_rename_fails(tmp_path, monkeypatch):
    driver = LocalStorage(tmp_path)
    driver.put("images/2025/01/01/a.jpg", b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="No space left"):
        driver.put("images/2025/01/01/a.jpg", b"new, never visible")
    monkeypatch.undo()
    assert driver.get("images/2025/01/01/a.jpg") == b"old"
    assert os.listdir(tmp_path / "images/2025/01/01") == ["a.jpg"]  # temp file cleaned up


def test_local_list_hides_temp_files_of_writes_in_flight(tmp_path):
    driver = LocalStorage(tmp_path)
    driver.put("images/2025/01/01/a.jpg", b"x")
    (tmp_path / "images/2025/01/01/.tmp-abc123").write_bytes(b"half")
    assert list(driver.list("images/")) == ["images/2025/01/01/a.jpg"]


def test_local_unwritable_place_is_storage_error(tmp_path):
    (tmp_path / "images").write_bytes(b"a file where a folder should be")
    with pytest.raises(StorageError, match="cannot write"):
        LocalStorage(tmp_path).put("images/2025/01/01/a.jpg", b"x")


def test_unknown_driver_lists_the_known_ones(make_settings):
    settings = make_settings()
    settings.storage_driver = "ftp"  # bypasses the settings validator on purpose
    with pytest.raises(ValueError, match="'ftp': use one of local, s3"):
        make_storage(settings)


def test_make_storage_needs_a_bucket_for_s3(make_settings):
    settings = make_settings()
    settings.storage_driver = "s3"  # bypasses the settings validator on purpose
    with pytest.raises(ValueError, match="S3_BUCKET"):
        make_storage(settings)


def test_local_files_get_ordinary_permissions_not_mkstemps_0600(tmp_path):
    import os
    import stat

    from dataset.storage import LocalStorage

    LocalStorage(tmp_path).put("images/2026/01/01/a.jpg", b"x")
    mode = stat.S_IMODE(os.stat(tmp_path / "images/2026/01/01/a.jpg").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
