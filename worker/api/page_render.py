"""The status page's HTML: server-rendered from a `/status` body, no JavaScript.

Pure functions of their arguments (no request, no app): `render_page` draws per store the
pending sales, the age of the oldest, the next window in the store's time and in UTC, the
last window's result, the quarantine by rule and the paused flag; the health of the sink,
the spool and MQTT; running backfills; and a looked-up sale. Stores are in
`attention_order` (the order of `/status` and `possync status`), PAGE_SIZE a page. Every
value is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from worker.api.status import attention_order

__all__ = ["PAGE_SIZE", "login_page", "render_page"]

PAGE_SIZE = 50

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1b1f24}
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin:1.4rem 0 .4rem}
table{border-collapse:collapse;width:100%}th,td{padding:.25rem .5rem;text-align:left;
border-bottom:1px solid #d8dde3;vertical-align:top}th{background:#f3f5f7}
td.num{text-align:right;font-variant-numeric:tabular-nums}table+table{margin-top:.8rem}
.bad{color:#b42318;font-weight:600}.warn{color:#b54708}.ok{color:#067647}
.muted{color:#667085}header{display:flex;justify-content:space-between;align-items:baseline}
form.inline{display:inline}nav a{margin-right:.6rem}
"""


def _doc(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def login_page(error: str | None = None) -> str:
    """The login form (POST /login with the admin token)."""
    msg = f'<p class="bad">{escape(error)}</p>' if error else ""
    return _doc(
        "possync: log in",
        "<h1>possync</h1><p>Log in with the admin token.</p>"
        f'{msg}<form method="post" action="/login">'
        '<label>Admin token <input type="password" name="token" autocomplete="off" '
        'required autofocus></label> <button type="submit">Log in</button></form>',
    )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _when(instant: str | None, zone: str) -> tuple[str, str]:
    if not instant:
        return "-", "-"
    at = datetime.fromisoformat(instant)
    local = at.astimezone(ZoneInfo(zone))
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}", f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _last(last: Mapping[str, Any] | None) -> str:
    if not last:
        return '<span class="muted">none yet</span>'
    if last.get("error"):
        return f'<span class="bad">failed: {escape(str(last["error"]))}</span>'
    if last.get("skipped"):
        return f'<span class="warn">skipped ({escape(str(last["skipped"]))})</span>'
    return escape(
        f"{last.get('committed', 0)} committed, {last.get('quarantined', 0)} quarantined, "
        f"{last.get('held', 0)} held in {float(last.get('duration_s', 0)):.1f} s"
    )


def _by_rule(count: int, rules: Mapping[str, int] | None) -> str:
    """The quarantine size, and how many of those failed each rule (a sale may fail several)."""
    if not count:
        return "0"
    parts = [f"{escape(r)}: {n}" for r, n in sorted((rules or {}).items(), key=lambda kv: -kv[1])]
    detail = f" ({', '.join(parts)})" if parts else ""
    return f'<span class="bad">{count}</span>{detail}'


def _health(checks: Mapping[str, str]) -> str:
    rows = "".join(
        f"<tr><td>{escape(name)}</td>"
        f'<td class="{"ok" if state == "ok" else "bad"}">{escape(state)}</td></tr>'
        for name, state in sorted(checks.items())
    )
    return f"<table><tr><th>check</th><th>state</th></tr>{rows}</table>"


def _sale(sale: Mapping[str, Any] | None, store: str, sale_id: str) -> str:
    if sale is None:
        return f'<p class="warn">No committed sale {escape(sale_id)} in store {escape(store)}.</p>'
    head = (
        f"<p><strong>{escape(str(sale.get('kind', 'sale')))} {escape(str(sale.get('id')))}</strong>"
        f" of {escape(str(sale.get('business_date')))}, total "
        f"<strong>{escape(str(sale.get('total')))} {escape(str(sale.get('currency')))}</strong>"
        f", customer {escape(str(sale.get('customer_id') or '-'))}"
        f"{' <span class=bad>voided</span>' if sale.get('voided') else ''}</p>"
    )
    lines = "".join(
        f"<tr><td>{escape(str(ln.get('sku') or '-'))}</td>"
        f"<td>{escape(str(ln.get('description') or ''))}</td>"
        f'<td class="num">{escape(str(ln.get("quantity")))}</td>'
        f'<td class="num">{escape(str(ln.get("unit_price")))}</td>'
        f'<td class="num">{escape(str(ln.get("discount")))}</td></tr>'
        for ln in sale.get("lines", [])
    )
    tenders = "".join(
        f"<tr><td>{escape(str(t.get('method')))}</td>"
        f'<td class="num">{escape(str(t.get("amount")))}</td></tr>'
        for t in sale.get("tenders", [])
    )
    if not sale.get("tenders_known", True):
        tenders = '<tr><td colspan="2" class="muted">the POS sends no payments</td></tr>'
    warnings = "".join(f"<li>{escape(str(w))}</li>" for w in sale.get("warnings", []))
    return (
        head
        + "<table><tr><th>sku</th><th>description</th><th>qty</th><th>unit price</th>"
        + f"<th>discount</th></tr>{lines}</table>"
        + f"<table><tr><th>tender</th><th>amount</th></tr>{tenders}</table>"
        + (f"<ul class='warn'>{warnings}</ul>" if warnings else "")
    )


def render_page(
    status: Mapping[str, Any],
    quarantine_by_rule: Mapping[str, Mapping[str, int]],
    *,
    page: int = 1,
    lookup: tuple[str, str, Mapping[str, Any] | None] | None = None,
) -> str:
    """The whole page from a `/status` body (plus quarantine counts by rule per store)."""
    stores: Mapping[str, Mapping[str, Any]] = status.get("stores", {})
    order = attention_order(stores)
    pages = max(1, -(-len(order) // PAGE_SIZE))
    page = min(max(1, page), pages)
    shown = order[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    rows: list[str] = []
    for sid in shown:
        st = stores[sid]
        local, utc = _when(st.get("next_window"), str(st.get("timezone", "UTC")))
        paused = '<span class="warn">paused</span>' if st.get("paused") else ""
        rows.append(
            f"<tr><td><strong>{escape(sid)}</strong></td><td>{escape(str(st.get('source')))}</td>"
            f'<td class="num">{int(st.get("pending", 0))}</td>'
            f'<td class="num">{_age(st.get("oldest_pending_age_s"))}</td>'
            f"<td>{escape(local)}</td><td>{escape(utc)}</td>"
            f"<td>{_last(st.get('last_window'))}</td>"
            f"<td>{_by_rule(int(st.get('quarantine') or 0), quarantine_by_rule.get(sid))}</td>"
            f"<td>{paused}</td></tr>"
        )
    nav = ""
    if pages > 1:
        links = [
            f'<a href="/?{urlencode({"page": n})}">{n}</a>' if n != page else f"<b>{n}</b>"
            for n in range(1, pages + 1)
        ]
        nav = f"<nav>Page {' '.join(links)}</nav>"
    store_options = "".join(
        f'<option value="{escape(sid)}"'
        f"{' selected' if lookup and lookup[0] == sid else ''}>{escape(sid)}</option>"
        for sid in sorted(stores)
    )
    found = _sale(lookup[2], lookup[0], lookup[1]) if lookup else ""
    spool: Mapping[str, Any] = status.get("spool", {})
    sink: Mapping[str, Any] = status.get("sink", {})
    backfills = _backfills(status.get("backfills"))
    body = (
        f"<header><div><h1>possync {escape(str(status.get('version', '')))}</h1>"
        f'<span class="muted">{escape(str(status.get("now", "")))}</span></div>'
        '<form class="inline" method="post" action="/logout"><button>Log out</button></form>'
        "</header>"
        f'<h2 id="health">Health</h2>{_health(status.get("health", {}))}'
        f"<p>Sink <strong>{escape(str(sink.get('kind')))}</strong>: "
        f"{escape(str(sink.get('last_error') or 'ok'))}. Spool: "
        f"{int(spool.get('pending', 0))} pending, integrity "
        f"{escape(str(spool.get('integrity') or 'not checked yet'))}.</p>"
        f'<h2 id="lookup">Find a sale</h2><form method="get" action="/">'
        f'<label>Store <select name="store">{store_options}</select></label> '
        '<label>Sale id <input name="sale" required></label> <button>Find</button></form>'
        f"{found}"
        f'<h2 id="stores">Stores ({len(order)})</h2>{nav}'
        "<table><tr><th>store</th><th>source</th><th>pending</th><th>oldest</th>"
        "<th>next window (store time)</th><th>next window (UTC)</th><th>last window</th>"
        f"<th>quarantine</th><th></th></tr>{''.join(rows)}</table>{nav}"
        f"{backfills}"
    )
    return _doc("possync status", body)


def _backfills(value: Any) -> str:
    running: Sequence[Mapping[str, Any]] = (
        value.get("running", []) if isinstance(value, Mapping) else []
    )
    if not running:
        return '<h2 id="backfills">Backfills</h2><p class="muted">none running</p>'
    rows = "".join(
        f"<tr><td>{escape(str(b.get('store')))}</td><td>{escape(str(b.get('source')))}</td>"
        f'<td class="num">{int(b.get("records", 0)):,}</td>'
        f'<td class="num">{int(b.get("bytes", 0)):,}</td>'
        f'<td class="num">{float(b.get("rate_records_s") or 0):,.0f}/s</td>'
        f"<td>{escape(str(b.get('state')))}</td></tr>"
        for b in running
    )
    return (
        '<h2 id="backfills">Backfills</h2><table><tr><th>store</th><th>source</th>'
        f"<th>records</th><th>bytes</th><th>rate</th><th>state</th></tr>{rows}</table>"
    )
