"""`python -m bench.status_scale`: /status with 2,000 stores against 2 stores, same run.

Both servers are the real app in-process on an ephemeral port (aiohttp's test server), each
store with a few pending sales and one quarantined; the figure is the median and p95
latency of GET /status (the first page: 200 stores) and its body size, and the same for the
full JSON of every store through `next`, beside the 2-store baseline. Printed as a table with
ratios.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from tests.factories import one_line_sale
from worker.app import build_app
from worker.clock import FakeClock
from worker.config import decode

ADMIN = "bench-admin"
NOW = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)
REQUESTS = 30


def _config(tmp: Path, n: int) -> Any:
    return decode(
        {
            "data_dir": str(tmp),
            "http": {"admin_token": ADMIN},
            "windows": {"spread_s": 0},
            "inbox": {"enabled": False},
            "stores": [
                {"id": f"ST{i:04d}", "timezone": "UTC", "token": f"tok-{i:04d}"} for i in range(n)
            ],
        }
    )


def _sale(sid: str) -> dict[str, Any]:
    return one_line_sale(sid, "2026-11-20T15:00:00+00:00")


async def _measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        app = build_app(_config(Path(tmp), n), clock=FakeClock(NOW))
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
        await client.start_server()
        try:
            auth = {"Authorization": f"Bearer {ADMIN}"}
            for i in range(n):
                body = [_sale(f"S{i}-1"), _sale(f"S{i}-2"), {**_sale(f"S{i}-Q"), "total": "1"}]
                resp = await client.post(
                    f"/v1/push/canonical/ST{i:04d}",
                    data=json.dumps(body),
                    headers={
                        "Authorization": f"Bearer tok-{i:04d}",
                        "Content-Type": "application/json",
                    },
                )
                assert resp.status == 202, await resp.text()
            times: list[float] = []
            size = 0
            for _ in range(REQUESTS):
                t0 = time.perf_counter()
                resp = await client.get("/status", headers=auth)
                raw = await resp.read()
                times.append(time.perf_counter() - t0)
                size = len(raw)
            t0 = time.perf_counter()
            url: str | None = "/status"
            total_bytes = 0
            while url:
                resp = await client.get(url, headers=auth)
                raw = await resp.read()
                total_bytes += len(raw)
                url = json.loads(raw).get("next")
            full = time.perf_counter() - t0
        finally:
            await client.close()
    times.sort()
    return {
        "median_ms": statistics.median(times) * 1000,
        "p95_ms": times[int(len(times) * 0.95) - 1] * 1000,
        "bytes": float(size),
        "all_pages_ms": full * 1000,
        "all_pages_bytes": float(total_bytes),
    }


async def main() -> None:
    """Run both and print the table."""
    base = await _measure(2)
    big = await _measure(2000)
    print(f"python {sys.version.split()[0]}; GET /status, {REQUESTS} requests each")
    print(f"{'measure':<28}{'2,000 stores':>14}{'2 stores':>12}{'ratio':>9}")
    for key, label in (
        ("median_ms", "first page, median ms"),
        ("p95_ms", "first page, p95 ms"),
        ("bytes", "first page, bytes"),
        ("all_pages_ms", "every page via next, ms"),
        ("all_pages_bytes", "every page via next, bytes"),
    ):
        print(f"{label:<28}{big[key]:>14,.1f}{base[key]:>12,.1f}{big[key] / base[key]:>8.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
