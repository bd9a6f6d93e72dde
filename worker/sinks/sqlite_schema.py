"""Schema of the SQLite sink and its migrations (the tables are described in `sinks.sqlite`).

`PRAGMA user_version` is the schema version. A new file gets the current schema; an older
file is migrated step by step, every step and the version bump in ONE `BEGIN IMMEDIATE`
transaction, so a crash mid-migration leaves the file at its old version, intact. A file
from a newer possync (a higher version) is refused rather than written in a shape this
code does not know.

Versions:

1. the first schema.
2. `sale_lines.sku` nullable (a POS line may carry no SKU: None, never ''); `tenders.method_id`
   (the POS's own id of the payment type). SQLite cannot drop NOT NULL in place, so
   `sale_lines` is rebuilt: new table, copy every row, drop the old one, rename.
"""

from __future__ import annotations

import aiosqlite

from worker.errors import SinkError

SCHEMA_VERSION = 2

# The sale_lines columns, as a new file creates them and as migration 2 rebuilds them.
_SALE_LINES = """(
    store TEXT NOT NULL,
    sale_id TEXT NOT NULL,
    line_no INTEGER NOT NULL,
    line_id TEXT,
    sku TEXT,
    product_id TEXT,
    description TEXT,
    category TEXT,
    quantity TEXT NOT NULL,
    unit_price TEXT NOT NULL,
    discount TEXT NOT NULL,
    tax TEXT NOT NULL,
    line_kind TEXT NOT NULL,
    employee_id TEXT,
    original_line_id TEXT,
    restock INTEGER,
    PRIMARY KEY (store, sale_id, line_no)
) WITHOUT ROWID"""

# The columns the trigger outbox and the delivered trigger events share.
_TRIGGER_COLUMNS = """    event_id TEXT PRIMARY KEY,
    store TEXT NOT NULL,
    sale_id TEXT NOT NULL,
    trigger_name TEXT NOT NULL,
    action TEXT NOT NULL,
    customer_id TEXT,
    total TEXT NOT NULL,
    business_date TEXT NOT NULL,
    due_date TEXT NOT NULL,
    due_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS customers (
    store TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    first_name TEXT,
    last_name TEXT,
    email TEXT,
    phone TEXT,
    status TEXT NOT NULL,
    updated_at TEXT,
    synced_at TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (store, id)
);
CREATE INDEX IF NOT EXISTS customers_by_email ON customers (store, email);
CREATE TABLE IF NOT EXISTS products (
    store TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    sku TEXT,
    name TEXT,
    category TEXT,
    price TEXT,
    currency TEXT,
    status TEXT NOT NULL,
    is_unique_piece INTEGER NOT NULL,
    updated_at TEXT,
    synced_at TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (store, id)
);
CREATE INDEX IF NOT EXISTS products_by_sku ON products (store, sku);
CREATE TABLE IF NOT EXISTS sales (
    store TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    business_date TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    kind TEXT NOT NULL,
    origin TEXT NOT NULL,
    channel TEXT NOT NULL,
    customer_id TEXT,
    customer_linked INTEGER NOT NULL,
    employee_id TEXT,
    original_id TEXT,
    display_number TEXT,
    location_id TEXT,
    register_id TEXT,
    currency TEXT NOT NULL,
    subtotal TEXT NOT NULL,
    tax TEXT NOT NULL,
    total TEXT NOT NULL,
    shipping TEXT NOT NULL,
    fees TEXT NOT NULL,
    tip TEXT NOT NULL,
    line_count INTEGER NOT NULL,
    voided INTEGER NOT NULL DEFAULT 0,
    voided_at TEXT,
    warning TEXT,
    committed_at TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (store, id)
);
CREATE INDEX IF NOT EXISTS sales_by_date ON sales (store, business_date);
CREATE INDEX IF NOT EXISTS sales_by_customer ON sales (store, customer_id)
    WHERE customer_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS sale_lines {_SALE_LINES};
CREATE TABLE IF NOT EXISTS tenders (
    store TEXT NOT NULL,
    sale_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    method TEXT NOT NULL,
    amount TEXT NOT NULL,
    reference TEXT,
    method_id TEXT,
    PRIMARY KEY (store, sale_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS voids (
    store TEXT NOT NULL,
    sale_id TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    reason TEXT,
    version INTEGER NOT NULL,
    batch_id TEXT NOT NULL,
    PRIMARY KEY (store, sale_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trigger_outbox (
{_TRIGGER_COLUMNS}    batch_id TEXT NOT NULL,
    delivered_at TEXT,
    cancelled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS trigger_outbox_due ON trigger_outbox (due_at)
    WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS trigger_outbox_by_store ON trigger_outbox (store, created_at);
CREATE TABLE IF NOT EXISTS trigger_events (
{_TRIGGER_COLUMNS}    fired_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS commit_batches (
    batch_id TEXT PRIMARY KEY,
    store TEXT NOT NULL,
    window_at TEXT NOT NULL,
    sales INTEGER NOT NULL,
    voids INTEGER NOT NULL,
    triggers INTEGER NOT NULL,
    total_sum TEXT NOT NULL,
    ids_sha256 TEXT NOT NULL,
    committed_at TEXT NOT NULL,
    outcome TEXT NOT NULL
);
"""

_SALE_LINES_V2 = f"""
CREATE TABLE sale_lines_v2 {_SALE_LINES}
"""

_LINE_COLUMNS = (
    "store, sale_id, line_no, line_id, sku, product_id, description, category, quantity,"
    " unit_price, discount, tax, line_kind, employee_id, original_line_id, restock"
)

# MIGRATIONS[v] takes a file from version v to v + 1.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        _SALE_LINES_V2,
        f"INSERT INTO sale_lines_v2 ({_LINE_COLUMNS}) SELECT {_LINE_COLUMNS} FROM sale_lines",
        "DROP TABLE sale_lines",
        "ALTER TABLE sale_lines_v2 RENAME TO sale_lines",
        "ALTER TABLE tenders ADD COLUMN method_id TEXT",
    ),
}


def statements(script: str) -> list[str]:
    """The statements of a DDL script (none of ours has a `;` inside a statement)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def _refuse_newer(found: int) -> None:
    if found > SCHEMA_VERSION:
        raise SinkError(
            f"sqlite sink: the database has schema version {found}, newer than this"
            f" possync's {SCHEMA_VERSION}; refusing to write it",
            retriable=False,
        )


async def migrate(db: aiosqlite.Connection) -> int:
    """Bring the file to SCHEMA_VERSION in one transaction; the version it had before."""
    # Statement by statement, not executescript(): that commits first, and the version
    # must be read inside the same transaction that changes it.
    await db.execute("BEGIN IMMEDIATE")
    try:
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        found = int(row[0]) if row is not None else 0
        _refuse_newer(found)
        if found > 0:
            for version in range(found, SCHEMA_VERSION):
                for sql in MIGRATIONS[version]:
                    await db.execute(sql)
        # CREATE ... IF NOT EXISTS: the whole schema on a new file, nothing on a current one.
        for sql in statements(SCHEMA):
            await db.execute(sql)
        await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        await db.execute("COMMIT")
    except BaseException:
        await db.rollback()
        raise
    return found
