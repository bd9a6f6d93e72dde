"""The adapter contract, over every registered source (`worker.adapters.ADAPTERS`).

For each source, hypothesis feeds:
- any bytes in any delivery (content type, file name, signed topic): only RecordInvalid,
  AuthError or UnsupportedMediaType come out, and every rejection says why;
- any bytes in the source's own delivery: only RecordInvalid, naming a field;
- its fixtures (tests/fixtures/<source>; built dicts for canonical) with one node of the
  JSON document, or one cell of the CSV file, replaced by anything: the payload parses or
  raises RecordInvalid naming a field; each rejection names one; every record returned
  has an aware `occurred_at` (sales), and decodes back through the canonical decoder to
  the same record with the same decimal text (money exact);
- the fixtures with one node replaced by a marker value: no error, rejection or field
  path quotes it (no PII in answers or logs).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.adapter_helpers import FIXTURES, fixture, make_ctx, sign
from tests.factories import sale_dict
from tests.shopify_helpers import ctx_for
from worker.adapters import ADAPTERS, MAPPING_SOURCES
from worker.adapters.base import Parsed
from worker.adapters.shopify import TOPICS
from worker.errors import AuthError, RecordInvalid, UnsupportedMediaType
from worker.records import RECORD_DECODER, Sale, encode

SOURCES = sorted(ADAPTERS)
FORM = "application/x-www-form-urlencoded"
NDJSON = "application/x-ndjson"
ZONE = "America/New_York"
MARKER = "zq-Marker-4711@example.com"


@dataclass(frozen=True)
class Delivery:
    """How one payload reaches its adapter besides the body."""

    content_type: str = "application/json"
    name: str | None = None  # the file name (file drops, uploads)
    topic: str | None = None  # a Shopify topic: the body is signed for it
    form: str | None = None  # a Lightspeed X webhook: the body is the form's `payload`


def deliver(source: str, body: bytes, how: Delivery) -> Parsed:
    """Parse `body` with the source's registered adapter, delivered as `how` says."""
    adapter = ADAPTERS[source]
    if how.topic is not None:
        return adapter.parse(body, ctx_for(body, how.topic, content_type=how.content_type))
    if how.form is not None:
        form = {"payload": body.decode(), "domain_prefix": "lumen", "type": how.form}
        body = urllib.parse.urlencode(form).encode()
    ctx = make_ctx(source, zone=ZONE, content_type=how.content_type, filename=how.name)
    return adapter.parse(body, ctx)


# -- what each source is sent ------------------------------------------------------------

TX1 = "1-2026-03-14-12-00-Transaction.json"
EDGE_CUSTOMERS = "2026-03-14-11-21-13-CustomerList.json"
EDGE_ITEMS = "2026-03-14-11-21-13-FULL-FullItemList.json"

# Any bytes in these deliveries raise nothing but RecordInvalid.
OWN_DELIVERIES: dict[str, list[Delivery]] = {
    "canonical": [Delivery(), Delivery(NDJSON)],
    "lightspeed": [Delivery(), Delivery(FORM), Delivery("")],
    "shopify": [Delivery(topic=topic) for topic in sorted(TOPICS)],
    "the_edge": [Delivery(name=name) for name in (TX1, EDGE_CUSTOMERS, EDGE_ITEMS, None, "x.json")],
    **{source: [Delivery("text/csv", name="transactions.csv")] for source in MAPPING_SOURCES},
}

_SHOPIFY_SEEDS = [
    ("orders_create.json", "orders/updated"),
    ("orders_create_order_discount.json", "orders/create"),
    ("orders_create_order_tax.json", "orders/create"),
    ("orders_paid_transactions.json", "orders/paid"),
    ("orders_create_taxes_included.json", "orders/create"),
    ("refunds_create_legacy.json", "refunds/create"),
    ("refunds_create_unknown_order.json", "refunds/create"),
    ("customers_update_addresses.json", "customers/update"),
    ("refunds_create.json", "refunds/create"),
    ("refunds_create_shipping.json", "refunds/create"),
    ("customers_update.json", "customers/update"),
    ("products_update.json", "products/update"),
]
_LIGHTSPEED_SEEDS = [
    "x_sale.json",
    "x_return.json",
    "x_customer.json",
    "x_product.json",
    "vend_register_sales.json",
    "r_sale.json",
    "r_sale_10.json",
    "r_refund.json",
    "r_sales_list.json",
    "r_customer.json",
    "r_item.json",
]
_EDGE_SEEDS = [
    TX1,
    "2-2026-03-14-12-00-Transaction.json",
    "2026-11-02-06-00-Transaction.json",
    EDGE_CUSTOMERS,
    EDGE_ITEMS,
]
_CANONICAL_SEEDS: list[Any] = [
    sale_dict("S-1"),
    sale_dict("R-1", lines=1, kind="return", original_id="S-1"),
    {"type": "customer", "id": "C-1", "first_name": "Ada", "email": "ada@example.com"},
    {"type": "product", "id": "P-1", "sku": "RING-1", "name": "Ring", "price": "120.00"},
    {"type": "void", "id": "S-1", "occurred_at": "2026-11-20T16:00:00+00:00"},
    [sale_dict("S-2"), {"type": "customer", "id": "C-2", "last_name": "Lovelace"}],
]


@dataclass(frozen=True)
class Seed:
    """A JSON document a source is sent: a fixture file, or a document built here."""

    how: Delivery
    name: str = ""  # tests/fixtures/<source>/<name>
    doc: Any = None

    def load(self, source: str) -> Any:
        """A fresh copy of the document."""
        if self.doc is not None:
            return copy.deepcopy(self.doc)
        return json.loads(fixture(source, self.name))


JSON_SEEDS: dict[str, list[Seed]] = {
    "canonical": [Seed(Delivery(), doc=doc) for doc in _CANONICAL_SEEDS],
    "lightspeed": [
        *(Seed(Delivery(), name) for name in _LIGHTSPEED_SEEDS),
        Seed(Delivery(FORM, form="sale.update"), "x_sale_webhook_payload.json"),
        Seed(Delivery(FORM, form="customer.update"), "x_customer_webhook.json"),
    ],
    "shopify": [Seed(Delivery(topic=topic), name) for name, topic in _SHOPIFY_SEEDS],
    "the_edge": [Seed(Delivery(name=name), name) for name in _EDGE_SEEDS],
}
JSON_CASES = [
    pytest.param(source, n, id=f"{source}:{seed.name or n}")
    for source, seeds in sorted(JSON_SEEDS.items())
    for n, seed in enumerate(seeds)
]

CSV_FILES = sorted(
    (source, path.name) for source in MAPPING_SOURCES for path in (FIXTURES / source).glob("*.csv")
)


def test_every_source_has_a_delivery_and_fixtures() -> None:
    assert set(OWN_DELIVERIES) == set(SOURCES)
    assert set(JSON_SEEDS) | {source for source, _ in CSV_FILES} == set(SOURCES)
    assert {source for source, _ in CSV_FILES} == set(MAPPING_SOURCES)


# -- checks on what comes out ------------------------------------------------------------


def check_parsed(parsed: Parsed) -> None:
    """Each rejection names a field and a reason; each record survives the canonical codec."""
    for rejection in parsed.rejected:
        assert rejection.field and rejection.error
    for record in parsed.records:
        if isinstance(record, Sale):
            assert record.occurred_at.tzinfo is not None
        raw = encode(record)
        back = RECORD_DECODER.decode(raw)
        assert back == record
        assert encode(back) == raw  # the same decimal text: money exact


def _mutate(doc: Any, path: list[int], value: Any) -> Any:
    """Replace the node of a JSON document that a list of indices picks."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return value
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)]
    doc[key] = _mutate(doc[key], path[1:], value)
    return doc


def _mutate_cell(source: str, name: str, row: int, col: int, value: str) -> bytes:
    rows = list(csv.reader(io.StringIO(fixture(source, name).decode())))
    cells = rows[min(row, len(rows) - 1)]
    cells[col % len(cells)] = value
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=24),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
paths = st.lists(st.integers(min_value=0, max_value=60), max_size=6)
cells = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)


# -- the contract --------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
@given(
    body=st.binary(max_size=512),
    content_type=st.sampled_from(
        ["application/json", NDJSON, "text/csv", FORM, "", "text/xml", "multipart/form-data"]
    ),
    filename=st.sampled_from(
        [None, "transactions.csv", "customers.csv", TX1, EDGE_CUSTOMERS, "x", "x.json"]
    ),
    signed=st.booleans(),
)
def test_any_bytes_any_delivery_raise_only_the_contract_errors(
    source: str, body: bytes, content_type: str, filename: str | None, signed: bool
) -> None:
    secret = "s3cret"
    signature = sign(body, secret) if signed else "AAAA"
    ctx = make_ctx(
        source,
        content_type=content_type,
        filename=filename,
        secret=secret,
        headers={"X-Shopify-Topic": "orders/create", "X-Shopify-Hmac-Sha256": signature},
    )
    try:
        parsed = ADAPTERS[source].parse(body, ctx)
    except (RecordInvalid, AuthError, UnsupportedMediaType) as err:
        assert err.status < 500 and err.field
        return
    check_parsed(parsed)


@pytest.mark.parametrize("source", SOURCES)
@given(body=st.binary(max_size=512), data=st.data())
def test_any_bytes_in_the_sources_own_delivery_raise_only_record_invalid(
    source: str, body: bytes, data: st.DataObject
) -> None:
    how = data.draw(st.sampled_from(OWN_DELIVERIES[source]))
    if how.form is not None:
        body = body.decode(errors="replace").encode()
    try:
        parsed = deliver(source, body, how)
    except RecordInvalid as err:
        assert err.field
        return
    check_parsed(parsed)


@pytest.mark.parametrize(("source", "seed"), JSON_CASES)
@given(path=paths, value=json_values)
def test_mutated_json_parses_or_raises_record_invalid(
    source: str, seed: int, path: list[int], value: Any
) -> None:
    case = JSON_SEEDS[source][seed]
    body = json.dumps(_mutate(case.load(source), path, value)).encode()
    try:
        parsed = deliver(source, body, case.how)
    except RecordInvalid as err:
        assert err.field
        return
    check_parsed(parsed)


@pytest.mark.parametrize(("source", "name"), CSV_FILES)
@given(row=st.integers(min_value=1, max_value=6), col=st.integers(0, 30), value=cells)
def test_mutated_csv_cells_parse_or_raise_record_invalid(
    source: str, name: str, row: int, col: int, value: str
) -> None:
    body = _mutate_cell(source, name, row, col, value)
    try:
        parsed = deliver(source, body, Delivery("text/csv", name=name))
    except RecordInvalid as err:
        assert err.field
        return
    check_parsed(parsed)


def _assert_not_echoed(parsed_or_error: Parsed | RecordInvalid) -> None:
    if isinstance(parsed_or_error, RecordInvalid):
        assert MARKER not in str(parsed_or_error)
        assert MARKER not in (parsed_or_error.field or "")
        assert MARKER not in json.dumps(parsed_or_error.to_json())
        return
    for rejection in parsed_or_error.rejected:
        assert MARKER not in rejection.error and MARKER not in (rejection.field or "")


@pytest.mark.parametrize(("source", "seed"), JSON_CASES)
@given(path=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=6))
def test_a_bad_json_value_is_never_echoed(source: str, seed: int, path: list[int]) -> None:
    case = JSON_SEEDS[source][seed]
    body = json.dumps(_mutate(case.load(source), path, MARKER)).encode()
    try:
        result: Parsed | RecordInvalid = deliver(source, body, case.how)
    except RecordInvalid as err:
        result = err
    _assert_not_echoed(result)


@pytest.mark.parametrize(("source", "name"), CSV_FILES)
@given(row=st.integers(min_value=1, max_value=6), col=st.integers(0, 30))
def test_a_bad_csv_cell_is_never_echoed(source: str, name: str, row: int, col: int) -> None:
    body = _mutate_cell(source, name, row, col, MARKER)
    try:
        result: Parsed | RecordInvalid = deliver(source, body, Delivery("text/csv", name=name))
    except RecordInvalid as err:
        result = err
    _assert_not_echoed(result)
