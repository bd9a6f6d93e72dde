"""The operator CLI against the real server: status, commit, quarantine, sales, config check,
and one-line errors with exit codes (issue 13's CLI)."""

from __future__ import annotations

import io
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.appserver import ADMIN, Harness, make_config, push_records, running
from tests.factories import sale_dict
from worker.api.status import attention_order
from worker.ops_cli import mask_secrets, parse, run_ops

NOW = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)  # the factories sell at 15:00 UTC that day


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(make_config(tmp_path), NOW) as harness:
        yield harness


def _url(h: Harness) -> str:
    return str(h.client.make_url("")).rstrip("/")


async def cli(h: Harness | None, *argv: str, url: str | None = None) -> tuple[int, str]:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    base = url or (_url(h) if h is not None else "http://127.0.0.1:9")
    code = await run_ops(parse([argv[0], "--url", base, "--token", ADMIN, *argv[1:]]), console)
    return code, out.getvalue()


async def test_status_lists_every_store_with_its_next_window(h: Harness) -> None:
    await push_records(h, sale_dict("T1"))
    code, out = await cli(h, "status")
    assert code == 0
    assert "S1" in out and "S2" in out
    assert "EDT" in out or "EST" in out  # S1's next window in its own zone (New York)
    assert "UTC)" in out


async def test_commit_dry_run_writes_nothing_then_commit_does(h: Harness) -> None:
    await push_records(h, sale_dict("T1"), sale_dict("T2"))
    code, out = await cli(h, "commit", "--store", "S1", "--dry-run")
    assert code == 0 and "S1: 2 pending; would commit 2" in out
    assert await h.sink.counts() == {**await h.sink.counts(), "sales": 0}
    code, out = await cli(h, "commit", "--store", "S1")
    assert code == 0 and '"committed": 2' in out
    assert (await h.sink.counts())["sales"] == 2


async def test_quarantine_list_show_discard(h: Harness) -> None:
    bad = sale_dict("BAD1")
    bad["total"] = "999.00"
    await push_records(h, bad)
    assert (await cli(h, "commit", "--store", "S1"))[0] == 0
    code, out = await cli(h, "quarantine", "list", "--store", "S1")
    assert code == 0 and "BAD1" in out and "total.sum" in out
    items = await h.spool.quarantined.latest("S1")
    qid = str(items[0].qid)
    code, out = await cli(h, "quarantine", "show", qid)
    assert code == 0 and '"record_id": "BAD1"' in out
    code, out = await cli(h, "quarantine", "discard", qid, "--reason", "test")
    assert code == 0 and await h.spool.quarantined.latest("S1") == []


async def test_sales_and_sale(h: Harness) -> None:
    await push_records(h, sale_dict("T1"))
    await cli(h, "commit", "--store", "S1")
    day = (await h.sink.get_sale("S1", "T1"))["business_date"]
    code, out = await cli(h, "sales", "S1", "--date", str(day))
    assert code == 0 and "T1" in out and "1 sales" in out
    code, out = await cli(h, "sale", "S1", "T1")
    assert code == 0 and '"id": "T1"' in out


async def test_server_refusal_is_one_line_with_status_and_field(h: Harness) -> None:
    code, out = await cli(h, "sales", "S1", "--date", "yesterday")
    assert code == 1
    assert out.strip().startswith("possync: 400 ") and "(field: date)" in out
    assert len(out.strip().splitlines()) == 1


async def test_unknown_store_is_a_refusal(h: Harness) -> None:
    code, out = await cli(h, "sale", "NOPE", "T1")
    assert code == 1 and out.startswith("possync: 404")


async def test_wrong_token_is_a_refusal(h: Harness) -> None:
    out = io.StringIO()
    args = parse(["status", "--url", _url(h), "--token", "wrong"])
    code = await run_ops(args, Console(file=out, width=200))
    assert code == 1 and "401" in out.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_connection_refused_fails_fast_naming_the_url() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    code, out = await cli(None, "status", url=url)
    assert code == 3
    assert out.strip() == f"possync: cannot reach {url}: connection refused"


def test_config_check_masks_secrets(tmp_path: Path) -> None:
    path = tmp_path / "possync.toml"
    path.write_text(
        '[http]\nadmin_token = "adm-secret"\n[sink]\nkind = "postgres"\n'
        'dsn = "postgresql://app:pw123@db:5432/cb"\n'
        '[[stores]]\nid = "S1"\nsource = "shopify"\ntoken = "tok-secret"\nsecret = "hmac-secret"\n'
    )
    out = io.StringIO()
    import asyncio

    code = asyncio.run(run_ops(parse(["config", "check", str(path)]), Console(file=out)))
    text = out.getvalue()
    assert code == 0 and "ok (1 stores)" in text
    for secret in ("adm-secret", "tok-secret", "hmac-secret", "pw123"):
        assert secret not in text
    assert "postgresql://app:***@db:5432/cb" in text


def test_config_check_names_the_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[http]\nhots = 1\n")
    out = io.StringIO()
    import asyncio

    code = asyncio.run(run_ops(parse(["config", "check", str(path)]), Console(file=out)))
    assert code == 2
    assert "config error" in out.getvalue() and "$.http.hots" in out.getvalue()


def test_attention_order() -> None:
    stores: dict[str, dict[str, Any]] = {
        "calm": {"quarantine": 0, "oldest_pending_age_s": 10.0},
        "old": {"quarantine": 0, "oldest_pending_age_s": 9000.0},
        "bad": {"quarantine": 12},
        "failed": {"quarantine": 0, "last_window": {"error": "sink down"}},
        "paused": {"quarantine": 0, "paused": True},
    }
    assert attention_order(stores) == ["failed", "bad", "paused", "old", "calm"]


def test_mask_secrets_keeps_empty_as_empty() -> None:
    assert mask_secrets({"token": "", "secret": "x", "n": [{"password": "p"}]}) == {
        "token": "",
        "secret": "***",
        "n": [{"password": "***"}],
    }
