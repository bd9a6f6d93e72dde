"""Sales triggers: which `[[triggers]]` rules a committed sale fires, and when each is due.

Pure: the window runner calls `match_triggers` for each sale row it commits and writes the
events in the same sink transaction (the outbox); delivery happens elsewhere.

Matching (all conditions of one rule must hold; each matching rule yields one event):

* `min_total` / `max_total`: inclusive bounds on the sale's `total` at its currency's minor
  unit, the figure the Sales Log shows (a 99.995 USD total is 100.00 and meets a 100.00
  minimum); the event keeps the exact total.
* `categories`: when non-empty, at least one line's `category` equals one of them, ignoring
  case and surrounding spaces. Lines without a category never match.

No events at all for:

* `origin == "backfill"` sales (history, not a customer moment);
* returns (`kind == "return"`): nobody gets a thank-you for bringing something back;
  exchanges (`kind == "exchange"`) do fire, matched on their total;
* voided sales (the caller passes `voided=True` when a void for the sale commits with it or
  is already committed);
* sales whose business date is more than `max_age_days` before the store-local date of
  `now` (exactly `max_age_days` old still fires);
* sales with no linked customer (walk-ins, or a customer that never reached the sink):
  nobody could receive the message. These are counted: when a rule would have matched,
  `skipped["no_customer"]` goes up by one per such event.

An event is due at the store-local midnight that starts `business_date + days_after`, as a
UTC instant; where that midnight does not exist (a zone that springs forward at 00:00), it is
the first instant of that date, and where it occurs twice, the first. `event_id` is
`"{store}:{sale id}:{trigger name}"`, so a rerun of a commit yields the same ids.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from worker.batch import SaleRow, TriggerEvent
from worker.config import TriggerConfig
from worker.money import at_minor
from worker.records import Sale, business_date
from worker.windows import start_of_day

__all__ = ["match_triggers", "trigger_matches"]


@functools.lru_cache(maxsize=1024)
def _decimal(text: str) -> Decimal:
    return Decimal(text)


def _norm(category: str) -> str:
    return category.strip().casefold()


def trigger_matches(trigger: TriggerConfig, sale: Sale) -> bool:
    """Whether one rule's total bounds and categories accept this sale."""
    total = at_minor(sale.total, sale.currency)
    if trigger.min_total is not None and total < _decimal(trigger.min_total):
        return False
    if trigger.max_total is not None and total > _decimal(trigger.max_total):
        return False
    if trigger.categories:
        wanted = {_norm(c) for c in trigger.categories}
        return any(
            line.category is not None and _norm(line.category) in wanted for line in sale.lines
        )
    return True


def match_triggers(
    row: SaleRow,
    store: str,
    zone: ZoneInfo,
    triggers: Sequence[TriggerConfig],
    now: datetime,
    max_age_days: int,
    *,
    voided: bool = False,
    skipped: Counter[str] | None = None,
    today: date | None = None,
) -> list[TriggerEvent]:
    """One event per matching trigger rule for a committed sale, in config order.

    `today` is `business_date(now, zone)` when the caller has it (one per page, not per sale).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    sale = row.sale
    if voided or sale.origin == "backfill" or sale.kind == "return":
        return []
    sold_on = sale.business_date or business_date(sale.occurred_at, zone)
    if today is None:
        today = business_date(now, zone)
    if (today - sold_on).days > max_age_days:
        return []
    events: list[TriggerEvent] = []
    reachable = sale.customer_id is not None and row.customer_linked
    for trigger in triggers:
        if not trigger_matches(trigger, sale):
            continue
        if not reachable:
            if skipped is not None:
                skipped["no_customer"] += 1
            continue
        due_date = sold_on + timedelta(days=trigger.days_after)
        events.append(
            TriggerEvent(
                event_id=f"{store}:{sale.id}:{trigger.name}",
                store=store,
                sale_id=sale.id,
                trigger=trigger.name,
                action=trigger.action,
                customer_id=sale.customer_id,
                total=sale.total,
                business_date=sold_on,
                due_date=due_date,
                due_at=start_of_day(due_date, zone),
                created_at=now,
            )
        )
    return events
