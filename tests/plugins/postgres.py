"""A throw-away PostgreSQL server for tests: own data dir, own free port, never the machine's.

`PostgresServer.start()` runs `initdb` into a temporary directory (first call only) and
`pg_ctl start`s a postmaster on 127.0.0.1 with a free port. fsync is off (nothing here must
survive a crash of the host), but synchronous_commit stays on: `stop()` is an immediate
shutdown, i.e. a server crash, and committed transactions must survive it.

Fault tests call `stop()` / `start()` to take the server away and bring it back (same port).
PostgreSQL refuses to run as root, so when the tests run as root the directory is owned by
the `postgres` system user and the server binaries run through `runuser -u postgres --`.
Teardown stops the server (`pg_ctl stop -m immediate`), kills the postmaster pid if it is
still alive, and deletes the directory.

Fixtures: `postgres_server` (session: one server for the run) and `postgres_dsn` (function:
a fresh database with a unique name for each test, so tests never see each other's rows).
Load with `pytest_plugins = ["tests.plugins.postgres"]`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER_USER = "postgres"
_START_ATTEMPTS = 3


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: PATH first, then /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for cand in reversed(candidates):
        if (Path(cand) / "initdb").exists() and (Path(cand) / "pg_ctl").exists():
            return Path(cand)
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in a temp dir; `start()`/`stop()` may be called repeatedly."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = 0
        self.pid: int | None = None
        self._as_root = os.geteuid() == 0
        self._user: pwd.struct_passwd | None = None
        if self._as_root:
            try:
                self._user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root and there is no {SERVER_USER!r} user to run PostgreSQL as"
                ) from None
        self.base: Path | None = None

    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        return self._base() / "data"

    @property
    def sockdir(self) -> Path:
        """Where the server puts its Unix socket."""
        return self._base() / "sock"

    @property
    def logfile(self) -> Path:
        """The server log (`pg_ctl -l`)."""
        return self._base() / "server.log"

    def _base(self) -> Path:
        if self.base is None:
            raise RuntimeError("PostgresServer not started yet")
        return self.base

    def _create(self) -> None:
        # Not under pytest's tmp_path: that is 0700 root and the postgres user must enter.
        self.base = Path(tempfile.mkdtemp(prefix="possync-pg-"))
        self.sockdir.mkdir()
        if self._user is not None:
            for p in (self.base, self.sockdir):
                os.chown(p, self._user.pw_uid, self._user.pw_gid)
        self._initdb()

    # -- process plumbing ---------------------------------------------------------------

    def _cmd(self, tool: str, *args: str) -> list[str]:
        exe = str(self.bindir / tool)
        if self._user is not None:
            return ["runuser", "-u", self._user.pw_name, "--", exe, *args]
        return [exe, *args]

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self._cmd(tool, *args),
            cwd=self._base(),  # the server user may not be allowed into the caller's cwd
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                f"{self._log_tail()}"
            )
        return proc

    def _log_tail(self) -> str:
        try:
            return "\n--- server log ---\n" + self.logfile.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )

    def _read_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A killed postmaster is reparented to init and may linger as a zombie.
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True

    # -- public API ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the postmaster started by `start()` is still alive."""
        return self.pid is not None and self._alive(self.pid)

    def start(self) -> None:
        """Create the cluster on first use, then start it (same port on a restart)."""
        if self.running:
            return
        if self.base is None:
            self._create()
        for attempt in range(_START_ATTEMPTS):
            if not self.port or attempt:
                self.port = free_port()
            opts = (
                f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1"
                " -c fsync=off -c full_page_writes=off"
                " -c max_connections=200"
            )
            proc = self._run(
                "pg_ctl",
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
                check=False,
            )
            if proc.returncode == 0:
                self.pid = self._read_pid()
                return
        raise RuntimeError(f"pg_ctl start failed:\n{proc.stdout}{proc.stderr}{self._log_tail()}")

    def stop(self) -> None:
        """Stop now (immediate mode), then make sure the postmaster is gone."""
        if self.base is None:
            return
        pid = self.pid or self._read_pid()
        if self.datadir.exists():
            self._run(
                "pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop", check=False
            )
        if pid is not None and self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pid = None

    def close(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)
                self.base = None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def dsn(self) -> str:
        """DSN of the default `postgres` database (TCP, trust auth)."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """A libpq/asyncpg DSN for `database` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql (as a client, any OS user) and return its output."""
        psql = self.bindir / "psql"
        proc = subprocess.run(
            [
                str(psql),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr}")
        return proc.stdout

    def create_database(self, prefix: str = "t") -> str:
        """CREATE DATABASE with a unique name; returns its DSN."""
        name = f"{prefix}_{uuid.uuid4().hex[:16]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL server for the whole session (skipped if not installed)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (run `make services`)")
    with PostgresServer(bindir) as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session server (restarting it if a test stopped it)."""
    postgres_server.start()
    return postgres_server.create_database()
