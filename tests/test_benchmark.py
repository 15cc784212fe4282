"""Tests of the benchmark (benchmarks/): its development set, its statistics, resumable rows and a real tiny run."""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import json
import sys
from copy import deepcopy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import Interrupt, interrupt_at
from ultralytics.data.utils import check_det_dataset
from ultralytics.utils.callbacks.base import default_callbacks

from ultralytics_slim.recipe import load_recipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import run as bench
from data import NAMES, HardSet, make_hard_dataset

TINY = HardSet(n_train=12, n_val=6, imgsz=128)


def _files(data: Path) -> dict[str, bytes]:
    root = data.parent
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.suffix in {".jpg", ".txt"}}


def _boxes(data: Path) -> list[np.ndarray]:
    """Label rows (cls, x, y, w, h) of every image, as arrays of shape (n, 5)."""
    return [np.loadtxt(p, ndmin=2).reshape(-1, 5) for p in sorted((data.parent / "labels").rglob("*.txt"))]


def test_hard_set_is_deterministic_and_hard(tmp_path: Path) -> None:
    a = make_hard_dataset(tmp_path / "a", TINY)
    assert _files(a) == _files(make_hard_dataset(tmp_path / "b", TINY))
    assert _files(a) != _files(make_hard_dataset(tmp_path / "c", HardSet(n_train=12, n_val=6, imgsz=128, seed=1)))
    assert len(NAMES) >= 10 and check_det_dataset(str(a))["nc"] == len(NAMES)
    boxes = _boxes(a)
    assert len(boxes) == 18 and all(len(b) >= 1 for b in boxes)
    rows = np.concatenate(boxes)
    assert ((rows[:, 1:] >= 0) & (rows[:, 1:] <= 1)).all() and (rows[:, 0] < len(NAMES)).all()
    side = rows[:, 3:].max(1)
    assert side.min() < 0.08 and side.max() > 0.2  # small objects and large ones
    assert np.mean([len(b) for b in boxes]) > 4  # crowded images

    def overlapping(b: np.ndarray) -> bool:
        d = np.abs(b[:, None, 1:3] - b[None, :, 1:3])
        s = (b[:, None, 3:5] + b[None, :, 3:5]) / 2
        return bool(((d < s).all(-1) & ~np.eye(len(b), dtype=bool)).any())

    assert sum(map(overlapping, boxes)) >= 3  # objects partly hiding each other


def test_hard_set_is_reused_and_an_interrupted_one_regenerated(tmp_path: Path) -> None:
    data = make_hard_dataset(tmp_path, TINY)
    image = next((data.parent / "images" / "val").iterdir())
    mtime = image.stat().st_mtime_ns
    assert make_hard_dataset(tmp_path, TINY) == data and image.stat().st_mtime_ns == mtime
    (data.parent / "complete.json").unlink()  # as if generation had been killed
    image.unlink()
    assert make_hard_dataset(tmp_path, TINY) == data and image.exists()


def test_plateau_rule() -> None:
    rising = [0.1 + 0.02 * e for e in range(20)]
    assert not bench.plateau(rising)["converged"]
    flat = [min(0.1 * e, 0.5) + 0.0003 * e for e in range(25)]
    p = bench.plateau(flat)
    assert p["converged"] and p["last_gain"] == pytest.approx(0.003, abs=1e-6)
    assert p["needed"] == 9  # epoch 9 (0.5024) is the first within 0.5 point of the best (0.5072)
    assert not bench.plateau(flat[:10])["converged"]  # too short to tell


def test_verdict_needs_a_difference_beyond_both_spreads() -> None:
    assert bench.verdict([0.50, 0.52, 0.51], [0.40, 0.41, 0.39]) == "beats"
    assert bench.verdict([0.40, 0.41, 0.39], [0.50, 0.52, 0.51]) == "below"
    assert bench.verdict([0.50, 0.56, 0.44], [0.47, 0.48, 0.46]) == "within noise"  # 0.03 apart, std 0.06
    assert bench.verdict([0.5], [0.4, 0.41]) == ""  # one seed: no claim


def _cfg(tmp_path: Path, **kw) -> bench.Config:
    base = {"mode": "smoke", "data": HardSet(n_train=8, n_val=4, imgsz=64), "epochs": 3, "finetune": 5, "seeds": 2,
            "rows": ("baseline+F",), "runs": 2, "workers": 2, "work": tmp_path}  # fmt: skip
    return bench.Config(**{**base, **kw})


def test_interrupted_training_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path)
    data = str(make_hard_dataset(tmp_path / "datasets", cfg.data))
    ctx = bench.Ctx(cfg, data, bench.Job("baseline", 0, "k", ()), {}, 3)
    stop = [*default_callbacks["on_fit_epoch_end"], interrupt_at(1)]  # killed after epoch 2 of 3
    monkeypatch.setitem(default_callbacks, "on_fit_epoch_end", stop)
    with pytest.raises(Interrupt):
        ctx.train("yolov8n.yaml")
    monkeypatch.undo()
    before = (ctx.dir / "train" / "results.csv").read_text()
    made = ctx.train("yolov8n.yaml")
    after = (ctx.dir / "train" / "results.csv").read_text()
    assert after.startswith(before) and len(after.splitlines()) == 4  # epochs 1-2 kept, epoch 3 added
    assert len(bench.curve(made.run)) == 3 and made.pt.exists() and made.seconds > 0
    assert ctx.train("yolov8n.yaml").pt == made.pt  # finished: not trained again
    assert (ctx.dir / "train" / "results.csv").read_text() == after


def test_plan_keys_follow_what_decides_a_result(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, rows=("scratch-50", "unstructured-50"), seeds=3)
    jobs = bench.plan(cfg, bench.row_specs(cfg))
    assert {"baseline@0", "slim-50@2", "scratch-50@2", "unstructured-50@0"} <= set(jobs)
    assert "teacher-v8s@0" not in jobs and "scratch-50@3" not in jobs
    assert dict(jobs["scratch-50@2"].deps) == {"slim-50": "slim-50@2"}  # its own seed's architecture
    assert dict(jobs["unstructured-50@0"].deps)["slim-50"] == "slim-50@0"
    longer = _cfg(tmp_path, rows=("scratch-50",), seeds=3, finetune=6)
    again = bench.plan(longer, bench.row_specs(longer))
    assert again["baseline@0"].key == jobs["baseline@0"].key  # the baseline does not depend on F
    assert again["slim-50@0"].key != jobs["slim-50@0"].key
    assert jobs["baseline@0"].source is None and jobs["slim-50@0"].source == bench.package_hash()
    threads = bench.plan(replace(cfg, threads=2), bench.row_specs(cfg))  # the order of float sums only
    assert {j: job.key for j, job in threads.items()} == {j: job.key for j, job in jobs.items()}
    teacher = _cfg(tmp_path, rows=("teacher-v8s",), seeds=3)
    assert set(bench.plan(teacher, bench.row_specs(teacher))) == {"baseline@0", "teacher-v8s@0"}  # ratios need it
    variants = _cfg(tmp_path, rows=("slim-50-r16", "slim-50-lamp"), seeds=3)  # slim-50 but for one setting
    specs = bench.row_specs(variants)
    r16, lamp, default = (deepcopy(specs[n].slim["prune"]) for n in ("slim-50-r16", "slim-50-lamp", "slim-50"))
    assert r16.pop("round_to") == 16 and default.pop("round_to") == "auto" and r16 == default
    assert (lamp.pop("importance"), lamp.pop("lr_scale"), default.pop("importance"), default.pop("lr_scale")) == (
        "lamp",
        3.0,
        "auto",
        1.0,
    )
    assert lamp == {**default, "round_to": "auto"}
    assert set(bench.plan(variants, specs)) == {"baseline@0"} | {
        f"slim-50-{v}@{s}" for v in ("r16", "lamp") for s in range(3)
    }


def test_step_and_teacher_rows_differ_from_theirs_by_their_settings_only(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, rows=("v8s-slim-s3", "v8s-slim+distill", "slim-50+distill-v8s", "slim-50-s3"), seeds=3)
    specs = bench.row_specs(cfg)
    for three, five in (("v8s-slim-s3", "v8s-slim"), ("slim-50-s3", "slim-50"), ("slim-30-s3", "slim-30")):
        s3, plain = deepcopy(specs[three].slim), deepcopy(specs[five].slim)
        assert (s3["prune"].pop("steps"), s3["prune"].pop("end")) == (3, 0.3)
        assert (plain["prune"].pop("steps"), plain["prune"].pop("end")) == (5, 0.5) and s3 == plain
    distilled = deepcopy(specs["v8s-slim+distill"].slim)
    assert distilled.pop("distill")["teacher"] == "self"  # the prune section as resolved: prune.yaml's settings
    assert load_recipe(distilled).prune == load_recipe(specs["v8s-slim"].slim).prune
    assert specs["slim-50+distill-v8s"].slim["distill"]["teacher"] == "teacher-v8s"  # the checkpoint, set per job
    for variant, base, section, key, value in (  # a distillation row with one setting changed
        ("slim-50+distill-v8s-feat", "slim-50+distill-v8s", "distill", "loss", "head+feature"),
        ("v8s-slim-lr3+distill-feat", "v8s-slim-lr3+distill", "distill", "loss", "head+feature"),
        ("slim-50+distill-w2", "slim-50+distill", "distill", "weight", 2.0),
        ("slim-50+distill-e05", "slim-50+distill", "distill", "end", 0.5),
        ("slim-50+distill-lr3", "slim-50+distill", "prune", "lr_scale", 3.0),
    ):
        changed, plain = deepcopy(specs[variant].slim), deepcopy(specs[base].slim)
        assert changed[section].pop(key) == value and plain[section].pop(key, None) != value and changed == plain
    jobs = bench.plan(cfg, specs)
    assert {f"{r}@{s}" for r in cfg.rows for s in range(3)} | {"baseline@0", "teacher-v8s@0"} == set(jobs)
    assert dict(jobs["v8s-slim+distill@1"].deps) == {"teacher-v8s": "teacher-v8s@0"}  # starts from YOLOv8s


def test_benchmark_runs_reuses_rows_and_reports_spread(tmp_path: Path) -> None:
    args = [
        *("--smoke", "--rows", "baseline+F", "--epochs", "1", "--finetune", "2", "--runs", "2"),
        *("--n-train", "8", "--n-val", "4", "--imgsz", "64"),
        *("--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--threads", "2"),
    ]
    bench.main(args)
    records = sorted((tmp_path / "work" / "records").glob("*.json"))
    assert [p.name.split("-")[0] for p in records] == ["baseline+F@0", "baseline+F@1", "baseline@0"]
    rec = json.loads(records[0].read_text())
    assert len(rec["curve"]) == 2 and rec["onnx640"] and rec["params"] > 1e6
    assert rec["threads"] == 2  # what torch ran with, not Ultralytics' cpu_count - 1
    text = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "| **baseline+F** |" in text and " ± " in text and "ORT ms 640" in text
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0 and (tmp_path / "out" / "pareto.png").exists()
    stamps = [p.stat().st_mtime_ns for p in records]
    bench.main(args)  # everything is stored: nothing is trained again
    assert [p.stat().st_mtime_ns for p in records] == stamps
    assert str(tmp_path) not in (tmp_path / "out" / "RESULTS.md").read_text()  # no path of this machine
    with pytest.raises(SystemExit, match=r"baseline\+F@2"):  # a third seed is asked for, but only reported
        bench.main([*args, "--seeds", "3", "--no-train"])
    assert sorted((tmp_path / "work" / "records").glob("*.json")) == records
    assert "**Incomplete: no record of baseline+F@2" in (tmp_path / "out" / "RESULTS.md").read_text()
