"""Issue 9 review: the Sales Report reconciles, to the minor unit, with the Sales Log it sums.

An integration engineer adds up the Sales Log's shown totals and compares them with the
report. The report sums each sale's total at the currency's minor unit (round, then sum), so
the two agree for every mix: returns, exchanges either way, voided sales, unlinked returns,
totals with more places than the currency has, JPY and KWD, tax-inclusive sales.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.e2e.harness import push, quarantine, report, run_window, sales_log, store_app

DAY = date(2026, 3, 14)
AT = "2026-03-14T12:30:00-05:00"


def sale(sid: str, total: str, currency: str = "USD", **extra: Any) -> dict[str, Any]:
    """A walk-in sale of one line whose figures agree exactly (negative: one item back)."""
    back = total.startswith("-")
    body: dict[str, Any] = {
        "type": "sale",
        "id": sid,
        "occurred_at": AT,
        "currency": currency,
        "kind": "return" if back else "sale",
        "lines": [
            {
                "sku": f"SKU-{sid}",
                "quantity": "-1" if back else "1",
                "unit_price": total.lstrip("-"),
            }
        ],
        "subtotal": total,
        "tax": "0",
        "total": total,
        "tenders": [{"method": "Cash", "amount": total}],
    }
    body.update(extra)
    return body


def exchange(sid: str, out_price: str, in_price: str, currency: str = "USD") -> dict[str, Any]:
    """One item returned, one taken: the total is the difference, either sign."""
    total = str(Decimal(in_price) - Decimal(out_price))
    return {
        "type": "sale",
        "id": sid,
        "occurred_at": AT,
        "currency": currency,
        "kind": "exchange",
        "lines": [
            {"sku": "BACK", "quantity": "-1", "unit_price": out_price},
            {"sku": "TAKEN", "quantity": "1", "unit_price": in_price},
        ],
        "subtotal": total,
        "tax": "0",
        "total": total,
        "tenders": [{"method": "Cash", "amount": total}],
    }


def tax_included(sid: str) -> dict[str, Any]:
    """A tax-inclusive sale: 119.00 gross of which 19.00 VAT, priced with five places."""
    return {
        "type": "sale",
        "id": sid,
        "occurred_at": AT,
        "currency": "EUR",
        "lines": [{"sku": "VAT", "quantity": "1", "unit_price": "119.00000", "tax": "19.00000"}],
        "subtotal": "119.00000",
        "tax": "19.00000",
        "tax_included": True,
        "total": "119.00000",
        "tenders": [{"method": "Card", "amount": "119.00"}],
    }


def summed_log(log: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What an integration engineer adds up from the Sales Log's shown figures."""
    out: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "count": 0,
            "gross": Decimal(0),
            "returns": Decimal(0),
            "returns_count": 0,
            "voided": 0,
        }
    )
    for item in log:
        acc = out[item["currency"]]
        if item["voided"]:
            acc["voided"] += 1
            continue
        total = Decimal(item["total"])
        acc["count"] += 1
        if total > 0:
            acc["gross"] += total
        else:
            acc["returns"] -= total
        if item["kind"] == "return" or total < 0:
            acc["returns_count"] += 1
    return out


def as_report(day: date, summed: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The log's sums in the report's row shape (money as the log shows it: at the unit)."""
    places = {"JPY": Decimal(1), "KWD": Decimal("0.001")}
    rows = []
    for currency in sorted(summed):
        s = summed[currency]
        q = places.get(currency, Decimal("0.01"))
        rows.append(
            {
                "date": day.isoformat(),
                "currency": currency,
                "count": s["count"],
                "gross": f"{s['gross'].quantize(q):f}",
                "returns": f"{s['returns'].quantize(q):f}",
                "returns_count": s["returns_count"],
                "net": f"{(s['gross'] - s['returns']).quantize(q):f}",
                "voided": s["voided"],
            }
        )
    return rows


async def test_report_equals_the_sum_of_the_sales_log_for_every_mix(tmp_path: Path) -> None:
    records = [
        # Three places on a two-place currency: each shows as 10.01, the three as 30.03.
        sale("U-1", "10.005"),
        sale("U-2", "10.005"),
        sale("U-3", "10.005"),
        sale("U-4", "25.00"),
        sale("R-1", "-4.995", original_id="U-1"),  # shows -5.00
        sale("R-GHOST", "-7.00", original_id="NEVER-SEEN"),  # held, then unlinked
        exchange("X-UP", "20.00", "35.50"),
        exchange("X-DOWN", "35.50", "20.00"),
        sale("V-1", "50.00"),
        {"type": "void", "id": "V-1", "occurred_at": "2026-03-14T13:00:00-05:00"},
        # JPY has no minor unit: 1200.5 shows as 1201, twice 2402.
        sale("J-1", "1200.5", "JPY"),
        sale("J-2", "1200.5", "JPY"),
        sale("J-R", "-300", "JPY"),
        # KWD has three: 1.2345 shows as 1.235, twice 2.470.
        sale("K-1", "1.2345", "KWD"),
        sale("K-2", "1.2345", "KWD"),
        tax_included("E-1"),
    ]
    async with store_app(tmp_path, "canonical") as h:
        await push(h, json.dumps(records).encode())
        committed = 0
        for _ in range(4):  # the unlinked return waits hold_windows (2) windows
            committed += (await run_window(h)).committed
        assert await quarantine(h) == []
        log = await sales_log(h, DAY)
        assert committed == len(log) == 15
        shown = {s["id"]: s["total"] for s in log}
        assert (shown["U-1"], shown["R-1"], shown["J-1"], shown["K-1"], shown["E-1"]) == (
            "10.01",
            "-5.00",
            "1201",
            "1.235",
            "119.00",
        )
        rows = await report(h, DAY)
        assert rows == as_report(DAY, summed_log(log))
        # The same figures written out, so the oracle above cannot drift with the code.
        usd = next(r for r in rows if r["currency"] == "USD")
        assert (usd["gross"], usd["returns"], usd["net"]) == ("70.53", "27.50", "43.03")
        assert (usd["count"], usd["returns_count"], usd["voided"]) == (8, 3, 1)
        jpy = next(r for r in rows if r["currency"] == "JPY")
        assert (jpy["gross"], jpy["returns"], jpy["net"]) == ("2402", "300", "2102")
        kwd = next(r for r in rows if r["currency"] == "KWD")
        assert (kwd["gross"], kwd["net"]) == ("2.470", "2.470")
        eur = next(r for r in rows if r["currency"] == "EUR")
        assert (eur["gross"], eur["count"]) == ("119.00", 1)


async def test_tolerance_is_one_minor_unit_of_the_sale_currency(tmp_path: Path) -> None:
    def off(sid: str, currency: str, subtotal: str, total: str) -> dict[str, Any]:
        body = sale(sid, subtotal, currency)
        body.update(total=total, tenders=[{"method": "Cash", "amount": total}])
        return body

    records = [
        off("K-FIVE-FILS", "KWD", "10.000", "10.005"),  # passed under a fixed 0.01
        off("K-ONE-FIL", "KWD", "10.000", "10.001"),
        off("J-ONE-YEN", "JPY", "1200", "1201"),
        off("J-TWO-YEN", "JPY", "1200", "1202"),
        off("U-ONE-CENT", "USD", "10.00", "10.01"),
    ]
    async with store_app(tmp_path, "canonical") as h:
        await push(h, json.dumps(records).encode())
        result = await run_window(h)
        assert (result.committed, result.quarantined) == (3, 2)
        assert sorted(s["id"] for s in await sales_log(h, DAY)) == [
            "J-ONE-YEN",
            "K-ONE-FIL",
            "U-ONE-CENT",
        ]
        held = {q["record_id"]: q["reasons"] for q in await quarantine(h)}
        assert sorted(held) == ["J-TWO-YEN", "K-FIVE-FILS"]
        (reason,) = held["K-FIVE-FILS"]
        assert (reason["rule"], reason["field"]) == ("total.sum", "$.total")
        # Both figures, as the POS stated them.
        assert "10.005" in reason["message"] and "10.000" in reason["message"]
        (reason,) = held["J-TWO-YEN"]
        assert reason["rule"] == "total.sum" and "1202" in reason["message"]
