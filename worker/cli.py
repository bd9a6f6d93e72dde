"""`possync serve | backfill | status | commit | quarantine | sales | sale | config check`."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence

from worker import __version__
from worker.config import Config, Credentials, embedded_default, load
from worker.errors import ConfigError
from worker.logs import setup_logging


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), as aiohttp would open it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host or "0.0.0.0", port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


# CPython's own default. Measured against 0.5 ms (issue 11, same build, shared machine): the
# durable push took 13-16 % more req/s at 5 ms, and push p50/p99 during a window commit
# showed no consistent difference either way in four paired runs (noise was larger).
SWITCH_INTERVAL_MS = 5.0


def switch_interval_s(env: Mapping[str, str]) -> float:
    """The GIL switch interval for `serve`: SWITCH_INTERVAL_MS, or `POSSYNC_SWITCH_INTERVAL_MS`.

    The variable exists so a benchmark can compare intervals on the same build (a shorter
    one bounds how long the event loop waits for a SQLite thread holding the GIL, at a cost
    on every request); it is not a setting, and a value outside (0, 1000] ms is ignored.
    """
    raw = env.get("POSSYNC_SWITCH_INTERVAL_MS")
    try:
        ms = float(raw) if raw else SWITCH_INTERVAL_MS
    except ValueError:
        ms = SWITCH_INTERVAL_MS
    return (ms if 0 < ms <= 1000 else SWITCH_INTERVAL_MS) / 1000


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from worker.app import build_app, listen

    path = args.config or os.environ.get("POSSYNC_CONFIG")
    creds: Credentials | None = None
    try:
        if path:
            cfg: Config = load(path)
        else:
            cfg, creds = embedded_default(os.environ.get("POSSYNC_DATA_DIR", "var"))
    except ConfigError as exc:
        print(f"possync: config error: {exc.message} (field: {exc.field})", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.log_format)
    if not cfg.http.admin_token:
        # Allowed on loopback only (config refuses it elsewhere): every admin, read and
        # operator endpoint then answers 401 to everyone.
        print(
            "possync: WARNING: [http] admin_token is empty: the admin API, /status, /readyz "
            "and /metrics refuse every request until one is set",
            file=sys.stderr,
            flush=True,
        )
    if args.port is not None:
        import msgspec

        cfg = msgspec.structs.replace(cfg, http=msgspec.structs.replace(cfg.http, port=args.port))
    # Bind before anything else is printed or opened: a busy port is one line and exit 2,
    # and `port = 0` reports the port the system chose.
    try:
        sock = _bind(cfg.http.host, cfg.http.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(
                f"possync: port {cfg.http.port} is in use (set [http] port or --port)",
                file=sys.stderr,
            )
        else:
            print(
                f"possync: cannot listen on {cfg.http.host}:{cfg.http.port}: "
                f"{os.strerror(exc.errno) if exc.errno else exc}",
                file=sys.stderr,
            )
        return 2
    port = sock.getsockname()[1]
    app = build_app(cfg, credentials=creds)
    scheme = "https" if cfg.http.tls_cert else "http"
    host = f"[{cfg.http.host}]" if ":" in cfg.http.host else cfg.http.host
    base = f"{scheme}://{host}:{port}"
    if creds is not None:
        print(
            "possync: running on the embedded default (SQLite sink in "
            f"{cfg.data_dir}/, one demo store 'demo').\n"
            f"  admin token: {creds.admin_token}\n"
            f"  demo store token: {creds.demo_token}\n"
            "  push a sale:\n"
            f"    curl -sS -X POST {base}/v1/push/canonical/demo \\\n"
            f"      -H 'Authorization: Bearer {creds.demo_token}' -H 'Content-Type: application/json' \\\n"
            '      -d \'{"type":"sale","id":"T-1","occurred_at":"2026-11-25T10:00:00-05:00","currency":"USD",'
            '"lines":[{"sku":"RING-1","quantity":1,"unit_price":"100.00"}],"subtotal":"100.00","tax":"8.00",'
            '"total":"108.00","tenders":[{"method":"card","amount":"108.00"}]}\'\n'
            f"    curl -sS {base}/status -H 'Authorization: Bearer {creds.admin_token}'",
            flush=True,
        )
    ssl_context = None
    if cfg.http.tls_cert and cfg.http.tls_key:
        import ssl

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(cfg.http.tls_cert, cfg.http.tls_key)

    async def serve() -> None:
        # SIGTERM / SIGINT end the `listen` block: the graceful shutdown of worker.app
        # (listen also caps connections and times out slow request heads).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with listen(app, cfg, sock=sock, ssl_context=ssl_context):
            print(f"possync: listening on {base}", flush=True)
            await stop.wait()

    asyncio.run(serve())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    parser = argparse.ArgumentParser(prog="possync", description=__doc__)
    parser.add_argument("--version", action="version", version=f"possync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument(
        "--config", help="TOML config file (default: $POSSYNC_CONFIG, else the embedded default)"
    )
    serve.add_argument("--port", type=int, default=None, help="override [http] port")
    from worker.backfill_cli import add_backfill_command, run_backfill_command

    add_backfill_command(sub)
    from worker.ops_cli import OPS_COMMANDS, add_ops_commands, run_ops_command

    add_ops_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "backfill":
        return run_backfill_command(args)
    if args.command in OPS_COMMANDS:
        return run_ops_command(args)
    if args.command == "serve":
        import uvloop

        uvloop.install()
        sys.setswitchinterval(switch_interval_s(os.environ))
        return _serve(args)
    parser.error(f"unknown command {args.command}")
