"""Webhooks on loopback: delivery latency after a promotion, the retry schedule as observed, and
exactly-once delivery across two replica processes on one PostgreSQL.

    python bench/webhook_bench.py [--moves 20] [--failures 7] [--events 200]

1. Latency: the real service (uvicorn on 127.0.0.1) moves the champion ``--moves`` times
   (POST /models/vit/aliases/champion, alternating v1/v2); for each, the time from the history
   row's ``at`` (the move committed) to the signed ``model.promoted``/``model.rolled_back`` arriving
   at a receiver on 127.0.0.1. Baseline, same run: the same receiver, a signed POST straight from
   httpx (the floor of one delivery). Ratio = median latency / median baseline.
2. Retry schedule: the receiver answers 500 ``--failures`` times, then 200; the gaps between the
   attempts it saw, with WEBHOOK_RETRY_BASE_SECONDS=0.5 (the defaults' schedule is these x10).
3. Exactly once: ``--events`` events enqueued on one PostgreSQL (tests/pgserver.py), two sender
   processes claiming at once; deliveries per webhook-id at the receiver, and each process's share.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from config.settings import Settings  # noqa: E402

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
KEY = "bench-key-0123456789abcdef"


class BurstServer(ThreadingHTTPServer):
    request_queue_size = 128  # a burst of deliveries (2 senders x 16) is not refused by the backlog
    daemon_threads = True


class Receiver:
    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.seen: list[tuple[float, dict, dict]] = []  # (arrival epoch s, headers, body)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                arrived = time.time()
                with receiver.lock:
                    status = 500 if receiver.fail > 0 else 200
                    receiver.fail -= 1
                    receiver.seen.append((arrived, dict(self.headers), json.loads(body)))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = BurstServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def settings_for(root: Path, url: str, **extra) -> Settings:
    return Settings(
        _env_file=None,
        dataset_dir=root / "datasets",
        models_dir=root / "models",
        log_dir=root / "logs",
        trainer_api_key=KEY,
        scheduler_enabled=False,
        webhooks=json.dumps([{"name": "core", "url": url, "secret": SECRET, "events": ["*"]}]),
        **extra,
    )


def register_two_versions(models: Path) -> None:
    import hashlib

    from trainer.registry import commit_version, make_staging_dir

    for n in (1, 2):
        payload = f"weights {n}".encode() * 1000
        staging = make_staging_dir(models)
        (staging / "weights.pt").write_bytes(payload)
        (staging / "model.json").write_text("{}")
        entry = {
            "model": "vit",
            "promoted": True,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "val_auc": 0.9,
        }
        commit_version(models, staging, entry, compared_with="v1" if n == 2 else None)


def serve(settings: Settings) -> tuple[uvicorn.Server, str]:
    from app.main import create_app

    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def latency(moves: int) -> None:
    from app.webhooks import sign
    from config.webhooks import signing_key

    receiver = Receiver()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        register_two_versions(root / "models")
        server, base = serve(settings_for(root, receiver.url))
        auth = {"Authorization": f"Bearer {KEY}"}
        latencies = []
        with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
            for i in range(moves):
                version = "v1" if i % 2 == 0 else "v2"
                before = len(receiver.seen)
                row = client.post(
                    "/models/vit/aliases/champion", json={"version": version, "reason": f"bench {i}"}
                ).json()["row"]
                committed = datetime.fromisoformat(row["at"].replace("Z", "+00:00")).timestamp()
                deadline = time.monotonic() + 30
                while len(receiver.seen) < before + 2 and time.monotonic() < deadline:
                    time.sleep(0.0005)
                arrived = min(t for t, _, body in receiver.seen[before:] if body["type"].startswith("model."))
                latencies.append((arrived - committed) * 1000)
        server.should_exit = True
    key = signing_key(_secret())
    baseline = []
    with httpx.Client(timeout=10) as client:
        for i in range(moves):
            body = json.dumps({"type": "baseline", "n": i}).encode()
            stamp = int(time.time())
            headers = {"webhook-id": f"msg_{i}", "webhook-timestamp": str(stamp)}
            headers["webhook-signature"] = sign(key, f"msg_{i}", stamp, body)
            started = time.time()
            before = len(receiver.seen)
            client.post(receiver.url, content=body, headers=headers)
            while len(receiver.seen) <= before:
                time.sleep(0.0005)
            baseline.append((receiver.seen[before][0] - started) * 1000)
    med, base_med = statistics.median(latencies), statistics.median(baseline)
    print(
        f"latency after a champion move ({moves} moves): median {med:.1f} ms, "
        f"min {min(latencies):.1f}, max {max(latencies):.1f}"
    )
    print(f"baseline (signed POST straight from httpx, same receiver): median {base_med:.2f} ms")
    print(f"ratio latency / baseline: {med / base_med:.1f}x")


def _secret():
    from pydantic import SecretStr

    return SecretStr(SECRET)


def schedule(failures: int) -> None:
    receiver = Receiver(fail=failures)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        register_two_versions(root / "models")
        settings = settings_for(root, receiver.url, webhook_retry_base_seconds=0.5, webhook_poll_seconds=0.05)
        settings = settings.model_copy(update={"webhooks": _secret_json(receiver.url, ["model.rolled_back"])})
        server, base = serve(settings)
        httpx.post(
            f"{base}/models/vit/aliases/champion",
            json={"version": "v1", "reason": "bench"},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        deadline = time.monotonic() + 300
        while len(receiver.seen) < failures + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.should_exit = True
    times = [t for t, _, _ in receiver.seen]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    ids = {h.get("webhook-id") for _, h, _ in receiver.seen}
    print(
        f"retry schedule, base 0.5 s ({failures} x 500, then 200; "
        f"{len(times)} attempts, {len(ids)} webhook-id):"
    )
    print("  gaps (s): " + ", ".join(f"{g:.2f}" for g in gaps))
    bounds = [(0.5 * 2 ** (n - 1) / 2, 0.5 * 2 ** (n - 1)) for n in range(1, failures + 1)]
    print("  expected (s): " + ", ".join(f"{lo:.2f}-{hi:.2f}" for lo, hi in bounds))


def _secret_json(url: str, events: list[str]):
    from pydantic import SecretStr

    return SecretStr(json.dumps([{"name": "core", "url": url, "secret": SECRET, "events": events}]))


def sender_process(url: str, receiver_url: str, total: int, name: str, ready, go) -> None:
    asyncio.run(_send_until_done(url, receiver_url, total, name, ready, go))


async def _send_until_done(url, receiver_url, total, name, ready, go) -> None:
    from sqlalchemy import func, select

    from app.jobstore import make_engine
    from app.webhooks import Outbox, WebhookSender, deliveries
    from config.webhooks import load_subscribers

    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp), receiver_url, database_url=url, webhook_poll_seconds=0.05)
        engine = make_engine(settings)
        sender = WebhookSender(Outbox(engine, settings, load_subscribers(settings)))
        sender.holder = name
        ready.set()
        go.wait()
        await sender.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            async with engine.connect() as conn:
                done = (
                    await conn.execute(
                        select(func.count()).select_from(deliveries).where(deliveries.c.state == "delivered")
                    )
                ).scalar_one()
            if done >= total:
                break
            await asyncio.sleep(0.1)
        await sender.stop()
        await engine.dispose()


def exactly_once(events: int) -> None:
    from app.jobstore import make_engine
    from app.webhooks import Outbox
    from config.webhooks import load_subscribers
    from dataset.db import migrate
    from tests.pgserver import PostgresServer, missing_reason

    reason = missing_reason()
    if reason:
        print(f"exactly once: skipped ({reason})")
        return
    pg = PostgresServer().start()
    receiver = Receiver()
    try:
        url = pg.new_database()
        with tempfile.TemporaryDirectory() as tmp:
            settings = settings_for(Path(tmp), receiver.url, database_url=url)

            async def enqueue() -> None:
                engine = make_engine(settings)
                await migrate(engine)
                outbox = Outbox(engine, settings, load_subscribers(settings))
                for n in range(events):
                    await outbox.enqueue("alias.changed", {"n": n})
                await engine.dispose()

            asyncio.run(enqueue())
        ctx = mp.get_context("spawn")
        go = ctx.Event()
        procs, readies = [], []
        for name in ("replica-a", "replica-b"):
            ready = ctx.Event()
            proc = ctx.Process(target=sender_process, args=(url, receiver.url, events, name, ready, go))
            proc.start()
            procs.append(proc)
            readies.append(ready)
        for ready in readies:
            ready.wait(120)
        go.set()
        for proc in procs:
            proc.join(360)
        time.sleep(1)  # a duplicate would arrive now
        senders = asyncio.run(_senders(url))
        counts = Counter(h.get("webhook-id") for _, h, _ in receiver.seen)
        duplicates = sum(c - 1 for c in counts.values() if c > 1)
        print(
            f"exactly once, 2 sender processes on one PostgreSQL: {events} events, "
            f"{len(receiver.seen)} deliveries received, {len(counts)} distinct webhook-id, "
            f"{duplicates} duplicates; sent by {dict(sorted(senders.items()))}"
        )
        print(f"ratio deliveries / events: {len(receiver.seen) / events:.2f}")
    finally:
        pg.stop()


async def _senders(url: str) -> Counter:
    from sqlalchemy import select

    from app.jobstore import make_engine
    from app.webhooks import deliveries

    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(settings_for(Path(tmp), "http://127.0.0.1/", database_url=url))
        async with engine.connect() as conn:
            logs = (await conn.execute(select(deliveries.c.attempt_log))).scalars().all()
        await engine.dispose()
    return Counter(log[-1]["by"] for log in logs if log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--failures", type=int, default=7)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    latency(args.moves)
    schedule(args.failures)
    exactly_once(args.events)


if __name__ == "__main__":
    main()
