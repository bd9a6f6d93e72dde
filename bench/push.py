"""Measures P1 and P2: durable single-sale pushes against a bare and a naive server, same client.

Three servers, one at a time, each its own process on uvloop: `bare` and `naive`
(`bench.servers`) and the real `possync serve` with a generated config. The same load
(`bench.load.closed_loop`: wrk + Lua if installed, else the aiohttp client process; same
connections, same duration, one new sale per request) first warms each server up, then
measures it. possync's answer is a 202 only after the group commit holding the sale is
fsynced, so afterwards the spool must hold at least as many sales as there were 202s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import data
from bench.load import LoadResult, closed_loop
from bench.procs import (
    ADMIN,
    STORE_TOKEN,
    Proc,
    baseline_proc,
    free_port,
    possync_proc,
    spool_pending,
    wait_ready,
    write_config,
)
from bench.report import Row

BARE_RPS = 0.65  # durable req/s at least this share of the bare server's
BARE_P99 = 2.0  # durable p99 at most this multiple of the bare server's
NAIVE_RPS = 3.5  # durable req/s at least this multiple of commit-per-request


@dataclass(frozen=True)
class PushSettings:
    """How long and how hard."""

    connections: int
    warmup_s: float
    duration_s: float
    rounds: int = 1  # bare, naive, durable in turn, `rounds` times; the median counts
    force_loadgen: bool = False


def _cpu_s(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) of a process, or of one of its threads."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _text(r: LoadResult) -> str:
    return f"{r.rps:,.0f} req/s, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms"


async def _measure(
    proc: Proc, url: str, ready_url: str, workdir: Path, s: PushSettings, kind: str
) -> LoadResult:
    with proc:
        await wait_ready(proc, ready_url, headers={"Authorization": f"Bearer {ADMIN}"})
        templates = data.push_templates()
        common: dict[str, Any] = {
            "workdir": workdir,
            "templates": templates,
            "token": STORE_TOKEN,
            "connections": s.connections,
            "force_loadgen": s.force_loadgen,
        }
        warm = await closed_loop(url, run=f"{kind}-warm", duration_s=s.warmup_s, **common)
        # CPU per answered request, whole server and its main (event-loop) thread: a figure
        # other load on a shared machine moves far less than req/s.
        pid = proc.pid
        cpu0, loop0 = _cpu_s(pid), _cpu_s(pid, pid)
        res = await closed_loop(url, run=f"{kind}-run", duration_s=s.duration_s, **common)
        cpu1, loop1 = _cpu_s(pid), _cpu_s(pid, pid)
        cpu = f"CPU {1e6 * (cpu1 - cpu0) / max(res.ok, 1):.0f} us/req"
        cpu += f" (loop thread {1e6 * (loop1 - loop0) / max(res.ok, 1):.0f})"
        if kind == "durable":
            base = url.split("/v1/")[0]
            async with aiohttp.ClientSession() as session:
                pending = await spool_pending(session, base)
            res.errors = dict(res.errors)
            acked = warm.ok + res.ok
            if pending < acked:
                raise RuntimeError(f"spool holds {pending} sales but {acked} got a 202")
        print(f"  push {kind:8} {_text(res)}, {cpu}  ({res.tool}, errors {res.errors})", flush=True)
        return res


def _median(runs: list[LoadResult]) -> LoadResult:
    """The run with the median req/s (other load on a shared machine comes and goes)."""
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


async def run(workdir: Path, s: PushSettings) -> list[Row]:
    """Bare, naive, then durable (interleaved rounds); rows P1 (req/s, p99 vs bare) and P2."""
    runs: dict[str, list[LoadResult]] = {"bare": [], "naive": [], "durable": []}
    for n, kind in enumerate(["bare", "naive", "durable"] * s.rounds):
        d = workdir / f"push-{kind}-{n // 3}"
        d.mkdir(parents=True, exist_ok=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1/push/canonical/LIVE"
        if kind == "durable":
            cfg = write_config(d / "possync.toml", d / "data", port, ["LIVE"])
            proc = possync_proc(cfg, d / "server.log")
            ready = f"http://127.0.0.1:{port}/readyz"
        else:
            proc = baseline_proc(kind, port, d)
            ready = f"http://127.0.0.1:{port}/healthz"
        runs[kind].append(await _measure(proc, url, ready, d, s, kind))
    results = {k: _median(v) for k, v in runs.items()}
    durable, bare, naive = results["durable"], results["bare"], results["naive"]
    details: dict[str, Any] = {k: v.as_json() for k, v in results.items()}
    details["connections"] = s.connections
    details["duration_s"] = s.duration_s
    details["rounds"] = {k: [round(r.rps) for r in v] for k, v in runs.items()}
    r_bare = durable.rps / bare.rps if bare.rps else 0.0
    r_p99 = durable.p99_ms / bare.p99_ms if bare.p99_ms else float("inf")
    r_naive = durable.rps / naive.rps if naive.rps else 0.0
    how = f"{s.connections} conns, {durable.tool}" + (
        f", median of {s.rounds} rounds" if s.rounds > 1 else ""
    )
    # Issue 11's goals: >= 0.65x bare's req/s with p99 <= 2x bare's; >= 3.5x naive's req/s.
    # The Python load client tops out below the bare server (about 12.5k req/s here), so with
    # it the bare figure is the client's and a ratio to it flatters possync: not judged.
    judged = bare.tool == durable.tool == "wrk (Lua)"
    if not judged:
        how += "; bare is client-bound without wrk: not judged"
    return [
        Row(
            "push",
            f"P1 durable single-sale push vs bare aiohttp: req/s ({how})",
            durable.rps,
            _text(durable),
            bare.rps,
            _text(bare),
            r_bare,
            f">= {BARE_RPS}x",
            r_bare >= BARE_RPS if judged else None,
            details,
        ),
        Row(
            "push",
            f"P1 durable single-sale push vs bare aiohttp: p99 ({how})",
            durable.p99_ms,
            f"p99 {durable.p99_ms:.1f} ms",
            bare.p99_ms,
            f"p99 {bare.p99_ms:.1f} ms",
            r_p99,
            f"<= {BARE_P99}x",
            r_p99 <= BARE_P99 if judged else None,
            {},
        ),
        Row(
            "push",
            "P2 durable single-sale push vs naive commit-per-request",
            durable.rps,
            _text(durable),
            naive.rps,
            _text(naive),
            r_naive,
            f">= {NAIVE_RPS}x",
            r_naive >= NAIVE_RPS,
            {},
        ),
    ]
