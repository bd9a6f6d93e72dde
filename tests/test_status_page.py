"""The status page at `/`: auth (bearer or login cookie), content, attention order, paging,
the sale lookup, and a real headless Chromium rendering it (DevTools protocol, screenshot)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.appserver import ADMIN, Harness, make_config, push_records, running
from tests.factories import sale_dict
from tests.procserver import reap
from worker.api.page_render import PAGE_SIZE

NOW = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(make_config(tmp_path), NOW) as harness:
        yield harness


async def test_unauthenticated_gets_the_login_form(h: Harness) -> None:
    resp = await h.client.get("/")
    assert resp.status == 401
    text = await resp.text()
    assert '<form method="post" action="/login">' in text and "S1" not in text
    assert resp.headers["Cache-Control"] == "no-store"


async def test_login_sets_an_httponly_cookie_and_logout_clears_it(h: Harness) -> None:
    bad = await h.client.post("/login", data={"token": "nope"}, allow_redirects=False)
    assert bad.status == 401 and "not the admin token" in await bad.text()
    ok = await h.client.post("/login", data={"token": ADMIN}, allow_redirects=False)
    assert ok.status == 303 and ok.headers["Location"] == "/"
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = await h.client.get("/")  # the client keeps the cookie
    assert page.status == 200 and "Stores (2)" in await page.text()
    out = await h.client.post("/logout", allow_redirects=False)
    assert out.status == 303
    assert (await h.client.get("/")).status == 401


async def test_page_shows_what_needs_attention_first(h: Harness) -> None:
    bad = sale_dict("BAD1")
    bad["total"] = "999.00"
    await push_records(h, sale_dict("T1"), bad)
    await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())
    await push_records(h, sale_dict("T2"))
    resp = await h.client.get("/", headers=h.admin())
    assert resp.status == 200
    text = await resp.text()
    rows = re.findall(r"<tr><td><strong>([^<]+)</strong>", text)
    assert rows == ["S1", "S2"]  # S1 has a quarantined sale
    assert '<span class="bad">1</span> (' in text and "total.sum: 1" in text
    assert "1 committed, 1 quarantined, 0 held" in text
    # S1's next window in New York time and in UTC (the 14:00 window: 19:00 UTC in November).
    assert "2026-11-20 14:00 EST" in text and "2026-11-20 19:00 UTC" in text
    assert "task:scheduler" in text  # health checks


async def test_sale_lookup(h: Harness) -> None:
    await push_records(h, sale_dict("T1"))
    await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())
    text = await (await h.client.get("/?store=S1&sale=T1", headers=h.admin())).text()
    expected = sale_dict("T1")["total"]
    assert f"<strong>{expected} USD</strong>" in text and "SKU-0000" in text
    missing = await (await h.client.get("/?store=S1&sale=NOPE", headers=h.admin())).text()
    assert "No committed sale NOPE in store S1." in missing


async def test_many_stores_are_paged(tmp_path: Path) -> None:
    stores = [
        {"id": f"ST{i:03d}", "source": "canonical", "timezone": "UTC", "token": f"t{i:03d}"}
        for i in range(PAGE_SIZE * 2 + 20)
    ]
    async with running(make_config(tmp_path, stores=stores), NOW) as h:
        first = await (await h.client.get("/", headers=h.admin())).text()
        assert len(re.findall(r"<tr><td><strong>", first)) == PAGE_SIZE
        assert '<a href="/?page=3">3</a>' in first
        last = await (await h.client.get("/?page=3", headers=h.admin())).text()
        assert len(re.findall(r"<tr><td><strong>", last)) == 20
        junk = await h.client.get("/?page=abc", headers=h.admin())
        assert junk.status == 200


# --------------------------------------------------------------------------- Chromium


class _Chromium:
    """Headless Chromium driven over the DevTools protocol (a websocket, no client library)."""

    def __init__(self, proc: asyncio.subprocess.Process, ws: aiohttp.ClientWebSocketResponse):
        self.proc = proc
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 30)
            if msg.get("id") == msg_id:
                assert "error" not in msg, msg
                result: dict[str, Any] = msg.get("result", {})
                return result
            await self.events.put(msg)

    async def wait_event(self, method: str) -> dict[str, Any]:
        while True:
            while not self.events.empty():
                ev = self.events.get_nowait()
                if ev.get("method") == method:
                    return ev
            msg: dict[str, Any] = await asyncio.wait_for(self.ws.receive_json(), 30)
            if msg.get("method") == method:
                return msg

    async def load(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired")

    async def text(self) -> str:
        got = await self.call("Runtime.evaluate", expression="document.body.innerText")
        value: str = got["result"]["value"]
        return value


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[_Chromium]:
    exe = shutil.which("chromium")
    assert exe is not None, "chromium is not installed (make test installs it)"
    proc = await asyncio.create_subprocess_exec(
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--remote-debugging-port=0",
        "--window-size=1280,900",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:

        async def devtools_url() -> str:
            assert proc.stderr is not None
            while line := await proc.stderr.readline():
                m = re.search(rb"DevTools listening on (ws://\S+)", line)
                if m:
                    return m.group(1).decode()
            raise AssertionError("chromium exited before opening DevTools")

        browser_ws = await asyncio.wait_for(devtools_url(), 30)
        port = browser_ws.split("//", 1)[1].split("/", 1)[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                browser = _Chromium(proc, ws)
                await browser.call("Page.enable")
                await browser.call("Network.enable")
                yield browser
    finally:
        await reap(proc)


async def test_chromium_renders_the_page_after_logging_in(h: Harness, tmp_path: Path) -> None:
    bad = sale_dict("BAD1")
    bad["total"] = "999.00"
    await push_records(h, sale_dict("T1"), bad)
    await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())
    base = str(h.client.make_url("/"))
    async with chromium(tmp_path) as browser:
        await browser.load(base)
        assert "Log in with the admin token." in await browser.text()
        # Fill the form and submit it as a person would (the page itself has no script).
        await browser.call(
            "Runtime.evaluate",
            expression=(
                f"document.querySelector('input[name=token]').value = {json.dumps(ADMIN)};"
                "document.querySelector('form').submit();"
            ),
        )
        await browser.wait_event("Page.loadEventFired")
        text = await browser.text()
        assert "Stores (2)" in text and "Health" in text
        assert "total.sum: 1" in text
        await browser.load(f"{base}?store=S1&sale=T1")
        assert f"{sale_dict('T1')['total']} USD" in await browser.text()
        shot = await browser.call("Page.captureScreenshot", format="png")
    png = base64.b64decode(shot["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    out = tmp_path / "status-page.png"
    out.write_bytes(png)
