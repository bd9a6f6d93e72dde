"""No customer email, phone or address ever reaches the log.

A full flow against the real server subprocess (at INFO, the default, and at DEBUG): customers with emails,
phones and addresses (created, updated, one rejected), sales linked to them (one quarantined
at the window for a bad total), a window commit, reads of the stored customers, then a
graceful stop. Its whole log, stdout and stderr, must not contain any of the values used.

Bad values (issue 12 item 4): an email where a KWI export has a date, an email as an MQTT
customer's `marketing_email`, an email in a canonical date field, a NUL byte inside an
`Authorization` header. Each is refused naming the field and the rule; the whole log, the
answers and what is published to `pos/rejected/...` carry none of the values.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.factories import sale_dict
from tests.procserver import ADMIN, TOKEN, ServerProcess, free_port, headers, write_config
from tests.support.config import store
from tests.support.raw import exchange

if TYPE_CHECKING:
    from tests.plugins.mosquitto import MosquittoServer

pytest_plugins = ["tests.plugins.mosquitto"]

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
    config = write_config(
        tmp_path, port, log_level=level, triggers=[{"name": "thank-you", "days_after": 0}]
    )
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
    # Human lines (" DEBUG ") on a terminal, JSON lines ("level":"DEBUG") otherwise.
    assert f" {level} " in text or f'"level":"{level}"' in text or level == "INFO"
    leaked = sorted({n for n in _needles() if n.lower() in text.lower()})
    print(
        f"logs-pii[{level}]: log bytes={len(text)} needles={len(_needles())} leaked={len(leaked)}"
    )
    assert not leaked, f"PII in the log: {leaked}"


KWI_TOKEN = "kwi-store-token-proc"
BAD_EMAILS = {
    "kwi": "kwi.date.canary@quillfeather-mail.test",
    "mqtt": "mqtt.consent.canary@quillfeather-mail.test",
    "date": "canonical.date.canary@quillfeather-mail.test",
}
NUL_TOKEN = "nul-header-canary-7731"
KWI_HEADER = '"Cust Num","Email","First Name","Last Name","Add Date","Email Opt-In"\r\n'


def _kwi_customers() -> bytes:
    good = '"200001","","Dana","Reed","03/14/26","N"\r\n'
    bad = f'"200002","","Eli","Moss","{BAD_EMAILS["kwi"]}","N"\r\n'
    return (KWI_HEADER + good + bad).encode()


class _Rejections:
    """Everything published under pos/rejected/#, collected by a paho client thread."""

    def __init__(self, port: int) -> None:
        self.payloads: list[bytes] = []
        self.arrived = threading.Event()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="pii-watcher")
        self.client.on_connect = lambda c, *_: c.subscribe("pos/rejected/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.payloads.append(bytes(msg.payload))
        self.arrived.set()

    def publish(self, topic: str, body: bytes) -> None:
        info = self.client.publish(topic, body, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _until_subscribed(s: aiohttp.ClientSession, url: str) -> None:
    """Poll /status until possync's MQTT source is subscribed (a subprocess has no event)."""

    async def poll() -> None:
        while True:
            async with s.get(f"{url}/status", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                if (await r.json()).get("mqtt", {}).get("subscribed"):
                    return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), 30)


async def test_bad_values_reach_neither_log_nor_answers_nor_rejected_topic(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    port = free_port()
    config = write_config(
        tmp_path,
        port,
        stores=[store("S1", TOKEN), store("K1", KWI_TOKEN, source="kwi")],
        mqtt={
            "enabled": True,
            "host": "127.0.0.1",
            "port": mosquitto.port,
            "client_id": "possync-pii",
            "reconnect_max_s": 1.0,
        },
    )
    log = tmp_path / "server.log"
    server = ServerProcess(config, port, log)
    url = f"http://127.0.0.1:{port}"
    answers: list[bytes] = []
    watcher = _Rejections(mosquitto.port)
    stdout = b""
    try:
        await server.start()
        assert await asyncio.to_thread(watcher.subscribed.wait, 10)
        async with aiohttp.ClientSession() as s:
            # KWI export: an email in the "Add Date" column; the other row is kept.
            async with s.post(
                f"{url}/v1/files/kwi/K1?filename=customers.csv",
                data=_kwi_customers(),
                headers={"Authorization": f"Bearer {KWI_TOKEN}", "Content-Type": "text/csv"},
            ) as r:
                body = await r.read()
                assert r.status == 202, body
                out = orjson.loads(body)
                assert out["accepted"] == 1 and out["rejected_count"] == 1, out
                answers.append(body)
            # Canonical: an email in a date field.
            bad_date = {
                "type": "customer",
                "id": "C-date",
                "created_at": BAD_EMAILS["date"],
                "version": 1,
            }
            async with s.post(
                f"{url}/v1/push/canonical/S1",
                data=orjson.dumps(bad_date),
                headers={**headers(), "Content-Type": "application/json"},
            ) as r:
                body = await r.read()
                assert r.status == 400 and orjson.loads(body)["field"] == "$.created_at", body
                answers.append(body)
            # MQTT: an email as marketing_email; refused for good and published as rejected.
            await _until_subscribed(s, url)
            customer = {
                "type": "customer",
                "id": "C-mqtt",
                "marketing_email": BAD_EMAILS["mqtt"],
                "version": 1,
            }
            await asyncio.to_thread(
                watcher.publish, "pos/canonical/S1/customer", orjson.dumps(customer)
            )
            assert await asyncio.to_thread(watcher.arrived.wait, 30)
            notice = orjson.loads(watcher.payloads[0])
            assert notice["field"] == "$.marketing_email", notice
            # A NUL byte in Authorization: aiohttp refuses the header line (400, JSON).
            raw = await exchange(
                port,
                b"POST /v1/push/canonical/S1 HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer "
                + NUL_TOKEN.encode()
                + b"\x00"
                + TOKEN.encode()
                + b"\r\nContent-Length: 2\r\n\r\n{}",
            )
            assert raw.split(b" ", 2)[1] == b"400", raw[:200]
            answers.append(raw)
        server.term()
        assert await server.wait(limit_s=15) == 0
        assert server.proc is not None and server.proc.stdout is not None
        stdout = await server.proc.stdout.read()
    finally:
        watcher.close()
        await server.stop()
    text = log.read_text(errors="replace") + stdout.decode(errors="replace")
    published = b"\n".join(watcher.payloads).decode(errors="replace")
    replies = b"\n".join(answers).decode(errors="replace")
    needles = [*BAD_EMAILS.values(), NUL_TOKEN, TOKEN]
    for where, haystack in (("log", text), ("rejected topic", published), ("answers", replies)):
        leaked = [n for n in needles if n.lower() in haystack.lower()]
        assert not leaked, f"values in the {where}: {leaked}"
    assert "Traceback" not in text
    print(f"logs-pii[bad values]: log bytes={len(text)} notices={len(watcher.payloads)}")
