"""Configuration: TOML decoded once into frozen msgspec Structs that reject unknown keys.

Durations and sizes carry their unit in the key name (`linger_ms`, `spread_s`,
`max_body_bytes`). `load()` is the only entry point; it returns a validated `Config` or
raises `ConfigError` naming the offending key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from worker.errors import ConfigError

NonNeg = Annotated[int, msgspec.Meta(ge=0)]
Pos = Annotated[int, msgspec.Meta(gt=0)]
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class HttpConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[http]"""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    admin_token: str = ""
    max_body_bytes: Pos = 10 * 1024 * 1024
    max_backfill_bytes: Pos = 64 * 1024 * 1024 * 1024
    shutdown_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    tls_cert: str | None = None
    tls_key: str | None = None
    # Open connections at most (leave file descriptors for the spool, sink and inbox). At
    # the cap a new connection closes the oldest idle one, else gets a fast 503.
    max_connections: Annotated[int, msgspec.Meta(ge=8)] = 512
    # Seconds to send a complete request head, from connect or from the previous answer
    # (also the idle keep-alive timeout).
    header_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 15.0


class WindowsConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[windows]: when each store's spooled sales are validated and committed."""

    times: list[str] = msgspec.field(default_factory=lambda: ["02:00", "14:00"])
    timezone: str = "UTC"
    spread_s: NonNeg = 900
    hold_windows: NonNeg = 2
    batch_size: Pos = 1000
    commit_retry_max_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    # POST /v1/admin/commit stops retrying a failing sink after this long and answers with
    # the error (the scheduler's own windows retry until the sink is back).
    admin_commit_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0


class SpoolConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[spool]: the durable per-store buffers (one SQLite file, WAL)."""

    path: str = ""  # default: <data_dir>/spool.db
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    max_records_per_store: Pos = 2_000_000
    max_bytes_per_store: Pos = 2 * 1024 * 1024 * 1024
    max_group_records: Pos = 20_000
    linger_ms: NonNeg = 0
    retry_after_s: Pos = 30
    integrity_check_delay_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0  # after start-up


class SqliteSinkConfig(
    _Base, frozen=True, forbid_unknown_fields=True, kw_only=True, tag="sqlite", tag_field="kind"
):
    """[sink] kind = "sqlite": the embedded clienteling database."""

    path: str = ""  # default: <data_dir>/clientbook.db
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    busy_timeout_ms: NonNeg = 5000


class PostgresSinkConfig(
    _Base, frozen=True, forbid_unknown_fields=True, kw_only=True, tag="postgres", tag_field="kind"
):
    """[sink] kind = "postgres": asyncpg pool against a PostgreSQL database."""

    dsn: str
    pool_min: Pos = 1
    pool_max: Pos = 8
    schema: str = "public"
    command_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0


SinkConfig = SqliteSinkConfig | PostgresSinkConfig


RulePolicy = Literal["quarantine", "warn", "off"]
# The window rules a store may set a policy for (`worker.validation` has their meaning);
# `schema` is not among them: a record that does not decode cannot be committed.
POLICY_RULES = (
    "currency.known",
    "lines.nonempty",
    "subtotal.sum",
    "discount.sum",
    "total.sum",
    "tenders.sum",
    "occurred_at.future",
    "occurred_at.too_old",
    "return.original",
    "void.target",
)


class StoreConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[[stores]]"""

    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    source: str = "canonical"
    timezone: str | None = None
    token: str = ""
    secret: str = ""
    previous_secret: str = ""  # accepted too while a signing secret rotates
    brand: str | None = None
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")] | None = (
        None  # for sources without one
    )
    mapping: str | None = None  # name of a [mappings.NAME] table or a built-in mapping
    windows: list[str] | None = None  # overrides [windows] times for this store
    # Per-rule policy at the window ("quarantine" | "warn" | "off"), over the source's own
    # defaults (`worker.validation.rule_policy`); e.g. rules = { "tenders.sum" = "warn" }.
    rules: dict[str, RulePolicy] = {}
    # The smallest cash step when this store rounds cash (e.g. "0.05"); default by currency.
    cash_rounding: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,6}(\.[0-9]{1,4})?$")] | None = (
        None
    )


class TriggerConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[[triggers]]: a sales trigger (customer-facing automation)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    days_after: NonNeg = 0
    min_total: str | None = None
    max_total: str | None = None
    categories: list[str] = []
    action: Literal["message", "reminder"] = "message"


class MqttConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[mqtt]: subscribe to `{prefix}/{source}/{store}/{kind}`."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1883
    username: str | None = None
    password: str | None = None
    client_id: str = "possync"
    prefix: str = "pos"
    max_inflight: Pos = 256
    keepalive_s: Pos = 30
    reconnect_max_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # MQTT 5 shared subscription group: when set, topics are subscribed as
    # `$share/<shared_group>/{prefix}/...` so several instances split the messages.
    shared_group: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,64}$")] = ""


class InboxConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[inbox]: drop folders under <data_dir>/inbox/{source}/{store}/."""

    enabled: bool = True
    scan_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    stable_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    # File-system notifications (watchfiles) wake the scan of a folder; every folder is
    # still scanned every rescan_s as the safety net. Without notifications: scan_interval_s.
    notify: bool = True
    rescan_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # A split export (The Edge's numbered Transaction parts) with a part missing waits this
    # long after its last part appeared, then goes to failed/ naming the missing part.
    gap_wait_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0


class InstanceConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[instance]: this sidecar among many on one central sink (issue 14)."""

    # Shown on /status and in logs; default: the host name and the process id.
    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{0,128}$")] = ""
    # The stores whose windows this instance commits; empty: every configured store.
    # A store configured but not owned still takes pushes (spooled here, committed by
    # whichever instance holds its window lock at the window).
    owns: list[str] = []
    # How long a window waits for another instance's lock on the same store before it
    # reports `skipped = "locked"` (the other instance is committing that store).
    lock_wait_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0


RecordKind = Literal["customer", "product", "sale", "void", "trigger", "manifest"]


class HttpOutputConfig(
    _Base, frozen=True, forbid_unknown_fields=True, kw_only=True, tag="http", tag_field="kind"
):
    """[[outputs]] kind = "http": POST batches of committed events to the app's API."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    records: list[RecordKind]
    url: str
    token: str = ""  # sent as `Authorization: Bearer <token>` when set
    page_size: Annotated[int, msgspec.Meta(gt=0, le=10_000)] = 500
    concurrency: Annotated[int, msgspec.Meta(gt=0, le=64)] = 4
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    retry_max_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0


class MqttOutputConfig(
    _Base, frozen=True, forbid_unknown_fields=True, kw_only=True, tag="mqtt", tag_field="kind"
):
    """[[outputs]] kind = "mqtt": publish committed events QoS 1 to `{topic_prefix}/...`."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    records: list[RecordKind]
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1883
    username: str | None = None
    password: str | None = None
    client_id: str = ""  # default: possync-out-<name>-<instance id>
    topic_prefix: str = "possync/out"
    max_inflight: Pos = 256
    keepalive_s: Pos = 30
    retry_max_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0


OutputConfig = HttpOutputConfig | MqttOutputConfig


class Config(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole configuration."""

    data_dir: str = "var"
    trigger_max_age_days: NonNeg = 30
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    windows: WindowsConfig = msgspec.field(default_factory=WindowsConfig)
    spool: SpoolConfig = msgspec.field(default_factory=SpoolConfig)
    sink: SinkConfig = msgspec.field(default_factory=SqliteSinkConfig)
    stores: list[StoreConfig] = []
    triggers: list[TriggerConfig] = []
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    inbox: InboxConfig = msgspec.field(default_factory=InboxConfig)
    mappings: dict[str, dict[str, Any]] = {}
    instance: InstanceConfig = msgspec.field(default_factory=InstanceConfig)
    # Extra destinations per record type, fed from a durable outbox after the sink commits.
    outputs: list[OutputConfig] = []
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # JSON lines for a log pipeline, a human line for a terminal; "auto": human on a tty.
    log_format: Literal["auto", "json", "human"] = "auto"

    # Derived helpers (pure; the struct stays frozen).
    @property
    def data_path(self) -> Path:
        """`data_dir` as a Path."""
        return Path(self.data_dir)

    @property
    def spool_path(self) -> Path:
        """The spool database file."""
        return Path(self.spool.path) if self.spool.path else self.data_path / "spool.db"

    def store(self, store_id: str) -> StoreConfig | None:
        """The store's config, or None."""
        for s in self.stores:
            if s.id == store_id:
                return s
        return None

    def store_zone(self, store: StoreConfig) -> ZoneInfo:
        """The store's IANA zone (its own, else `[windows] timezone`)."""
        return ZoneInfo(store.timezone or self.windows.timezone)

    def store_times(self, store: StoreConfig) -> list[str]:
        """The store's window times."""
        return store.windows if store.windows is not None else self.windows.times


def parse_time(text: str) -> tuple[int, int, int]:
    """ "HH:MM" or "HH:MM:SS" -> (h, m, s); ValueError otherwise."""
    m = _TIME.match(text)
    if not m:
        raise ValueError(f"bad time {text!r}: want HH:MM or HH:MM:SS")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


_KEY_PATH = re.compile(r"`([^`]+)`")


def decode(raw: dict[str, Any], origin: str = "config") -> Config:
    """Decode and cross-check a parsed TOML table."""
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        text = str(exc)
        raise ConfigError(f"{origin}: {text}", field=_field_of(text)) from None
    validate(cfg, origin)
    return cfg


def _field_of(text: str) -> str | None:
    at = text.rsplit(" - at ", 1)
    path = at[1].strip("`") if len(at) == 2 else "$"
    unknown = re.search(r"unknown field `([^`]+)`", text)
    missing = re.search(r"missing required field `([^`]+)`", text)
    name = unknown or missing
    if name:
        path = f"{path}.{name.group(1)}"
    return path


def validate(cfg: Config, origin: str = "config") -> None:
    """Cross-field checks msgspec cannot express."""
    for wt in cfg.windows.times:
        try:
            parse_time(wt)
        except ValueError as e:
            raise ConfigError(f"{origin}: {e}", field="$.windows.times") from None
    if not cfg.windows.times:
        raise ConfigError(f"{origin}: at least one window time", field="$.windows.times")
    _zone(cfg.windows.timezone, "$.windows.timezone", origin)
    seen: set[str] = set()
    for i, s in enumerate(cfg.stores):
        if s.id in seen:
            raise ConfigError(f"{origin}: duplicate store id {s.id!r}", field=f"$.stores[{i}].id")
        seen.add(s.id)
        if s.timezone:
            _zone(s.timezone, f"$.stores[{i}].timezone", origin)
        for st in s.windows or []:
            try:
                parse_time(st)
            except ValueError as e:
                raise ConfigError(f"{origin}: {e}", field=f"$.stores[{i}].windows") from None
        _check_source(s, i, origin)
        for rule in s.rules:
            if rule not in POLICY_RULES:
                raise ConfigError(
                    f"{origin}: unknown rule {rule!r} (rules: {', '.join(POLICY_RULES)})",
                    field=f"$.stores[{i}].rules.{rule}",
                )
    names: set[str] = set()
    for i, t in enumerate(cfg.triggers):
        if t.name in names:
            raise ConfigError(
                f"{origin}: duplicate trigger {t.name!r}", field=f"$.triggers[{i}].name"
            )
        names.add(t.name)
        for key in ("min_total", "max_total"):
            value = getattr(t, key)
            if value is not None:
                from decimal import Decimal, InvalidOperation

                try:
                    ok = Decimal(value).is_finite()
                except InvalidOperation:
                    ok = False
                if not ok:
                    raise ConfigError(
                        f"{origin}: {key} must be a decimal string", field=f"$.triggers[{i}].{key}"
                    )
    if not _is_loopback(cfg.http.host):
        empty = [f"$.stores[{i}].token" for i, s in enumerate(cfg.stores) if not s.token]
        if not cfg.http.admin_token:
            empty.insert(0, "$.http.admin_token")
        if empty:
            raise ConfigError(
                f"{origin}: refusing to bind {cfg.http.host} (not loopback) with an empty token",
                field=empty[0],
            )
    _check_tokens(cfg, origin)
    _check_instance(cfg, origin)
    _check_outputs(cfg, origin)
    if bool(cfg.http.tls_cert) != bool(cfg.http.tls_key):
        raise ConfigError(f"{origin}: tls_cert and tls_key go together", field="$.http.tls_key")


def _check_instance(cfg: Config, origin: str) -> None:
    """`[instance] owns`: configured store ids, each once (a window needs the store's config)."""
    configured = {s.id for s in cfg.stores}
    seen: set[str] = set()
    for i, sid in enumerate(cfg.instance.owns):
        field = f"$.instance.owns[{i}]"
        if sid in seen:
            raise ConfigError(f"{origin}: store {sid!r} listed twice in owns", field=field)
        if sid not in configured:
            raise ConfigError(f"{origin}: owns store {sid!r}, which has no [[stores]]", field=field)
        seen.add(sid)


def _check_source(store: StoreConfig, index: int, origin: str) -> None:
    """A store's `source` names an adapter, and a signed source has its secret."""
    # Imported here: the adapters import this module for their config types.
    from worker.adapters import ADAPTERS

    adapter = ADAPTERS.get(store.source)
    if adapter is None:
        raise ConfigError(
            f"{origin}: unknown source {store.source!r} (sources: {', '.join(sorted(ADAPTERS))})",
            field=f"$.stores[{index}].source",
        )
    if adapter.signed and not store.secret:
        raise ConfigError(
            f"{origin}: source {store.source!r} signs its pushes: set the store's secret",
            field=f"$.stores[{index}].secret",
        )


def _check_outputs(cfg: Config, origin: str) -> None:
    """`[[outputs]]`: names unique, `records` non-empty and each once, a known kind, an
    http(s) URL with a host."""
    # Imported here: the outputs module imports this one for its config types.
    from urllib.parse import urlsplit

    from worker.sinks.outputs import OUTPUTS, output_kind

    names: set[str] = set()
    for i, out in enumerate(cfg.outputs):
        at = f"$.outputs[{i}]"
        if out.name in names:
            raise ConfigError(f"{origin}: duplicate output name {out.name!r}", field=f"{at}.name")
        names.add(out.name)
        kind = output_kind(out)
        if kind not in OUTPUTS:
            raise ConfigError(
                f"{origin}: output kind {kind!r} is not available in this build "
                f"(kinds: {', '.join(sorted(OUTPUTS))})",
                field=f"{at}.kind",
            )
        if not out.records:
            raise ConfigError(
                f"{origin}: an output needs at least one record kind in records",
                field=f"{at}.records",
            )
        if len(set(out.records)) != len(out.records):
            raise ConfigError(f"{origin}: a record kind is listed twice", field=f"{at}.records")
        if isinstance(out, HttpOutputConfig):
            try:
                url = urlsplit(out.url)
                ok = url.scheme in ("http", "https") and bool(url.hostname)
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(
                    f"{origin}: url must be an http:// or https:// URL with a host",
                    field=f"{at}.url",
                )


def _check_tokens(cfg: Config, origin: str) -> None:
    """A store token is that store's alone: not the admin token, not another store's."""
    owner: dict[str, int] = {}
    for i, s in enumerate(cfg.stores):
        if not s.token:
            continue
        if cfg.http.admin_token and s.token == cfg.http.admin_token:
            raise ConfigError(
                f"{origin}: store {s.id!r} token equals the admin token (each credential has "
                "one holder: give the store its own token)",
                field=f"$.stores[{i}].token",
            )
        if s.token in owner:
            other = cfg.stores[owner[s.token]].id
            raise ConfigError(
                f"{origin}: store {s.id!r} has the same token as store {other!r} (a store "
                "token only works for its own store: give each its own)",
                field=f"$.stores[{i}].token",
            )
        owner[s.token] = i


def _zone(name: str, field: str, origin: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{origin}: unknown time zone {name!r}", field=field) from None


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(path: str | os.PathLike[str]) -> Config:
    """Read and decode a TOML config file."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}", field=None) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}", field=None) from None
    return decode(raw, str(p))


class Credentials(msgspec.Struct, frozen=True):
    """Tokens generated once for the embedded default and kept in the data directory."""

    admin_token: str
    demo_token: str


def embedded_default(data_dir: str = "var") -> tuple[Config, Credentials]:
    """The no-config default: SQLite sink in `data_dir`, one demo store, generated tokens."""
    base = Path(data_dir)
    base.mkdir(parents=True, exist_ok=True)
    cred_file = base / "credentials.json"
    creds: Credentials | None = None
    if cred_file.exists():
        try:
            creds = msgspec.json.decode(cred_file.read_bytes(), type=Credentials)
        except msgspec.DecodeError:
            creds = None  # unreadable: regenerate below, the old tokens stop working
    if creds is None:
        creds = Credentials(
            admin_token=secrets.token_urlsafe(24), demo_token=secrets.token_urlsafe(24)
        )
        tmp = cred_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(creds))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, cred_file)
    cfg = decode(
        {
            "data_dir": str(base),
            "http": {"host": "127.0.0.1", "port": 8080, "admin_token": creds.admin_token},
            "sink": {"kind": "sqlite"},
            "stores": [
                {
                    "id": "demo",
                    "source": "canonical",
                    "timezone": "America/New_York",
                    "token": creds.demo_token,
                }
            ],
        },
        "embedded default",
    )
    return cfg, creds
