"""The attacks of issue 11, replayed against a real `exposr-trainer serve` on loopback, with figures.

    python bench/attack_bench.py [--images 300] [--slow 200] [--fuzz 2000]

Each phase prints what was sent, what came back, the server's memory (VmRSS, and VmHWM: the peak
since start) and GET /healthz latency during the attack against the idle baseline of the same run:

1. header: one 64 MB request header (h11 refuses it after 16 KB);
2. body: an unauthenticated PATCH announcing 200 MB (refused after 64 KB, from Content-Length);
3. slow: --slow connections that send half a request head and stop (closed after HTTP_READ_TIMEOUT);
4. decode: six 7000x7000 float TIFFs uploaded at once (DECODE_MEMORY_BUDGET_MB);
5. fuzz: --fuzz Schemathesis cases (valid and invalid, with and without the token): 5xx count;
6. index: --images images, the index truncated, `check --rebuild-index`: time and rows restored;
7. halfopen (issue 21): --half-open sockets that send `GET / HTTP/1.1\r\nHost: x\r\n` and stop,
   reopened as soon as the server closes them, from one address (127.0.0.2) and then spread over
   250 addresses (127.0.1.x, 4 each: under the per-client cap); /healthz probed from 127.0.0.1
   on a new connection each time for --probe-seconds: share answered 200 and p50/p99 against the
   same probes on the idle server, measured first in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKEN = "bench-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ_TIMEOUT = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DECODE_BUDGET_MB = 1024


def environment(work: Path) -> dict:
    (work / "sources.yaml").write_text("sources: []\n")
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TRAINER_API_KEY": TOKEN,
        "SCHEDULER_ENABLED": "false",
        "DATASET_DIR": str(work / "datasets"),
        "MODELS_DIR": str(work / "models"),
        "LOG_DIR": str(work / "logs"),
        "SOURCES_CONFIG": str(work / "sources.yaml"),
        "HTTP_READ_TIMEOUT": str(READ_TIMEOUT),
        "DECODE_MEMORY_BUDGET_MB": str(DECODE_BUDGET_MB),
        "MIN_TRAIN_SAMPLES": "100000",
        "LOG_LEVEL": "WARNING",
        "EXPOSR_CORE_ENDPOINT": "http://127.0.0.1:9/none",
        "TRAIN_PRETRAINED": "false",
    }


class Server:
    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
            cwd=work,
            env=environment(work),
            stdout=subprocess.DEVNULL,
            stderr=(work / "server.err").open("wb"),  # noqa: SIM115 - the server's life, closed by the OS
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise SystemExit(f"server did not start: {(work / 'server.err').read_text()[-2000:]}")

    def memory_mb(self) -> dict:
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = round(int(value.split()[0]) / 1024, 1)
        return fields

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def healthz_ms(server: Server, n: int = 50) -> dict:
    times = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(n):
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[int(0.95 * len(times)) - 1], 2),
    }


def during(server: Server, attack) -> tuple[dict, dict]:
    """Run ``attack`` in a thread while /healthz is measured; returns (attack result, latency)."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(attack()))
    thread.start()
    time.sleep(0.2)
    latency = healthz_ms(server)
    thread.join()
    return result, latency


def attack_header(server: Server) -> dict:
    sent, start = 0, time.perf_counter()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            chunk = b"a" * (1 << 20)
            while sent < 64 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _answer(sock)
    return {
        "sent_mb": round(sent / 2**20, 1),
        "answer": answer,
        "seconds": round(time.perf_counter() - start, 3),
    }


def attack_body(server: Server) -> dict:
    sent, start = 0, time.perf_counter()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"PATCH /images/00000000-0000-4000-8000-000000000000 HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 200000000\r\n\r\n"
        )
        try:
            chunk = b"[" * (1 << 20)
            while sent < 200 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _answer(sock)
    return {
        "sent_mb": round(sent / 2**20, 1),
        "answer": answer,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _answer(sock: socket.socket) -> str:
    try:
        data = sock.recv(4096)
    except (ConnectionResetError, TimeoutError):
        return "connection reset"
    return data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"


def attack_slow(server: Server, n: int) -> dict:
    socks = []
    for i in range(n):  # from 127.0.0.2 on, 10 a client (under HTTP_MAX_HALF_OPEN_PER_CLIENT)
        source = (f"127.0.2.{i // 10 + 1}", 0)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30, source_address=source)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(sock)
    start = time.perf_counter()
    latency = healthz_ms(server)
    closed = 0
    for sock in socks:
        try:
            closed += sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            closed += 1
        sock.close()
    return {
        "connections": n,
        "healthz_during": latency,
        "closed_by_server": closed,
        "all_closed_after_s": round(time.perf_counter() - start, 2),
    }


def attack_decode(server: Server, work: Path) -> dict:
    from tests.attack.decode_probe import make

    make(work / "decode")
    data = (work / "decode" / "float.tiff").read_bytes()

    async def upload_six() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=300) as client:
            answers = await asyncio.gather(
                *(
                    client.post("/upload", files={"file": (f"{i}.tiff", data)}, data={"label": "ai"})
                    for i in range(6)
                )
            )
        return [a.status_code for a in answers]

    before = server.memory_mb()
    start = time.perf_counter()
    codes = asyncio.run(upload_six())
    return {
        "budget_mb": DECODE_BUDGET_MB,
        "input_kb": len(data) // 1024,
        "statuses": codes,
        "seconds": round(time.perf_counter() - start, 2),
        "rss_before_mb": before["VmRSS"],
        "peak_mb": server.memory_mb()["VmHWM"],
    }


def attack_fuzz(server: Server, n: int) -> dict:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    cases = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(GenerationMode.NEGATIVE)
    counts = {"requests": 0, "server_errors": 0}
    statuses: dict[int, int] = {}

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=cases, authorized=st.sampled_from([True, True, True, False]))
    def once(case, authorized):
        if authorized:  # the token wins over any Authorization header the case made up
            case.headers = {**(case.headers or {}), **AUTH}
        response = case.call(base_url=server.url, timeout=30)
        counts["requests"] += 1
        counts["server_errors"] += response.status_code >= 500
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    start = time.perf_counter()
    once()
    return {
        **counts,
        "by_status": dict(sorted(statuses.items())),
        "seconds": round(time.perf_counter() - start, 1),
    }


HALF_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n"


def hold_half_open(port: int, sources: list[str], stop, ready, opened) -> None:
    """In a process of its own: one half-open socket per entry of ``sources`` (an address may repeat),
    each reopened as soon as the server closes it, until ``stop`` is set."""
    import selectors

    selector = selectors.DefaultSelector()

    def open_one(source: str) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((source, 0))
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_WRITE, (source, False))
        with opened.get_lock():
            opened.value += 1

    for source in sources:
        open_one(source)
    ready.set()
    while not stop.is_set():
        for key, _events in selector.select(timeout=0.2):
            sock, (source, sent) = key.fileobj, key.data
            try:
                if not sent:
                    sock.send(HALF_HEAD)
                    selector.modify(sock, selectors.EVENT_READ, (source, True))
                    continue
                if sock.recv(4096):
                    continue  # an answer (a 4xx/5xx): keep reading until it closes
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                pass
            selector.unregister(sock)  # closed (or reset) by the server: open another at once
            sock.close()
            open_one(source)
    for key in list(selector.get_map().values()):
        key.fileobj.close()


def probe_healthz(server: Server, seconds: float, rate: float = 20) -> dict:
    """GET /healthz on a new connection each time, ``rate`` per second for ``seconds``."""
    times, codes = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        code = _one_probe(server.port)
        times.append((time.perf_counter() - start) * 1000)
        codes.append(code)
        time.sleep(max(0.0, 1 / rate - (time.perf_counter() - start)))
    times.sort()
    return {
        "probes": len(codes),
        "ok_share": round(codes.count(200) / len(codes), 4),
        "statuses": {str(c): codes.count(c) for c in sorted(set(codes))},
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[max(0, int(0.99 * len(times)) - 1)], 2),
    }


def _one_probe(port: int) -> int:
    """A raw GET /healthz on a new connection (no client library's set-up in the timing)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
    except OSError:
        return 0
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def attack_half_open(server: Server, n: int, seconds: float) -> dict:
    import multiprocessing

    idle = probe_healthz(server, seconds)
    report = {"sockets": n, "idle": idle}
    spread = [f"127.0.1.{i % 250 + 1}" for i in range(n)]
    for name, sources in (("one_address", ["127.0.0.2"] * n), ("250_addresses", spread)):
        context = multiprocessing.get_context("fork")
        stop, ready, opened = context.Event(), context.Event(), context.Value("q", 0)
        holder = context.Process(target=hold_half_open, args=(server.port, sources, stop, ready, opened))
        holder.start()
        ready.wait(60)
        time.sleep(1)
        during = probe_healthz(server, seconds)
        stop.set()
        holder.join(30)
        during["connections_opened"] = opened.value
        during["p99_vs_idle"] = round(during["p99_ms"] / idle["p99_ms"], 2)
        during["memory"] = server.memory_mb()
        report[name] = during
        time.sleep(2)
    return report


def attack_index(work: Path, n: int) -> dict:
    from config.settings import Settings
    from dataset.manager import DatasetManager
    from tests.images import jpeg

    settings = Settings(_env_file=None, dataset_dir=work / "index-ds", min_image_side=16)

    async def fill() -> int:
        async with DatasetManager(settings) as dm:
            outcomes = [
                await dm.ingest(
                    jpeg(10_000 + i),
                    {
                        "source": "bench",
                        "label": ("real", "ai")[i % 2],
                        "attribution": {"photographer": f"p{i}"},
                    },
                )
                for i in range(n)
            ]
        return sum(o.status == "stored" for o in outcomes)  # a few generated images are near-duplicates

    stored = asyncio.run(fill())
    db = settings.dataset_dir / "dedupe.db"
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    db.write_bytes(b"")
    env = {**environment(work), "DATASET_DIR": str(settings.dataset_dir), "MIN_IMAGE_SIDE": "16"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "check", "--rebuild-index"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start

    async def rows() -> int:
        async with DatasetManager(settings) as dm:
            return await dm.index.row_count()

    return {
        "images": stored,
        "exit": done.returncode,
        "rows_after": asyncio.run(rows()),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--fuzz", type=int, default=2000)
    parser.add_argument("--decode-budget", type=int, default=1024, help="DECODE_MEMORY_BUDGET_MB")
    parser.add_argument("--half-open", type=int, default=1000, help="sockets that never finish their head")
    parser.add_argument("--probe-seconds", type=float, default=30)
    parser.add_argument("--only", choices=["halfopen"], help="run this phase alone")
    args = parser.parse_args()
    global DECODE_BUDGET_MB
    DECODE_BUDGET_MB = args.decode_budget
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = Server(work)
        if args.only == "halfopen":
            try:
                report = {"halfopen": attack_half_open(server, args.half_open, args.probe_seconds)}
            finally:
                server.stop()
            print(json.dumps(report, indent=2))
            return
        try:
            report = {"idle": {"healthz": healthz_ms(server), "memory": server.memory_mb()}}
            for name, attack in (
                ("header", lambda: attack_header(server)),
                ("body", lambda: attack_body(server)),
            ):
                result, latency = during(server, attack)
                report[name] = {**result, "healthz_during": latency, "memory": server.memory_mb()}
                print(name, json.dumps(report[name]), flush=True)
            report["slow"] = attack_slow(server, args.slow)
            print("slow", json.dumps(report["slow"]), flush=True)
            report["decode"] = attack_decode(server, work)
            print("decode", json.dumps(report["decode"]), flush=True)
            report["fuzz"] = attack_fuzz(server, args.fuzz)
            print("fuzz", json.dumps(report["fuzz"]), flush=True)
            report["halfopen"] = attack_half_open(server, args.half_open, args.probe_seconds)
            print("halfopen", json.dumps(report["halfopen"]), flush=True)
            report["after"] = {"healthz": healthz_ms(server), "memory": server.memory_mb()}
        finally:
            server.stop()
        report["index"] = attack_index(work, args.images)
        print("index", json.dumps(report["index"]), flush=True)
    idle = report["idle"]["healthz"]["p50_ms"]
    for name in ("header", "body", "slow"):
        ratio = report[name]["healthz_during"]["p50_ms"] / idle
        print(f"healthz p50 during {name}: {ratio:.1f}x idle ({idle} ms)")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
