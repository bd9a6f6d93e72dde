"""The probe's long variant (`-m long`, `make test-long`): the heavy items against `possync serve`.

Item 6: 30 concurrent 10 MiB bodies with a wrong token, three times, the server's RSS and CPU
measured from /proc; 1,100 slow-header connections and 700 wrong-token slow bodies
against the default cap of 512. Item 9:
64 damaged bytes mid-WAL after kill -9 (tests/chaos/test_corruption's rounds, 3 of them).
Item 10: 1M lines of `{}` to the push and the upload route, /healthz asked throughout.
The quick variant and the served process: tests/chaos/test_probe.py, tests/chaos/probe.py.
"""

from __future__ import annotations

import asyncio
import resource
from contextlib import suppress
from pathlib import Path

import pytest

from tests.chaos.probe import CANARY, JSON, NDJSON, PUSH, cpu_s, serving
from tests.procserver import TOKEN, sale_body
from tests.test_http_hardening import _parse, _read_answer, bearer, request

pytestmark = pytest.mark.long


async def test_item6_long_wrong_token_bodies_do_not_grow_rss(tmp_path: Path) -> None:
    concurrent, size = 30, 10 * 1024 * 1024
    async with serving(tmp_path, http={"max_body_bytes": 11 * 1024 * 1024}) as p:
        for n in range(3):  # warm the process up: steady state before measuring
            assert (await p.post(PUSH, sale_body(f"warm-{n}"), TOKEN))[0] == 202
        before = p.rss_kib()
        chunk = b"{" + b" " * (1024 * 1024 - 1)
        peak = before

        def sample() -> None:
            nonlocal peak
            peak = max(peak, p.rss_kib())

        async def flood() -> int:
            reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
            head = request("POST", PUSH, b"", [bearer(CANARY), JSON]).replace(
                b"Content-Length: 0", f"Content-Length: {size}".encode()
            )
            try:
                writer.write(head)
                with suppress(ConnectionError):
                    for _ in range(size // len(chunk)):
                        writer.write(chunk)
                        await writer.drain()
                        sample()
                ans = _parse(await asyncio.wait_for(_read_answer(reader), 60))
                return ans.status
            finally:
                writer.close()
                with suppress(ConnectionError):
                    await writer.wait_closed()

        peaks = []
        assert p.server.proc is not None
        cpu_before = cpu_s(p.server.proc.pid)
        for _ in range(3):  # 900 MiB in all: growth with the bytes sent would show
            statuses = await asyncio.gather(*(flood() for _ in range(concurrent)))
            assert statuses == [401] * concurrent
            peaks.append(peak // 1024)
        after = p.rss_kib()
        cpu = cpu_s(p.server.proc.pid) - cpu_before
        grown = (peak - before) // 1024
        print(
            f"probe item 6: 3 rounds of {concurrent} x {size >> 20} MiB wrong-token bodies: "
            f"RSS {before // 1024} MiB before, peaks {peaks} MiB, {after // 1024} MiB after; "
            f"server CPU {cpu:.2f} s (the unread plain bodies are drained, not parsed)"
        )
        # Holding even three bodies would cost 30 MiB, one round's 300. What grows is the
        # open connections' read buffers (under 1 MiB each while 30 are open), not the bytes.
        assert grown < 32, f"RSS grew {grown} MiB"
        assert peaks[-1] - peaks[0] < 8, peaks
        assert (await p.post(PUSH, sale_body("after-flood"), TOKEN))[0] == 202


async def test_item6_long_1100_slow_header_connections(tmp_path: Path) -> None:
    slow_n = 1_100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < slow_n + 512:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(slow_n + 512, hard), hard))
    slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        async with serving(tmp_path, http={"header_timeout_s": 30.0}) as p:
            for i in range(slow_n):
                reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
                writer.write(b"POST " + PUSH.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                await writer.drain()
                slow.append((reader, writer))
                if i % 100 == 0:
                    assert (await p.raw(request("GET", "/healthz"))).status == 200, i
            assert (await p.raw(request("GET", "/healthz"))).status == 200
            ans = await p.raw(request("POST", PUSH, sale_body("SLOW-1"), [bearer(TOKEN), JSON]))
            assert ans.status == 202, ans.json()
            status = await p.status()
            conns = status["connections"]
            print(f"probe item 6: {slow_n} slow-header connections: {conns}")
            assert conns["open"] <= 512 and conns["evicted_idle"] >= slow_n - 512, conns
    finally:
        for _, writer in slow:
            writer.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_item9_long_wal_damage_after_kill9(tmp_path: Path) -> None:
    from tests.chaos.test_corruption import _wal_damage_rounds

    await _wal_damage_rounds(tmp_path, rounds=3, seed=20261203)


async def test_item10_long_a_million_empty_objects(tmp_path: Path) -> None:
    n = 1_000_000
    body = b"{}\n" * n
    async with serving(tmp_path) as p:
        for path in (PUSH, "/v1/files/canonical/S1?filename=m.ndjson"):
            task = asyncio.create_task(
                p.raw(request("POST", path, body, [bearer(TOKEN), NDJSON]), limit_s=300)
            )
            during = 0
            while not task.done():
                assert (await p.raw(request("GET", "/healthz"))).status == 200
                if not task.done():
                    during += 1
            ans = await task
            out = ans.json()
            print(
                f"probe item 10: {n} lines to {path}: answer {len(ans.body)} bytes, "
                f"/healthz answered {during}x during"
            )
            assert ans.status == 400 and out["rejected_count"] == n, path
            assert len(out["rejected"]) <= 1_000 and len(ans.body) < 200_000
            assert during >= 1


async def test_item6_long_700_slow_bodies_with_a_wrong_token(tmp_path: Path) -> None:
    """Refused, then drained by aiohttp's lingering close: such a connection has no request
    in progress, so the cap evicts it like a slow head; /healthz and pushes still answer."""
    slow_n = 700
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < slow_n + 512:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(slow_n + 512, hard), hard))
    slow: list[asyncio.StreamWriter] = []
    head = request("POST", PUSH, b"", [bearer(CANARY), JSON]).replace(
        b"Content-Length: 0", b"Content-Length: 1000000"
    )
    try:
        async with serving(tmp_path) as p:
            for _ in range(slow_n):
                _, writer = await asyncio.open_connection("127.0.0.1", p.port)
                writer.write(head + b"{")
                await writer.drain()
                slow.append(writer)
            for _ in range(5):
                assert (await p.raw(request("GET", "/healthz"))).status == 200
            ans = await p.raw(request("POST", PUSH, sale_body("SB-1"), [bearer(TOKEN), JSON]))
            assert ans.status == 202, ans.json()
            conns = (await p.status())["connections"]
            print(f"probe item 6: {slow_n} wrong-token slow bodies: {conns}")
            assert conns["open"] <= 512 and conns["refused_busy"] == 0, conns
    finally:
        for writer in slow:
            writer.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
