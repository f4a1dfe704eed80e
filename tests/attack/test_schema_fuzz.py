"""Attack 6: a Schemathesis property run against the OpenAPI schema, on real uvicorn with the
service's limits: valid and invalid requests, with and without the bearer token, to every operation.
Bounded (FUZZ_EXAMPLES, derandomised so a failure reproduces); the property is 0 server errors.
Jobs are quick stand-ins, so POST /scrape and /train do not reach the network or train."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.app.conftest import AUTH
from tests.attack.conftest import LiveServer
from tests.images import jpeg

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "400"))


async def quick(settings_, progress):
    progress({"step": 1})
    return {"done": True}


@pytest.fixture
def fuzzed_server(make_settings):
    with LiveServer(make_settings(), job_kinds={"scrape": quick, "train": quick, "label": quick}) as server:
        import httpx

        upload = httpx.post(
            f"{server.url}/upload", headers=AUTH, files={"file": ("a.jpg", jpeg(3))}, data={"label": "real"}
        )
        assert upload.status_code == 201
        yield server


def test_no_request_the_schema_allows_or_forbids_makes_a_server_error(fuzzed_server):
    schema = schemathesis.openapi.from_dict(fuzzed_server.app.openapi())
    cases = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(GenerationMode.NEGATIVE)
    sent: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, authorized=st.sampled_from([True, True, True, False]))
    def request_once(case, authorized):
        if authorized:  # the token wins over any Authorization header the case made up
            case.headers = {**(case.headers or {}), **AUTH}
        response = case.call(base_url=fuzzed_server.url, timeout=30)
        sent[f"{case.method} {case.operation.path}"] += 1
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            server_errors.append(
                f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
            )

    request_once()
    print(
        f"schemathesis: {sum(sent.values())} requests over {len(sent)} operations, "
        f"{len(server_errors)} server errors; by status {dict(sorted(statuses.items()))}"
    )
    assert server_errors == []
    assert sum(sent.values()) >= FUZZ_EXAMPLES // 2 and len(sent) >= 10  # it did reach the API ...
    assert sum(n for code, n in statuses.items() if code != 401) >= FUZZ_EXAMPLES // 3  # ... past the auth
