"""kill -9 of `possync serve` with an HTTP output: nothing the sink committed is lost to the
output, and the receiver's dedup makes it exactly once.

The server is a real subprocess; the fake clienteling API runs in this process. A kill
mid-window can land anywhere: inside a primary commit, between a primary commit and its
outbox append (the rows are not acked: the next window re-leases them, the primary
dedups by version and the append lands), or while a page is in flight (re-sent after the
restart, same Idempotency-Key).
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
from pathlib import Path

import aiohttp

from tests.procserver import ADMIN, ServerProcess, free_port, headers, sale_body, write_config
from tests.support.clienteling import FakeClienteling, fake_clienteling

KILLS = 10 if os.environ.get("POSSYNC_LONG") else 2
SALES_PER_ROUND = 1000


async def push_sales(url: str, ids: list[str]) -> None:
    """Push each sale once (a 202 each)."""
    async with aiohttp.ClientSession() as session:
        for sid in ids:
            async with session.post(
                f"{url}/v1/push/canonical/S1", data=sale_body(sid), headers=headers()
            ) as resp:
                assert resp.status == 202, await resp.text()


async def admin_commit(url: str) -> None:
    """POST /v1/admin/commit?store=S1, answered (the whole window committed)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/v1/admin/commit?store=S1", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def test_kill9_mid_window_loses_no_event(tmp_path: Path) -> None:
    """Kill the server while a window commits and its events flow out; restart; every
    committed sale reaches the API once."""
    async with fake_clienteling() as api:
        port = free_port()
        out = {
            "kind": "http",
            "name": "app",
            "records": ["sale"],
            "url": api.url,
            "page_size": 20,
            "retry_max_s": 1.0,
        }
        cfg = write_config(tmp_path, port, outputs=[out], windows={"batch_size": 5})
        server = ServerProcess(cfg, port, tmp_path / "server.log")
        pushed: list[str] = []
        rng = random.Random(20261202)
        try:
            for round_no in range(KILLS):
                await server.start()
                ids = [f"k{round_no}-{i}" for i in range(SALES_PER_ROUND)]
                await push_sales(server.url, ids)
                pushed += ids
                seen = len(api.order)
                commit = asyncio.create_task(admin_commit(server.url))
                # Kill once the first pages came out: the window is still committing.
                at = seen + rng.randint(1, 40)
                await api.wait_for(functools.partial(_reached, api, at, commit), 60)
                done_before_kill = commit.done()
                server.kill9()
                await server.wait()
                commit.cancel()
                await asyncio.gather(commit, return_exceptions=True)
                print(
                    f"round {round_no}: killed with {len(api.order) - seen} of this round's"
                    f" {SALES_PER_ROUND} events received (window answered: {done_before_kill})"
                )
            await server.start()
            await admin_commit(server.url)  # the last round's leftovers
            await api.wait_for(lambda: len(api.order) >= len(pushed), 120)
        finally:
            await server.stop()
    check(api, pushed)


def _reached(api: FakeClienteling, at: int, commit: asyncio.Task[None]) -> bool:
    return len(api.order) >= at or commit.done()


def check(api: FakeClienteling, pushed: list[str]) -> None:
    """Every pushed sale delivered, none twice at the receiver."""
    got = [e.split(":")[2] for e in api.order]
    resent = sum(n - 1 for n in api.keys.values())
    print(f"{len(pushed)} sales pushed, {len(got)} received, {resent} pages re-sent (same key)")
    assert sorted(got) == sorted(pushed)
    assert len(got) == len(set(got))
