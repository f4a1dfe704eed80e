"""Issue 21, attack 4: a PostgreSQL restart drops every advisory lock with its connection while the
holders still run. Replicas A and B on one real PostgreSQL; a scrape runs on A; `pg_ctl restart -m
fast`; B must answer 409 throughout (never start the kind a second time), no replica may mark A's
row interrupted while A runs it, and A takes its lock again (app/locks.py)."""

from __future__ import annotations

import time

import httpx

from tests.app.conftest import AUTH, Gate
from tests.attack.conftest import LiveServer
from tests.attack.test_public_from_memory import own_postgres  # noqa: F401 - the fixture


def post(server, path: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", headers=AUTH, timeout=60)


def job(server, job_id: str) -> dict:
    return httpx.get(f"{server.url}/jobs/{job_id}", headers=AUTH, timeout=60).json()


def test_a_database_restart_under_a_running_job_never_lets_a_second_replica_start_it(
    own_postgres,  # noqa: F811
    make_settings,
):
    gate = Gate()
    settings = make_settings(
        database_url=own_postgres.new_database(),  # why: two replicas on one PostgreSQL database
        job_sweep_seconds=0.5,  # why: B's sweeper looks often, so a wrong interrupt would show here
    )
    with LiveServer(settings, job_kinds=gate.kinds()) as a, LiveServer(settings, job_kinds=gate.kinds()) as b:
        started = post(a, "/scrape")
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        assert post(b, "/scrape").status_code == 409
        own_postgres.restart()  # every connection cut, A's lock with them
        answers, states = [], []
        deadline = time.monotonic() + 30  # past LOCK_SETTLE_S: B then finds the lock held again
        while time.monotonic() < deadline:
            answer = post(b, "/scrape")
            answers.append(answer.status_code)
            states.append(job(b, job_id)["state"])
            assert answer.status_code != 202, "B started a second scrape while A runs one"
            time.sleep(0.5)
        assert set(answers) == {409}, answers
        assert set(states) == {"running"}, states  # never `interrupted` while A runs it
        gate.open = True
        deadline = time.monotonic() + 60
        while job(a, job_id)["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job(b, job_id)["state"] == "succeeded"
        assert post(b, "/scrape").status_code == 202  # free again: B may run the next one


def test_a_holder_that_cannot_take_its_lock_again_stops_its_job(own_postgres, make_settings, monkeypatch):  # noqa: F811
    import asyncio

    import asyncpg

    from app import locks
    from dataset.db import advisory_key

    monkeypatch.setattr(locks, "LOCK_REGAIN_S", 2.0)  # the holder gives up quickly here
    gate = Gate()
    url = own_postgres.new_database()
    settings = make_settings(database_url=url)  # why: the lock under test is PostgreSQL's
    with LiveServer(settings, job_kinds=gate.kinds()) as a:
        job_id = post(a, "/scrape").json()["job_id"]

        async def steal() -> asyncpg.Connection:
            conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            )
            key = advisory_key("job-scrape")
            for _ in range(100):  # the holder's connection is gone a moment after: take its lock
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                    return conn
                await asyncio.sleep(0.02)
            raise AssertionError("the lock was never free")

        loop = asyncio.new_event_loop()
        thief = loop.run_until_complete(steal())
        try:
            deadline = time.monotonic() + 60
            while (row := job(a, job_id))["state"] == "running" and time.monotonic() < deadline:
                time.sleep(0.2)
            assert row["state"] == "interrupted" and "could not be taken again" in row["error"]
        finally:
            loop.run_until_complete(thief.close())
            loop.close()
