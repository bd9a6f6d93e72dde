"""kill -9 under concurrent pushes: every record that got a 202 is in the spool after restart."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import aiohttp
import pytest

from tests.peek import spooled_sales
from tests.procserver import ADMIN, ServerProcess, free_port, headers, sale_body, write_config

KILLS = (
    100 if os.environ.get("POSSYNC_LONG") else 4
)  # quick in `make test`, >= 100 in `make test-long`


async def _pusher(
    session: aiohttp.ClientSession,
    url: str,
    prefix: str,
    acked: list[str],
    stop: asyncio.Event,
    target: int,
    reached: asyncio.Event,
) -> None:
    n = 0
    while not stop.is_set():
        sid = f"{prefix}-{n}"
        n += 1
        try:
            async with session.post(url, data=sale_body(sid), headers=headers()) as resp:
                if resp.status == 202:
                    body = await resp.json()
                    if body["accepted"] == 1:
                        acked.append(sid)
                        if len(acked) >= target:
                            reached.set()
                        if reached is not None and len(acked) >= target:
                            reached.set()
        except (TimeoutError, aiohttp.ClientError):
            return  # the server died under us: this request got no 202


async def test_kill9_during_ingest_loses_nothing_acknowledged(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(write_config(tmp_path, port), port, tmp_path / "server.log")
    rng = random.Random(20261125)
    all_acked: list[str] = []
    try:
        for round_no in range(KILLS):
            await server.start()
            acked: list[str] = []
            stop = asyncio.Event()
            reached = asyncio.Event()
            threshold = rng.randint(20, 400)
            url = f"{server.url}/v1/push/canonical/S1"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                tasks = [
                    asyncio.create_task(
                        _pusher(session, url, f"r{round_no}c{c}", acked, stop, threshold, reached)
                    )
                    for c in range(16)
                ]
                # Kill at a random moment: once a random number of 202s has come back.
                await asyncio.wait_for(reached.wait(), 60)
                server.kill9()
                await server.wait()
                stop.set()
                await asyncio.gather(*tasks)
            all_acked.extend(acked)
            have = spooled_sales(tmp_path / "data" / "spool.db")
            lost = set(all_acked) - have
            print(
                f"round {round_no}: kill after {len(acked)} acks; spool holds {len(have)}; lost {len(lost)}"
            )
            assert not lost, f"acknowledged but lost: {sorted(lost)[:10]}"
        # A final restart serves, and /status counts every acknowledged record as pending.
        await server.start()
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{server.url}/status", headers={"Authorization": f"Bearer {ADMIN}"}
            ) as resp,
        ):
            status = await resp.json()
        assert status["stores"]["S1"]["pending"] >= len(set(all_acked))
        print(
            f"kills={KILLS} acknowledged={len(all_acked)} lost=0 pending={status['stores']['S1']['pending']}"
        )
    finally:
        await server.stop()


@pytest.mark.parametrize("graceful", [True])
async def test_sigterm_under_load_finishes_inflight_and_exits(
    tmp_path: Path, graceful: bool
) -> None:
    port = free_port()
    server = ServerProcess(write_config(tmp_path, port), port, tmp_path / "server.log")
    try:
        await server.start()
        acked: list[str] = []
        stop = asyncio.Event()
        reached = asyncio.Event()
        url = f"{server.url}/v1/push/canonical/S1"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            tasks = [
                asyncio.create_task(_pusher(session, url, f"t{c}", acked, stop, 100, reached))
                for c in range(8)
            ]
            await asyncio.wait_for(reached.wait(), 60)
            server.term()
            code = await server.wait(limit_s=15)
            stop.set()
            await asyncio.gather(*tasks)
        assert code == 0, (tmp_path / "server.log").read_text()[-3000:]
        have = spooled_sales(tmp_path / "data" / "spool.db")
        assert set(acked) <= have
        log = (tmp_path / "server.log").read_text()
        assert "closing spool" in log and "Traceback" not in log
    finally:
        await server.stop()
