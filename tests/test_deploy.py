"""deploy/docker-compose.yml: the topology docs/scaling-out.md describes, with settings the service knows."""

from __future__ import annotations

from pathlib import Path

import yaml

from config.settings import Settings

COMPOSE = Path(__file__).resolve().parents[1] / "deploy" / "docker-compose.yml"
NOT_SETTINGS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}  # boto3's own chain


def test_compose_has_postgres_minio_two_replicas_and_a_worker():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["minio"]["image"].startswith("minio/minio")
    assert services["worker"]["command"] == ["exposr-trainer", "worker"]
    replicas = [services[name] for name in ("api1", "api2")]
    assert {r["ports"][0] for r in replicas} == {"8001:8001", "8002:8001"}
    fields = {name.upper() for name in Settings.model_fields}
    for name in ("api1", "api2", "worker"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["STORAGE_DRIVER"] == "s3" and env["S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["WORKER_KINDS"] == "train,label"
        unknown = set(env) - fields - NOT_SETTINGS
        assert not unknown, f"{name}: settings the service does not read: {unknown}"
    assert services["worker"]["environment"]["SCHEDULER_ENABLED"] == "false"
