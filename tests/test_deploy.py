"""The deploy kit: the systemd unit is hardened, its ExecStart line really serves with the
example config, and the example config passes `possync config check`."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
import tomllib
from pathlib import Path

import aiohttp
import pytest

from tests.procserver import free_port, reap
from tests.support.config import write_toml
from worker.config import load
from worker.errors import ConfigError

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def unit_settings() -> dict[str, list[str]]:
    """The [Service] section of the unit: key -> every value it is given."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in (DEPLOY / "possync.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_is_hardened() -> None:
    s = unit_settings()
    for key, value in {
        "DynamicUser": "yes",
        "StateDirectory": "possync",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "KillSignal": "SIGTERM",
    }.items():
        assert s.get(key) == [value], key
    assert "@system-service" in s["SystemCallFilter"]


def test_example_config_needs_its_secrets_filled_in(tmp_path: Path) -> None:
    # As shipped, the Shopify store has no signing secret: `config check` names the key.
    with pytest.raises(ConfigError) as err:
        load(DEPLOY / "possync.toml")
    assert err.value.field == "$.stores[1].secret"
    raw = tomllib.loads((DEPLOY / "possync.toml").read_text())
    raw["stores"] = [{**s, "secret": "s"} if "secret" in s else s for s in raw["stores"]]
    cfg = load(write_toml(tmp_path / "possync.toml", raw))
    assert cfg.data_dir == "/var/lib/possync"
    assert {s.source for s in cfg.stores} == {"the_edge", "shopify"}


async def test_exec_start_serves_with_the_example_config(tmp_path: Path) -> None:
    (exec_start,) = unit_settings()["ExecStart"]
    conf_dir, state_dir = tmp_path / "etc", tmp_path / "state"
    conf_dir.mkdir()
    port = free_port()
    admin = "deploy-admin-token"
    raw = tomllib.loads((DEPLOY / "possync.toml").read_text())
    assert raw["data_dir"] == "/var/lib/possync" and raw["http"]["port"] == 8080
    raw["data_dir"] = str(state_dir)
    raw["http"] = {**raw["http"], "port": port, "admin_token": admin}
    # Each store its own token: config refuses a token shared by two stores (issue 12).
    raw["stores"] = [
        {**s, "token": f"store-token-{n}"} | ({"secret": "shopify-secret"} if "secret" in s else {})
        for n, s in enumerate(raw["stores"], start=1)
    ]
    write_toml(conf_dir / "possync.toml", raw)
    # What systemd does with the line: expand ${CONFIGURATION_DIRECTORY}; the venv stands in
    # for /opt/possync.
    argv = shlex.split(exec_start.replace("${CONFIGURATION_DIRECTORY}", str(conf_dir)))
    assert argv[0] == "/opt/possync/bin/possync"
    argv[0] = str(Path(sys.executable).parent / "possync")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    try:

        async def listening() -> None:
            assert proc.stdout is not None
            while b"listening on" not in (line := await proc.stdout.readline()):
                assert line, "possync exited before listening"

        await asyncio.wait_for(listening(), 30)
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
            auth = {"Authorization": f"Bearer {admin}"}
            async with http.get(f"{base}/readyz", headers=auth) as resp:
                assert resp.status == 200, await resp.text()
        assert (state_dir / "spool.db").exists()
        assert (state_dir / "inbox" / "the_edge" / "store-001").is_dir()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        await reap(proc)
