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
def s3_storage(s3_server, aws_env):
    """An S3Storage on moto's standalone server on 127.0.0.1 (free port), as the product talks to MinIO."""
    import boto3

    from dataset.storage import S3Storage

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="train-bucket")
    return S3Storage("train-bucket", "ds/", s3_server)
