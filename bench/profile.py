"""Profile the server during one benchmark phase with py-spy, and summarize the top frames.

    python -m bench.profile [push|backfill|commit|p99|restart|mqtt ...] [--seconds S] [--records N]
        [--gil]   (sample only the thread holding the GIL: who keeps the event loop waiting)

py-spy is not a project dependency: `.venv/bin/pip install py-spy`. It runs the server as
its child (`py-spy record --threads --nonblocking -- python -m worker serve ...`; attaching
to a running pid needs ptrace rights that containers often lack) and writes collapsed
stacks to `bench/results/profiles/PHASE.txt`. Only the phase in question runs while the
profiled server is up; data needed beforehand (a filled spool) is prepared by an
unprofiled server first.

The summary splits samples by thread (event loop, spool connection thread, sink
connection thread, other executors) and lists, for the event-loop thread, the functions
with the largest inclusive share, and for every thread the top self (leaf) frames.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp

from bench import data, mqtt, pipeline
from bench.load import OpenLoop, closed_loop
from bench.procs import (
    ADMIN,
    STORE_TOKEN,
    Proc,
    free_port,
    possync_proc,
    wait_ready,
    write_config,
)

OUT = Path(__file__).parent / "results" / "profiles"
PHASES = ("push", "backfill", "commit", "p99", "restart", "mqtt")
_LINE = re.compile(r"^(?P<stack>.*) (?P<n>\d+)$")
_LOC = re.compile(r" \((?P<file>[^:()]*)(?::\d+)?\)$")
# Frames that are on every event-loop stack and say nothing about the cost.
_BORING = re.compile(
    r"^(<module>|_run_module_as_main|_run_code|main|run|run_until_complete|run_forever|"
    r"_run_once|_run|run_app|_serve|serve) "
)


class ProfiledServer(Proc):
    """`possync serve` as the child of `py-spy record`; stop = SIGTERM to the server."""

    def server_pid(self) -> int | None:
        """The python child of py-spy."""
        try:
            kids = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    def stop(self) -> float:
        """Graceful server shutdown, then py-spy writes its file and exits."""
        child = self.server_pid()
        if child is not None and self.alive() and self.popen is not None:
            os.kill(child, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=self.grace_s)  # py-spy writes, then exits
        return super().stop()


def profiled_server(
    config: Path, out: Path, log: Path, rate: int = 250, gil: bool = False
) -> ProfiledServer:
    """The real server under py-spy (`gil`: sample only the thread holding the GIL)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [
        spy, "record", "-r", str(rate), "--threads", "--nonblocking", "--format", "raw",
        *(["--gil"] if gil else []),
        "-o", str(out), "--", sys.executable, "-m", "worker", "serve", "--config", str(config),
    ]  # fmt: skip
    return ProfiledServer(argv, log, name="possync (py-spy)", grace_s=120.0)


_SPOOL_FUNCS = (
    "SqliteSpool", "_write_group", "_retire", "_insert_all_new", "lease_slice", "_pending_counts",
    "open_spool",
)  # fmt: skip


def _frame(text: str) -> str:
    """`func (path/to/worker/x.py:12)` -> `worker/x.py:func`."""
    m = _LOC.search(text)
    func = text[: m.start()] if m else text
    path = m.group("file") if m else ""
    for anchor in ("/worker/", "/bench/", "site-packages/", "/lib/python3.11/"):
        if anchor in path:
            path = path.split(anchor, 1)[1]
            if anchor == "/worker/":
                path = "worker/" + path
            break
    if path == "sqlite.py" and func.startswith(_SPOOL_FUNCS):
        path = "worker/buffers/sqlite.py"  # py-spy shortens this one file name
    if func == "run_app" and path.startswith("aiohttp/"):
        return "(uvloop C: epoll, socket I/O, callbacks)"
    return f"{path}:{func}" if path else func


def _thread_kind(text: str, names: set[str]) -> str:
    """Classify one thread by its names (py-spy's labels) and every frame it was seen in."""
    # `possync serve` runs its event loop on the main thread (the first check, because the
    # main thread also imports the spool modules); the spool's own thread is named.
    if "MainThread" in names or "run_app (" in text:
        return "event loop"
    if any(n.startswith("possync-spool") for n in names) or "_write_group" in text:
        return "spool connection thread"
    if "aiosqlite/core.py" in text:
        return "aiosqlite threads (sink)"
    if "concurrent/futures/thread.py" in text:
        return "executor threads (to_thread)"
    return "other threads"


def summarize(
    path: Path, top: int = 14, gil: bool = False, requests: int = 0, rate: int = 250
) -> str:
    """Per-thread shares and top frames of a py-spy raw (collapsed) file, as markdown.

    With `requests` (the answered requests of the phase), each share is also given as
    microseconds per request: samples / `rate` (Hz) / requests. Start-up imports are left out.
    """
    stacks: list[tuple[str, list[str], int]] = []
    seen: dict[str, list[str]] = defaultdict(list)
    labels: dict[str, set[str]] = defaultdict(set)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        parts = m.group("stack").split(";")
        label = next((p for p in parts if p.startswith("thread (")), "thread (?)")
        tid = label.split(")", 1)[0]  # "thread (123): MainThread" -> "thread (123"
        if "): " in label:
            labels[tid].add(label.split("): ", 1)[1])
        frames = [p for p in parts if not p.startswith(("thread (", "process "))]
        if any(f.startswith("_find_and_load ") for f in frames):
            continue  # start-up imports: not the phase's cost
        if frames:
            stacks.append((tid, frames, int(m.group("n"))))
            seen[tid].append(";".join(frames))
    kinds = {tid: _thread_kind(";".join(texts), labels[tid]) for tid, texts in seen.items()}
    per_kind: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: dict[str, Counter[str]] = defaultdict(Counter)
    in_worker = 0
    total = 0
    for tid, frames, n in stacks:
        kind = kinds[tid]
        total += n
        per_kind[kind] += n
        leaf[kind][_frame(frames[-1])] += n
        if kind == "event loop":
            names = [_frame(x) for x in frames if not _BORING.match(x)]
            mine = [f for f in dict.fromkeys(names) if f.startswith("worker/")]
            in_worker += n if mine else 0
            for f in mine:
                inclusive[f] += n
    if not total:
        return "(no samples)"
    loop = per_kind["event loop"] or 1
    what = "GIL-holder samples (--gil)" if gil else "samples over all threads (idle skipped)"
    out = [f"{total:,} {what}", ""]
    out += ["| thread | share of samples |", "|---|---|"]
    out += [f"| {k} | {v / total:.0%} |" for k, v in per_kind.most_common()]
    out += [
        "",
        f"Event-loop thread: {in_worker / loop:.0%} of its samples are inside `worker/` code, "
        f"{1 - in_worker / loop:.0%} in aiohttp/uvloop/asyncio alone. "
        "`worker/` functions, inclusive (share of the loop thread's samples):",
        "",
    ]

    def us(n: int) -> str:
        return f" {n / rate / requests * 1e6:,.1f} |" if requests else ""

    col = (" us/request |", "---|") if requests else ("", "")
    out += [f"| function | share |{col[0]}", f"|---|---|{col[1]}"]
    out += [f"| `{f}` | {v / loop:.0%} |{us(v)}" for f, v in inclusive.most_common(top)]
    if requests:
        out += [
            f"| (event loop, all) | 100% |{us(loop)}",
            f"| (event loop outside `worker/`) | {1 - in_worker / loop:.0%} |"
            f"{us(loop - in_worker)}",
            f"| (spool connection thread) | - |{us(per_kind['spool connection thread'])}",
            "",
            f"{requests:,} requests answered while profiled, sampled at {rate} Hz.",
        ]
    for kind, counter in sorted(leaf.items(), key=lambda kv: -per_kind[kv[0]]):
        n = per_kind[kind]
        out += ["", f"{kind}, self (leaf) frames (share of that thread's samples):", ""]
        out += ["| frame | share |", "|---|---|"]
        out += [f"| `{f}` | {v / n:.0%} |" for f, v in counter.most_common(6)]
    return "\n".join(out)


async def _mqtt_phase(out: Path, workdir: Path, records: int, gil: bool) -> None:
    """P8's possync side under py-spy: `records` sales queued on the broker, drained once."""
    from tests.plugins.mosquitto import MosquittoServer

    broker = MosquittoServer(workdir / "mosquitto", extra_conf=[f"max_queued_messages {records}"])
    port = free_port()
    cfg = write_config(
        workdir / "possync.toml", workdir / "data", port, ["LIVE"], mqtt_port=broker.port
    )
    base = f"http://127.0.0.1:{port}"
    bodies = mqtt.payloads(records)
    settings = mqtt.MqttSettings(messages=records, warmup=0)
    broker.start()
    try:
        with profiled_server(cfg, out, workdir / "mqtt.log", gil=gil) as spy:
            headers = {"Authorization": f"Bearer {ADMIN}"}
            await wait_ready(spy, f"{base}/readyz", headers=headers, timeout_s=300)
            server = spy.server_pid() if isinstance(spy, ProfiledServer) else None
            if server is None:
                raise RuntimeError("py-spy has no server child")
            async with aiohttp.ClientSession() as session:
                # Paused and resumed is the server itself, not py-spy.
                consumer = mqtt._Possync(server, session, base, settings)
                took, _ = await mqtt._drain(
                    consumer, broker.port, mqtt.POSSYNC_TOPIC, bodies, records
                )
                print(f"  drained {records:,} messages in {took:.2f} s", flush=True)
    finally:
        broker.stop()


async def _phase(
    name: str, workdir: Path, seconds: float, records: int, gil: bool
) -> tuple[Path, int]:
    out = OUT / f"{name}{'-gil' if gil else ''}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    if name == "mqtt":
        await _mqtt_phase(out, workdir, records, gil)
        return out, records
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stores = ["LIVE", "A"]
    cfg = write_config(workdir / "possync.toml", workdir / "data", port, stores)
    settings = pipeline.PipelineSettings(
        commit_n=records, rss_total=records, live_rate=200, idle_s=1, want=frozenset({"commit"})
    )
    st = pipeline._State(workdir, settings, port=port, config=cfg)
    st.stores.append(pipeline._Store("A", "A-", records, workdir / "backfill-A.ndjson"))
    answered = 0
    if name != "push":
        pipeline._generate(st)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    ready = f"{base}/readyz"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        if name in ("commit", "p99", "restart"):  # fill the spool first, unprofiled
            with possync_proc(cfg, workdir / "fill.log") as proc:
                await wait_ready(proc, ready, headers=headers)
                await pipeline._push_customers(session, st)
                await pipeline._backfill_pushes(session, st, st.stores[0], pipeline._Progress(0))
        with profiled_server(cfg, out, workdir / f"{name}.log", gil=gil) as proc:
            await wait_ready(proc, ready, headers=headers, timeout_s=300)
            if name == "push":
                res = await closed_loop(
                    f"{base}/v1/push/canonical/LIVE",
                    workdir=workdir,
                    templates=data.push_templates(),
                    run="profile",
                    token=STORE_TOKEN,
                    connections=64,
                    duration_s=seconds,
                )
                answered = res.ok
            elif name == "restart":
                print(f"  ready after {time.monotonic() - proc.started_at:.2f} s", flush=True)
            elif name == "backfill":
                await pipeline._push_customers(session, st)
                streaming = await pipeline._has_backfill(session, st)
                fn = pipeline._backfill_stream if streaming else pipeline._backfill_pushes
                await fn(session, st, st.stores[0], pipeline._Progress(0))
            elif name == "p99":
                async with OpenLoop(
                    f"{base}/v1/push/canonical/LIVE",
                    workdir=workdir,
                    templates=data.push_templates(),
                    run="profile-live",
                    token=STORE_TOKEN,
                    rate=200,
                ) as load:
                    await asyncio.sleep(1.0)
                    t0 = time.monotonic()
                    elapsed, res = await pipeline._commit(session, st, "A")
                    t1 = time.monotonic()
                    await load.stop()
                print(f"  committed {res['committed']:,} in {elapsed:.1f} s", flush=True)
                print(f"  live pushes during the commit: {load.window(t0, t1)}", flush=True)
            else:
                elapsed, res = await pipeline._commit(session, st, "A")
                print(f"  committed {res['committed']:,} in {elapsed:.1f} s", flush=True)
    return out, answered


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("phases", nargs="*", default=list(PHASES))
    parser.add_argument("--seconds", type=float, default=10.0, help="push load duration")
    parser.add_argument("--records", type=int, default=50_000, help="backfill/commit size")
    parser.add_argument("--gil", action="store_true", help="sample only the GIL holder")
    args = parser.parse_args()
    for name in args.phases:
        if name not in PHASES:
            parser.error(f"unknown phase {name}")
        workdir = Path(tempfile.mkdtemp(prefix=f"possync-profile-{name}-"))
        try:
            print(f"[{name}] profiling the server with py-spy", flush=True)
            out, answered = asyncio.run(_phase(name, workdir, args.seconds, args.records, args.gil))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        text = summarize(out, gil=args.gil, requests=answered)
        print(f"\n### {name}\n\n{text}\n\nraw stacks: {out}\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
