from __future__ import annotations

import itertools

import pytest
import torch

_buckets = itertools.count()


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """The test machine has 2 shared cores: one intra-op thread each keeps runs predictable."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# A tiny timm test architecture on 32 px images: a real training in seconds.
TINY = dict(
    train_arch="test_resnet",
    train_image_size=32,
    train_epochs=4,
    train_batch_size=16,
    train_lr=3e-3,
    train_workers=0,
    val_fraction=0.25,
    min_train_samples=20,
)


@pytest.fixture
def tiny(make_settings):
    """Settings for a tiny training; keyword overrides win."""
    return lambda **overrides: make_settings(**{**TINY, **overrides})


@pytest.fixture
def storage(tmp_path):
    from dataset.storage import LocalStorage

    return LocalStorage(tmp_path / "datasets")


@pytest.fixture
def s3_storage(s3_server, aws_env):
    """An S3Storage on moto's standalone server on 127.0.0.1 (free port), as the product talks to MinIO."""
    import boto3

    from dataset.storage import S3Storage

    bucket = f"train-bucket-{next(_buckets)}"  # one per test: no test sees another's cache entries
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return S3Storage(bucket, "ds/", s3_server)
