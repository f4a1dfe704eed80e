"""Set-up that talks: `make run PORT=/HOST=`, a CPU-only torch index, install steps that print,
a busy port refused before the heavy start-up, and a Dockerfile that caches its dependencies."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_dry_run(*args: str) -> str:
    if shutil.which("make") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("make is missing under CI")
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout


def test_make_run_serves_on_the_port_and_host_given():
    out = make_dry_run("run", "PORT=8123", "HOST=0.0.0.0")
    assert "exposr-trainer serve --host 0.0.0.0 --port 8123" in out
    assert "exposr-trainer serve --host 127.0.0.1 --port 8001" in make_dry_run("run")


def test_install_prints_each_step_and_never_silences_pip():
    out = make_dry_run("install")
    assert "--quiet" not in out and "-q " not in out
    assert out.count('echo "==> [') == 4
    assert "--index-url" not in out  # torch from the default index unless TORCH_INDEX_URL is set
    assert "-c constraints.txt -e '.[test]'" in out


def test_a_torch_index_installs_the_pinned_torch_pair_from_it_first():
    out = make_dry_run("install", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu")
    torch_step = out.index("--index-url https://download.pytorch.org/whl/cpu")
    assert "sed -n 's/^torch==//p' constraints.txt" in out[torch_step:]
    assert torch_step < out.index("-c constraints.txt -e '.[test]'")  # then the rest, same pins


def test_a_busy_port_fails_before_the_app_is_imported(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = (
            f"import sys; from app.cli import main; rc = main(['serve', '--port', '{port}']); "
            "print(rc, 'app.main' in sys.modules, 'torch' in sys.modules)"
        )
        env = {
            **os.environ,
            "DATASET_DIR": str(tmp_path / "d"),
            "MODELS_DIR": str(tmp_path / "m"),
            "LOG_DIR": str(tmp_path / "l"),
            "PYTHONPATH": str(ROOT),
            "SOURCES_CONFIG": str(ROOT / "config" / "sources.yaml"),
        }
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
    assert done.stdout.split() == ["2", "False", "False"], done.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert f"--port {port + 1}" in done.stderr and f"make run PORT={port + 1}" in done.stderr


def test_the_dockerfile_installs_dependencies_before_copying_the_code():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()]
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in lines
    deps = lines.index("COPY pyproject.toml constraints.txt ./")
    code = next(i for i, line in enumerate(lines) if line.startswith("COPY app"))
    installs = [i for i, line in enumerate(lines) if "pip install" in line]
    assert deps < installs[0] < installs[1] < code < installs[-1]  # torch, deps, then the code
    assert any("--no-deps" in lines[i] for i in range(code, len(lines)))


def test_make_tests_xdist_groups_share_one_process(tmp_path):
    # make test relies on --dist loadgroup keeping a module's xdist_group in one process, so its
    # module fixture (a trained model, a served tour) is built once; pytest 9.2 broke that silently.
    (tmp_path / "test_grouped.py").write_text(
        "import os, pytest\n"
        "pytestmark = pytest.mark.xdist_group('g')\n"
        "@pytest.mark.parametrize('i', range(6))\n"
        "def test_record(i):\n"
        "    open(f'worker-{i}', 'w').write(os.environ['PYTEST_XDIST_WORKER'])\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-p",
            "no:cacheprovider",
            "-c",
            os.devnull,
            "--rootdir",
            str(tmp_path),
            "test_grouped.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers = {(tmp_path / f"worker-{i}").read_text() for i in range(6)}
    assert len(workers) == 1, f"one xdist_group ran on {sorted(workers)}"
