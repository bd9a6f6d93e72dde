"""Deterministic, realistic canonical records for the benchmarks.

A jeweller's catalogue (rings, necklaces, earrings, bracelets, watches, services, gift
cards) with real SKU shapes (`RNG-14KY-0231-07`, `WCH-TSO-T1204101`, `SVC-RESIZE`),
sales of 2-4 lines with decimal-string money that adds up exactly (line discounts,
8.875 % sales tax, split tenders), about 65 % of sales linked to a customer, 3 % returns
that point at an earlier sale, spread over five years of store-local time.

Everything is a pure function of its arguments (seeded `random.Random`), so two runs
generate byte-identical records. JSON is built by string formatting: the values are
ASCII without quotes or backslashes, and this is several times faster than encoding dicts
when a run generates two million sales.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

ZONE = "America/New_York"
HISTORY_START = datetime(2021, 11, 1, tzinfo=UTC)
HISTORY_END = datetime(2026, 10, 31, tzinfo=UTC)
TAX_PPM = 88_750  # 8.875 % in millionths
CUSTOMERS = 5_000

_METALS = ("14KY", "14KW", "18KY", "18KR", "PLAT", "SS")
_METAL_NAMES = {
    "14KY": "14K Yellow Gold",
    "14KW": "14K White Gold",
    "18KY": "18K Yellow Gold",
    "18KR": "18K Rose Gold",
    "PLAT": "Platinum",
    "SS": "Sterling Silver",
}
_STYLES = {
    "rings": ("Solitaire Ring", "Eternity Band", "Halo Ring", "Signet Ring", "Stacking Ring"),
    "necklaces": ("Pendant Necklace", "Tennis Necklace", "Rope Chain", "Locket"),
    "earrings": ("Stud Earrings", "Hoop Earrings", "Drop Earrings", "Huggie Earrings"),
    "bracelets": ("Tennis Bracelet", "Bangle", "Cuff Bracelet", "Charm Bracelet"),
}
_WATCH_BRANDS = (("TSO", "Tissot"), ("LNG", "Longines"), ("SKO", "Seiko"), ("HAM", "Hamilton"))
_SERVICES = (
    ("SVC-RESIZE", "Ring Sizing", 4500),
    ("SVC-ENGRAVE", "Engraving", 3500),
    ("SVC-CLEAN", "Clean and Inspect", 0),
    ("SVC-BATTERY", "Watch Battery", 2500),
    ("SVC-PRONG", "Prong Retipping", 6500),
)
_FIRST = ("Ava", "Liam", "Noah", "Emma", "Mia", "Lucas", "Chloe", "Ethan", "Sofia", "Omar")
_LAST = ("Moreau", "Nguyen", "Patel", "Garcia", "Kowalski", "Okafor", "Rossi", "Tanaka")


@dataclass(frozen=True, slots=True)
class Product:
    """One catalogue item."""

    product_id: str
    sku: str
    description: str
    category: str
    price_cents: int
    line_kind: str = "item"


@lru_cache(maxsize=4)
def catalog(seed: int = 7, size: int = 2_400) -> tuple[Product, ...]:
    """A deterministic catalogue; `size` jewellery items plus services and gift cards."""
    rng = random.Random(seed)
    items: list[Product] = []
    for n in range(size):
        pid = f"P-{n + 1:05d}"
        kind = rng.random()
        metal = rng.choice(_METALS)
        model = rng.randrange(1, 9999)
        if kind < 0.3:
            size_ = rng.choice((5, 6, 7, 8, 9, 10))
            sku = f"RNG-{metal}-{model:04d}-{size_:02d}"
            cat, style = "rings", rng.choice(_STYLES["rings"])
        elif kind < 0.52:
            sku = f"NCK-{metal}-{model:04d}-{rng.choice((16, 18, 20, 24))}"
            cat, style = "necklaces", rng.choice(_STYLES["necklaces"])
        elif kind < 0.74:
            sku = f"EAR-{metal}-{model:04d}"
            cat, style = "earrings", rng.choice(_STYLES["earrings"])
        elif kind < 0.92:
            sku = f"BRC-{metal}-{model:04d}-{rng.choice(('S', 'M', 'L'))}"
            cat, style = "bracelets", rng.choice(_STYLES["bracelets"])
        else:
            code, brand = rng.choice(_WATCH_BRANDS)
            ref = f"T{rng.randrange(1000000, 9999999)}"
            items.append(
                Product(pid, f"WCH-{code}-{ref}", f"{brand} {ref} Watch", "watches",
                        rng.randrange(295, 4200) * 100)
            )  # fmt: skip
            continue
        base = 4_900 if metal == "SS" else 29_900
        price = rng.randrange(base, base * 12) // 100 * 100 + rng.choice((0, 0, 50, 99))
        items.append(Product(pid, sku, f"{_METAL_NAMES[metal]} {style}", cat, price))
    for i, (sku, name, cents) in enumerate(_SERVICES):
        items.append(Product(f"P-S{i + 1:03d}", sku, name, "services", cents, "service"))
    for i, cents in enumerate((2_500, 5_000, 10_000, 25_000)):
        items.append(
            Product(f"P-G{i + 1:03d}", f"GC-{cents // 100:04d}", f"Gift Card {cents // 100}",
                    "gift_cards", cents, "gift_card")
        )  # fmt: skip
    return tuple(items)


def money(cents: int) -> str:
    """Cents as an exact decimal string: -1234 -> '-12.34'."""
    sign = "-" if cents < 0 else ""
    c = abs(cents)
    return f"{sign}{c // 100}.{c % 100:02d}"


def _tax(cents: int) -> int:
    """Sales tax in cents, rounded half away from zero."""
    q, r = divmod(abs(cents) * TAX_PPM, 1_000_000)
    q += 1 if r * 2 >= 1_000_000 else 0
    return q if cents >= 0 else -q


class SaleStream:
    """`count` sales of one store, as NDJSON lines (bytes, no newline), deterministic."""

    def __init__(
        self,
        prefix: str,
        count: int,
        *,
        seed: int = 1,
        origin: str | None = "backfill",
        zone: str = ZONE,
        customers: int = CUSTOMERS,
        returns: float = 0.03,
        location: str | None = None,
        start: datetime = HISTORY_START,
        end: datetime = HISTORY_END,
    ) -> None:
        self.prefix = prefix
        self.count = count
        self.seed = seed
        self.origin = origin
        self.zone = ZoneInfo(zone)
        self.customers = customers
        self.returns = returns
        self.location = location or prefix.rstrip("-")
        self.t0 = start.timestamp()
        self.step = (end.timestamp() - self.t0) / max(count, 1)

    def sale_id(self, i: int) -> str:
        """The id of the i-th sale of this stream."""
        return f"{self.prefix}{i:08d}"

    def __iter__(self) -> Iterator[bytes]:
        rng = random.Random(f"{self.prefix}:{self.seed}")
        items = catalog()
        jewels = len(items) - len(_SERVICES) - 4
        recent: list[int] = []  # indices of recent sales (not returns): return targets
        origin = f',"origin":"{self.origin}"' if self.origin else ""
        for i in range(self.count):
            is_return = i > 50 and rng.random() < self.returns
            n_lines = rng.choice((2, 2, 2, 3, 3, 4))
            sign = -1 if is_return else 1
            lines: list[str] = []
            subtotal = 0
            for _ in range(n_lines):
                r = rng.random()
                if r < 0.88 or is_return:
                    p = items[rng.randrange(jewels)]
                elif r < 0.96:
                    p = items[jewels + rng.randrange(len(_SERVICES))]
                else:
                    p = items[len(items) - 4 + rng.randrange(4)]
                qty = 2 if p.price_cents < 20_000 and rng.random() < 0.1 else 1
                gross = qty * p.price_cents
                disc = gross * rng.choice((10, 15, 20)) // 100 if rng.random() < 0.15 else 0
                net = sign * (gross - disc)
                subtotal += net
                kind = "" if p.line_kind == "item" else f',"line_kind":"{p.line_kind}"'
                lines.append(
                    f'{{"sku":"{p.sku}","product_id":"{p.product_id}",'
                    f'"description":"{p.description}","category":"{p.category}",'
                    f'"quantity":"{sign * qty}","unit_price":"{money(p.price_cents)}",'
                    f'"discount":"{money(sign * disc)}","tax":"0.00"{kind}}}'
                )
            tax = _tax(subtotal) if not is_return or rng.random() < 0.9 else 0
            total = subtotal + tax
            t = rng.random()
            if is_return:
                tenders = f'{{"method":"card","amount":"{money(total)}"}}'
            elif t < 0.7 or total < 2_000:
                tenders = (
                    f'{{"method":"card","amount":"{money(total)}",'
                    f'"reference":"auth-{rng.randrange(10**8):08d}"}}'
                )
            elif t < 0.9:
                cash = total // 2 // 100 * 100
                tenders = (
                    f'{{"method":"card","amount":"{money(total - cash)}"}},'
                    f'{{"method":"cash","amount":"{money(cash)}"}}'
                )
            else:
                tenders = f'{{"method":"cash","amount":"{money(total)}"}}'
            extra = ""
            if is_return and recent:
                target = recent[rng.randrange(len(recent))]
                extra = f',"kind":"return","original_id":"{self.sale_id(target)}"'
            elif is_return:
                extra = ',"kind":"return"'
            else:
                recent.append(i)
                if len(recent) > 2_000:
                    del recent[:1_000]
            if rng.random() < 0.65:
                extra += f',"customer_id":"C-{rng.randrange(1, self.customers + 1):06d}"'
            ts = self.t0 + i * self.step + rng.random() * self.step
            at = datetime.fromtimestamp(ts, self.zone).isoformat(timespec="seconds")
            yield (
                f'{{"type":"sale","id":"{self.sale_id(i)}","occurred_at":"{at}",'
                f'"currency":"USD"{origin},"employee_id":"E-{rng.randrange(1, 40):03d}",'
                f'"register_id":"R{rng.randrange(1, 5)}","location_id":"{self.location}",'
                f'"display_number":"{100000 + i}","lines":[{",".join(lines)}],'
                f'"subtotal":"{money(subtotal)}","tax":"{money(tax)}","total":"{money(total)}",'
                f'"tenders":[{tenders}]{extra}}}'
            ).encode()


def customers(n: int = CUSTOMERS) -> Iterator[bytes]:
    """The customers every generated sale may refer to (C-000001 .. C-{n})."""
    rng = random.Random("customers")
    for k in range(1, n + 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        yield (
            f'{{"type":"customer","id":"C-{k:06d}","first_name":"{first}","last_name":"{last}",'
            f'"email":"{first.lower()}.{last.lower()}{k}@example.com",'
            f'"phone":"+1212555{k % 10000:04d}","updated_at":"2026-10-01T12:00:00+00:00"}}'
        ).encode()


def push_templates(k: int = 64, *, seed: int = 3) -> list[tuple[bytes, bytes]]:
    """`k` live single-sale bodies split around their id: (before, after)."""
    marker = "\x01"
    stream = SaleStream(
        marker, k, seed=seed, origin=None, returns=0.0, location="LIVE",
        start=HISTORY_END, end=HISTORY_END,
    )  # fmt: skip
    out: list[tuple[bytes, bytes]] = []
    for i, body in enumerate(stream):
        before, after = body.split(stream.sale_id(i).encode(), 1)
        out.append((before, after))
    return out


def write_ndjson(path: Path, records: Iterable[bytes]) -> tuple[int, int]:
    """Write records one per line; (records, bytes)."""
    n = 0
    size = 0
    with path.open("wb", buffering=1 << 20) as f:
        for rec in records:
            f.write(rec)
            f.write(b"\n")
            n += 1
            size += len(rec) + 1
    return n, size


def read_batches(path: Path, batch: int) -> Iterator[list[bytes]]:
    """NDJSON lines of `path` in lists of `batch` (without newlines)."""
    out: list[bytes] = []
    with path.open("rb", buffering=1 << 20) as f:
        for line in f:
            out.append(line.rstrip(b"\n"))
            if len(out) >= batch:
                yield out
                out = []
    if out:
        yield out
