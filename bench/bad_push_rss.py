"""The server's peak RSS rise for one huge bad push: N lines of `{}` in one NDJSON body.

`python -m bench.bad_push_rss [--lines 1000000] [--tree PATH[=LABEL]]... [--uncapped]`

Each case is a real `possync serve` (uvloop) in its own process, started from a source tree
(default: this one; `--tree` adds others, e.g. a `git worktree add /tmp/before <commit>` of
the code before a change, so before and after are measured in the same run on the same
machine). `--uncapped` adds this tree with `Parsed.reject`'s cap set to infinity (every
bad item kept as a `Rejection`, the answer still capped), the old behaviour simulated.

Per case: warm up with one small bad push, take the child's VmRSS, reset its peak
(`/proc/PID/clear_refs` 5), send the big push, read VmHWM. The rise is VmHWM minus that
baseline: exact (the kernel's own high-water mark), no sampling interval to miss a peak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.procs import Proc, free_port, store_token, wait_ready, write_config

HERE = Path(__file__).resolve().parent.parent
STORE = "LIVE"
# Runs `possync serve` from the tree given first (ahead of everything on sys.path); with a
# cap, sets the one `Parsed.reject` reads (a module global, read at each call) after every
# module has imported its own copy, so the answers stay capped at the usual N.
_LAUNCH = """
import sys
sys.path.insert(0, sys.argv[1])
from worker.cli import main
if sys.argv[3] != "-":
    import worker.adapters.base as base
    import worker.intake, worker.sources.backfill, worker.sources.mqtt
    base.MAX_REJECTIONS = int(sys.argv[3])
sys.argv = ["possync", "serve", "--config", sys.argv[2]]
raise SystemExit(main())
"""


@dataclass
class Case:
    """One server to measure: a source tree, optionally with the cap lifted."""

    label: str
    tree: Path
    cap: int | None = None


@dataclass
class Result:
    """What one case measured."""

    label: str
    status: int
    rejected_count: int
    itemized: int
    answer_bytes: int
    baseline_mib: float
    peak_mib: float
    seconds: float

    @property
    def rise_mib(self) -> float:
        """Peak RSS during the push minus the RSS just before it."""
        return self.peak_mib - self.baseline_mib


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


def _reset_peak(pid: int) -> None:
    # "5" resets the process's VmHWM to its current RSS (Linux >= 4.0, proc(5)).
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


async def _push(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, bytes]:
    headers = {
        "Authorization": f"Bearer {store_token(STORE)}",
        "Content-Type": "application/x-ndjson",
    }
    async with session.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.read()


async def measure(case: Case, lines: int, workdir: Path) -> Result:
    """Start the case's server, push `lines` lines of `{}`, stop it; its figures."""
    port = free_port()
    data = workdir / case.label.replace("/", "_")
    data.mkdir(parents=True)
    config = write_config(data / "possync.toml", data, port, [STORE])
    cap = "-" if case.cap is None else str(case.cap)
    argv = [sys.executable, "-c", _LAUNCH, str(case.tree), str(config), cap]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = Proc(argv, data / "server.log", name=case.label, env=env)
    proc.start()
    try:
        await wait_ready(proc, f"http://127.0.0.1:{port}/healthz")
        url = f"http://127.0.0.1:{port}/v1/push/canonical/{STORE}"
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            status, _ = await _push(session, url, b"{}\n" * 2_000)  # warm-up, same path
            if status != 400:
                raise RuntimeError(f"{case.label}: warm-up answered {status}")
            body = b"{}\n" * lines
            baseline = _status_kib(proc.pid, "VmRSS")
            _reset_peak(proc.pid)
            t0 = time.perf_counter()
            status, answer = await _push(session, url, body)
            seconds = time.perf_counter() - t0
            peak = _status_kib(proc.pid, "VmHWM")
        doc = json.loads(answer) if answer else {}
        return Result(
            case.label,
            status,
            int(doc.get("rejected_count", -1)),
            len(doc.get("rejected", [])),
            len(answer),
            baseline / 1024,
            peak / 1024,
            seconds,
        )
    finally:
        proc.stop()


def main(argv: list[str] | None = None) -> int:
    """Measure every case in one run and print one row each."""
    parser = argparse.ArgumentParser(prog="python -m bench.bad_push_rss")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--tree", action="append", default=[], help="PATH[=LABEL]")
    parser.add_argument("--uncapped", action="store_true")
    opts = parser.parse_args(argv)
    cases: list[Case] = []
    for spec in opts.tree:
        path, _, label = spec.partition("=")
        cases.append(Case(label or path, Path(path).resolve()))
    if opts.uncapped:
        cases.append(Case("this tree, cap = infinity", HERE, cap=10**12))
    cases.append(Case("this tree", HERE))
    print(f"{opts.lines:,} lines of {{}} in one NDJSON push ({3 * opts.lines:,} bytes)")
    print(
        f"{'case':<34} {'status':>6} {'rejected_count':>14} {'itemized':>8} "
        f"{'answer':>9} {'RSS before':>10} {'peak':>8} {'rise':>8} {'time':>7}"
    )
    with tempfile.TemporaryDirectory(prefix="possync-badpush-") as tmp:
        for case in cases:
            r = asyncio.run(measure(case, opts.lines, Path(tmp)))
            print(
                f"{r.label:<34} {r.status:>6} {r.rejected_count:>14,} {r.itemized:>8,} "
                f"{r.answer_bytes:>9,} {r.baseline_mib:>8.1f}Mi {r.peak_mib:>6.1f}Mi "
                f"{r.rise_mib:>+6.1f}Mi {r.seconds:>6.2f}s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
