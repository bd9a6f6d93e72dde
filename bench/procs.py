"""Subprocesses under test: the real `possync serve`, the baseline servers, RSS sampling.

Every process is started by a `Proc` used as a context manager, so it is stopped (SIGTERM,
then SIGKILL after a grace period) on every exit path, and only processes this run started
are ever signalled, by their pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

import aiohttp

ADMIN = "bench-admin-token"
STORE_TOKEN = "bench-store-token"


def store_token(store: str) -> str:
    """The store's own push token (config refuses one token shared by two stores)."""
    return STORE_TOKEN if store == "LIVE" else f"{STORE_TOKEN}-{store}"


def free_port() -> int:
    """An ephemeral TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def far_window_times(now: datetime | None = None) -> list[str]:
    """Two daily window times 6 and 18 hours away, so no window fires during a run."""
    now = now or datetime.now(UTC)
    return [(now + timedelta(hours=h)).strftime("%H:%M") for h in (6, 18)]


def write_config(
    path: Path,
    data_dir: Path,
    port: int,
    stores: Sequence[str],
    *,
    max_body_bytes: int = 64 * 1024 * 1024,
    mqtt_port: int | None = None,
    mqtt_client_id: str = "possync-bench",
) -> Path:
    """A possync TOML config: canonical stores, SQLite sink, windows far from now.

    With `mqtt_port`, the MQTT source subscribes to the broker on 127.0.0.1 at that port.
    """
    times = ", ".join(f'"{t}"' for t in far_window_times())
    parts = [
        f'data_dir = "{data_dir}"',
        'log_level = "WARNING"',
        "[http]",
        'host = "127.0.0.1"',
        f"port = {port}",
        f'admin_token = "{ADMIN}"',
        f"max_body_bytes = {max_body_bytes}",
        "shutdown_timeout_s = 10.0",
        "[windows]",
        f"times = [{times}]",
        'timezone = "UTC"',
        "spread_s = 0",
        "[spool]",
        "max_records_per_store = 4000000",
        f"max_bytes_per_store = {16 * 1024**3}",
        "[sink]",
        'kind = "sqlite"',
        "[inbox]",
        "enabled = false",
    ]
    if mqtt_port is not None:
        parts += [
            "[mqtt]",
            "enabled = true",
            'host = "127.0.0.1"',
            f"port = {mqtt_port}",
            f'client_id = "{mqtt_client_id}"',
        ]
    for store in stores:
        parts += [
            "[[stores]]",
            f'id = "{store}"',
            'source = "canonical"',
            'timezone = "America/New_York"',
            f'token = "{store_token(store)}"',
        ]
    parts += [
        "[[triggers]]",
        'name = "thank-you"',
        "days_after = 1",
        "[[triggers]]",
        'name = "anniversary-reminder"',
        "days_after = 330",
        'min_total = "500.00"',
        'categories = ["rings"]',
        'action = "reminder"',
    ]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def read_rss_bytes(pid: int) -> int | None:
    """VmRSS of a process from /proc (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _children(pid: int) -> list[int]:
    """Direct children of a process, from /proc/PID/task/*/children."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                kids.extend(int(k) for k in f.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


def read_tree_rss_bytes(pid: int) -> int | None:
    """VmRSS of a process plus all its descendants (None once the process is gone).

    The server parses backfill in a worker process (and multiprocessing starts a helper):
    their memory is the server's memory too, so P6 counts the whole tree.
    """
    total = read_rss_bytes(pid)
    if total is None:
        return None
    todo = _children(pid)
    while todo:
        kid = todo.pop()
        total += read_rss_bytes(kid) or 0
        todo.extend(_children(kid))
    return total


@dataclass
class Proc:
    """A child process stopped on exit: SIGTERM, then SIGKILL after `grace_s`."""

    argv: list[str]
    log_path: Path
    name: str = "proc"
    grace_s: float = 60.0
    env: dict[str, str] | None = None
    started_at: float = 0.0
    stop_s: float = 0.0  # how long the last stop took
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Proc:
        """Spawn the process; its output goes to `log_path`."""
        log = self.log_path.open("ab")
        try:
            self.started_at = time.monotonic()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        """The child's pid."""
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        """True while the child runs."""
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> float:
        """SIGTERM and wait (SIGKILL after the grace period); seconds it took."""
        if self.popen is None:
            return 0.0
        t0 = time.monotonic()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=30)
            self.stop_s = time.monotonic() - t0
        return self.stop_s

    def tail(self, n: int = 20) -> str:
        """The last lines of the child's output, for error messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def __enter__(self) -> Proc:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def possync_proc(config: Path, log_path: Path) -> Proc:
    """The real server under test: `possync serve --config PATH` (uvloop, like production)."""
    argv = [sys.executable, "-m", "worker", "serve", "--config", str(config)]
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return Proc(argv, log_path, name="possync", env=env)


def baseline_proc(kind: str, port: int, workdir: Path) -> Proc:
    """A baseline push server (`bench.servers`)."""
    argv = [sys.executable, "-m", "bench.servers", kind, "--port", str(port)]
    if kind == "naive":
        argv += ["--db", str(workdir / "naive.db")]
    return Proc(argv, workdir / f"{kind}.log", name=kind, grace_s=15.0)


async def wait_ready(
    proc: Proc,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 120.0,
) -> float:
    """Poll `url` until it answers below 400; seconds since the process was started.

    Polling is the only way to see another process become ready; the 2 ms interval bounds
    the measurement error.
    """
    deadline = time.monotonic() + timeout_s
    conn = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=conn) as session:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.tail()}")
            try:
                async with session.get(
                    url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
                ) as resp:
                    await resp.read()
                    if resp.status < 400:
                        return time.monotonic() - proc.started_at
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.002)
    raise RuntimeError(f"{proc.name} not ready after {timeout_s}s:\n{proc.tail()}")


async def spool_pending(session: aiohttp.ClientSession, base: str) -> int:
    """How many sales the LIVE store's spool holds (GET /v1/stores/LIVE/spool as the admin)."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with session.get(f"{base}/v1/stores/LIVE/spool", headers=headers) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"spool: {resp.status} {body}")
        return int(body["pending"])


class RssSampler:
    """Samples the VmRSS of a process and its descendants every `interval_s` in a task:
    (monotonic time, bytes)."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            rss = read_tree_rss_bytes(self.pid)
            if rss is None:
                return
            self.samples.append((time.monotonic(), rss))
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run(), name="rss-sampler")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def peak(self, until: float | None = None, since: float | None = None) -> int:
        """Highest sample in [since, until]."""
        vals = [
            r
            for t, r in self.samples
            if (until is None or t <= until) and (since is None or t >= since)
        ]
        return max(vals, default=0)
