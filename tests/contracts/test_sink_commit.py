"""Sink contract, write side, over every sink: entity upserts, commit_sales (idempotent
batches, versions), voids and trigger delivery.
"""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import msgspec

from tests.contracts.sinks import (
    DAY,
    STORE,
    T0,
    canonical,
    make_batch,
    make_sale,
    make_trigger,
    make_void,
    report_row,
    subset,
)
from worker.batch import CommitOutcome
from worker.records import Customer, Entity, Product, SaleLine, Tender
from worker.sinks.base import ClientBook, EntityOutcome

pytest_plugins = ["tests.plugins.postgres"]


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
        report_row(DAY, "USD", 1, "5.00", "0", 0, "5.00", 1)
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
