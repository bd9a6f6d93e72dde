"""Long mode (issue 12): 2,000 slow-header connections against the default connection cap.

/healthz keeps answering while they are open, pushes resume, and every slow connection ends
by itself (evicted at the cap, or closed by the header timeout): nothing is left open.
"""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

import pytest

from tests.appserver import S1_TOKEN
from tests.test_http_hardening import (
    JSON,
    PUSH,
    _slow_header,
    bearer,
    raw,
    request,
    sale_bytes,
    served,
)

pytestmark = pytest.mark.long
SLOW = 2_000


async def test_2000_slow_connections_healthz_answers_and_pushes_resume(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Client and server ends of every connection live in this process.
    need = 2 * SLOW + 512
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    async with served(tmp_path, http={"header_timeout_s": 20.0}) as s:
        slow = []
        try:
            for i in range(SLOW):
                slow.append(await _slow_header(s.port))
                if i % 250 == 0:
                    ans = await raw(s.port, request("GET", "/healthz"))
                    assert ans.status == 200, (i, ans.status)
            ans = await raw(s.port, request("GET", "/healthz"))
            assert ans.status == 200
            ans = await raw(
                s.port, request("POST", PUSH, sale_bytes("SLOW-1"), [bearer(S1_TOKEN), JSON])
            )
            assert ans.status == 202, ans.json()
            # Every slow connection ends by itself: evicted at the cap or timed out.
            ended = await asyncio.wait_for(
                asyncio.gather(*(reader.read() for reader, _ in slow)), 120
            )
            assert all(data == b"" for data in ended)
            ans = await raw(
                s.port, request("POST", PUSH, sale_bytes("SLOW-2"), [bearer(S1_TOKEN), JSON])
            )
            assert ans.status == 202
        finally:
            for _, writer in slow:
                writer.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
