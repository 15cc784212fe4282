"""benchmarks/latency.py end to end at a tiny size: every row timed in both runtimes, round_to and MACs honoured."""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import latency as bench

import ultralytics_slim.techniques.prune as prune_technique

pytest.importorskip("openvino")


def test_latency_benchmark_tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # one timed candidate per search: the test checks the plumbing, not where the search lands
    monkeypatch.setattr(prune_technique, "SEARCH_STEPS", 1)
    runs = 2
    record = bench.main(["--imgsz", "64", "--runs", str(runs), "--out", str(tmp_path)])
    assert json.loads((tmp_path / "latency.json").read_text()) == json.loads(json.dumps(record))
    assert "| round_to 32 |" in (tmp_path / "latency.md").read_text() and "| round_to 32 |" in capsys.readouterr().out

    rows, targets = record["models"], record["targets"]
    assert set(rows) == {"start", "round_to 8", "round_to 16", "round_to 32"} | {
        f"latency 0.5 @ {rt}" for rt in bench.RUNTIMES
    }
    for name, row in rows.items():
        assert set(row["times"]) == set(bench.RUNTIMES), name
        assert all(len(t) == runs and min(t) > 0 for t in row["times"].values()), name
        for rt, t in row["times"].items():  # speed-up is against the start model timed in the same interleaved call
            assert row["speedup"][rt] == pytest.approx(
                statistics.median(rows["start"]["times"][rt]) / statistics.median(t)
            )
    assert rows["start"]["macs"] == 1 and not rows["start"]["widths"]
    for r in (8, 16, 32):
        row = rows[f"round_to {r}"]
        assert row["macs"] == pytest.approx(0.5, rel=0.02) and row["params"] < rows["start"]["params"]
        assert row["widths"] and all(c % r == 0 for c in row["widths"].values()), row["widths"]

    assert set(targets) == set(bench.RUNTIMES)
    for rt, t in targets.items():
        (step,) = t["steps"]
        assert t["start_ms"] > 0 and step["goal"] == 0.5
        # the current model, then SEARCH_STEPS candidates unless the current model already meets the goal
        assert len(step["search"]) == 2 or step["search"][0]["ratio"] <= step["goal"], step["search"]
        assert all(c["ms"] > 0 and c["ratio"] > 0 and 0 < c["macs"] <= 1 for c in step["search"])
        assert step["macs"] == pytest.approx(rows[f"latency 0.5 @ {rt}"]["macs"])
        assert t["measured_ratio"] == pytest.approx(1 / rows[f"latency 0.5 @ {rt}"]["speedup"][rt])
        assert t["within"] == (abs(t["measured_ratio"] - 0.5) <= 0.05)
    assert len(record["load_start"]) == 3 and "CPU:" in record["machine"]
