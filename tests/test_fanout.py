"""The fanout ClientBook over the real SQLite sink: primary first, then the outbox.

Opened through `open_sink` as the service opens it, with an HTTP output to the fake
clienteling API. The append failure is injected into our own outbox (a sqlite3 error from
its `append`), the one point between the primary's commit and the outbox's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.contracts.sinks import T0, make_batch, make_sale, make_trigger, make_void
from tests.support.clienteling import FakeClienteling, fake_clienteling
from worker.clock import FakeClock
from worker.config import Config, SqliteSinkConfig, decode
from worker.errors import SinkError
from worker.health import Health
from worker.records import Customer
from worker.sinks import open_sink
from worker.sinks.fanout import FanoutBook
from worker.sinks.outbox import Outbox

STORE = "s1"


def cfg_for(tmp: Path, url: str) -> Config:
    """SQLite sink in tmp, one HTTP output taking every kind."""
    return decode(
        {
            "data_dir": str(tmp),
            "sink": {"kind": "sqlite", "synchronous": "NORMAL"},
            "outputs": [
                {
                    "kind": "http",
                    "name": "app",
                    "url": url,
                    "records": ["customer", "product", "sale", "void", "trigger", "manifest"],
                }
            ],
        }
    )


@pytest.fixture
async def api() -> AsyncIterator[FakeClienteling]:
    async with fake_clienteling() as fake:
        yield fake


@pytest.fixture
async def book(tmp_path: Path, api: FakeClienteling) -> AsyncIterator[FanoutBook]:
    clock = FakeClock(T0 + timedelta(days=1))
    async with open_sink(cfg_for(tmp_path, api.url), clock=clock, health=Health()) as opened:
        assert isinstance(opened, FanoutBook)
        yield opened


class FailingAppend:
    """Our outbox's append, failing the next `n` calls as a full or broken disk would."""

    def __init__(self, outbox: Outbox, n: int) -> None:
        self.real = outbox.append
        self.left = n

    async def __call__(self, items: Any) -> int:
        if self.left:
            self.left -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return await self.real(items)


async def delivered(api: FakeClienteling, n: int) -> list[str]:
    """The event ids the API holds once it holds `n`."""
    await api.wait_for(lambda: len(api.order) >= n)
    return list(api.order)


async def test_without_outputs_open_sink_is_the_primary(tmp_path: Path) -> None:
    """No [[outputs]]: the registry yields the sink itself (nothing wrapped, no outbox)."""
    cfg = Config(data_dir=str(tmp_path), sink=SqliteSinkConfig())
    async with open_sink(cfg) as opened:
        assert not isinstance(opened, FanoutBook)
    assert not (tmp_path / "outbox.db").exists()


async def test_commit_appends_sales_voids_triggers_manifest(
    book: FanoutBook, api: FakeClienteling
) -> None:
    """One batch: its sale, void, trigger and manifest events, with the documented ids."""
    sale = make_sale("A1", customer_id="c1")
    other = make_sale("A2")
    trig = make_trigger(sale, due_at=T0)
    batch = make_batch("b1", [sale, other], [make_void("A2")], [trig])
    outcome = await book.commit_sales(batch)
    assert outcome.inserted == 2
    got = await delivered(api, 5)
    assert got == [
        "sale:s1:A1:1",
        "sale:s1:A2:1",
        "void:s1:A2:0",
        "trigger:s1:A1:thank_you",
        "manifest:b1",
    ]
    # Bodies are the committed facts, not recomputed.
    assert api.events["sale:s1:A1:1"]["body"]["total"] == "10.00"
    assert api.events["trigger:s1:A1:thank_you"]["body"]["sale_id"] == "A1"
    assert api.events["manifest:b1"]["body"]["sales"] == 2
    # Reads are the primary's.
    assert (await book.get_sale(STORE, "A1")) is not None


async def test_append_failure_after_primary_commit_is_recovered_by_the_rerun(
    book: FanoutBook, api: FakeClienteling, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The primary committed, the append failed: the commit raises a retriable error naming
    the outbox; the re-run is `already_committed` at the primary and the append lands."""
    monkeypatch.setattr(book.outbox, "append", FailingAppend(book.outbox, 1))
    sale = make_sale("B1", customer_id="c1")
    batch = make_batch("b2", [sale], [], [make_trigger(sale, due_at=T0)])
    with pytest.raises(SinkError) as err:
        await book.commit_sales(batch)
    assert err.value.retriable and err.value.field == "outbox"
    assert (await book.get_sale(STORE, "B1")) is not None  # the primary has it
    assert (await book.outbox.counts())["app"] == dict.fromkeys(
        ("pending", "delivered", "parked", "waiting", "cancelled"), 0
    )
    again = await book.commit_sales(batch)
    assert again.already_committed
    got = await delivered(api, 3)
    assert got == ["sale:s1:B1:1", "trigger:s1:B1:thank_you", "manifest:b2"]
    # A third run appends nothing new.
    await book.commit_sales(batch)
    assert sum((await book.outbox.counts())["app"].values()) == 3


async def test_entities_appended_also_for_equal_versions(
    book: FanoutBook, api: FakeClienteling, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upsert whose append failed is pushed again: the primary holds it already (equal
    version), the events are appended anyway, once."""
    monkeypatch.setattr(book.outbox, "append", FailingAppend(book.outbox, 1))
    ann = Customer(id="c1", first_name="Ann", version=3)
    old = Customer(id="c1", first_name="Ann", version=2)
    with pytest.raises(SinkError):
        await book.upsert_entities(STORE, [ann])
    out = await book.upsert_entities(STORE, [old, ann])
    assert out.applied == 0
    got = await delivered(api, 1)
    assert got == ["customer:s1:c1:3"]
    assert api.events["customer:s1:c1:3"]["body"]["first_name"] == "Ann"


async def test_triggers_of_a_sale_voided_later_are_cancelled(
    book: FanoutBook, api: FakeClienteling
) -> None:
    """A trigger due tomorrow, its sale voided in a later batch: the trigger never goes."""
    sale = make_sale("V1", customer_id="c1")
    later = book.clock.now() + timedelta(days=1)
    await book.commit_sales(make_batch("b3", [sale], [], [make_trigger(sale, due_at=later)]))
    await book.commit_sales(make_batch("b4", [], [make_void("V1")]))
    got = await delivered(api, 4)
    assert got == ["sale:s1:V1:1", "manifest:b3", "void:s1:V1:0", "manifest:b4"]
    counts = (await book.outbox.counts())["app"]
    assert counts["cancelled"] == 1 and counts["waiting"] == 0
