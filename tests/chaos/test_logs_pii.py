"""No customer email, phone or address ever reaches the log.

A full flow against the real server subprocess (at INFO, the default, and at DEBUG): customers with emails,
phones and addresses (created, updated, one rejected), sales linked to them (one quarantined
at the window for a bad total), a window commit, reads of the stored customers, then a
graceful stop. Its whole log, stdout and stderr, must not contain any of the values used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.factories import sale_dict
from tests.procserver import ADMIN, ServerProcess, free_port, headers, write_config

PII: list[dict[str, Any]] = [
    {
        "email": f"pii.canary{n}@quillfeather-mail.test",
        "phone": f"+1-555-01{n}9-44{n}7",
        "address": {
            "line1": f"{n}417 Quillfeather Lane",
            "line2": f"Apartment Zx{n}q",
            "city": f"Marrowbridge{n}ville",
            "postal_code": f"QF{n}-8XZ",
        },
    }
    for n in range(5)
]


def _customer(n: int, version: int, **extra: Any) -> dict[str, Any]:
    p = PII[n]
    return {
        "type": "customer",
        "id": f"C-{n}",
        "first_name": "Canary",
        "email": p["email"],
        "phone": p["phone"],
        "address": p["address"],
        "version": version,
        **extra,
    }


def _needles() -> list[str]:
    out: list[str] = []
    for p in PII:
        out += [p["email"], p["phone"], *p["address"].values()]
        out.append(p["email"].split("@")[0])  # the local part alone
        out.append(p["phone"].replace("-", ""))
    return out


BUG_DEBUG = (
    "worker bug: log_level=DEBUG sets the root logger, and aiosqlite's DEBUG lines print every"
    " statement's parameters (customer rows)"
)


@pytest.mark.parametrize(
    "level",
    [
        "INFO",
        "DEBUG",
    ],
)
async def test_full_run_logs_no_pii(tmp_path: Path, level: str) -> None:
    port = free_port()
    config = write_config(tmp_path, port, '[[triggers]]\nname = "thank-you"\ndays_after = 0\n')
    # Top-level keys must come before the first table.
    config.write_text(f'log_level = "{level}"\n' + config.read_text())
    log = tmp_path / "server.log"
    server = ServerProcess(config, port, log)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    url = f"http://127.0.0.1:{port}"
    stdout = b""
    try:
        await server.start()
        async with aiohttp.ClientSession() as s:
            push = f"{url}/v1/push/canonical/S1"

            async def post(body: bytes, ctype: str = "application/json") -> tuple[int, Any]:
                hdrs = {**headers(), "Content-Type": ctype}
                async with s.post(push, data=body, headers=hdrs) as r:
                    return r.status, await r.json()

            # Customers: created, then a newer version, then a stale one (duplicate).
            for n in range(len(PII)):
                assert (await post(orjson.dumps(_customer(n, 1))))[0] == 202
            batch = b"\n".join(orjson.dumps(_customer(n, 2, last_name="Bird")) for n in range(5))
            status, body = await post(batch, "application/x-ndjson")
            assert status == 202 and body["accepted"] == 5, body
            assert (await post(orjson.dumps(_customer(0, 1))))[1]["duplicates"] == 1
            # Rejected: unknown field, wrong type, bad address, NDJSON with a bad line.
            status, body = await post(orjson.dumps(_customer(1, 3, shoe_size=44)))
            assert status == 400, body
            status, body = await post(orjson.dumps({**_customer(2, 3), "phone": 5550100}))
            assert status == 400, body
            bad_addr = {**_customer(3, 3), "address": {**PII[3]["address"], "planet": "Mars"}}
            assert (await post(orjson.dumps(bad_addr)))[0] == 400
            mixed = orjson.dumps(_customer(4, 3)) + b"\n{" + PII[4]["email"].encode() + b"\n"
            status, body = await post(mixed, "application/x-ndjson")
            assert status == 202 and len(body["rejected"]) == 1, body
            # Sales linked to those customers; one is quarantined at the window.
            sales = [sale_dict(f"PS-{n}", customer_id=f"C-{n}") for n in range(5)]
            wrong = sale_dict("PS-bad", customer_id="C-0")
            wrong["total"] = "1.00"
            body_ = b"\n".join(orjson.dumps(x) for x in [*sales, wrong])
            status, body = await post(body_, "application/x-ndjson")
            assert status == 202 and body["accepted"] == 6, body
            # Reads of what holds PII, then the window.
            for n in range(5):
                async with s.get(f"{url}/v1/stores/S1/customers/C-{n}", headers=admin) as r:
                    assert r.status == 200
                    assert await r.json()  # served to the admin, never logged
            async with s.post(f"{url}/v1/admin/commit", headers=admin) as r:
                got = await r.json()
                assert r.status == 200, got
                assert got["stores"]["S1"]["committed"] == 5
                assert got["stores"]["S1"]["quarantined"] == 1
            for path in ("/v1/admin/quarantine", "/status", "/v1/stores/S1/triggers"):
                async with s.get(f"{url}{path}", headers=admin) as r:
                    assert r.status == 200
        server.term()
        assert await server.wait(limit_s=15) == 0
        assert server.proc is not None and server.proc.stdout is not None
        stdout = await server.proc.stdout.read()
    finally:
        await server.stop()
    text = log.read_text(errors="replace") + stdout.decode(errors="replace")
    assert f" {level} " in text or level == "INFO"
    leaked = sorted({n for n in _needles() if n.lower() in text.lower()})
    print(
        f"logs-pii[{level}]: log bytes={len(text)} needles={len(_needles())} leaked={len(leaked)}"
    )
    assert not leaked, f"PII in the log: {leaked}"
