"""Issue 15: every list is complete or says where the rest is.

The four list endpoints (Sales Log, quarantine, trigger events, audit log) page with a
signed keyset cursor and a `next` URL. Against the real app on an ephemeral port
(`tests.appserver.running`), with sets larger than several pages built fast through the
sink or the spool directly: read through `next`, the pages hold every row of the store
exactly once; rows added between two page reads appear once or before the cursor, never
twice; `count` equals the store's own count (and the Sales Report's); filters hold; a
garbled, foreign, re-filtered or edited cursor is a 400 naming `cursor`, a bad `limit` a
400 naming `limit`. The sink functions under the endpoints run over both sinks
(`backend` from the sink contract suite's room, `tests.contracts.sinks`).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from tests.appserver import Harness, make_config, running
from tests.contracts.sinks import (  # the contract suite's backends and builders
    backend,
    make_batch,
    make_sale,
    make_trigger,
    make_void,
    sink,
)
from worker.api import pages
from worker.buffers.base import Buffer
from worker.records import Sale
from worker.sinks.base import ClientBook

if TYPE_CHECKING:
    from tests.plugins.postgres import PostgresServer

pytest_plugins = ["tests.plugins.postgres"]
__all__ = ["backend", "sink"]  # fixtures re-used from the contract suite

NOW = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)
DAY = date(2024, 5, 1)
STORE = "S1"
JSON = dict[str, Any]


def sale_at(sid: str, minute: int, *, customer: str | None = None, day: date = DAY) -> Sale:
    """A sale of `day` at 10:00 + `minute` minutes (several share a minute: id breaks ties)."""
    base = make_sale(sid, "12.50", customer_id=customer, day=day)
    at = datetime(day.year, day.month, day.day, 10, 0, tzinfo=UTC) + timedelta(minutes=minute)
    return msgspec.structs.replace(base, occurred_at=at)


async def commit(
    sink_: ClientBook, batch_id: str, sales: Sequence[Sale], store: str = STORE
) -> None:
    """Commit `sales` in batches of 1,000 straight through the sink (one transaction each)."""
    for n in range(0, len(sales), 1000):
        chunk = sales[n : n + 1000]
        out = await sink_.commit_sales(make_batch(f"{batch_id}-{n}", chunk, store=store))
        assert out.inserted == len(chunk)


# -- the sink functions, over both sinks ---------------------------------------------------


async def test_sales_log_keyset_pages_cover_the_date_once_in_order(sink: ClientBook) -> None:
    sales = [
        sale_at(f"s{i:03d}", i // 4, customer="c1" if i % 3 == 0 else None) for i in range(120)
    ]
    sales.append(sale_at("other-day", 1, day=DAY + timedelta(days=1)))
    await commit(sink, "b", sales, store="s1")
    seen: list[str] = []
    after: tuple[str, str] | None = None
    while True:
        rows = await sink.sales_log("s1", DAY, 7, after=after)
        if not rows:
            break
        assert len(rows) <= 7
        seen += [r["id"] for r in rows]
        after = (rows[-1]["occurred_at"], rows[-1]["id"])
    expected = sorted(
        (s for s in sales if s.business_date == DAY), key=lambda s: (s.occurred_at, s.id)
    )
    assert seen == [s.id for s in expected]
    assert await sink.count_sales("s1", DAY) == 120
    mine = await sink.sales_log("s1", DAY, 1000, customer="c1")
    assert [r["id"] for r in mine] == [s.id for s in expected if s.customer_id == "c1"]
    assert await sink.count_sales("s1", DAY, customer="c1") == 40
    assert await sink.count_sales("s1", DAY, customer="nobody") == 0


async def test_sales_log_rows_committed_between_pages_come_once_or_before_the_cursor(
    sink: ClientBook,
) -> None:
    await commit(sink, "b1", [sale_at(f"s{i:02d}", i) for i in range(30)], store="s1")
    first = await sink.sales_log("s1", DAY, 10)
    after = (first[-1]["occurred_at"], first[-1]["id"])
    # One sale sorts before the cursor (minute 3), one after it (minute 100), one on the
    # cursor's own instant with a larger id (after it), one with a smaller id (before it).
    late = [
        sale_at("early", 3),
        sale_at("late", 100),
        sale_at("s09z", 9),
        sale_at("s08x", 9),
    ]
    await commit(sink, "b2", late, store="s1")
    rest: list[str] = []
    while rows := await sink.sales_log("s1", DAY, 10, after=after):
        rest += [r["id"] for r in rows]
        after = (rows[-1]["occurred_at"], rows[-1]["id"])
    ids = [r["id"] for r in first] + rest
    assert len(ids) == len(set(ids))
    assert {"late", "s09z"} <= set(rest)
    assert not {"early", "s08x"} & set(ids)
    assert len(ids) == 32


async def test_trigger_events_page_newest_first_and_filter_by_state_and_rule(
    sink: ClientBook,
) -> None:
    sales = [sale_at(f"t{i:02d}", i) for i in range(40)]
    triggers = []
    for i, s in enumerate(sales):
        due = datetime(2024, 5, 1, tzinfo=UTC) + timedelta(days=1 if i % 2 else 30)
        created = datetime(2024, 5, 1, 20, 0, tzinfo=UTC) + timedelta(seconds=i // 3)
        for name in ("thank_you", "follow_up"):
            t = make_trigger(s, due, name=name, store="s1")
            triggers.append(msgspec.structs.replace(t, created_at=created))
    await sink.commit_sales(make_batch("b1", sales, triggers=triggers, store="s1"))
    await sink.commit_sales(make_batch("b2", voids=[make_void("t01")], store="s1"))
    delivered = await sink.deliver_due_triggers(datetime(2024, 5, 3, tzinfo=UTC))
    assert len(delivered) == 38  # 20 due, two triggers each; t01's two are cancelled

    async def walk(**filters: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        before: tuple[str, str] | None = None
        while rows := await sink.list_triggers("s1", 9, before=before, **filters):
            out += rows
            before = (rows[-1]["created_at"], rows[-1]["event_id"])
        return out

    everything = await walk()
    assert len(everything) == 80 == len({e["event_id"] for e in everything})
    keys = [(e["created_at"], e["event_id"]) for e in everything]
    assert keys == sorted(keys, reverse=True)
    by_state = {e["event_id"]: e["status"] for e in everything}
    for state in ("pending", "delivered", "cancelled"):
        got = await walk(state=state)
        assert sorted(e["event_id"] for e in got) == sorted(
            k for k, v in by_state.items() if v == state
        )
    assert len(await walk(state="cancelled")) == 2
    assert len(await walk(state="pending")) == 40
    later = datetime(2024, 6, 1, tzinfo=UTC)
    assert len(await walk(state="due", now=later)) == 40  # every pending one is due by then
    assert await walk(state="due", now=datetime(2024, 5, 3, tzinfo=UTC)) == []
    follow = await walk(trigger="follow_up", state="delivered")
    assert len(follow) == 19 and {e["trigger"] for e in follow} == {"follow_up"}


# -- over HTTP ------------------------------------------------------------------------------


@asynccontextmanager
async def app(tmp_path: Path, now: datetime = NOW, **overrides: Any) -> AsyncIterator[Harness]:
    async with running(make_config(tmp_path, **overrides), now) as h:
        yield h


async def get(h: Harness, url: str, status: int = 200) -> JSON:
    resp = await h.client.get(url, headers=h.admin())
    body: JSON = await resp.json()
    assert resp.status == status, body
    return body


async def read_all(h: Harness, url: str, key: str) -> tuple[list[JSON], list[JSON]]:
    """Every item through `next`, and each page's body."""
    bodies = [await get(h, url)]
    while "next" in bodies[-1]:
        nxt = bodies[-1]["next"]
        assert nxt.startswith("/") and "cursor=" in nxt
        bodies.append(await get(h, nxt))
        assert len(bodies) < 1000
    return [i for b in bodies for i in b[key]], bodies


def field_of(body: JSON) -> str | None:
    field: str | None = body.get("field")
    return field


@pytest.fixture(params=["sqlite", "postgres"])
def sink_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The app's `[sink]`: the SQLite file or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return {"kind": "sqlite"}
    server: PostgresServer = request.getfixturevalue("postgres_server")
    assert server is not None
    dsn: str = request.getfixturevalue("postgres_dsn")
    return {"kind": "postgres", "dsn": dsn, "schema": "clientbook", "pool_max": 4}


async def test_sales_log_pages_hold_the_whole_date_and_agree_with_the_report(
    tmp_path: Path, sink_config: dict[str, Any]
) -> None:
    async with app(tmp_path, sink=sink_config) as h:
        sales = [sale_at(f"sale-{i:05d}", i // 7, customer=f"c{i % 5}") for i in range(2050)]
        await commit(h.sink, "big", sales)
        await commit(h.sink, "next-day", [sale_at("x1", 1, day=DAY + timedelta(days=1))])
        voided = await h.sink.commit_sales(
            make_batch("void", voids=[make_void("sale-00007")], store=STORE)
        )
        assert voided.voided == 1
        url = f"/v1/stores/{STORE}/sales?date={DAY}&limit=250"
        items, bodies = await read_all(h, url, "sales")
        assert len(bodies) == 9 and all(len(b["sales"]) == 250 for b in bodies[:-1])
        assert [i["id"] for i in items] == [s.id for s in sales]  # already in (at, id) order
        assert {b["count"] for b in bodies} == {2050}
        assert "next" not in bodies[-1]
        # The log lists voided sales (flagged); the report counts them apart.
        report = await get(h, f"/v1/stores/{STORE}/report?from={DAY}&to={DAY}")
        assert [(r["count"], r["voided"]) for r in report["rows"]] == [(2049, 1)]
        assert [i["id"] for i in items if i["voided"]] == ["sale-00007"]
        assert items[0]["total"] == "12.50" and items[0]["customer_id"] == "c0"

        # The default page is 100, and says there is more.
        first = await get(h, f"/v1/stores/{STORE}/sales?date={DAY}")
        assert len(first["sales"]) == pages.DEFAULT_LIMIT and "limit=100" in first["next"]

        # A customer's sales, counted, through the same kind of pages.
        mine, mine_bodies = await read_all(
            h, f"/v1/stores/{STORE}/sales?date={DAY}&customer=c3&limit=100", "sales"
        )
        assert [i["id"] for i in mine] == [s.id for s in sales if s.customer_id == "c3"]
        assert len(mine) == 410 == mine_bodies[0]["count"] and mine_bodies[0]["customer"] == "c3"
        assert all("customer=c3" in b["next"] for b in mine_bodies[:-1])


async def test_sales_committed_between_page_reads_are_read_once_or_not_at_all(
    tmp_path: Path,
) -> None:
    async with app(tmp_path) as h:
        await commit(h.sink, "b1", [sale_at(f"s{i:04d}", i) for i in range(600)])
        page1 = await get(h, f"/v1/stores/{STORE}/sales?date={DAY}&limit=200")
        cut = page1["sales"][-1]  # s0199 at minute 199
        await commit(h.sink, "b2", [sale_at("before", 5), sale_at("after", 500)])
        # A window committing while a client pages: the rest through `next`.
        rest, bodies = await read_all(h, page1["next"], "sales")
        ids = [i["id"] for i in page1["sales"] + rest]
        assert len(ids) == len(set(ids)) == 601
        assert "after" in ids and "before" not in ids
        assert cut["id"] == "s0199" and bodies[-1]["count"] == 602


async def test_quarantine_pages_filters_and_count(tmp_path: Path) -> None:
    async with app(tmp_path, now=datetime(2024, 5, 1, 8, 0, tzinfo=UTC)) as h:
        spool: Buffer = h.spool
        for store in (STORE, "S2"):  # the clock crosses windows: none may take the rows
            resp = await h.client.post(f"/v1/admin/stores/{store}/pause", headers=h.admin())
            assert resp.status == 200
        # 1,050 quarantined sales of S1 on three days (two rules), 30 of S2.
        rules = ["total.sum", "tenders.sum"]
        made: dict[int, tuple[str, str, date]] = {}
        for day_no, n in enumerate((400, 400, 250)):
            h.clock.set(datetime(2024, 5, 1 + day_no, 9, 0, tzinfo=UTC))
            await quarantine(h, STORE, [f"q{day_no}-{i:03d}" for i in range(n)], rules)
        await quarantine(h, "S2", [f"other-{i}" for i in range(30)], rules)
        for item in await spool.quarantined.latest(None, 10_000):
            made[item.qid] = (
                item.store,
                item.reasons[0]["rule"],
                datetime.fromtimestamp(item.quarantined_at, UTC).date(),
            )
        assert len(made) == 1080

        items, bodies = await read_all(h, f"/v1/admin/quarantine?store={STORE}&limit=200", "items")
        assert len(bodies) == 6 and {b["count"] for b in bodies} == {1050}
        qids = [i["id"] for i in items]
        assert qids == sorted((q for q, m in made.items() if m[0] == STORE), reverse=True)
        assert items[0]["quarantined_at"] == "2024-05-03T09:00:00+00:00"
        assert items[0]["reasons"][0]["field"] == "$.total"

        everyone, _ = await read_all(h, "/v1/admin/quarantine?limit=1000", "items")
        assert sorted(i["id"] for i in everyone) == sorted(made)

        # By rule (a reason's rule id, read inside the stored reasons).
        by_rule, rb = await read_all(
            h, f"/v1/admin/quarantine?store={STORE}&rule=tenders.sum&limit=100", "items"
        )
        expected = [q for q, m in made.items() if m[0] == STORE and m[1] == "tenders.sum"]
        assert sorted(i["id"] for i in by_rule) == sorted(expected) and rb[0]["count"] == 525
        assert all("rule=tenders.sum" in b["next"] for b in rb[:-1])
        none = await get(h, f"/v1/admin/quarantine?store={STORE}&rule=currency.known")
        assert none == {"count": 0, "items": []}

        # By date range: dates include the whole UTC day; an instant `to` is excluded.
        one_day = await get(
            h, f"/v1/admin/quarantine?store={STORE}&from=2024-05-02&to=2024-05-02&limit=1000"
        )
        assert one_day["count"] == 400 == len(one_day["items"]) and "next" not in one_day
        assert {made[i["id"]][2] for i in one_day["items"]} == {date(2024, 5, 2)}
        upto = await get(h, f"/v1/admin/quarantine?store={STORE}&to=2024-05-02T09:00:00Z&limit=10")
        assert upto["count"] == 400 and "to=2024-05-02T09%3A00%3A00Z" in upto["next"]
        since = await get(h, "/v1/admin/quarantine?from=2024-05-02T08:00:00%2B00:00")
        assert since["count"] == 680  # days 2 and 3 of S1 and all of S2 (on day 3)

        # Records quarantined between two page reads land before the cursor: never twice.
        page1 = await get(h, f"/v1/admin/quarantine?store={STORE}&limit=300")
        await quarantine(h, STORE, ["late-1", "late-2"], rules)
        rest, later = await read_all(h, page1["next"], "items")
        seen = [i["id"] for i in page1["items"] + rest]
        assert len(seen) == len(set(seen)) == 1050 and later[-1]["count"] == 1052


async def quarantine(h: Harness, store: str, ids: Sequence[str], rules: Sequence[str]) -> None:
    """Spool sales, lease them and quarantine them (alternating the failed rule)."""
    spool: Buffer = h.spool
    await spool.append(store, [make_sale(i) for i in ids])
    lease = await spool.lease(
        store, upto=h.clock.now() + timedelta(days=1), after_seq=0, limit=10_000
    )
    assert len(lease.entries) == len(ids)
    await spool.quarantine(
        lease.lease_id,
        [
            (e.seq, [{"rule": rules[n % len(rules)], "field": "$.total", "message": "off"}])
            for n, e in enumerate(lease.entries)
        ],
    )


async def test_trigger_events_pages_with_state_and_rule_filters(tmp_path: Path) -> None:
    async with app(tmp_path) as h:
        sales = [sale_at(f"t{i:03d}", i) for i in range(300)]
        triggers = []
        for i, s in enumerate(sales):
            created = datetime(2024, 5, 1, 20, 0, tzinfo=UTC) + timedelta(seconds=i // 10)
            for name, days in (("thank-you", 1), ("follow-up", 30)):
                due = datetime(2024, 5, 2, tzinfo=UTC) + timedelta(days=days - 1)
                t = make_trigger(s, due, name=name, store=STORE)
                triggers.append(msgspec.structs.replace(t, created_at=created))
        await h.sink.commit_sales(make_batch("tb", sales, triggers=triggers, store=STORE))
        await h.sink.deliver_due_triggers(
            datetime(2024, 5, 2, 0, 0, tzinfo=UTC) - timedelta(seconds=1)
        )

        base = f"/v1/stores/{STORE}/triggers"
        events, bodies = await read_all(h, f"{base}?limit=70", "events")
        assert len(bodies) == 9 and len(events) == 600 == len({e["event_id"] for e in events})
        keys = [(e["created_at"], e["event_id"]) for e in events]
        assert keys == sorted(keys, reverse=True)
        assert {e["event_id"] for e in events} == {t.event_id for t in triggers}

        # NOW is 2024-05-02 12:00: every thank-you is due, no follow-up is.
        due_now, _ = await read_all(h, f"{base}?state=due&limit=100", "events")
        assert {e["trigger"] for e in due_now} == {"thank-you"} and len(due_now) == 300
        pending, pb = await read_all(
            h, f"{base}?state=pending&trigger=follow-up&limit=100", "events"
        )
        assert len(pending) == 300 and {e["status"] for e in pending} == {"pending"}
        assert all(
            "state=pending" in b["next"] and "trigger=follow-up" in b["next"] for b in pb[:-1]
        )
        await h.sink.deliver_due_triggers(NOW)
        delivered, _ = await read_all(h, f"{base}?state=delivered&limit=1000", "events")
        assert len(delivered) == 300 and {e["trigger"] for e in delivered} == {"thank-you"}
        assert (await get(h, f"{base}?state=due"))["events"] == []
        assert (await get(h, f"{base}?state=cancelled"))["events"] == []

        # Events committed while a client pages are newer: before the cursor, never twice.
        page1 = await get(h, f"{base}?limit=250")
        extra = sale_at("t-new", 400)
        newer = msgspec.structs.replace(
            make_trigger(extra, NOW, name="thank-you", store=STORE), created_at=NOW
        )
        await h.sink.commit_sales(make_batch("tb2", [extra], triggers=[newer], store=STORE))
        rest, _ = await read_all(h, page1["next"], "events")
        ids = [e["event_id"] for e in page1["events"] + rest]
        assert len(ids) == len(set(ids)) == 600 and newer.event_id not in ids


async def test_audit_log_pages_newest_first_with_iso_utc_instants(tmp_path: Path) -> None:
    async with app(tmp_path) as h:
        spool: Buffer = h.spool
        await quarantine(h, STORE, [f"a{i:03d}" for i in range(230)], ["total.sum"])
        items = await spool.quarantined.latest(STORE, 10_000)
        for item in items:
            assert await spool.quarantined.discard(item.qid, actor="admin", reason="test")
        entries, bodies = await read_all(h, "/v1/admin/audit?limit=50", "entries")
        assert len(bodies) == 5 and len(entries) == 230
        ids = [e["id"] for e in entries]
        assert ids == sorted(set(ids), reverse=True)
        assert {e["ref"] for e in entries} == {str(i.qid) for i in items}
        assert {e["at"] for e in entries} == {"2024-05-02T12:00:00+00:00"}
        assert datetime.fromisoformat(entries[0]["at"]).utcoffset() == timedelta(0)
        page1 = await get(h, "/v1/admin/audit?limit=100")
        await quarantine(h, STORE, ["late"], ["total.sum"])
        (late,) = await spool.quarantined.latest(STORE)
        await spool.quarantined.discard(late.qid, actor="admin", reason="test")
        rest, _ = await read_all(h, page1["next"], "entries")
        seen = [e["id"] for e in page1["entries"] + rest]
        assert len(seen) == len(set(seen)) == 230
        assert (await get(h, "/v1/admin/audit"))["entries"][0]["ref"] == str(late.qid)


def _tamper(cursor: str) -> str:
    """The same cursor with its position edited (its signature left as it was)."""
    body, mac = cursor.split(".")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).replace(b"s0", b"s9")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + mac


async def test_a_bad_cursor_limit_or_state_is_a_400_naming_it(tmp_path: Path) -> None:
    async with app(tmp_path) as h:
        await commit(h.sink, "b", [sale_at(f"s{i:02d}", i) for i in range(30)])
        await quarantine(h, STORE, [f"q{i}" for i in range(5)], ["total.sum"])
        sales = await get(h, f"/v1/stores/{STORE}/sales?date={DAY}&limit=10")
        cursor = sales["next"].split("cursor=")[1]
        quar = await get(h, "/v1/admin/quarantine?limit=2")
        qcursor = quar["next"].split("cursor=")[1]
        bad = {
            "garbled": f"/v1/stores/{STORE}/sales?date={DAY}&cursor=not-a-cursor",
            "empty": f"/v1/stores/{STORE}/sales?date={DAY}&cursor=",
            "base64 junk": f"/v1/stores/{STORE}/sales?date={DAY}&cursor=AAAA.BBBB",
            "tampered": f"/v1/stores/{STORE}/sales?date={DAY}&cursor={_tamper(cursor)}",
            "another date": f"/v1/stores/{STORE}/sales?date=2024-05-02&cursor={cursor}",
            "another filter": f"/v1/stores/{STORE}/sales?date={DAY}&customer=c1&cursor={cursor}",
            "another store": f"/v1/stores/S2/sales?date={DAY}&cursor={cursor}",
            "another list": f"/v1/admin/quarantine?cursor={cursor}",
            "quarantine's elsewhere": f"/v1/admin/audit?cursor={qcursor}",
            "quarantine refiltered": f"/v1/admin/quarantine?store={STORE}&cursor={qcursor}",
            "triggers": f"/v1/stores/{STORE}/triggers?cursor={cursor}",
            "huge": f"/v1/admin/audit?cursor={'A' * 5000}.x",
        }
        for what, url in bad.items():
            body = await get(h, url, 400)
            assert field_of(body) == "cursor", what
            assert "not-a-cursor" not in body["error"] and cursor not in body["error"], what
        # The untouched cursor still works, with another page size too.
        assert (
            len(
                (await get(h, f"/v1/stores/{STORE}/sales?date={DAY}&cursor={cursor}&limit=5"))[
                    "sales"
                ]
            )
            == 5
        )

        for raw in ("0", "-1", "abc", "1001", "", "1e3", "99999999999", " 5"):
            for path in (
                f"/v1/stores/{STORE}/sales?date={DAY}",
                "/v1/admin/quarantine?",
                f"/v1/stores/{STORE}/triggers?",
                "/v1/admin/audit?",
            ):
                body = await get(h, f"{path}&limit={raw}", 400)
                assert field_of(body) == "limit", (path, raw)
        assert len((await get(h, f"/v1/stores/{STORE}/sales?date={DAY}&limit=1000"))["sales"]) == 30

        body = await get(h, f"/v1/stores/{STORE}/triggers?state=sent", 400)
        assert field_of(body) == "state" and "sent" not in body["error"]
        for param, url in {
            "from": "/v1/admin/quarantine?from=yesterday",
            "to": "/v1/admin/quarantine?to=2024-05-02T10:00:00",  # no offset
            "to ": "/v1/admin/quarantine?from=2024-05-03&to=2024-05-02",
            "from ": "/v1/admin/quarantine?from=0001-01-01T00:00:00%2B14:00",
            "rule": "/v1/admin/quarantine?rule=%3Cscript%3E",
            "customer": f"/v1/stores/{STORE}/sales?date={DAY}&customer=",
        }.items():
            assert field_of(await get(h, url, 400)) == param.strip(), param
