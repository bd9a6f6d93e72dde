"""Contract suite: every Sink behaves the same.

Parametrized over the SQLite sink (a file in tmp_path) and the PostgreSQL sink (a fresh
database on a throw-away server from `tests.plugins.postgres`). Faults are real: a database
trigger that raises, a write lock held by another connection, a stopped server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec
import pytest

from worker.api_format import sale_detail
from worker.batch import CommitBatch, CommitOutcome, Manifest, SaleRow, TriggerEvent
from worker.config import Config, PostgresSinkConfig, SqliteSinkConfig
from worker.errors import SinkError
from worker.records import (
    Adjustment,
    Customer,
    Entity,
    Product,
    Sale,
    SaleLine,
    Tender,
    Void,
    sum_decimals,
)
from worker.sinks import open_sink, postgres_schema, sqlite_schema
from worker.sinks.base import SALE_LOG_COLUMNS, ClientBook, EntityOutcome, ReportRow
from worker.sinks.sqlite import open_sqlite_sink

if TYPE_CHECKING:
    # Imported by pytest as a plugin (below); importing it here first would skip its
    # assertion rewriting.
    from tests.plugins.postgres import PostgresServer

pytest_plugins = ["tests.plugins.postgres"]

STORE = "s1"
T0 = datetime(2024, 5, 1, 15, 0, tzinfo=UTC)
DAY = date(2024, 5, 1)
PG_SCHEMA = "clientbook"


# -- backends: open a sink, inject real faults ------------------------------------------


class Backend:
    """How the suite opens a sink and breaks its database for real."""

    kind = ""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def config(self) -> Config:
        raise NotImplementedError

    def open(self) -> AbstractAsyncContextManager[ClientBook]:
        """Through the registry, as the service does."""
        return open_sink(self.config())

    async def fail_inserts_into(self, table: str) -> None:
        """Install a database trigger that makes every INSERT into `table` fail."""
        raise NotImplementedError

    async def heal(self, table: str) -> None:
        """Remove the trigger installed by `fail_inserts_into`."""
        raise NotImplementedError

    async def make_unavailable(self) -> None:
        """Make the database unable to take writes."""
        raise NotImplementedError

    async def make_available(self) -> None:
        """Undo `make_unavailable`."""
        raise NotImplementedError


class SqliteBackend(Backend):
    kind = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.path = tmp_path / "db" / "clientbook.db"
        self._locker: sqlite3.Connection | None = None

    def config(self) -> Config:
        return Config(
            data_dir=str(self.tmp_path),
            sink=SqliteSinkConfig(path=str(self.path), synchronous="NORMAL", busy_timeout_ms=100),
        )

    def _exec(self, sql: str) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute(sql)
        finally:
            db.close()

    async def fail_inserts_into(self, table: str) -> None:
        self._exec(
            f"CREATE TRIGGER injected_fault_{table} BEFORE INSERT ON {table}"
            " BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        )

    async def heal(self, table: str) -> None:
        self._exec(f"DROP TRIGGER injected_fault_{table}")

    async def make_unavailable(self) -> None:
        # Another process holding the write lock: the sink waits busy_timeout_ms, then fails.
        self._locker = sqlite3.connect(self.path, isolation_level=None)
        self._locker.execute("BEGIN IMMEDIATE")

    async def make_available(self) -> None:
        if self._locker is not None:
            self._locker.execute("ROLLBACK")
            self._locker.close()
            self._locker = None


class PostgresBackend(Backend):
    kind = "postgres"

    def __init__(self, tmp_path: Path, server: PostgresServer, dsn: str) -> None:
        super().__init__(tmp_path)
        self.server = server
        self.dsn = dsn

    def config(self) -> Config:
        return Config(
            data_dir=str(self.tmp_path),
            sink=PostgresSinkConfig(
                dsn=self.dsn, schema=PG_SCHEMA, pool_min=1, pool_max=4, command_timeout_s=10
            ),
        )

    async def _exec(self, sql: str) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def fail_inserts_into(self, table: str) -> None:
        await self._exec(
            f"CREATE OR REPLACE FUNCTION {PG_SCHEMA}.injected_fault() RETURNS trigger"
            " LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$;"
            f" CREATE TRIGGER injected_fault BEFORE INSERT ON {PG_SCHEMA}.{table}"
            f" FOR EACH ROW EXECUTE FUNCTION {PG_SCHEMA}.injected_fault();"
        )

    async def heal(self, table: str) -> None:
        await self._exec(f"DROP TRIGGER injected_fault ON {PG_SCHEMA}.{table}")

    async def make_unavailable(self) -> None:
        await asyncio.to_thread(self.server.stop)

    async def make_available(self) -> None:
        await asyncio.to_thread(self.server.start)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path)
    server: PostgresServer = request.getfixturevalue("postgres_server")
    dsn: str = request.getfixturevalue("postgres_dsn")
    return PostgresBackend(tmp_path, server, dsn)


@pytest.fixture
async def sink(backend: Backend) -> AsyncIterator[ClientBook]:
    async with backend.open() as opened:
        yield opened


# -- record builders ----------------------------------------------------------------------


def make_sale(
    sid: str,
    total: str = "10.00",
    *,
    version: int | None = 1,
    day: date = DAY,
    lines: Sequence[SaleLine] | None = None,
    tenders: Sequence[Tender] | None = None,
    customer_id: str | None = None,
    updated_at: datetime | None = None,
) -> Sale:
    amount = Decimal(total)
    if lines is None:
        lines = [SaleLine(sku="SKU-1", quantity=Decimal(1), unit_price=amount, product_id="p1")]
    if tenders is None:
        tenders = [Tender(method="card", amount=amount, reference="auth-1")]
    return Sale(
        id=sid,
        occurred_at=datetime(day.year, day.month, day.day, 15, 0, tzinfo=UTC),
        currency="USD",
        lines=list(lines),
        subtotal=amount,
        tax=Decimal("0"),
        total=amount,
        tenders=list(tenders),
        kind="return" if amount < 0 else "sale",
        customer_id=customer_id,
        employee_id="e1",
        business_date=day,
        version=version,
        updated_at=updated_at,
    )


def make_trigger(
    sale: Sale, due_at: datetime, name: str = "thank_you", store: str = STORE
) -> TriggerEvent:
    return TriggerEvent(
        event_id=f"{store}:{sale.id}:{name}",
        store=store,
        sale_id=sale.id,
        trigger=name,
        action="message",
        customer_id=sale.customer_id,
        total=sale.total,
        business_date=DAY,
        due_date=due_at.date(),
        due_at=due_at,
        created_at=T0,
    )


def make_void(sid: str, at: datetime = T0 + timedelta(hours=1)) -> Void:
    return Void(id=sid, occurred_at=at, reason="cashier error")


def make_batch(
    batch_id: str,
    sales: Sequence[Sale] = (),
    voids: Sequence[Void] = (),
    triggers: Sequence[TriggerEvent] = (),
    store: str = STORE,
) -> CommitBatch:
    ids = sorted([s.id for s in sales] + [f"void:{v.id}" for v in voids])
    return CommitBatch(
        batch_id=batch_id,
        store=store,
        window_at=T0,
        sales=[SaleRow(sale=s, version=s.effective_version) for s in sales],
        voids=list(voids),
        triggers=list(triggers),
        manifest=Manifest(
            batch_id=batch_id,
            store=store,
            window_at=T0,
            sales=len(sales),
            voids=len(voids),
            triggers=len(triggers),
            total_sum=sum_decimals(s.total for s in sales),
            ids_sha256=hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        ),
    )


def canonical(sale: Sale) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(sale)
    return out


def subset(got: dict[str, Any] | None, expected: dict[str, Any]) -> dict[str, Any]:
    assert got is not None
    return {k: got.get(k) for k in expected}


# -- entities -------------------------------------------------------------------------------


async def test_upsert_never_goes_back_in_version(sink: ClientBook) -> None:
    v1 = Customer(id="c1", first_name="Ann", email="ann@example.com", version=1)
    v2 = Customer(id="c1", first_name="Anna", email="anna@example.com", version=2)
    assert await sink.upsert_entities(STORE, [v1]) == EntityOutcome(applied=1, stale=0)
    assert await sink.upsert_entities(STORE, [v2]) == EntityOutcome(applied=1, stale=0)
    assert await sink.upsert_entities(STORE, [v1]) == EntityOutcome(applied=0, stale=1)
    equal = Customer(id="c1", first_name="Changed", version=2)
    assert await sink.upsert_entities(STORE, [equal]) == EntityOutcome(applied=0, stale=1)
    got = await sink.get_customer(STORE, "c1")
    assert got is not None
    assert (got["first_name"], got["email"], got["version"]) == ("Anna", "anna@example.com", 2)
    # Same id in another store is another customer.
    assert await sink.get_customer("other", "c1") is None


async def test_upsert_versions_come_from_updated_at(sink: ClientBook) -> None:
    old = Product(id="p1", name="Ring", price=Decimal("100.00"), updated_at=T0)
    new = Product(
        id="p1", name="Gold ring", price=Decimal("120.50"), updated_at=T0 + timedelta(seconds=1)
    )
    assert (await sink.upsert_entities(STORE, [new])).applied == 1
    assert await sink.upsert_entities(STORE, [old]) == EntityOutcome(applied=0, stale=1)
    got = await sink.get_product(STORE, "p1")
    assert got is not None
    assert (got["name"], got["price"]) == ("Gold ring", "120.50")
    assert got["version"] == new.effective_version
    # An explicit version below the microsecond clock loses to the stored one.
    assert (await sink.upsert_entities(STORE, [Product(id="p1", name="x", version=5)])).stale == 1


async def test_upsert_many_in_one_call_keeps_the_newest(sink: ClientBook) -> None:
    records: list[Entity] = [
        Customer(id="c1", first_name="v2", version=2),
        Customer(id="c1", first_name="v1", version=1),
        Customer(id="c2", first_name="only", version=1),
        Product(id="c1", name="a product may share a customer's id", version=1),
    ]
    assert await sink.upsert_entities(STORE, records) == EntityOutcome(applied=3, stale=1)
    c1 = await sink.get_customer(STORE, "c1")
    assert c1 is not None and c1["first_name"] == "v2"
    assert await sink.existing_customers(STORE, ["c1", "c2", "c3"]) == {"c1", "c2"}
    assert await sink.existing_customers(STORE, []) == set()
    assert (await sink.counts())["customers"] == 2


# -- commit_sales ---------------------------------------------------------------------------


async def test_commit_writes_sales_lines_tenders_triggers_and_manifest(sink: ClientBook) -> None:
    s1 = make_sale(
        "s-1",
        "30.00",
        customer_id="c1",
        lines=[
            SaleLine(sku="A", quantity=Decimal(2), unit_price=Decimal("10.00"), category="rings"),
            SaleLine(sku="B", quantity=Decimal(1), unit_price=Decimal("10.00"), restock=True),
        ],
        tenders=[
            Tender(method="card", amount=Decimal("25.00")),
            Tender(method="cash", amount=Decimal("5.00")),
        ],
    )
    s2 = make_sale("s-2", "12.00")
    trig = make_trigger(s1, T0 + timedelta(days=3))
    out = await sink.commit_sales(make_batch("b1", [s1, s2], triggers=[trig]))
    assert out == CommitOutcome(batch_id="b1", inserted=2, triggers=1)
    counts = await sink.counts()
    assert {k: counts[k] for k in ("sales", "sale_lines", "tenders", "trigger_outbox")} == {
        "sales": 2,
        "sale_lines": 3,
        "tenders": 3,
        "trigger_outbox": 1,
    }
    assert counts["commit_batches"] == 1
    assert counts["trigger_events"] == 0
    got = await sink.get_sale(STORE, "s-1")
    assert subset(got, canonical(s1)) == canonical(s1)
    assert got is not None
    assert (got["voided"], got["version"], got["batch_id"]) == (False, 1, "b1")
    assert got["customer_linked"] is True
    assert await sink.existing_sales(STORE, ["s-1", "s-2", "nope"]) == {"s-1", "s-2"}
    assert await sink.existing_sales("other", ["s-1"]) == set()
    pending = await sink.list_triggers(STORE)
    assert [(t["event_id"], t["status"], t["trigger"]) for t in pending] == [
        (trig.event_id, "pending", "thank_you")
    ]


async def test_rerunning_a_committed_batch_changes_nothing(sink: ClientBook) -> None:
    s1 = make_sale("s-1")
    batch = make_batch("b1", [s1], voids=[make_void("ghost")], triggers=[make_trigger(s1, T0)])
    first = await sink.commit_sales(batch)
    before = (await sink.counts(), await sink.get_sale(STORE, "s-1"))
    again = await sink.commit_sales(batch)
    assert again.already_committed
    assert msgspec.structs.replace(again, already_committed=False) == first
    assert (await sink.counts(), await sink.get_sale(STORE, "s-1")) == before
    # A new batch id with the same content is a new batch whose rows are all unchanged.
    other = await sink.commit_sales(make_batch("b2", [s1], triggers=[make_trigger(s1, T0)]))
    assert other == CommitOutcome(batch_id="b2", unchanged=1, triggers=0)


async def test_older_version_is_left_alone_newer_replaces_lines_and_tenders(
    sink: ClientBook,
) -> None:
    v2 = make_sale(
        "s-1",
        "20.00",
        version=2,
        lines=[
            SaleLine(sku="A", quantity=Decimal(1), unit_price=Decimal("15.00")),
            SaleLine(sku="B", quantity=Decimal(1), unit_price=Decimal("5.00")),
        ],
    )
    await sink.commit_sales(make_batch("b1", [v2]))
    v1 = make_sale("s-1", "99.00", version=1)
    assert await sink.commit_sales(make_batch("b2", [v1])) == CommitOutcome(
        batch_id="b2", unchanged=1
    )
    assert subset(await sink.get_sale(STORE, "s-1"), canonical(v2)) == canonical(v2)

    equal = make_sale("s-1", "77.00", version=2)
    assert (await sink.commit_sales(make_batch("b3", [equal]))).unchanged == 1

    v3 = make_sale(
        "s-1",
        "8.00",
        version=3,
        tenders=[Tender(method="gift_card", amount=Decimal("8.00"))],
    )
    assert await sink.commit_sales(make_batch("b4", [v3])) == CommitOutcome(
        batch_id="b4", updated=1
    )
    got = await sink.get_sale(STORE, "s-1")
    assert subset(got, canonical(v3)) == canonical(v3)
    assert got is not None and got["batch_id"] == "b4"
    counts = await sink.counts()
    assert (counts["sales"], counts["sale_lines"], counts["tenders"]) == (1, 1, 1)


async def test_a_batch_with_two_versions_of_a_sale_keeps_the_newest(sink: ClientBook) -> None:
    old, new = make_sale("s-1", "1.00", version=1), make_sale("s-1", "2.00", version=2)
    out = await sink.commit_sales(make_batch("b1", [new, old]))
    assert out == CommitOutcome(batch_id="b1", inserted=1, unchanged=1)
    got = await sink.get_sale(STORE, "s-1")
    assert got is not None and got["total"] == "2.00"


async def test_sale_versions_from_updated_at(sink: ClientBook) -> None:
    later = make_sale("s-1", "2.00", version=None, updated_at=T0 + timedelta(minutes=5))
    earlier = make_sale("s-1", "1.00", version=None, updated_at=T0)
    await sink.commit_sales(make_batch("b1", [later]))
    assert (await sink.commit_sales(make_batch("b2", [earlier]))).unchanged == 1
    got = await sink.get_sale(STORE, "s-1")
    assert got is not None
    assert (got["total"], got["version"]) == ("2.00", later.effective_version)


# -- voids -----------------------------------------------------------------------------------


async def test_void_marks_the_sale_and_takes_it_out_of_the_report(sink: ClientBook) -> None:
    await sink.commit_sales(make_batch("b1", [make_sale("s-1", "10.00"), make_sale("s-2", "5.00")]))
    out = await sink.commit_sales(make_batch("b2", voids=[make_void("s-1")]))
    assert out == CommitOutcome(batch_id="b2", voided=1)
    got = await sink.get_sale(STORE, "s-1")
    assert got is not None
    assert got["voided"] is True
    assert got["voided_at"] == "2024-05-01T16:00:00.000000+00:00"
    log = await sink.sales_log(STORE, DAY)
    assert [(r["id"], r["voided"]) for r in log] == [("s-1", True), ("s-2", False)]
    assert await sink.sales_report(STORE, DAY, DAY) == [
        ReportRow(
            date=DAY,
            currency="USD",
            count=1,
            gross=Decimal("5.00"),
            returns=Decimal(0),
            returns_count=0,
            net=Decimal("5.00"),
            voided=1,
        )
    ]
    # Voiding again is a duplicate: nothing changes.
    assert (await sink.commit_sales(make_batch("b3", voids=[make_void("s-1")]))).voided == 0


async def test_void_of_a_sale_in_the_same_batch(sink: ClientBook) -> None:
    out = await sink.commit_sales(make_batch("b1", [make_sale("s-1")], voids=[make_void("s-1")]))
    assert out == CommitOutcome(batch_id="b1", inserted=1, voided=1)
    got = await sink.get_sale(STORE, "s-1")
    assert got is not None and got["voided"] is True


async def test_void_that_arrives_before_its_sale_applies_when_the_sale_lands(
    sink: ClientBook,
) -> None:
    assert (await sink.commit_sales(make_batch("b1", voids=[make_void("s-1")]))).voided == 0
    assert await sink.existing_sales(STORE, ["s-1"]) == set()
    out = await sink.commit_sales(make_batch("b2", [make_sale("s-1")]))
    assert out == CommitOutcome(batch_id="b2", inserted=1, voided=1)
    got = await sink.get_sale(STORE, "s-1")
    assert got is not None and got["voided"] is True


async def test_a_newer_version_of_a_voided_sale_stays_voided(sink: ClientBook) -> None:
    await sink.commit_sales(
        make_batch("b1", [make_sale("s-1", version=1)], voids=[make_void("s-1")])
    )
    out = await sink.commit_sales(make_batch("b2", [make_sale("s-1", "11.00", version=2)]))
    assert out == CommitOutcome(batch_id="b2", updated=1, voided=0)
    got = await sink.get_sale(STORE, "s-1")
    assert got is not None
    assert (got["total"], got["voided"]) == ("11.00", True)


# -- triggers -------------------------------------------------------------------------------


async def test_deliver_due_triggers_exactly_once_and_only_when_due(sink: ClientBook) -> None:
    s1, s2 = make_sale("s-1", customer_id="c1"), make_sale("s-2", customer_id="c2")
    t1 = make_trigger(s1, T0 + timedelta(days=1))
    t2 = make_trigger(s2, T0 + timedelta(days=3))
    await sink.commit_sales(make_batch("b1", [s1, s2], triggers=[t1, t2]))
    assert await sink.deliver_due_triggers(T0) == []
    assert await sink.deliver_due_triggers(T0 + timedelta(days=2)) == [t1]
    assert await sink.deliver_due_triggers(T0 + timedelta(days=2)) == []
    assert await sink.deliver_due_triggers(t2.due_at) == [t2]  # due_at <= now
    assert await sink.deliver_due_triggers(T0 + timedelta(days=30)) == []
    counts = await sink.counts()
    assert (counts["trigger_outbox"], counts["trigger_events"]) == (2, 2)
    listed = {t["event_id"]: t for t in await sink.list_triggers(STORE)}
    assert {k: v["status"] for k, v in listed.items()} == {
        t1.event_id: "delivered",
        t2.event_id: "delivered",
    }
    assert listed[t1.event_id]["delivered_at"] == "2024-05-03T15:00:00.000000+00:00"
    json.dumps(list(listed.values()))


async def test_deliver_respects_the_limit(sink: ClientBook) -> None:
    sales = [make_sale(f"s-{i}") for i in range(5)]
    triggers = [make_trigger(s, T0 + timedelta(hours=i)) for i, s in enumerate(sales)]
    await sink.commit_sales(make_batch("b1", sales, triggers=triggers))
    now = T0 + timedelta(days=1)
    first = await sink.deliver_due_triggers(now, limit=2)
    rest = await sink.deliver_due_triggers(now, limit=10)
    assert first == triggers[:2]
    assert rest == triggers[2:]


async def test_triggers_of_a_voided_sale_are_cancelled_not_delivered(sink: ClientBook) -> None:
    s1 = make_sale("s-1")
    trig = make_trigger(s1, T0 + timedelta(days=1))
    await sink.commit_sales(make_batch("b1", [s1], triggers=[trig]))
    await sink.commit_sales(make_batch("b2", voids=[make_void("s-1")]))
    assert await sink.deliver_due_triggers(T0 + timedelta(days=2)) == []
    assert [t["status"] for t in await sink.list_triggers(STORE)] == ["cancelled"]
    assert (await sink.counts())["trigger_events"] == 0


# -- reads ----------------------------------------------------------------------------------


async def test_reads_are_json_able_and_none_when_missing(sink: ClientBook) -> None:
    customer = Customer(
        id="c1",
        first_name="Ann",
        birth_date=date(1990, 2, 3),
        tags=["vip"],
        updated_at=T0,
    )
    product = Product(
        id="p1", name="Ring", price=Decimal("1999.99"), attributes={"metal": "gold"}, version=3
    )
    await sink.upsert_entities(STORE, [customer, product])
    sale = make_sale("s-1", customer_id="c1")
    await sink.commit_sales(make_batch("b1", [sale], triggers=[make_trigger(sale, T0)]))
    got_c = await sink.get_customer(STORE, "c1")
    got_p = await sink.get_product(STORE, "p1")
    got_s = await sink.get_sale(STORE, "s-1")
    for value in (
        got_c,
        got_p,
        got_s,
        await sink.sales_log(STORE, DAY),
        await sink.list_triggers(STORE),
    ):
        assert value
        json.dumps(value)
    assert got_c is not None and got_p is not None
    assert subset(got_c, msgspec.to_builtins(customer)) == {
        **msgspec.to_builtins(customer),
        "version": customer.effective_version,
    }
    assert subset(got_p, msgspec.to_builtins(product)) == msgspec.to_builtins(product)
    assert await sink.get_customer(STORE, "nope") is None
    assert await sink.get_product(STORE, "nope") is None
    assert await sink.get_sale(STORE, "nope") is None
    assert await sink.sales_log(STORE, DAY + timedelta(days=1)) == []
    assert await sink.list_triggers("other") == []


async def test_decimal_money_round_trips_exactly(sink: ClientBook) -> None:
    lines = [
        SaleLine(sku="A", quantity=Decimal(1), unit_price=Decimal("0.1")),
        SaleLine(sku="B", quantity=Decimal(1), unit_price=Decimal("0.2")),
        SaleLine(
            sku="C",
            quantity=Decimal("1.5"),
            unit_price=Decimal("1.23456"),
            discount=Decimal("0.00000001"),
        ),
    ]
    odd = make_sale("odd", "2.15183999", lines=lines)
    tenths = [make_sale(f"t-{i}", "0.1") for i in range(10)]
    await sink.commit_sales(make_batch("b1", [odd, *tenths]))
    got = await sink.get_sale(STORE, "odd")
    assert got is not None
    assert [ln["unit_price"] for ln in got["lines"]] == ["0.1", "0.2", "1.23456"]
    assert got["lines"][2]["quantity"] == "1.5"
    assert Decimal(got["lines"][2]["discount"]) == Decimal("0.00000001")
    assert got["total"] == "2.15183999"
    assert [r["total"] for r in await sink.sales_log(STORE, DAY) if r["id"] == "odd"] == [
        "2.15183999"
    ]
    (row,) = await sink.sales_report(STORE, DAY, DAY)
    # Ten times 0.1 is exactly 1 (a float sum would give 0.9999999999999999).
    assert row.gross == Decimal("3.15183999")
    assert row.net == row.gross
    assert isinstance(row.gross, Decimal)


async def test_sales_report_per_business_date(sink: ClientBook) -> None:
    day2, day3 = DAY + timedelta(days=1), DAY + timedelta(days=2)
    await sink.commit_sales(
        make_batch(
            "b1",
            [
                make_sale("a", "10.00"),
                make_sale("b", "-3.50"),
                make_sale("c", "7.25"),
                make_sale("d", "0.00"),
                make_sale("e", "20.00", day=day2),
                make_sale("f", "99.00", day=day3),
            ],
            voids=[make_void("c")],
        )
    )
    await sink.commit_sales(make_batch("other-b1", [make_sale("a", "500.00")], store="other"))
    assert await sink.sales_report(STORE, DAY, day2) == [
        ReportRow(
            date=DAY,
            currency="USD",
            count=3,
            gross=Decimal("10.00"),
            returns=Decimal("3.50"),
            returns_count=1,
            net=Decimal("6.50"),
            voided=1,
        ),
        ReportRow(
            date=day2,
            currency="USD",
            count=1,
            gross=Decimal("20.00"),
            returns=Decimal(0),
            returns_count=0,
            net=Decimal("20.00"),
            voided=0,
        ),
    ]
    assert await sink.sales_report(STORE, day3 + timedelta(days=1), day3 + timedelta(days=9)) == []
    assert [r.gross for r in await sink.sales_report("other", DAY, DAY)] == [Decimal("500.00")]


# -- faults ---------------------------------------------------------------------------------


async def test_health_raises_retriable_while_the_database_is_unavailable(
    sink: ClientBook, backend: Backend
) -> None:
    await sink.health()
    await backend.make_unavailable()
    try:
        with pytest.raises(SinkError) as health_err:
            await sink.health()
        assert health_err.value.retriable
        with pytest.raises(SinkError) as commit_err:
            await sink.commit_sales(make_batch("b1", [make_sale("s-1")]))
        assert commit_err.value.retriable
    finally:
        await backend.make_available()
    await sink.health()
    assert (await sink.commit_sales(make_batch("b1", [make_sale("s-1")]))).inserted == 1


async def test_a_failed_commit_leaves_nothing_behind(sink: ClientBook, backend: Backend) -> None:
    await sink.commit_sales(make_batch("b0", [make_sale("old", version=1)]))
    before = await sink.counts()
    s1 = make_sale("s-1")
    batch = make_batch(
        "b1",
        [s1, make_sale("old", "50.00", version=2)],
        voids=[make_void("old"), make_void("ghost")],
        triggers=[make_trigger(s1, T0)],
    )
    # The outbox is written last but one: everything before it must roll back.
    await backend.fail_inserts_into("trigger_outbox")
    with pytest.raises(SinkError) as err:
        await sink.commit_sales(batch)
    assert not err.value.retriable
    assert await sink.counts() == before
    assert await sink.get_sale(STORE, "s-1") is None
    old = await sink.get_sale(STORE, "old")
    assert old is not None
    assert (old["total"], old["voided"], old["version"]) == ("10.00", False, 1)

    await backend.heal("trigger_outbox")
    out = await sink.commit_sales(batch)
    assert out == CommitOutcome(batch_id="b1", inserted=1, updated=1, voided=1, triggers=1)


async def test_data_survives_reopening(backend: Backend) -> None:
    async with backend.open() as first:
        await first.upsert_entities(STORE, [Customer(id="c1", version=1)])
        await first.commit_sales(make_batch("b1", [make_sale("s-1")]))
    async with backend.open() as second:  # start-up DDL is idempotent
        assert await second.existing_customers(STORE, ["c1"]) == {"c1"}
        assert (await second.commit_sales(make_batch("b1", [make_sale("s-1")]))).already_committed
        assert (await second.counts())["sales"] == 1


async def test_a_closed_sink_refuses_calls(backend: Backend) -> None:
    async with backend.open() as opened:
        pass
    with pytest.raises(SinkError) as err:
        await opened.health()
    assert not err.value.retriable


# -- SQLite specifics ---------------------------------------------------------------------


async def test_sqlite_default_path_is_under_data_dir_and_uses_wal(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"
    cfg = Config(data_dir=str(data_dir), sink=SqliteSinkConfig(synchronous="FULL"))
    async with open_sqlite_sink(cfg) as opened:
        await opened.health()
        assert opened.path == data_dir / "clientbook.db"
    db = sqlite3.connect(data_dir / "clientbook.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        db.close()


async def test_sqlite_commit_cancelled_while_waiting_for_the_lock_leaves_no_transaction(
    tmp_path: Path,
) -> None:
    path = tmp_path / "clientbook.db"
    cfg = Config(
        data_dir=str(tmp_path), sink=SqliteSinkConfig(path=str(path), busy_timeout_ms=10_000)
    )
    async with open_sqlite_sink(cfg) as opened:
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(opened.commit_sales(make_batch("b1", [make_sale("s-1")])))
        await asyncio.sleep(0)  # one loop tick: the task is now parked on BEGIN IMMEDIATE
        task.cancel()
        # Release the lock: the BEGIN still running on the connection thread now succeeds.
        locker.execute("ROLLBACK")
        locker.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await opened.commit_sales(make_batch("b1", [make_sale("s-1")]))).inserted == 1
        assert (await opened.counts())["sales"] == 1


# -- the faithful model: optional SKU, tender method ids, warnings, body-only figures --------


def faithful_sale(sid: str = "f-1", currency: str = "USD") -> Sale:
    """A sale using every field the faithful model added, with exact POS figures."""
    return Sale(
        id=sid,
        occurred_at=T0,
        currency=currency,
        lines=[
            SaleLine(
                sku="RING-1",
                quantity=Decimal("1"),
                unit_price=Decimal("250.00000"),
                discount=Decimal("25.00"),
                tax=Decimal("18.00"),
            ),
            SaleLine(quantity=Decimal("2.500"), unit_price=Decimal("10"), product_id="p2"),
        ],
        subtotal=Decimal("245.00"),
        discount=Decimal("30.00"),
        tax=Decimal("18.00"),
        shipping=Decimal("10.00"),
        rounding=Decimal("-0.02"),
        total=Decimal("272.98"),
        tenders=[
            Tender(method="Visa", method_id="pm-7", amount=Decimal("200.00"), reference="ch_1"),
            Tender(method="Cash", method_id="1", amount=Decimal("72.98000")),
        ],
        adjustments=[
            Adjustment(kind="discount", amount=Decimal("-5.00"), description="Loyalty", code="L5"),
            Adjustment(kind="rounding", amount=Decimal("-0.02")),
        ],
        attributes={"note": "gift wrap", "register.name": "Front"},
        business_date=DAY,
        version=1,
    )


def batch_of(batch_id: str, rows: Sequence[SaleRow]) -> CommitBatch:
    """A batch of ready SaleRows (warnings, customer links as given)."""
    plain = make_batch(batch_id, [r.sale for r in rows])
    return msgspec.structs.replace(plain, sales=list(rows))


async def test_a_line_without_sku_keeps_none_and_tender_method_ids_round_trip(
    sink: ClientBook,
) -> None:
    sale = faithful_sale()
    await sink.commit_sales(make_batch("b1", [sale]))
    got = await sink.get_sale(STORE, "f-1")
    assert got is not None
    assert [ln["sku"] for ln in got["lines"]] == ["RING-1", None]
    assert got["lines"][1]["quantity"] == "2.500"
    assert [(t["method"], t["method_id"], t["amount"], t["reference"]) for t in got["tenders"]] == [
        ("Visa", "pm-7", "200.00", "ch_1"),
        ("Cash", "1", "72.98000", None),
    ]
    # The canonical record as stored, exactly: the body's own lines and figures.
    assert got["record"] == canonical(sale)
    assert got["record"]["lines"][1]["sku"] is None
    assert got["record"]["tenders"][1]["amount"] == "72.98000"


async def test_warnings_round_trip_through_detail_and_log(sink: ClientBook) -> None:
    warned = SaleRow(
        sale=make_sale("w-1"),
        version=1,
        warnings=("tenders.sum: tenders sum to 9.98, total is 10.00", "customer.hold: c9"),
    )
    quiet = SaleRow(sale=make_sale("w-2"), version=1)
    await sink.commit_sales(batch_of("b1", [warned, quiet]))
    got = await sink.get_sale(STORE, "w-1")
    assert got is not None and got["warnings"] == list(warned.warnings)
    log = {r["id"]: r for r in await sink.sales_log(STORE, DAY)}
    assert log["w-1"]["warnings"] == list(warned.warnings)
    assert log["w-2"]["warnings"] == []
    assert "warning" not in log["w-1"]


async def test_sales_log_carries_the_body_only_figures(sink: ClientBook) -> None:
    plain = make_sale("p-1")
    await sink.commit_sales(make_batch("b1", [faithful_sale(), plain]))
    log = {r["id"]: r for r in await sink.sales_log(STORE, DAY)}
    assert list(log["f-1"]) == [*(c for c in SALE_LOG_COLUMNS if c != "warning"), "warnings"]
    f = log["f-1"]
    assert (f["discount"], f["rounding"], f["tax_included"]) == ("30.00", "-0.02", False)
    assert (f["subtotal"], f["shipping"], f["total"], f["line_count"]) == (
        "245.00",
        "10.00",
        "272.98",
        2,
    )
    # No discount stated: none, not an invented zero; the model's default rounding.
    assert (log["p-1"]["discount"], log["p-1"]["rounding"]) == (None, "0")


async def test_report_per_date_and_currency_counts_returns(sink: ClientBook) -> None:
    def in_currency(sale: Sale, currency: str) -> Sale:
        return msgspec.structs.replace(sale, currency=currency)

    unlinked = msgspec.structs.replace(make_sale("r-2", "-15.00"), original_id="never-seen")
    await sink.commit_sales(
        make_batch(
            "b1",
            [
                make_sale("u-1", "100.00"),
                make_sale("r-1", "-40.00"),
                unlinked,
                make_sale("r-3", "-5.00"),  # voided below: neither summed nor counted
                in_currency(make_sale("j-1", "1200"), "JPY"),
                in_currency(make_sale("j-2", "-300"), "JPY"),
            ],
            voids=[make_void("r-3")],
        )
    )
    assert await sink.sales_report(STORE, DAY, DAY) == [
        ReportRow(
            date=DAY,
            currency="JPY",
            count=2,
            gross=Decimal("1200"),
            returns=Decimal("300"),
            returns_count=1,
            net=Decimal("900"),
            voided=0,
        ),
        ReportRow(
            date=DAY,
            currency="USD",
            count=3,
            gross=Decimal("100.00"),
            returns=Decimal("55.00"),
            returns_count=2,
            net=Decimal("45.00"),
            voided=1,
        ),
    ]


async def test_trigger_listing_names_the_sale_currency(sink: ClientBook) -> None:
    sale = faithful_sale(currency="CHF")
    await sink.commit_sales(make_batch("b1", [sale], triggers=[make_trigger(sale, T0)]))
    (item,) = await sink.list_triggers(STORE)
    assert (item["currency"], item["total"]) == ("CHF", "272.98")


async def test_detail_log_report_and_triggers_are_equal_across_sinks(
    tmp_path: Path, postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    sale = faithful_sale()
    rows = [
        SaleRow(sale=sale, version=1, warnings=("tenders.sum: a warning",)),
        SaleRow(sale=make_sale("r-1", "-40.00"), version=1, customer_linked=False),
    ]
    batch = msgspec.structs.replace(
        batch_of("b1", rows), voids=[make_void("r-1")], triggers=[make_trigger(sale, T0)]
    )
    seen: list[tuple[Any, ...]] = []
    for backend in (
        SqliteBackend(tmp_path),
        PostgresBackend(tmp_path, postgres_server, postgres_dsn),
    ):
        async with backend.open() as opened:
            await opened.commit_sales(batch)
            details = []
            for sid in ("f-1", "r-1"):
                got = await opened.get_sale(STORE, sid)
                assert got is not None
                assert got.pop("committed_at")  # the commit instant differs, nothing else
                details.append(got)
                shown = sale_detail({**got, "committed_at": None}, "canonical")
                json.dumps(shown)
                details.append(shown)
            log = await opened.sales_log(STORE, DAY)
            for item in log:
                assert item.pop("committed_at")
            seen.append(
                (
                    details,
                    log,
                    await opened.sales_report(STORE, DAY, DAY),
                    await opened.list_triggers(STORE),
                )
            )
    sqlite_view, postgres_view = seen
    assert sqlite_view == postgres_view
    (f1, f1_shown, r1, _) = sqlite_view[0]
    assert f1["warnings"] == ["tenders.sum: a warning"]
    assert (r1["voided"], r1["customer_linked"]) == (True, False)
    assert f1_shown["total"] == "272.98" and f1_shown["tenders"][1]["amount"] == "72.98"


# -- schema migrations --------------------------------------------------------------------


def _v1(ddl: str, sku_decl: str, method_id_decl: str) -> str:
    """The version-1 schema: sale_lines.sku NOT NULL, no tenders.method_id."""
    assert ddl.count(sku_decl) == 2 and ddl.count(method_id_decl) == 1
    # products.sku comes first in the DDL and stays nullable; sale_lines.sku is the second.
    head, rest = ddl.split(sku_decl, 1)
    rest = rest.replace(sku_decl, sku_decl.replace(",\n", " NOT NULL,\n"), 1)
    return (head + sku_decl + rest).replace(method_id_decl, "")


async def test_sqlite_migrates_a_version_1_file_in_place(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path)
    backend.path.parent.mkdir(parents=True)
    v1 = _v1(sqlite_schema.SCHEMA, "    sku TEXT,\n", "    method_id TEXT,\n")
    db = sqlite3.connect(backend.path, isolation_level=None)
    try:
        db.executescript(v1)
        db.execute(
            "INSERT INTO sales (store, id, version, business_date, occurred_at, kind, origin,"
            " channel, customer_linked, currency, subtotal, tax, total, shipping, fees, tip,"
            " line_count, committed_at, batch_id, body) VALUES ('s1', 'old', 1, '2024-05-01',"
            " '2024-05-01T15:00:00.000000+00:00', 'sale', 'pos', 'pos', 1, 'USD', '5.00',"
            " '0', '5.00', '0', '0', '0', 1, '2024-05-01T16:00:00.000000+00:00', 'b0', ?)",
            (json.dumps({"type": "sale", "id": "old", "total": "5.00", "currency": "USD"}),),
        )
        db.execute(
            "INSERT INTO sale_lines (store, sale_id, line_no, sku, quantity, unit_price,"
            " discount, tax, line_kind) VALUES ('s1', 'old', 1, 'OLD-1', '1', '5.00', '0', '0',"
            " 'item')"
        )
        db.execute(
            "INSERT INTO tenders (store, sale_id, seq, method, amount) VALUES"
            " ('s1', 'old', 1, 'cash', '5.00')"
        )
        db.execute("PRAGMA user_version = 1")
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(
                "INSERT INTO sale_lines (store, sale_id, line_no, quantity, unit_price,"
                " discount, tax, line_kind) VALUES ('s1', 'x', 1, '1', '1', '0', '0', 'item')"
            )
    finally:
        db.close()
    async with backend.open() as opened:
        old = await opened.get_sale(STORE, "old")
        assert old is not None
        assert [ln["sku"] for ln in old["lines"]] == ["OLD-1"]
        assert old["tenders"] == [
            {"method": "cash", "amount": "5.00", "reference": None, "method_id": None}
        ]
        await opened.commit_sales(make_batch("b1", [faithful_sale()]))
        got = await opened.get_sale(STORE, "f-1")
        assert got is not None and got["lines"][1]["sku"] is None
    db = sqlite3.connect(backend.path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (sqlite_schema.SCHEMA_VERSION,)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        columns = {r[1]: r[3] for r in db.execute("PRAGMA table_info(sale_lines)")}
        assert columns["sku"] == 0  # notnull flag off
    finally:
        db.close()


async def test_a_failed_sqlite_migration_leaves_the_version_1_file_intact(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path)
    backend.path.parent.mkdir(parents=True)
    db = sqlite3.connect(backend.path, isolation_level=None)
    try:
        db.executescript(_v1(sqlite_schema.SCHEMA, "    sku TEXT,\n", "    method_id TEXT,\n"))
        db.execute(
            "INSERT INTO sale_lines (store, sale_id, line_no, sku, quantity, unit_price,"
            " discount, tax, line_kind) VALUES ('s1', 'old', 1, 'OLD-1', '1', '5.00', '0', '0',"
            " 'item')"
        )
        # The last step (ADD COLUMN method_id) fails after sale_lines was rebuilt.
        db.execute("ALTER TABLE tenders ADD COLUMN method_id TEXT")
        db.execute("PRAGMA user_version = 1")
    finally:
        db.close()
    with pytest.raises(SinkError, match="method_id"):
        async with backend.open():
            pass
    db = sqlite3.connect(backend.path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
        notnull = {r[1]: r[3] for r in db.execute("PRAGMA table_info(sale_lines)")}
        assert notnull["sku"] == 1  # the rebuild was rolled back with the rest
        assert db.execute("SELECT sale_id, sku FROM sale_lines").fetchall() == [("old", "OLD-1")]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "sale_lines_v2" not in tables
    finally:
        db.close()


async def test_sqlite_refuses_a_file_from_a_newer_possync(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path)
    async with backend.open():
        pass
    db = sqlite3.connect(backend.path, isolation_level=None)
    try:
        db.execute(f"PRAGMA user_version = {sqlite_schema.SCHEMA_VERSION + 1}")
    finally:
        db.close()
    with pytest.raises(SinkError, match="newer") as err:
        async with backend.open():
            pass
    assert not err.value.retriable


async def test_postgres_migrates_version_1_tables(
    tmp_path: Path, postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    backend = PostgresBackend(tmp_path, postgres_server, postgres_dsn)
    v1 = _v1(postgres_schema.DDL, "    sku text,\n", "    method_id text,\n")
    v1 = v1.split("-- Migrations", 1)[0].format(s=PG_SCHEMA)
    await backend._exec(v1)
    await backend._exec(
        f"INSERT INTO {PG_SCHEMA}.tenders (store, sale_id, seq, method, amount)"
        " VALUES ('s1', 'old', 1, 'cash', 5.00)"
    )
    conn = await asyncpg.connect(postgres_dsn)
    try:
        with pytest.raises(asyncpg.NotNullViolationError):
            await conn.execute(
                f"INSERT INTO {PG_SCHEMA}.sale_lines (store, sale_id, line_no, quantity,"
                " unit_price, discount, tax, line_kind) VALUES ('s1', 'x', 1, 1, 1, 0, 0, 'item')"
            )
    finally:
        await conn.close()
    async with backend.open() as opened:
        await opened.commit_sales(make_batch("b1", [faithful_sale()]))
        got = await opened.get_sale(STORE, "f-1")
        assert got is not None
        assert [ln["sku"] for ln in got["lines"]] == ["RING-1", None]
        assert [t["method_id"] for t in got["tenders"]] == ["pm-7", "1"]
    conn = await asyncpg.connect(postgres_dsn)
    try:
        old = await conn.fetchrow(
            f"SELECT method, amount, method_id FROM {PG_SCHEMA}.tenders WHERE sale_id = 'old'"
        )
    finally:
        await conn.close()
    assert old is not None and tuple(old) == ("cash", Decimal("5.00"), None)


async def test_postgres_start_up_does_not_lock_current_tables(
    tmp_path: Path, postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    """A second start-up must not queue behind a writer: no ALTER on a current table."""
    backend = PostgresBackend(tmp_path, postgres_server, postgres_dsn)
    async with backend.open():
        pass
    writer = await asyncpg.connect(postgres_dsn)
    try:
        tx = writer.transaction()
        await tx.start()
        # What a commit in another process holds while it writes lines and tenders.
        await writer.execute(
            f"LOCK TABLE {PG_SCHEMA}.sale_lines, {PG_SCHEMA}.tenders IN ROW EXCLUSIVE MODE"
        )
        async with asyncio.timeout(5), backend.open() as opened:
            await opened.health()
        await tx.rollback()
    finally:
        await writer.close()
