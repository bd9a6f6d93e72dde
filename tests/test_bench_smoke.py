"""Smoke runs of the benchmark's own checks (benchmarks are not timed tests: no figure here).

P8 at a tiny size, against a real Mosquitto and the real `possync serve`: both consumers
drain every message, possync's spool holds every acked sale, and the row's ratio and "met?"
are computed from the two measured figures. P5 refuses an idle baseline shorter than 15 s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import mqtt, pipeline
from tests.plugins.mosquitto import find_mosquitto


async def test_mqtt_bench_drains_both_consumers(tmp_path: Path) -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto binary not installed (make services)")
    settings = mqtt.MqttSettings(messages=200, warmup=50, rounds=2)
    [row] = await mqtt.run(tmp_path, settings)
    assert row.name == "mqtt"
    d = row.details
    assert d["possync_acked"] == 450
    assert d["spool_pending"] >= 450
    assert d["possync_mqtt"]["rejected"] == 0
    assert d["baseline_received"] == 450
    ours, base = d["possync_seconds"], d["baseline_seconds"]
    assert len(ours) == len(base) == 2
    assert min(ours) > 0
    assert min(base) > 0
    assert row.figure == pytest.approx(200 / sorted(ours)[1])
    assert row.baseline == pytest.approx(200 / sorted(base)[1])
    assert row.baseline is not None
    assert row.ratio is not None
    assert row.ratio == pytest.approx(row.figure / row.baseline)
    assert row.met is (row.ratio >= mqtt.TARGET)


def test_p5_refuses_a_short_idle_baseline() -> None:
    with pytest.raises(ValueError, match="idle_s"):
        pipeline.PipelineSettings(commit_n=10, rss_total=10, live_rate=200, idle_s=4)
    # Without P5 the idle window is unused (bench.profile passes a short one).
    kept = pipeline.PipelineSettings(
        commit_n=10, rss_total=10, live_rate=200, idle_s=1, want=frozenset({"commit"})
    )
    assert kept.idle_s == 1
