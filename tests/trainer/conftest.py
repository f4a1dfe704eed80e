from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """The test machine has 2 shared cores: one intra-op thread each keeps runs predictable."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def s3_storage(monkeypatch):
    """An S3Storage on moto's standalone server on 127.0.0.1 (free port), as the product talks to MinIO."""
    import boto3
    from moto.server import ThreadedMotoServer

    from dataset.storage import S3Storage

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="train-bucket")
    yield S3Storage("train-bucket", "ds/", endpoint)
    server.stop()
