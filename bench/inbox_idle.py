"""Idle CPU of the drop-folder watcher with many stores: before and after notifications.

    python -m bench.inbox_idle [--stores 2000] [--seconds 30]

Each mode runs the real `Inbox` (real clock, real folders in a temporary data dir, uvloop)
in its own subprocess, with every store on a native source so each has two folders
(`the_edge/<store>` and `canonical/<store>`: 4,000 folders for 2,000 stores). Nothing is
dropped, so the intake is never called. After a warm-up (folder creation, the first scan,
setting the watches) the process CPU time (all threads, `time.process_time`) is read over
`--seconds` of wall time.

Modes, measured in the same run:

* before: the pre-notification loop: every folder listed (`os.scandir(path)`, as
  `inbox.py` did up to this change) in its own thread hop every `scan_interval_s` (2 s).
* poll:   today's fallback without notifications: the whole pass listed in one thread hop
  every 2 s.
* notify: today's default: notifications on, the full safety poll every `rescan_s` (60 s).
  That poll rarely falls inside the window, so its cost is measured separately (CPU of one
  full pass) and added amortized: idle + pass / rescan_s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WARMUP_S = 3.0


def _config(data: Path, stores: int, notify: bool) -> Any:
    from worker.config import decode

    return decode(
        {
            "data_dir": str(data),
            "sink": {"kind": "sqlite"},
            "inbox": {"scan_interval_s": 2.0, "stable_s": 2.0, "notify": notify},
            "stores": [
                {"id": f"S{i:05d}", "source": "the_edge", "timezone": "UTC", "token": f"t{i}"}
                for i in range(stores)
            ],
        }
    )


def _old_list(folder: Path) -> list[tuple[str, int, int]]:
    """The listing `inbox.py` did before this change (it followed symlinks: the bug)."""
    out = []
    with os.scandir(folder) as it:
        for e in it:
            if not e.name.startswith(".") and e.is_file():
                st = e.stat()
                out.append((e.name, st.st_size, st.st_mtime_ns))
    return out


async def _child(mode: str, stores: int, seconds: float) -> dict[str, float]:
    from worker.clock import SystemClock
    from worker.sources.inbox import Folder, Inbox

    class Before(Inbox):
        """The loop as it was: `os.scandir(path)` of each folder in its own thread hop."""

        async def _pass(self, batch: list[Folder]) -> None:
            for f in batch:
                await asyncio.to_thread(_old_list, f.path)

    with tempfile.TemporaryDirectory(prefix="inbox-idle-") as tmp:
        cfg = _config(Path(tmp), stores, notify=mode == "notify")
        # Idle: no file is ever dropped, so the intake is never reached.
        inbox = (Before if mode == "before" else Inbox)(cfg, None, SystemClock())  # type: ignore[arg-type]
        await asyncio.to_thread(inbox.prepare)
        task = asyncio.create_task(inbox.run())
        try:
            await asyncio.sleep(WARMUP_S)  # a benchmark measures wall time: it has to wait
            if mode == "notify" and inbox.mode != "notify":
                raise SystemExit(f"notifications unavailable: {inbox.notify_error}")
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(seconds)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            # One full pass, timed on its own (the safety poll in notify mode).
            p0 = time.process_time()
            await inbox._pass(list(inbox.folders))
            full_pass = time.process_time() - p0
        finally:
            inbox.close()
            await task
    out = {"cpu_s": cpu, "wall_s": wall, "full_pass_cpu_s": full_pass, "scans": inbox.scans}
    out["folders"] = len(inbox.folders)
    return out


def _run(mode: str, stores: int, seconds: float) -> dict[str, float]:
    argv = ["--child", mode, "--stores", str(stores), "--seconds", str(seconds)]
    got = subprocess.run(
        [sys.executable, "-m", "bench.inbox_idle", *argv],
        check=True,
        capture_output=True,
        text=True,
    )
    doc: dict[str, float] = json.loads(got.stdout.strip().splitlines()[-1])
    return doc


def main() -> None:
    """Run the three modes and print idle CPU per mode and the before/after ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stores", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--child", choices=("before", "poll", "notify"))
    args = ap.parse_args()
    if args.child:
        import uvloop

        print(json.dumps(uvloop.run(_child(args.child, args.stores, args.seconds))))
        return
    from worker.config import InboxConfig

    rescan_s = InboxConfig().rescan_s
    rows = {}
    for mode in ("before", "poll", "notify"):
        r = _run(mode, args.stores, args.seconds)
        idle = r["cpu_s"] / r["wall_s"]
        total = idle + (r["full_pass_cpu_s"] / rescan_s if mode == "notify" else 0.0)
        rows[mode] = total
        print(
            f"{mode:>6}: {100 * total:6.2f} % of a core  "
            f"(idle {100 * idle:.2f} %, one full pass {1000 * r['full_pass_cpu_s']:.1f} ms CPU, "
            f"{int(r['folders'])} folders, {int(r['scans'])} passes)"
        )
    print(
        f"ratio before/notify: {rows['before'] / rows['notify']:.1f}x  "
        f"before/poll: {rows['before'] / rows['poll']:.1f}x  "
        f"({args.stores} stores, {args.seconds:g} s each, rescan_s {rescan_s:g})"
    )


if __name__ == "__main__":
    main()
