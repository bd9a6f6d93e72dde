"""The sink contract suite's room: backends, fixtures and record builders.

The `backend` fixture opens every registered sink kind the same way the service does
(`worker.sinks.open_sink`): SQLite (a file in tmp_path) and PostgreSQL (a fresh database on
a throw-away server from `tests.plugins.postgres`, which each test module using these
fixtures lists in `pytest_plugins`). Faults are real: a database trigger that raises, a
write lock held by another connection, a stopped server. The suites are
tests/contracts/test_sink_*.py; other suites (tests/test_pagination.py) reuse the fixtures.
"""

from __future__ import annotations

import asyncio
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

from worker.batch import CommitBatch, SaleRow, TriggerEvent
from worker.config import Config, HttpOutputConfig, PostgresSinkConfig, SqliteSinkConfig
from worker.records import Adjustment, Sale, SaleLine, Tender, Void
from worker.sinks import open_sink
from worker.sinks.base import ClientBook, ReportRow

if TYPE_CHECKING:
    # Imported by pytest as a plugin (each suite's pytest_plugins); importing it at run
    # time here first would skip its assertion rewriting.
    from tests.plugins.postgres import PostgresServer


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


class FanoutBackend(SqliteBackend):
    """The SQLite sink behind the fanout (`[[outputs]]` configured): the same contract.

    Its HTTP output points at a closed port, so its events wait in the outbox (retried);
    the contract is about the ClientBook the registry yields, not the delivery."""

    kind = "sqlite+outputs"

    def config(self) -> Config:
        out = HttpOutputConfig(
            name="contract",
            records=["customer", "product", "sale", "void", "trigger", "manifest"],
            url="http://127.0.0.1:9/events",
        )
        return msgspec.structs.replace(super().config(), outputs=[out])


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


@pytest.fixture(params=["sqlite", "sqlite+outputs", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path)
    if request.param == "sqlite+outputs":
        return FanoutBackend(tmp_path)
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


def report_row(
    day: date,
    currency: str,
    count: int,
    gross: str,
    returns: str,
    returns_count: int,
    net: str,
    voided: int,
) -> ReportRow:
    """An expected Sales Report row in the report's column order, its money as decimal text."""
    return ReportRow(
        date=day,
        currency=currency,
        count=count,
        gross=Decimal(gross),
        returns=Decimal(returns),
        returns_count=returns_count,
        net=Decimal(net),
        voided=voided,
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
    rows = [SaleRow(sale=s, version=s.effective_version) for s in sales]
    return CommitBatch.build(batch_id, store, T0, rows, list(voids), list(triggers))


def canonical(sale: Sale) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(sale)
    return out


def subset(got: dict[str, Any] | None, expected: dict[str, Any]) -> dict[str, Any]:
    assert got is not None
    return {k: got.get(k) for k in expected}


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
