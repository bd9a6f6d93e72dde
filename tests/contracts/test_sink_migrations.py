"""Sink schema migrations: a version-1 SQLite file or PostgreSQL schema is migrated in
place (or left intact when a step fails); a file from a newer possync is refused.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from tests.contracts.sinks import (
    PG_SCHEMA,
    STORE,
    PostgresBackend,
    SqliteBackend,
    faithful_sale,
    make_batch,
)
from worker.errors import SinkError
from worker.sinks import postgres_schema, sqlite_schema

if TYPE_CHECKING:
    # Imported by pytest as a plugin (each suite's pytest_plugins); importing it at run
    # time here first would skip its assertion rewriting.
    from tests.plugins.postgres import PostgresServer


pytest_plugins = ["tests.plugins.postgres"]


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
