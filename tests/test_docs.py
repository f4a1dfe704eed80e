"""The documentation, checked against the product: every curl example of README.md and docs/ runs
as written against a real `exposr-trainer serve` on 127.0.0.1 (after a tiny training, so the model
examples have a model), every relative link points at a file that exists, and ARCHITECTURE.md
lists every module."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.images import encode, jpeg
from tests.trainer.builders import textured

# One test process runs this module: its module-scoped fixture is costly (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_docs")

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KEY = "docs-test-key-0123456789abcdef"
PACKAGES = ("app", "config", "dataset", "labeler", "scraper", "trainer")


def shell_commands(page: Path) -> list[str]:
    """The page's curl commands (and `VAR=$(curl ...)` captures), continuation lines joined."""
    text = page.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```(?:sh|bash|shell)\n(.*?)```", text, flags=re.S):
        logical, pending = [], ""
        for line in block.splitlines():
            pending += line + "\n"
            if not line.rstrip().endswith(("\\", "|")):
                logical.append(pending)
                pending = ""
        commands += [c.rstrip() for c in logical if re.match(r"\s*(curl |[A-Z_]+=\$\(curl )", c)]
    return commands


def test_the_pages_have_curl_examples():
    counts = {page.name: len(shell_commands(page)) for page in PAGES}
    assert counts["README.md"] >= 4 and counts["api.md"] >= 10 and counts["labeler.md"] >= 4


def test_every_example_uses_one_token_variable_and_fails_on_errors():
    for page in PAGES:
        for command in shell_commands(page):
            assert "$KEY" not in command and "$TOKEN" not in command, (page.name, command)
            assert "localhost:8001" not in command, (page.name, command)  # $T, so PORT=... works too
            if re.search(r"\s(-o\s+(?!/dev/null)|-O)", command):
                assert re.search(r"\s-f|\s-[a-zA-Z]*f", command), f"{page.name}: no -f: {command}"


def test_relative_links_point_at_files_that_exist():
    for page in [*PAGES, ROOT / "ARCHITECTURE.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if Path(target).name == "scaling-out.md" and not (page.parent / target).exists():
                continue  # issue 10 brings docs/scaling-out.md
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: broken link {target}"


def test_architecture_lists_every_module():
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    modules = sorted(
        str(p.relative_to(ROOT))
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if (p.name != "__init__.py" or p.parent.name == "ui") and "migrations" not in p.parts
    )
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"ARCHITECTURE.md lacks a line for: {', '.join(missing)}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real server on a dataset scraped from two folders, with a promoted tiny model and two
    unlabeled uploads (so the review queue has entries); cwd holds photo.jpg for the upload example."""
    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is missing under CI")
        pytest.skip("curl is not installed")
    root = tmp_path_factory.mktemp("docs")
    real, ai = root / "real", root / "ai"
    real.mkdir()
    ai.mkdir()
    for i in range(24):
        (real / f"r{i}.jpg").write_bytes(jpeg(100 + i))
        (ai / f"a{i}.png").write_bytes(encode(textured(200 + i, "ai", size=(72, 72)), "PNG"))
    sources = root / "sources.yaml"
    sources.write_text(
        yaml.safe_dump(
            {
                "sources": [
                    {"name": "folder", "label": "real", "path": str(real)},
                    {"name": "folder", "label": "ai", "path": str(ai)},
                ]
            }
        )
    )
    work = root / "work"
    work.mkdir()
    (work / "photo.jpg").write_bytes(jpeg(777))
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TRAINER_API_KEY": KEY,
        "SOURCES_CONFIG": str(sources),
        "DATASET_DIR": str(root / "datasets"),
        "MODELS_DIR": str(root / "models"),
        "LOG_DIR": str(root / "logs"),
        "SCHEDULER_ENABLED": "false",
        "TRAIN_ARCH": "resnet10t",
        "TRAIN_PRETRAINED": "false",
        "TRAIN_IMAGE_SIZE": "32",
        "TRAIN_EPOCHS": "4",
        "TRAIN_BATCH_SIZE": "8",
        "TRAIN_LR": "0.003",
        "MIN_TRAIN_SAMPLES": "12",
        "VAL_FRACTION": "0.25",
        "TRAIN_SEED": "1",
        "HF_HUB_OFFLINE": "1",
        # Exposr-Core is not there: the labeler example scores with the local model.
        "EXPOSR_CORE_ENDPOINT": "http://127.0.0.1:9/analyze",
        "T": f"http://127.0.0.1:{port}",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    cli = [sys.executable, "-m", "app.cli"]
    for command in ("scrape", "train"):
        done = subprocess.run([*cli, command], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        (root / f"{command}.out").write_text(done.stdout + done.stderr)
    log = (root / "serve.log").open("w")  # a file, not a pipe: a full pipe would block the server
    server = subprocess.Popen(
        [*cli, "serve", "--port", str(port)],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{env['T']}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, f"serve exited: {(root / 'serve.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "serve did not answer /healthz in 300 s"
            time.sleep(0.3)
        auth = {"Authorization": f"Bearer {KEY}"}
        latest = httpx.get(f"{env['T']}/models/latest", headers=auth, timeout=10)
        assert latest.status_code == 200, (root / "train.out").read_text()[-3000:]
        assert latest.json()["model_version"] == "v1", latest.text
        for seed in (901, 902):
            answer = httpx.post(
                f"{env['T']}/upload",
                headers=auth,
                timeout=30,
                data={"label": "unlabeled"},
                files={"file": ("u.jpg", jpeg(seed), "image/jpeg")},
            )
            assert answer.status_code == 201, answer.text
        yield env, work
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


# Jobs of a kind run one at a time (a second POST is 409): before an example starts a job, wait
# until the jobs the previous examples started are done, as a person reading the output would.
PRELUDE = r"""
set -euo pipefail
wait_idle() {
  for _ in $(seq 4800); do
    if curl -fsS -H "Authorization: Bearer $TRAINER_API_KEY" "$T/jobs?limit=20" | python3 -c \
      'import json, sys; jobs = json.load(sys.stdin)["jobs"]
sys.exit(any(j["state"] in ("queued", "running") for j in jobs))'
    then return 0; fi
    sleep 0.25
  done
  echo "jobs still running after 1200 s" >&2; return 1
}
"""


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_curl_example_runs_as_written(served, page):
    env, work = served
    commands = shell_commands(page)
    if not commands:
        pytest.skip(f"{page.name} has no curl example")
    script = [PRELUDE]
    for i, command in enumerate(commands):
        if re.search(r"-X POST .*\$T/(scrape|train|label)\b", command):
            script.append("wait_idle")
        script += [f"echo '>>> example {i}' >&2", command]
    script.append("wait_idle")
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=work, env=env, capture_output=True, text=True, timeout=3000
    )
    failed = re.findall(r">>> example (\d+)", done.stderr)
    where = commands[int(failed[-1])] if failed else "(before the first example)"
    assert done.returncode == 0, f"{page.name} (exit {done.returncode}): {where}\n{done.stderr[-1500:]}"
