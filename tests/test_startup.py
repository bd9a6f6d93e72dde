"""Start-up as an operator meets it: a busy port is one line and exit 2 before the banner;
`port = 0` prints the port it bound; a config naming no adapter fails naming the key."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import aiohttp

from tests.procserver import ADMIN, TOKEN, reap, spawn_serve, write_config
from tests.support.config import store


async def _serve(config: Path) -> asyncio.subprocess.Process:
    return await spawn_serve(config)


async def test_busy_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = await _serve(write_config(tmp_path, port))
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert out == b""  # nothing printed before the refusal, no banner
    assert err.decode().strip() == f"possync: port {port} is in use (set [http] port or --port)"


async def test_port_zero_prints_the_bound_port_and_serves(tmp_path: Path) -> None:
    proc = await _serve(write_config(tmp_path, 0))
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        text = line.decode().strip()
        assert text.startswith("possync: listening on http://127.0.0.1:"), text
        port = int(text.rsplit(":", 1)[1])
        assert port != 0
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://127.0.0.1:{port}/readyz", headers={"Authorization": f"Bearer {ADMIN}"}
            ) as resp,
        ):
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        await reap(proc)


async def test_unknown_source_fails_naming_the_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 0, stores=[store("S1", TOKEN, source="shopfy")])
    proc = await _serve(cfg)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and out == b""
    assert "unknown source 'shopfy'" in err.decode()
    assert "(field: $.stores[0].source)" in err.decode()


async def test_empty_admin_token_warns_loudly(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 0, http={"admin_token": ""})
    proc = await _serve(cfg)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        warning = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert warning.decode().startswith("possync: WARNING: [http] admin_token is empty")
        assert b"listening on" in await asyncio.wait_for(proc.stdout.readline(), 30)
    finally:
        proc.kill()
        await proc.wait()
