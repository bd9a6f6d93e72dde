"""Machine info, the result table (plain and markdown) and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

HEADERS = ("measure", "figure", "baseline", "ratio", "target", "met?")


@dataclass
class Row:
    """One line of the table: a figure against its same-run baseline."""

    name: str  # the --only group it belongs to
    measure: str
    figure: float
    figure_text: str
    baseline: float | None
    baseline_text: str
    ratio: float | None
    target: str
    met: bool | None
    details: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> tuple[str, ...]:
        """The six table cells."""
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}x"
        met = "n/a" if self.met is None else ("yes" if self.met else "**NO**")
        return (self.measure, self.figure_text, self.baseline_text, ratio, self.target, met)


def _first(path: str, key: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "-"
    text = (out.stdout or out.stderr).strip()
    if out.returncode != 0 and argv[0] == "git":
        return "-"
    return text.splitlines()[0] if text else ""


def load_average() -> str:
    """1/5/15-minute load averages: other work on the machine skews every figure."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def machine_info() -> dict[str, str]:
    """CPU, cores, RAM, kernel, Python, SQLite and library versions, git commit."""
    mem_kb = _first("/proc/meminfo", "MemTotal").split()[0]
    ram = f"{int(mem_kb) / 1024 / 1024:.1f} GiB" if mem_kb.isdigit() else "?"
    repo = str(Path(__file__).resolve().parent.parent)
    commit = _cmd(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
    dirty = _cmd(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu": _first("/proc/cpuinfo", "model name"),
        "cores": str(os.cpu_count()),
        "ram": ram,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "aiohttp": _version("aiohttp"),
        "uvloop": _version("uvloop"),
        "aiosqlite": _version("aiosqlite"),
        "msgspec": _version("msgspec"),
        "wrk": _cmd(["wrk", "--version"]).split(" Copyright")[0],
        "git": commit + (" (dirty tree)" if dirty not in ("", "-") else ""),
        "loadavg": load_average(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def print_machine(info: dict[str, str]) -> None:
    """The header printed before anything runs."""
    print("machine:", flush=True)
    for k, v in info.items():
        print(f"  {k:10} {v}", flush=True)


def plain_table(rows: list[Row]) -> str:
    """Aligned text table."""
    body = [HEADERS, *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in body) for i in range(len(HEADERS))]
    out = []
    for n, line in enumerate(body):
        out.append(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(rows: list[Row]) -> str:
    """GitHub markdown table (for the README and docs/benchmarks.md)."""
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in r.cells()) + " |")
    return "\n".join(out)


def write_json(
    path: Path, info: dict[str, str], args: dict[str, Any], rows: list[Row], seconds: float
) -> None:
    """Everything measured, with the machine and the command."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": info,
        "args": args,
        "total_seconds": round(seconds, 1),
        "rows": [asdict(r) for r in rows],
        "markdown": markdown_table(rows),
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")


def fmt_rate(v: float, unit: str) -> str:
    """12345.6 -> '12,346 unit'."""
    return f"{v:,.0f} {unit}"


def fmt_mb(b: float) -> str:
    """Bytes as MiB (/proc reports KiB)."""
    return f"{b / 1024 / 1024:.0f} MiB"
