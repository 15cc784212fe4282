"""benchmarks/latency.py end to end at a tiny size: every row timed and profiled in both runtimes, round_to and MACs
honoured."""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import latency as bench

import ultralytics_slim.techniques.prune as prune_technique
from ultralytics_slim.pruning import count_macs_params, prune_to

pytest.importorskip("openvino")


def test_latency_benchmark_tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # one timed candidate per search: the test checks the plumbing, not where the search lands
    monkeypatch.setattr(prune_technique, "SEARCH_STEPS", 1)
    runs = 2
    pruned = bench.build("yolov8n.yaml", seed=1)  # a checkpoint to compare, as a pruned run's best.pt would be
    prune_to(pruned, "macs", 0.6 * count_macs_params(pruned)[0])
    torch.save({"model": pruned}, tmp_path / "other.pt")
    argv = ["--imgsz", "64", "--runs", str(runs), "--out", str(tmp_path), "--profile", "--block", "16", "--stock-dfl"]
    record = bench.main([*argv, "--compare", str(tmp_path / "other.pt")])
    assert json.loads((tmp_path / "latency.json").read_text()) == json.loads(json.dumps(record))
    md = (tmp_path / "latency.md").read_text()
    assert "| round_to 32 |" in md and "| round_to 32 |" in capsys.readouterr().out
    assert "## Where the time goes in onnxruntime" in md and "## Where the time goes in openvino" in md

    rows, targets, profiles = record["models"], record["targets"], record["profiles"]
    names = {"start", "round_to 8", "round_to 16", "round_to 32", "other.pt"} | {
        f"latency 0.5 @ {rt}" for rt in bench.RUNTIMES
    }
    assert set(rows) == set(profiles) == names | {n + bench.STOCK for n in names}  # each exported both ways
    for name in names:  # the stock export: the DFL's softmax over axis 1, which onnxruntime runs as such
        assert (
            profiles[name + bench.STOCK]["onnxruntime"].get("MatMul", 0) == 0 < profiles[name]["onnxruntime"]["MatMul"]
        )
    assert rows["other.pt"]["macs"] == pytest.approx(0.6, rel=0.02)
    # blocked MACs: a cut that leaves widths off the 16-channel grid saves less in the kernels than it counts
    assert rows["round_to 16"]["blocked"] < rows["round_to 8"]["blocked"] and rows["start"]["blocked"] == 1
    assert all(rows[f"round_to {r}"]["blocked"] >= rows[f"round_to {r}"]["macs"] * 0.98 for r in (8, 16, 32))
    for name, by_runtime in profiles.items():  # every model's time, by op type, in both runtimes; convs are in it
        assert by_runtime["onnxruntime"]["Conv"] > 0 and by_runtime["openvino"]["Convolution"] > 0, name
        assert all(t >= 0 for p in by_runtime.values() for t in p.values()), name
    for name, row in rows.items():
        assert set(row["times"]) == set(bench.RUNTIMES), name
        assert all(len(t) == runs and min(t) > 0 for t in row["times"].values()), name
        start = rows["start" + bench.STOCK if name.endswith(bench.STOCK) else "start"]  # exported the same way
        for rt, t in row["times"].items():  # speed-up is against the start model timed in the same interleaved call
            assert row["speedup"][rt] == pytest.approx(statistics.median(start["times"][rt]) / statistics.median(t))
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
