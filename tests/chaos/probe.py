"""The probe's served process: `possync serve` at DEBUG, raw bytes, its log checked after.

Shared by tests/chaos/test_probe.py (quick variant) and test_probe_long.py (`-m long`).
`serving` starts a real `python -m worker serve --config` subprocess (tests/procserver.py) on
a free port and, when the block ends, stops it with SIGTERM (exit 0) and reads its whole
stderr log: none of the values a test sent (`CANARY` and the test's own needles) and no
traceback may be in it.

Waiting on the subprocess is polling its HTTP answers, bounded by `asyncio.wait_for`: it has
no event to wait on, and every look is a real round trip (no sleep).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.adapter_helpers import sign
from tests.procserver import ADMIN, TOKEN, ServerProcess, free_port, write_config
from tests.support.config import store
from tests.test_http_hardening import Answer, _parse, _read_answer

S2_TOKEN = "store-token-proc-s2"
SH_TOKEN = "store-token-proc-sh"
SECRET = "shpss_probe_secret"
PUSH = "/v1/push/canonical/S1"
SHOPIFY = "/v1/push/shopify/SH"
DAY = "2026-11-20"  # the business date of tests.procserver.sale_body in New York
JSON = (b"Content-Type", b"application/json")
NDJSON = (b"Content-Type", b"application/x-ndjson")
CANARY = "probe-canary-value-5521"  # sent in hostile bytes; must reach no log line


def probe_stores(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    """S1 and S2 (canonical, two time zones), SH (Shopify, signed), then `extra`."""
    return [
        store("S1", TOKEN),
        store("S2", S2_TOKEN, timezone="Europe/Paris"),
        store("SH", SH_TOKEN, source="shopify", timezone="UTC", secret=SECRET),
        *extra,
    ]


@dataclass
class Proc:
    """One running `possync serve` and what a test needs to talk to it."""

    server: ServerProcess
    port: int
    url: str
    data: Path
    http: aiohttp.ClientSession

    async def raw(self, data: bytes, limit_s: float = 15.0) -> Answer:
        """Send exact bytes on a fresh connection; read one answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            await writer.drain()
            return _parse(await asyncio.wait_for(_read_answer(reader), limit_s))
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    async def get(self, path: str, token: str = ADMIN) -> tuple[int, Any]:
        async with self.http.get(
            f"{self.url}{path}", headers={"Authorization": f"Bearer {token}"}
        ) as r:
            return r.status, await r.json()

    async def post(
        self, path: str, body: bytes = b"", token: str = ADMIN, ctype: str = "application/json"
    ) -> tuple[int, dict[str, str], Any]:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": ctype}
        async with self.http.post(f"{self.url}{path}", data=body, headers=headers) as r:
            return r.status, dict(r.headers), await r.json()

    async def status(self) -> dict[str, Any]:
        code, got = await self.get("/status")
        assert code == 200, got
        result: dict[str, Any] = got
        return result

    async def until(self, look: Callable[[], Awaitable[bool]], limit_s: float = 30.0) -> None:
        """Ask the process again until `look` holds (each look is a real round trip)."""

        async def poll() -> None:
            while not await look():
                pass

        await asyncio.wait_for(poll(), limit_s)

    def rss_kib(self) -> int:
        """The server process's resident set size, from /proc."""
        assert self.server.proc is not None
        for line in Path(f"/proc/{self.server.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")


def clean_log(text: str, needles: list[str]) -> None:
    """Nothing sent reached the log; nothing logged a traceback."""
    leaked = [n for n in needles if n.lower() in text.lower()]
    assert not leaked, f"values in the log: {leaked}"
    assert "Traceback" not in text


@asynccontextmanager
async def serving(
    tmp_path: Path, *, needles: list[str] | None = None, **overrides: Any
) -> AsyncIterator[Proc]:
    """`possync serve` at DEBUG on a free port; on exit SIGTERM, exit 0, a clean log."""
    port = free_port()
    overrides.setdefault("stores", probe_stores())
    overrides.setdefault("log_level", "DEBUG")
    overrides.setdefault("log_format", "json")
    config = write_config(tmp_path, port, **overrides)
    log = tmp_path / "server.log"
    server = ServerProcess(config, port, log)
    try:
        await server.start()
        async with aiohttp.ClientSession() as http:
            yield Proc(server, port, server.url, tmp_path / "data", http)
        server.term()
        assert await server.wait(limit_s=20) == 0
    finally:
        await server.stop()
    clean_log(log.read_text(errors="replace"), [CANARY, *(needles or [])])


def shopify_headers(body: bytes, topic: str, webhook_id: bytes) -> list[tuple[bytes, bytes]]:
    return [
        JSON,
        (b"X-Shopify-Hmac-Sha256", sign(body, SECRET).encode()),
        (b"X-Shopify-Topic", topic.encode()),
        (b"X-Shopify-Webhook-Id", webhook_id),
    ]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
