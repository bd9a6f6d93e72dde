"""The cyclic GC's settings for `serve` (issue 11): untracked records, the young threshold.

Records are decoded by the thousand on every window page; a tracked struct is something the
collector traverses on every young collection. These tests pin what makes untracking safe
(records are frozen and hold scalars, lists of records, and str -> str dicts: they cannot
be part of a reference cycle) and the threshold's parsing.
"""

from __future__ import annotations

import gc

from worker.app import YOUNG_GC_THRESHOLD, young_gc_threshold
from worker.batch import SaleRow
from worker.buffers.base import Entry
from worker.records import RECORD_DECODER, SPOOLED_DECODER, Customer, Product, Sale
from worker.validation import BatchItem

SALE = (
    b'{"type":"sale","id":"S-1","occurred_at":"2026-11-25T10:00:00-05:00","currency":"USD",'
    b'"lines":[{"sku":"R-1","quantity":"1","unit_price":"100.00"}],"subtotal":"100.00",'
    b'"tax":"8.00","total":"108.00","tenders":[{"method":"Cash","amount":"108.00"}],'
    b'"attributes":{"note":"gift"},"adjustments":[{"kind":"tip","amount":"0.00"}]}'
)


def test_decoded_records_are_not_tracked_by_the_collector() -> None:
    sale = SPOOLED_DECODER.decode(SALE)
    assert isinstance(sale, Sale)
    assert not gc.is_tracked(sale)
    assert not any(gc.is_tracked(x) for x in (*sale.lines, *sale.tenders, *sale.adjustments))
    customer = RECORD_DECODER.decode(
        b'{"type":"customer","id":"C-1","address":{"city":"Bern"},"attributes":{"a":"b"}}'
    )
    assert isinstance(customer, Customer)
    assert not gc.is_tracked(customer)
    assert not gc.is_tracked(customer.address)
    product = RECORD_DECODER.decode(b'{"type":"product","id":"P-1","name":"Ring"}')
    assert isinstance(product, Product)
    assert not gc.is_tracked(product)
    # The containers around them still are: what holds a page is collected as before.
    assert gc.is_tracked(sale.lines)
    row = SaleRow(sale=sale, version=1)
    item = BatchItem(seq=1, record=sale)
    entry = Entry(1, "s1", "sale", "S-1", 1, "pos", 0.0, 0, SALE)
    assert not any(gc.is_tracked(x) for x in (row, item, entry))


def test_untracked_records_are_still_freed() -> None:
    # Reference counting frees them: untracking only hides them from the cycle collector.
    import tracemalloc

    gc.disable()  # nothing here may depend on the collector
    tracemalloc.start()
    try:
        kept = [SPOOLED_DECODER.decode(SALE) for _ in range(2000)]
        held, _ = tracemalloc.get_traced_memory()
        del kept
        left, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    assert held > 1_000_000  # 2,000 sales are real memory...
    assert left < held / 20  # ...given back as soon as the last reference goes


def test_gc_threshold_default_and_override() -> None:
    assert young_gc_threshold({}) == YOUNG_GC_THRESHOLD
    assert young_gc_threshold({"POSSYNC_GC_GEN0": "700"}) == 700
    for junk in ("", "abc", "-5", "0", "99", "10000001", "1e9"):
        assert young_gc_threshold({"POSSYNC_GC_GEN0": junk}) == YOUNG_GC_THRESHOLD, junk
