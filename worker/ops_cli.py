"""Operator commands: talk to a running server through its HTTP API.

    possync status                          stores by what needs attention (a rich table)
    possync commit [--store S] [--dry-run]  run the window now (or preview it)
    possync quarantine list [--store S] [--rule R]
    possync quarantine show ID
    possync quarantine release ID | --store S --rule R
    possync quarantine discard ID [--reason TEXT]
    possync sales STORE --date YYYY-MM-DD   the Sales Log of one business date
    possync sale STORE ID                   one committed sale with lines and tenders
    possync config check FILE               validate a config; print it, secrets masked

Where the server is: `--url`, else `POSSYNC_URL`, else `[http]` of `--config`/`POSSYNC_CONFIG`,
else http://127.0.0.1:8080. The admin token: `--token`, else `POSSYNC_ADMIN_TOKEN`, else the
config's `admin_token`, else the embedded default's `var/credentials.json`.

Errors are one line on stderr and an exit code: 1 the server refused (its status and the
field it named), 2 usage or config, 3 the server could not be reached (the URL tried; a
refused connection fails at once, it is not retried).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import msgspec
from rich.console import Console
from rich.table import Table

from worker.api.status import attention_order
from worker.config import Config, load
from worker.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
_SECRET_KEYS = frozenset({"token", "secret", "previous_secret", "admin_token", "password"})
_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=5)


class CliError(Exception):
    """A failure reported as one line and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def add_ops_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the operator commands on the `possync` parser."""

    def parser(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text)
        p.add_argument("--url", help="server base URL (default: $POSSYNC_URL or the config's)")
        p.add_argument("--token", help="admin token (default: $POSSYNC_ADMIN_TOKEN or config)")
        p.add_argument("--config", help="config file for the URL and admin token")
        return p

    parser("status", "stores by what needs attention")
    commit = parser("commit", "run the window now")
    commit.add_argument("--store", help="one store (default: all)")
    commit.add_argument("--dry-run", action="store_true", help="validate only, write nothing")
    q = parser("quarantine", "quarantined sales")
    q.add_argument("action", choices=["list", "show", "release", "discard"])
    q.add_argument("id", nargs="?", help="quarantine id (show, release, discard)")
    q.add_argument("--store", help="list: one store; release by rule: the store")
    q.add_argument("--rule", help="list: one rule; release every sale that failed it")
    q.add_argument("--reason", default="", help="discard: why (kept in the audit log)")
    sales = parser("sales", "the Sales Log of one business date")
    sales.add_argument("store")
    sales.add_argument("--date", required=True, help="business date YYYY-MM-DD")
    sale = parser("sale", "one committed sale")
    sale.add_argument("store")
    sale.add_argument("id")
    cfg = sub.add_parser("config", help="config tools")
    cfg.add_argument("action", choices=["check"])
    cfg.add_argument("file")


OPS_COMMANDS = frozenset({"status", "commit", "quarantine", "sales", "sale", "config"})


def run_ops_command(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run one operator command (blocking); the exit code."""
    return asyncio.run(run_ops(args, console or Console()))


async def run_ops(args: argparse.Namespace, console: Console) -> int:
    """The command's work; errors become one line on stderr and an exit code."""
    err = Console(stderr=True) if console.file is sys.stdout else console
    try:
        if args.command == "config":
            return _config_check(args.file, console)
        client = _Client(*_endpoint(args))
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
            client.session = session
            return await _COMMANDS[args.command](client, args, console)
    except CliError as exc:
        err.print(f"possync: {exc.message}", markup=False, highlight=False, soft_wrap=True)
        return exc.code


# --------------------------------------------------------------------------- endpoint


def _endpoint(args: argparse.Namespace) -> tuple[str, str]:
    cfg: Config | None = None
    path = args.config or os.environ.get("POSSYNC_CONFIG")
    if path:
        try:
            cfg = load(path)
        except ConfigError as exc:
            raise CliError(
                f"config error: {exc.message} (field: {exc.field})", EXIT_USAGE
            ) from None
    url = args.url or os.environ.get("POSSYNC_URL")
    if not url and cfg is not None:
        scheme = "https" if cfg.http.tls_cert else "http"
        url = f"{scheme}://{cfg.http.host}:{cfg.http.port}"
    token = args.token or os.environ.get("POSSYNC_ADMIN_TOKEN")
    if not token and cfg is not None:
        token = cfg.http.admin_token
    if not token:
        token = _embedded_token(Path(os.environ.get("POSSYNC_DATA_DIR", "var")))
    if not token:
        raise CliError(
            "no admin token: pass --token, set POSSYNC_ADMIN_TOKEN, or --config FILE", EXIT_USAGE
        )
    return (url or DEFAULT_URL).rstrip("/"), token


def _embedded_token(data_dir: Path) -> str | None:
    try:
        raw = json.loads((data_dir / "credentials.json").read_text())
    except (OSError, ValueError):
        return None
    token = raw.get("admin_token") if isinstance(raw, dict) else None
    return token if isinstance(token, str) and token else None


class _Client:
    """GET/POST/DELETE against the server with the admin token; errors as CliError."""

    session: aiohttp.ClientSession

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(
        self, method: str, path: str, params: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        url = f"{self.base}{path}"
        try:
            async with self.session.request(
                method, url, params=params, headers=self.headers
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            errno_ = exc.os_error.errno
            reason = os.strerror(errno_) if errno_ else type(exc.os_error).__name__
            raise CliError(
                f"cannot reach {self.base}: {reason.lower()}", EXIT_UNREACHABLE
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CliError(
                f"{method} {url} failed: {type(exc).__name__}", EXIT_UNREACHABLE
            ) from None
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {"items": body}
        if status >= 400:
            field = body.get("field")
            where = f" (field: {field})" if field else ""
            raise CliError(f"{status} {body.get('error', 'error')}{where}", EXIT_REFUSED)
        return body

    async def pages(self, path: str, key: str, params: Mapping[str, str]) -> list[Any]:
        """Every item of a list endpoint, following `next` where the server pages."""
        body = await self.call("GET", path, params)
        items: list[Any] = list(body.get(key, []))
        seen = 0
        while isinstance(nxt := body.get("next"), str) and nxt and seen < 10_000:
            seen += 1
            body = await self.call("GET", nxt if nxt.startswith("/") else f"/{nxt}")
            items.extend(body.get(key, []))
        return items


# --------------------------------------------------------------------------- commands


def _local(instant: str | None, zone: str) -> str:
    if not instant:
        return "-"
    when = datetime.fromisoformat(instant)
    local = when.astimezone(ZoneInfo(zone))
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({when.astimezone(UTC):%H:%M} UTC)"


async def _status(client: _Client, args: argparse.Namespace, console: Console) -> int:
    body = await client.call("GET", "/status")
    stores: dict[str, dict[str, Any]] = body.get("stores", {})
    table = Table(title=f"possync {body.get('version', '')} at {body.get('now', '')}")
    for col in ("store", "source", "pending", "oldest", "next window", "last window", "quar.", ""):
        table.add_column(col)
    for sid in attention_order(stores):
        st = stores[sid]
        last = st.get("last_window") or {}
        if last.get("error"):
            result = f"[red]failed: {last['error']}[/red]"
        elif last:
            result = (
                f"{last.get('committed', 0)} committed, {last.get('quarantined', 0)} quarantined,"
                f" {last.get('held', 0)} held in {last.get('duration_s', 0):.1f}s"
            )
        else:
            result = "-"
        age = st.get("oldest_pending_age_s")
        table.add_row(
            sid,
            str(st.get("source", "")),
            str(st.get("pending", 0)),
            "-" if age is None else f"{age / 3600:.1f} h",
            _local(st.get("next_window"), str(st.get("timezone", "UTC"))),
            result,
            str(st.get("quarantine", 0)),
            "[yellow]paused[/yellow]" if st.get("paused") else "",
        )
    console.print(table)
    sink, spool = body.get("sink", {}), body.get("spool", {})
    console.print(
        f"sink {sink.get('kind')}: {sink.get('last_error') or 'ok'}; spool: "
        f"{spool.get('pending', 0)} pending, integrity {spool.get('integrity')}",
        markup=False,
    )
    return 0


async def _commit(client: _Client, args: argparse.Namespace, console: Console) -> int:
    if args.dry_run:
        status = await client.call("GET", "/status")
        ids = [args.store] if args.store else attention_order(status.get("stores", {}))
        for sid in ids:
            p = await client.call("GET", f"/v1/admin/stores/{sid}/preview")
            console.print(
                f"{sid}: {p.get('pending', 0)} pending; would commit {p.get('would_commit', 0)},"
                f" quarantine {len(p.get('invalid', []))}, hold {len(p.get('held', []))}"
                f" (next window {p.get('next_window')})",
                markup=False,
            )
        return 0
    params = {"store": args.store} if args.store else None
    body = await client.call("POST", "/v1/admin/commit", params)
    results = body.get("stores") or body.get("results") or body
    console.print_json(json.dumps(results, default=str))
    return 0


async def _quarantine(client: _Client, args: argparse.Namespace, console: Console) -> int:
    action = args.action
    if action == "list":
        params = {k: v for k, v in (("store", args.store), ("rule", args.rule)) if v}
        items = await client.pages("/v1/admin/quarantine", "items", params)
        if args.rule:  # a server without the rule filter still answers: filter here too
            items = [i for i in items if any(r.get("rule") == args.rule for r in i["reasons"])]
        table = Table(title=f"{len(items)} quarantined")
        for col in ("id", "store", "record", "rules", "quarantined at"):
            table.add_column(col)
        for i in items:
            rules = ", ".join(sorted({r.get("rule", "?") for r in i.get("reasons", [])}))
            table.add_row(
                str(i["id"]), i["store"], str(i["record_id"]), rules, str(i["quarantined_at"])
            )
        console.print(table)
        return 0
    if action == "release" and args.id is None:
        if not (args.store and args.rule):
            raise CliError("release needs an ID, or --store and --rule", EXIT_USAGE)
        body = await client.call(
            "POST", "/v1/admin/quarantine/release", {"store": args.store, "rule": args.rule}
        )
        console.print_json(json.dumps(body, default=str))
        return 0
    if args.id is None:
        raise CliError(f"quarantine {action} needs an ID", EXIT_USAGE)
    if action == "show":
        items = await client.pages("/v1/admin/quarantine", "items", {})
        found = [i for i in items if str(i.get("id")) == args.id]
        if not found:
            raise CliError(f"no quarantined record {args.id}", EXIT_REFUSED)
        console.print_json(json.dumps(found[0], default=str))
        return 0
    if action == "release":
        body = await client.call("POST", f"/v1/admin/quarantine/{args.id}/release")
    else:
        body = await client.call(
            "DELETE", f"/v1/admin/quarantine/{args.id}", {"reason": args.reason}
        )
    console.print_json(json.dumps(body, default=str))
    return 0


async def _sales(client: _Client, args: argparse.Namespace, console: Console) -> int:
    sales = await client.pages(f"/v1/stores/{args.store}/sales", "sales", {"date": args.date})
    table = Table(title=f"{args.store} {args.date}: {len(sales)} sales")
    for col in ("id", "kind", "occurred at", "customer", "total", "currency", ""):
        table.add_column(col)
    for s in sales:
        flags = "voided" if s.get("voided") else ("warning" if s.get("warnings") else "")
        table.add_row(
            str(s.get("id")),
            str(s.get("kind")),
            str(s.get("occurred_at")),
            str(s.get("customer_id") or "-"),
            str(s.get("total")),
            str(s.get("currency")),
            flags,
        )
    console.print(table)
    return 0


async def _sale(client: _Client, args: argparse.Namespace, console: Console) -> int:
    body = await client.call("GET", f"/v1/stores/{args.store}/sales/{args.id}")
    console.print_json(json.dumps(body, default=str))
    return 0


_COMMANDS = {
    "status": _status,
    "commit": _commit,
    "quarantine": _quarantine,
    "sales": _sales,
    "sale": _sale,
}


# --------------------------------------------------------------------------- config check


def mask_secrets(value: Any) -> Any:
    """The config as builtins with every token, secret and password masked."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in _SECRET_KEYS and isinstance(v, str):
                out[k] = "***" if v else ""
            elif k == "dsn" and isinstance(v, str):
                out[k] = _mask_dsn(v)
            else:
                out[k] = mask_secrets(v)
        return out
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


def _mask_dsn(dsn: str) -> str:
    scheme, sep, rest = dsn.partition("://")
    if not sep or "@" not in rest:
        return dsn
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in userinfo else dsn


def _config_check(path: str, console: Console) -> int:
    try:
        cfg = load(path)
    except ConfigError as exc:
        raise CliError(f"config error: {exc.message} (field: {exc.field})", EXIT_USAGE) from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    console.print_json(json.dumps(mask_secrets(msgspec.to_builtins(cfg)), default=str))
    console.print(f"{path}: ok ({len(cfg.stores)} stores)", markup=False, soft_wrap=True)
    return 0


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse an operator command line (for tests: the `possync` parser's ops subset)."""
    parser = argparse.ArgumentParser(prog="possync")
    sub = parser.add_subparsers(dest="command", required=True)
    add_ops_commands(sub)
    return parser.parse_args(argv)
