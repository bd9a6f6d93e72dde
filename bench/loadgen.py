"""Load generator process (aiohttp client), used when wrk is missing and for open-loop load.

    python -m bench.loadgen --url URL --templates FILE --run ID --out FILE
        [--mode closed --connections 64 --duration 10]
        [--mode rate --rate 200 --connections 64 --duration 600]   (stops on SIGTERM too)

Each request is one sale whose id is `{run}-{worker}-{n}`, so every push is a new record.

* closed: `connections` workers each send the next request as soon as the last answered
  (what wrk does). Writes a summary: requests, seconds, req/s, p50/p99 and statuses.
* rate: requests are scheduled at a fixed rate whatever the server does (open loop) and
  each latency is measured from the *scheduled* send time, so a stalled server shows up in
  the tail instead of silently lowering the offered load (no coordinated omission). Writes
  every sample as `[scheduled monotonic time, latency s, status]`; monotonic time is the
  same clock in every process on Linux, so the caller can cut out any interval.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


class _Bodies:
    def __init__(self, path: Path, run: str) -> None:
        pairs: list[list[str]] = json.loads(path.read_text(encoding="utf-8"))
        self.pairs: list[tuple[bytes, bytes]] = [(a.encode(), b.encode()) for a, b in pairs]
        self.run = run

    def body(self, worker: int, n: int) -> bytes:
        before, after = self.pairs[n % len(self.pairs)]
        return before + f"{self.run}-{worker}-{n}".encode() + after


async def _closed(
    args: argparse.Namespace, bodies: _Bodies, headers: dict[str, str]
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0
    deadline = time.monotonic() + args.duration
    conn = aiohttp.TCPConnector(limit=args.connections)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker(w: int) -> None:
            nonlocal errors
            n = 0
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                try:
                    async with session.post(
                        args.url, data=bodies.body(w, n), headers=headers
                    ) as resp:
                        await resp.read()
                        key = str(resp.status)
                except aiohttp.ClientError:
                    errors += 1
                    continue
                finally:
                    n += 1
                latencies.append(time.monotonic() - t0)
                statuses[key] = statuses.get(key, 0) + 1

        t_start = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(args.connections)))
        elapsed = time.monotonic() - t_start
    latencies.sort()
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    out = {
        "tool": "aiohttp-loadgen",
        "requests": len(latencies),
        "ok": ok,
        "seconds": elapsed,
        "rps": ok / elapsed if elapsed else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "statuses": statuses,
        "errors": errors,
    }
    return out


async def _rate(
    args: argparse.Namespace, bodies: _Bodies, headers: dict[str, str]
) -> dict[str, Any]:
    samples: list[tuple[float, float, int]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    interval = 1.0 / args.rate
    sem = asyncio.Semaphore(args.connections)
    conn = aiohttp.TCPConnector(limit=args.connections)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(n: int, scheduled: float) -> None:
            status = 0
            try:
                async with (
                    sem,
                    session.post(args.url, data=bodies.body(0, n), headers=headers) as resp,
                ):
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError:
                status = -1
            samples.append((scheduled, time.monotonic() - scheduled, status))

        t0 = time.monotonic()
        deadline = t0 + args.duration
        n = 0
        while not stop.is_set():
            scheduled = t0 + n * interval
            if scheduled >= deadline:
                break
            delay = scheduled - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                if stop.is_set():
                    break
            task = asyncio.create_task(one(n, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    out: dict[str, Any] = {"tool": "aiohttp-loadgen (open loop)", "rate": args.rate}
    out["samples"] = samples
    return out


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--templates", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--mode", choices=("closed", "rate"), default="closed")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    import uvloop

    bodies = _Bodies(Path(args.templates), args.run)
    headers = {"Content-Type": "application/json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    uvloop.install()
    out = asyncio.run((_closed if args.mode == "closed" else _rate)(args, bodies, headers))
    Path(args.out).write_text(json.dumps(out), encoding="utf-8")


if __name__ == "__main__":
    main()
