"""A real PostgreSQL 15 server for the tests, on 127.0.0.1 and a free port, in a temporary folder.

``PostgresServer.start()`` runs the distribution's ``initdb`` and ``pg_ctl`` (Debian keeps them in
/usr/lib/postgresql/15/bin; PG_BIN overrides). PostgreSQL refuses to run as root, so as root the
binaries run as the ``postgres`` user (``runuser``). Each test gets a fresh database on the one
server (``new_database``), so tests never see each other's rows.

When the binaries are missing, :func:`missing_reason` says so in one line; the fixtures skip with
it, except under CI (``CI=true``), where a missing part fails the run.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

CANDIDATE_BINS = [
    os.environ.get("PG_BIN", ""),
    "/usr/lib/postgresql/15/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/17/bin",
    "/usr/local/pgsql/bin",
]
_db_numbers = itertools.count()


def find_bin() -> Path | None:
    for folder in CANDIDATE_BINS:
        if folder and (Path(folder) / "pg_ctl").is_file() and (Path(folder) / "initdb").is_file():
            return Path(folder)
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl and shutil.which("initdb") else None


def missing_reason() -> str | None:
    if find_bin() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _user_exists("postgres")):
        return "running as root needs the 'postgres' user and runuser to start PostgreSQL"
    return None


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        self.bin = find_bin()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="exposr-pg-"))
        self.data = self.root / "data"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        if not self.data.exists():  # a restart (stop(keep=True), start()) keeps the data
            self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"
            )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self, keep: bool = False) -> None:
        # keep: a clean shutdown (the tests run with synchronous_commit=off; a crash would lose data)
        mode = "fast" if keep else "immediate"
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def pids(self) -> list[int]:
        """The postmaster and every process it started (backends, background workers)."""
        main = int((self.data / "postmaster.pid").read_text().split()[0])
        found = [main]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == main:  # the parent pid
                found.append(int(stat.parent.name))
        return found

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted by the kernel and never answered."""
        import signal

        for pid in self.pids():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        for pid in self.pids():
            os.kill(pid, signal.SIGCONT)

    def restart(self) -> None:
        """``pg_ctl restart -m fast`` (as a stop and a start, so the server's output goes to its log
        file, not to this process's pipes): every connection is cut, the data kept."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        self.start()

    def url(self, database: str = "postgres", driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy async URL."""
        name = f"t{os.getpid()}_{next(_db_numbers)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = self._run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        )
        return result.stdout
