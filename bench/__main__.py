"""`python -m bench [--quick] [--only NAME] [--json PATH]`: one table, every figure vs its baseline.

Names for --only (repeatable): push, backfill, rss, commit, p99, restart, mqtt, postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import mqtt, pipeline, postgres, push
from bench.load import have_wrk
from bench.report import (
    Row,
    load_average,
    machine_info,
    markdown_table,
    plain_table,
    print_machine,
    write_json,
)

NAMES = ("push", *pipeline.PIPELINE, "mqtt", "postgres")
DEFAULT_JSON = Path(__file__).parent / "results" / "latest.json"


def _settings(
    quick: bool,
) -> tuple[push.PushSettings, pipeline.PipelineSettings, mqtt.MqttSettings]:
    # P5's idle baseline is 15 s in both modes (pipeline.IDLE_MIN_S): 3,000 samples.
    if quick:
        return (
            push.PushSettings(connections=64, warmup_s=2, duration_s=5, rounds=1),
            pipeline.PipelineSettings(commit_n=50_000, rss_total=200_000, live_rate=200, idle_s=15),
            mqtt.MqttSettings(messages=20_000, warmup=2_000),
        )
    return (
        push.PushSettings(connections=64, warmup_s=5, duration_s=15, rounds=3),
        pipeline.PipelineSettings(
            commit_n=1_000_000, rss_total=2_000_000, live_rate=200, idle_s=15
        ),
        mqtt.MqttSettings(messages=100_000, warmup=5_000, rounds=3),
    )


async def _main(args: argparse.Namespace, workdir: Path) -> list[Row]:
    want = set(args.only or NAMES)
    push_s, pipe_s, mqtt_s = _settings(args.quick)
    if args.mqtt_messages:
        mqtt_s = mqtt.MqttSettings(
            args.mqtt_messages, min(mqtt_s.warmup, args.mqtt_messages), mqtt_s.rounds
        )
    if args.loadgen:
        push_s = push.PushSettings(
            push_s.connections, push_s.warmup_s, push_s.duration_s, push_s.rounds, True
        )
    rows: list[Row] = []
    if "push" in want:
        print("[P1-P2] durable single-sale pushes", flush=True)
        d = workdir / "push"
        d.mkdir()
        rows += await push.run(d, push_s)
    rest = frozenset(want & set(pipeline.PIPELINE))
    if rest:
        print(f"[P3-P7] {', '.join(sorted(rest))}", flush=True)
        d = workdir / "pipeline"
        d.mkdir()
        settings = pipeline.PipelineSettings(
            commit_n=pipe_s.commit_n,
            rss_total=pipe_s.rss_total,
            live_rate=pipe_s.live_rate,
            idle_s=pipe_s.idle_s,
            want=rest,
        )
        rows += await pipeline.run(d, settings)
    if "mqtt" in want:
        print("[P8] MQTT QoS 1 intake", flush=True)
        d = workdir / "mqtt"
        d.mkdir()
        rows += await mqtt.run(d, mqtt_s)
    if "postgres" in want:
        print("[P9] window commits into PostgreSQL (one committer, two)", flush=True)
        d = workdir / "postgres"
        d.mkdir()
        per_store = 10_000 if args.quick else 100_000
        rows += await postgres.run(d, postgres.PostgresSettings(per_store=per_store))
    # In P-number order (P6 and P7 are measured between P4 and P5); stable within a number.
    rows.sort(key=lambda r: int(r.measure.split()[0].removeprefix("P")))
    return rows


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, under two minutes")
    parser.add_argument("--only", action="append", choices=NAMES, help="run only this measure")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    parser.add_argument("--loadgen", action="store_true", help="use the aiohttp client, not wrk")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--mqtt-messages", type=int, default=0, help="messages per P8 phase (default by mode)"
    )
    args = parser.parse_args()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwind: every `with Proc` stops its process

    signal.signal(signal.SIGTERM, on_term)
    info = machine_info()
    print_machine(info)
    load_tool = "aiohttp client process" if args.loadgen or not have_wrk() else "wrk + Lua"
    print(f"load: {load_tool}; mode: {'quick' if args.quick else 'full'}", flush=True)
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="possync-bench-"))
    try:
        rows = asyncio.run(_main(args, workdir))
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - t0
    info["loadavg_end"] = load_average()
    print()
    print(plain_table(rows))
    print()
    print(markdown_table(rows))
    print()
    cmd = "python -m bench " + " ".join(sys.argv[1:])
    write_json(
        args.json,
        info,
        {"command": cmd.strip(), "quick": args.quick, "only": args.only, "load": load_tool},
        rows,
        seconds,
    )
    missed = [r.measure for r in rows if r.met is False]
    print(f"load average at start {info['loadavg']}, at end {info['loadavg_end']}")
    print(f"{len(rows)} figures, {len(missed)} targets missed; {seconds:.0f} s; JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
