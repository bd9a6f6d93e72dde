"""The real server as a subprocess (`python -m worker serve`), for crash and fault tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import orjson

from tests.factories import one_line_sale
from tests.support.config import config_dict, merged, store, write_toml

ADMIN = "admin-token-proc"
TOKEN = "store-token-proc"


def free_port() -> int:
    """An ephemeral port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(tmp: Path, port: int, **overrides: Any) -> dict[str, Any]:
    """The config of one canonical store S1 with data in `tmp / "data"`, as a dict."""
    raw = config_dict(
        tmp / "data",
        admin_token=ADMIN,
        stores=[store("S1", TOKEN)],
        http={"host": "127.0.0.1", "port": port, "shutdown_timeout_s": 5},
    )
    return merged(raw, overrides)


def write_config(tmp: Path, port: int, **overrides: Any) -> Path:
    """`config(tmp, port, **overrides)` written to `tmp / "possync.toml"`."""
    return write_toml(tmp / "possync.toml", config(tmp, port, **overrides))


async def spawn_serve(
    config: Path, stderr: Any = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """`python -m worker serve --config CONFIG`, stdout piped, output unbuffered."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


class ServerProcess:
    """Start, kill -9, SIGTERM and restart `possync serve` on a fixed port."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.url = f"http://127.0.0.1:{port}"

    async def start(self, limit_s: float = 30.0) -> None:
        """Start and wait for the 'listening' line on stdout (no polling)."""
        logf = self.log.open("ab")
        self.proc = await spawn_serve(self.config, stderr=logf)
        logf.close()
        assert self.proc.stdout is not None

        async def wait_listening() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(
                        f"server exited early; see {self.log}: {self.log.read_text()[-2000:]}"
                    )
                if b"listening on" in line:
                    return

        await asyncio.wait_for(wait_listening(), limit_s)

    def kill9(self) -> None:
        """SIGKILL: no cleanup of any kind runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    def term(self) -> None:
        """SIGTERM: graceful shutdown."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self, limit_s: float = 30.0) -> int:
        """Wait for exit; return the code."""
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), limit_s)

    async def stop(self) -> None:
        """Make sure the process is gone."""
        if self.proc is not None:
            await reap(self.proc)


async def reap(proc: asyncio.subprocess.Process) -> None:
    """Make sure a child process is gone: SIGKILL if it still runs, then wait for it."""
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


def sale_body(sid: str, customer_id: str | None = None) -> bytes:
    """A consistent single-sale canonical body."""
    sale = one_line_sale(
        sid,
        "2026-11-20T10:00:00-05:00",
        sku="RING-14K-001",
        price="100.00",
        tax="8.00",
        method="card",
        **({"customer_id": customer_id} if customer_id else {}),
    )
    return orjson.dumps(sale)


def headers(token: str = TOKEN) -> dict[str, Any]:
    """Auth + JSON content type."""
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
