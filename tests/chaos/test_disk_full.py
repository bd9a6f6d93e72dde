"""Disk full under the spool: pushes get 507 with a JSON error, nothing is corrupted, and
intake resumes without a restart once space returns.

`data_dir` is a 4 MiB tmpfs mounted for the test (root only; skipped where `mount` is not
permitted); the sink lives outside it, so only the spool fills. A filler file leaves a little
room; sales are pushed until the spool answers 507 (or 503). The filler is deleted and pushes
succeed again on the same process. After SIGTERM, `PRAGMA integrity_check` is ok and every
sale that got a 202 is in the spool.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.procserver import ServerProcess, free_port, headers, sale_body, write_config

NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted at teardown."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def _body(prefix: str, start: int, n: int) -> bytes:
    return b"\n".join(sale_body(f"{prefix}-{k}") for k in range(start, start + n))


async def test_disk_full_then_recovers(tmp_path: Path, tiny_fs: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    text = config.read_text()
    text = text.replace(f'data_dir = "{tmp_path / "data"}"', f'data_dir = "{tiny_fs}"')
    text = text.replace('kind = "sqlite"', f'kind = "sqlite"\npath = "{tmp_path / "sink.db"}"')
    config.write_text(text)
    server = ServerProcess(config, port, tmp_path / "server.log")
    url = f"{server.url}/v1/push/canonical/S1"
    hdrs = {**headers(), **NDJSON}
    acked: list[str] = []
    try:
        await server.start()
        # Leave about 600 KiB free.
        filler = tiny_fs / "filler.bin"
        free = os.statvfs(tiny_fs).f_bavail * os.statvfs(tiny_fs).f_frsize
        filler.write_bytes(b"\0" * max(0, free - 600 * 1024))

        full: tuple[int, dict[str, object]] | None = None
        n = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for _ in range(500):  # bounded: 500 x 50 sales is far past 600 KiB
                async with session.post(url, data=_body("F", n, 50), headers=hdrs) as resp:
                    got = await resp.json(content_type=None)
                    if resp.status == 202:
                        assert got["accepted"] == 50, got
                        acked.extend(f"F-{k}" for k in range(n, n + 50))
                        n += 50
                        continue
                    full = (resp.status, got)
                    break
            assert full is not None, "the disk never filled"
            status, err = full
            assert status in (507, 503), full
            assert isinstance(err.get("error"), str) and err["error"], full
            assert "field" in err, full

            # Space returns; the same process accepts again.
            filler.unlink()
            async with session.post(url, data=_body("R", 0, 50), headers=hdrs) as resp:
                got = await resp.json(content_type=None)
                assert resp.status == 202, got
                acked.extend(f"R-{k}" for k in range(50))
        server.term()
        assert await server.wait(30) == 0
        con = sqlite3.connect(tiny_fs / "spool.db")
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            have = {r[0] for r in con.execute("SELECT rid FROM spool")}
        finally:
            con.close()
        lost = set(acked) - have
        print(
            f"disk-full: acked={len(acked)} first_refusal={status} error={err['error']!r}"
            f" lost={len(lost)} integrity=ok"
        )
        assert not lost, sorted(lost)[:10]
    finally:
        await server.stop()
