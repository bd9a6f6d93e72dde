"""Damaged spool and sink files: moved aside, salvaged, reported; the service keeps serving."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp
import orjson

from tests.procserver import ADMIN, ServerProcess, free_port, headers, sale_body, write_config

ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}


def _damage_middle_page(path: Path, page: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    middle = (len(data) // page // 2) * page
    data[middle : middle + page] = b"\xa5" * page
    path.write_bytes(bytes(data))


async def test_damaged_spool_and_sink_do_not_crash_loop(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(write_config(tmp_path, port), port, tmp_path / "server.log")
    data = tmp_path / "data"
    try:
        await server.start()
        async with aiohttp.ClientSession() as s:
            batch = b"\n".join(sale_body(f"D-{i}") for i in range(2000))
            h = {**headers(), "Content-Type": "application/x-ndjson"}
            async with s.post(f"{server.url}/v1/push/canonical/S1", data=batch, headers=h) as r:
                assert r.status == 202 and (await r.json())["accepted"] == 2000
            cust = orjson.dumps({"type": "customer", "id": "C1", "first_name": "Ada"})
            async with s.post(
                f"{server.url}/v1/push/canonical/S1", data=cust, headers=headers()
            ) as r:
                assert r.status == 202
        server.term()
        assert await server.wait(limit_s=15) == 0
        _damage_middle_page(data / "spool.db")
        (data / "clientbook.db").write_bytes(
            (data / "clientbook.db").read_bytes()[:4096] + b"\x00garbage" * 512
        )

        # Restarted on damaged files: it starts, serves, and says what happened.
        await server.start()
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{server.url}/readyz", headers=ADMIN_H) as r:
                ready = await r.json()
                assert r.status == 200, ready
            assert "spool" in ready["notes"] and "sink" in ready["notes"]
            async with s.get(f"{server.url}/status", headers=ADMIN_H) as r:
                status = await r.json()
            assert status["spool"]["recovered_from"] and status["sink"]["recovered_from"]
            salvaged = status["stores"]["S1"]["pending"]
            async with s.post(
                f"{server.url}/v1/push/canonical/S1", data=sale_body("after"), headers=headers()
            ) as r:
                assert r.status == 202 and (await r.json())["accepted"] == 1
            async with s.post(f"{server.url}/v1/admin/commit?store=S1", headers=ADMIN_H) as r:
                assert r.status == 200
                committed = (await r.json())["stores"]["S1"]["committed"]
        print(
            f"corruption: pending before=2000 salvaged={salvaged} committed after restart={committed}"
        )
        assert 1500 <= salvaged < 2000
        assert committed == salvaged + 1
        moved = sorted(p.name for p in data.iterdir() if ".corrupt-" in p.name)
        assert any(n.startswith("spool.db.corrupt-") for n in moved)
        assert any(n.startswith("clientbook.db.corrupt-") for n in moved)
        # The salvage kept the damaged originals intact for forensics.
        con = sqlite3.connect(data / "spool.db")
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
    finally:
        await server.stop()
