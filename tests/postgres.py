"""A PostgreSQL server of a test's own (``initdb`` in a temporary folder), which the test
may stop, restart and cut off at will: never the machine's shared server."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from bus.kafka.broker import free_port


def _bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        pytest.fail("PostgreSQL's initdb is needed (.ci/deps installs Debian's postgresql)")
    return Path(initdb).parent


class OwnPostgres:
    """One server in ``folder`` on a free loopback port (trust auth, fsync off: a test's)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.bin = _bin()
        # initdb and postgres refuse to run as root: as the postgres account then.
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            account = pwd.getpwnam("postgres")
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, account.pw_uid, account.pw_gid)
            # pytest's tmp folders are 0700 (under TMPDIR, wherever it is): let it in.
            base = Path(tempfile.gettempdir())
            for parent in folder.parents:
                if parent != base and parent.is_relative_to(base):
                    os.chmod(parent, parent.stat().st_mode | 0o005)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self.bin / tool), *args], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            pytest.fail(f"{tool} failed: {done.stderr.strip()[-1000:]}")

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        log = str(self.folder / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop("immediate")  # as a crash would: no clean shutdown
        self.start()

    def terminate_connections(self) -> int:
        """Cut every other client's connection, as an operator's pg_terminate_backend does."""
        with psycopg.connect(self.url, autocommit=True) as db:
            rows = db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchall()
        return len(rows)


@contextmanager
def own_postgres(folder: Path) -> Iterator[OwnPostgres]:
    server = OwnPostgres(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
