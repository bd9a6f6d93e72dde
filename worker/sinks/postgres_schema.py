"""Schema of the PostgreSQL sink (the tables are described in `sinks.sqlite`).

`DDL` is idempotent: `CREATE ... IF NOT EXISTS` for a new database, then the migrations of
tables an older possync created, each run only where the catalog still shows the old shape. It runs at every start-up in
one transaction, under an advisory lock so concurrent start-ups take turns.
"""

from __future__ import annotations

DDL_LOCK = 0x706F7373796E63  # "possync": serializes start-up DDL across processes

# The columns the trigger outbox and the delivered trigger events share.
_TRIGGER_COLUMNS = """    event_id text PRIMARY KEY,
    store text NOT NULL,
    sale_id text NOT NULL,
    trigger_name text NOT NULL,
    action text NOT NULL,
    customer_id text,
    total numeric NOT NULL,
    business_date date NOT NULL,
    due_date date NOT NULL,
    due_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
"""

DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.customers (
    store text NOT NULL,
    id text NOT NULL,
    version bigint NOT NULL,
    first_name text,
    last_name text,
    email text,
    phone text,
    status text NOT NULL,
    updated_at timestamptz,
    synced_at timestamptz NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (store, id)
);
CREATE INDEX IF NOT EXISTS customers_by_email ON {s}.customers (store, email);
CREATE TABLE IF NOT EXISTS {s}.products (
    store text NOT NULL,
    id text NOT NULL,
    version bigint NOT NULL,
    sku text,
    name text,
    category text,
    price numeric,
    currency text,
    status text NOT NULL,
    is_unique_piece boolean NOT NULL,
    updated_at timestamptz,
    synced_at timestamptz NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (store, id)
);
CREATE INDEX IF NOT EXISTS products_by_sku ON {s}.products (store, sku);
CREATE TABLE IF NOT EXISTS {s}.sales (
    store text NOT NULL,
    id text NOT NULL,
    version bigint NOT NULL,
    business_date date NOT NULL,
    occurred_at timestamptz NOT NULL,
    kind text NOT NULL,
    origin text NOT NULL,
    channel text NOT NULL,
    customer_id text,
    customer_linked boolean NOT NULL,
    employee_id text,
    original_id text,
    display_number text,
    location_id text,
    register_id text,
    currency text NOT NULL,
    subtotal numeric NOT NULL,
    tax numeric NOT NULL,
    total numeric NOT NULL,
    shipping numeric NOT NULL,
    fees numeric NOT NULL,
    tip numeric NOT NULL,
    line_count integer NOT NULL,
    voided boolean NOT NULL DEFAULT false,
    voided_at timestamptz,
    warning text,
    committed_at timestamptz NOT NULL,
    batch_id text NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (store, id)
);
CREATE INDEX IF NOT EXISTS sales_by_date ON {s}.sales (store, business_date);
CREATE INDEX IF NOT EXISTS sales_by_customer ON {s}.sales (store, customer_id)
    WHERE customer_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS {s}.sale_lines (
    store text NOT NULL,
    sale_id text NOT NULL,
    line_no integer NOT NULL,
    line_id text,
    sku text,
    product_id text,
    description text,
    category text,
    quantity numeric NOT NULL,
    unit_price numeric NOT NULL,
    discount numeric NOT NULL,
    tax numeric NOT NULL,
    line_kind text NOT NULL,
    employee_id text,
    original_line_id text,
    restock boolean,
    PRIMARY KEY (store, sale_id, line_no)
);
CREATE TABLE IF NOT EXISTS {s}.tenders (
    store text NOT NULL,
    sale_id text NOT NULL,
    seq integer NOT NULL,
    method text NOT NULL,
    amount numeric NOT NULL,
    reference text,
    method_id text,
    PRIMARY KEY (store, sale_id, seq)
);
CREATE TABLE IF NOT EXISTS {s}.voids (
    store text NOT NULL,
    sale_id text NOT NULL,
    occurred_at timestamptz NOT NULL,
    reason text,
    version bigint NOT NULL,
    batch_id text NOT NULL,
    PRIMARY KEY (store, sale_id)
);
CREATE TABLE IF NOT EXISTS {s}.trigger_outbox (
<trigger columns>    batch_id text NOT NULL,
    delivered_at timestamptz,
    cancelled boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS trigger_outbox_due ON {s}.trigger_outbox (due_at)
    WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS trigger_outbox_by_store ON {s}.trigger_outbox (store, created_at);
CREATE TABLE IF NOT EXISTS {s}.trigger_events (
<trigger columns>    fired_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.commit_batches (
    batch_id text PRIMARY KEY,
    store text NOT NULL,
    window_at timestamptz NOT NULL,
    sales integer NOT NULL,
    voids integer NOT NULL,
    triggers integer NOT NULL,
    total_sum numeric NOT NULL,
    ids_sha256 text NOT NULL,
    committed_at timestamptz NOT NULL,
    outcome jsonb
);
-- Migrations of tables created by an older possync. Each ALTER runs only when the table
-- still has the old shape: ALTER TABLE takes an ACCESS EXCLUSIVE lock even when it would
-- change nothing, and a start-up must not queue behind another process's commit for that.
-- 2: a POS line may carry no SKU; tenders keep the POS's own id of the payment type.
DO $migrate$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {sale_lines}::regclass
               AND attname = 'sku' AND attnotnull) THEN
        ALTER TABLE {s}.sale_lines ALTER COLUMN sku DROP NOT NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {tenders}::regclass
                   AND attname = 'method_id' AND NOT attisdropped) THEN
        ALTER TABLE {s}.tenders ADD COLUMN method_id text;
    END IF;
END
$migrate$;
"""
DDL = DDL.replace("<trigger columns>", _TRIGGER_COLUMNS)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def ddl(schema: str) -> str:
    """The DDL with the schema name quoted in (as an identifier, and in regclass literals)."""
    s = '"' + schema.replace('"', '""') + '"'
    return DDL.format(s=s, sale_lines=_literal(f"{s}.sale_lines"), tenders=_literal(f"{s}.tenders"))
