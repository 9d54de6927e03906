"""A PostgreSQL server of our own: a cluster made by ``initdb`` in a run directory, run by
``pg_ctl`` on a port of our choosing, for the cloud's shared state (``cloud --store
postgresql://...``) under ``up --clouds N`` and in the tests.

PostgreSQL comes from the operating system (Debian: ``apt-get install postgresql``; its
binaries live in ``/usr/lib/postgresql/<version>/bin``). It refuses to run as root, so as root
the cluster belongs to the ``postgres`` user the package creates, and the server runs as it.
Clients connect over TCP on 127.0.0.1 with a password (``scram-sha-256``); the password is
made once per cluster and kept in the run directory (mode 0600).

A machine of its own would run a managed PostgreSQL instead and pass its URL to every cloud.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets as random_source
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edgelearn.ports import free_port
from stack.supervisor import children_of

USER = "edgelearn"
DATABASE = "edgelearn"


class PostgresError(RuntimeError):
    """PostgreSQL is missing, or its cluster could not be made or started."""


def binary(name: str) -> str:
    """``name`` (initdb, pg_ctl, ...) on the PATH, else from Debian's newest version."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise PostgresError(
            f"{name} not found: install PostgreSQL (Debian: apt-get install postgresql)"
        )
    return candidates[-1]


def _as_owner() -> tuple[list[str], int | None, int | None]:
    """How to run the server's commands: as root, through ``runuser`` as ``postgres``."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresError("running as root needs the postgres user (Debian's package)") from exc
    return ["runuser", "-u", "postgres", "--"], owner.pw_uid, owner.pw_gid


@dataclass
class RunningPostgres:
    """A server we started: ``url`` for the clouds; ``stop``, ``kill`` (SIGKILL, as a crash)
    and ``start`` again on the same port and data."""

    run_dir: Path
    port: int
    password: str

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def _ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        prefix, _, _ = _as_owner()
        return subprocess.run(
            [*prefix, binary("pg_ctl"), "-D", str(self.data_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, timeout: float = 60.0) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.run_dir}"
            " -c fsync=on -c max_connections=100"
        )
        done = self._ctl(
            "start", "-w", "-t", str(int(timeout)), "-o", options,
            "-l", str(self.run_dir / "postgres.log"), timeout=timeout + 10,
        )  # fmt: skip
        if done.returncode != 0:
            raise PostgresError(f"pg_ctl start failed: {done.stderr or done.stdout}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)  # pg_ctl -w waited already; the port follows at once
        raise PostgresError(f"PostgreSQL on port {self.port} does not accept connections")

    def stop(self, timeout: float = 30.0) -> None:
        """A fast shutdown: connections end, committed work is on disk."""
        if self.pid() is not None:
            self._ctl("stop", "-m", "fast", "-w", "-t", str(int(timeout)), timeout=timeout + 10)

    def kill(self) -> None:
        """SIGKILL the server and its backends, as a crash of its machine; ``start``
        recovers from the WAL."""
        pid = self.pid()
        if pid is None:
            return
        doomed = [pid, *children_of(pid)]
        for each in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(each) for each in doomed):
            time.sleep(0.05)  # the kernel reaps them; the condition is re-checked
        # what a dead server leaves: its pid file and its socket's lock
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        (self.run_dir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def __enter__(self) -> RunningPostgres:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def start_postgres(run_dir: Path, port: int = 0, timeout: float = 60.0) -> RunningPostgres:
    """Make a cluster in ``run_dir`` (once) and start it on ``port`` (0: a free one);
    returns once it accepts connections, with the ``edgelearn`` database made."""
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    prefix, uid, gid = _as_owner()
    password_file = run_dir / "password"
    fresh = not (run_dir / "data" / "PG_VERSION").exists()
    if fresh:
        password = random_source.token_urlsafe(24)
        password_file.write_text(password)
        password_file.chmod(0o600)
        if uid is not None and gid is not None:  # the server's user owns its folder
            os.chown(run_dir, uid, gid)
            os.chown(password_file, uid, gid)
        done = subprocess.run(
            [
                *prefix, binary("initdb"), "-D", str(run_dir / "data"), "-U", USER,
                "--pwfile", str(password_file), "--auth-host=scram-sha-256",
                "--auth-local=peer", "-E", "UTF8", "--no-instructions",
            ],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise PostgresError(f"initdb failed: {done.stderr or done.stdout}")
    password = password_file.read_text().strip()
    server = RunningPostgres(run_dir, port or free_port(), password)
    server.start(timeout)
    if fresh:
        _create_database(server)
    return server


def _create_database(server: RunningPostgres) -> None:
    import psycopg

    url = server.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {DATABASE}")
