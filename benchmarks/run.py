"""Benchmark of ultralytics-slim on a hard synthetic detection set: what compression costs, told apart from noise.

    python benchmarks/run.py --baseline-only   # train (or reuse) the cached baselines, check convergence (hours)
    python benchmarks/run.py                   # the full matrix: benchmarks/RESULTS.md and its plots
    python benchmarks/run.py --quick           # a slice on a smaller set (~10 min on 2 idle cores)
    python benchmarks/run.py --smoke           # the plumbing on a few images (~2 min)
    python benchmarks/run.py --rows slim-50,scratch-50 --seeds 3
    python benchmarks/run.py --rows teacher-v8s --workers 1 --threads 2   # one long training on both cores
    python benchmarks/run.py --no-train        # RESULTS.md from the rows recorded so far, the missing ones listed

Every variant starts from a YOLOv8n baseline trained here from scratch for E epochs (cached under a key of the data,
model and settings; converged when F more epochs add less than 0.5 point) and trains F more epochs; the reference for
every "d" column is that baseline trained F more stock epochs (`baseline+F`). Rows that carry claims run with several
seeds and are reported as mean +- std, and one row beats another only when the difference of means exceeds both
standard deviations. Each finished (row, seed) is
stored at once under `.work/records/`, and an interrupted training resumes from its last epoch, so a killed benchmark
continues where it stopped. Two trainings run side by side (Ultralytics trains on one thread). Latency is measured at
the end, batch 1, in onnxruntime and OpenVINO, at the training size and at 640 px, interleaved across all models.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import importlib.util
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np
import yaml
from data import NAMES, HardSet, make_hard_dataset
from torch import nn

HERE = Path(__file__).resolve().parent
FORMAT = 1  # bump when what a record holds or how it is measured changes: every cached row is then redone
WARMUP = 10  # untimed runs per model and runtime before the interleaved timing rounds
DEPLOY = 640  # the deployment image size at which latency is measured too
PLATEAU = 0.005  # the baseline counts as converged when F more epochs add less than this to its mAP50-95
# Training from scratch (baselines, scratch rows): SGD at Ultralytics' lr0. `optimizer=auto` picks AdamW at
# lr = 0.002 * 5 / (4 + nc) for runs under 10,000 steps; on the full set a YOLOv8n reached 0.509 mAP50-95 in 30
# epochs with it and 0.655 with SGD (AdamW needed 60 epochs for 0.661). Fine-tuning rows keep `optimizer=auto`, as a
# user's `yolo train model=best.pt` would.
FROM_SCRATCH = {"optimizer": "SGD", "lr0": 0.01}
WARMUP_OFF = {"warmup_epochs": 0.0}  # what the plugin did before the twenty-first session when a step fell inside it


# ---------------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Config:
    """Everything that decides the numbers: data, budgets, seeds, rows and latency runs."""

    mode: str  # smoke | quick | full: the preset
    data: HardSet
    epochs: int  # E: the from-scratch budget of the baselines
    finetune: int  # F: every variant's budget after its baseline
    seeds: int  # seeds of the claim rows; other rows run seed 0 only
    rows: tuple[str, ...]  # rows asked for; the rows they read run too
    runs: int  # timed latency runs per model, runtime and image size
    workers: int  # trainings side by side
    work: Path
    batch: int = 16
    threads: int | None = None  # torch threads per training; None: Ultralytics' own (its cpu_count - 1)

    def train_args(self) -> dict[str, Any]:
        """Arguments of every training, the same for all rows; `nbs=batch` gives an optimizer step per batch."""
        return {
            "imgsz": self.data.imgsz,
            "batch": self.batch,
            "nbs": self.batch,
            "workers": 0,
            "device": "cpu",
            "plots": False,
            "verbose": False,
        }


ALL = "all"
QUICK_ROWS = ("baseline+F", "slim-50", "slim-50+distill", "val-noise")
# one row per kind of producer (the other slim rows differ from slim-50 by their recipe only)
SMOKE_ROWS = (
    "baseline+F",
    "val-noise",
    "slim-50",
    "scratch-50",
    "v8s-slim",
    "slim-50+distill-v8s",
    "baseline-qat",
    "baseline-ptq",
    "unstructured-50",
)
PRESETS: dict[str, dict[str, Any]] = {
    # plumbing only, 2 seeds so that spreads are computed; 5 epochs is the least a QAT recipe fits in
    "smoke": {"data": HardSet(n_train=16, n_val=8, imgsz=96), "epochs": 1, "finetune": 5, "seeds": 2,
              "rows": SMOKE_ROWS, "runs": 3},
    # ~10 min on 2 idle cores: a baseline far from converged, the claim rows but scratch-50, 2 seeds
    "quick": {"data": HardSet(n_train=300, n_val=150), "epochs": 20, "finetune": 5, "seeds": 2,
              "rows": QUICK_ROWS, "runs": 50},
    # E = 80: the YOLOv8n baseline's +F control adds < 0.5 point (at E = 40 it added 1.3); its training took 72 min on
    # 2 cores shared with other trainings, each 10-epoch row 6-12 min, the claim rows (9 jobs) ~45 min
    "full": {"data": HardSet(n_train=1000, n_val=300), "epochs": 80, "finetune": 10, "seeds": 3,
             "rows": (ALL,), "runs": 100},
}  # fmt: skip


# ------------------------------------------------------------------------------------------------------------- rows
@dataclass
class Made:
    """What a row produced: a checkpoint, its ONNX files for INT8 rows, epochs trained, seconds and the run folder."""

    pt: Path
    epochs: int = 0
    seconds: float = 0.0
    run: Path | None = None  # the training run (its results.csv gives the curve)
    prune_at: tuple[int, ...] = ()  # 0-based epochs at whose start a pruning step ran
    onnx: Path | None = None  # INT8 rows: the INT8 ONNX at the training size ...
    onnx640: Path | None = None  # ... and at the deployment size


@dataclass(frozen=True)
class Dep:
    """A row this row reads: the same seed of it (`same_seed`) or its seed 0."""

    row: str
    same_seed: bool = False


@dataclass(frozen=True)
class Row:
    """One line of the tables: what it is, what it reads and the function (run in a worker) that makes its record."""

    name: str
    what: str
    run: Callable[[Ctx], dict]
    deps: tuple[Dep, ...] = (Dep("baseline"),)
    claim: bool = False  # runs with every seed; its mean +- std is compared
    stock: bool = False  # no plugin involved: its cache key ignores the package's source
    epochs: int = 0  # its training budget
    train: dict | None = None  # training arguments beyond Config.train_args (from-scratch rows: FROM_SCRATCH)
    cost: float = 1.0  # rough epochs-of-YOLOv8n, to start the longest chains first
    group: str = "others"  # curves panel: scratch | claims | others; "" for rows without training
    table: bool = True  # a line in the tables (the noise measurement has none)
    slim: dict | None = None  # the recipe, for the cache key

    def fingerprint(self) -> dict:
        """What decides its result besides data, settings, seed and the rows it reads (not the prose of `what`)."""
        return {"name": self.name, "epochs": self.epochs, "train": self.train, "slim": self.slim}


@dataclass(frozen=True)
class Job:
    """One (row, seed) to run, its cache key, the jobs it reads (row name -> job id) and the plugin's source hash it
    was planned with (None for stock rows)."""

    row: str
    seed: int
    key: str
    deps: tuple[tuple[str, str], ...]
    source: str | None = None

    @property
    def id(self) -> str:
        return f"{self.row}@{self.seed}"


@dataclass
class Ctx:
    """A job as its worker sees it: settings, the job, the records of the jobs it reads, its row's budget and
    training arguments."""

    cfg: Config
    data: str
    job: Job
    deps: dict[str, dict]
    epochs: int = 0
    extra: dict | None = None

    @property
    def dir(self) -> Path:
        return self.cfg.work / "runs" / f"{self.job.id}-{self.job.key}"

    def pt(self, row: str) -> Path:
        return Path(self.deps[row]["pt"])

    def train(self, model: str | Path, slim: dict | None = None) -> Made:
        """A stock `YOLO(model).train(...)` for the row's epochs (with `slim=` when given) into `<dir>/train`, resumed
        if it was interrupted, skipped if it finished."""
        from ultralytics import YOLO
        from ultralytics.utils.patches import torch_load

        run, epochs = self.dir / "train", self.epochs
        last, clock = run / "weights" / "last.pt", run / "seconds.json"
        epoch = torch_load(last, map_location="cpu")["epoch"] if last.exists() else None  # 0-based, -1: stripped
        if epoch is None or -1 < epoch < epochs - 1:  # not trained, or stopped before its last epoch
            resume = epoch is not None
            prior = json.loads(clock.read_text())["s"] if resume and clock.exists() else 0.0
            t0 = time.perf_counter()

            def tick(_: Any) -> None:  # training seconds so far, kept across resumes
                clock.write_text(json.dumps({"s": prior + time.perf_counter() - t0}))

            if resume:
                yolo = YOLO(last)
                yolo.add_callback("on_fit_epoch_end", tick)
                yolo.train(resume=True)
            else:
                shutil.rmtree(run, ignore_errors=True)
                yolo = YOLO(str(model))
                yolo.add_callback("on_fit_epoch_end", tick)
                args = {**self.cfg.train_args(), **(self.extra or {}), "data": self.data, "epochs": epochs}
                args["seed"] = self.job.seed
                args |= {"project": str(run.parent), "name": run.name, "exist_ok": True}
                yolo.train(**args, **({} if slim is None else {"slim": slim}))
        seconds = json.loads(clock.read_text())["s"] if clock.exists() else 0.0
        return Made(run / "weights" / "best.pt", epochs, seconds, run, prune_events(slim, epochs))

    def fresh(self, name: str) -> Path:
        """A new, empty `<dir>/<name>` for files made outside a training run."""
        d = self.dir / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d


def recipe(shipped: str, macs: float | None = None, **sections: dict) -> dict:
    """A shipped recipe as its file has it (defaults left to the plugin), with the pruning target set to `macs` and
    sections updated/added by `sections`."""
    from ultralytics_slim.recipe import RECIPES_DIR

    r = yaml.safe_load((RECIPES_DIR / shipped).read_text())
    if macs is not None:
        r["prune"]["target"] = {"macs": macs}
    for name, values in sections.items():
        r[name] = {**r.get(name, {}), **values}
    return r


def prune_events(slim: dict | None, epochs: int) -> tuple[int, ...]:
    """0-based epochs at whose start the recipe prunes."""
    if not slim or "prune" not in slim:
        return ()
    from ultralytics_slim import load_recipe
    from ultralytics_slim.schedule import build_schedule

    return tuple(build_schedule(load_recipe(slim), epochs).events.get("prune", ()))


def phases(slim: dict, epochs: int) -> str:
    """The recipe's phases resolved for a run of `epochs`, in 1-based epochs as Ultralytics prints them (a recipe that
    does not fit says so here, and its row fails with the plugin's message if it is run)."""
    from ultralytics_slim import SlimConfigError, load_recipe
    from ultralytics_slim.schedule import build_schedule

    try:
        schedule = build_schedule(load_recipe(slim), epochs)
    except SlimConfigError:
        return f"does not fit {epochs} epochs"
    parts = []
    for name, w in schedule.windows.items():
        if schedule.events[name]:
            parts.append(f"{name} at " + ",".join(str(e + 1) for e in schedule.events[name]))
        else:
            label = "QAT" if name == "quantize" else name
            parts.append(f"{label} {w.start + 1}" + (f"-{w.end}" if w.end > w.start + 1 else ""))
    return ", ".join(parts)


def export(pt: Path, folder: Path, imgsz: int, int8: str = "", data: str | None = None) -> Path:
    """ONNX of a checkpoint copied into `folder` (exporters write next to the checkpoint): float, QAT INT8 ("qat",
    the plugin's `export_int8_onnx`) or post-training INT8 ("ptq", Ultralytics' `quantize=8`, calibrated on the train
    split so that the scored val images stay unseen)."""
    from ultralytics import YOLO

    folder.mkdir(parents=True, exist_ok=True)
    copy = Path(shutil.copy(pt, folder / "model.pt"))
    if int8 == "qat":
        from ultralytics_slim import export_int8_onnx

        return Path(export_int8_onnx(copy, imgsz=imgsz, simplify=False))
    extra = {"quantize": 8, "data": data, "split": "train"} if int8 == "ptq" else {}
    return Path(YOLO(copy).export(format="onnx", imgsz=imgsz, simplify=False, **extra))


# rows' producers: each returns what it made; `measured` turns that into the row's record
def trained(model: str) -> Callable[[Ctx], Made]:
    """A model from yaml trained from scratch."""
    return lambda ctx: ctx.train(model)


def continued(
    start: str, slim: dict | None = None, int8: bool = False, teacher: str | None = None
) -> Callable[[Ctx], Made]:
    """The best.pt of row `start` trained further, stock or with a slim recipe whose distillation teacher is the
    best.pt of row `teacher` when given; QAT rows also export their INT8 ONNX files."""

    def make(ctx: Ctx) -> Made:
        with_teacher = slim
        if teacher is not None:
            with_teacher = {**slim, "distill": {**slim["distill"], "teacher": str(ctx.pt(teacher))}}
        made = ctx.train(ctx.pt(start), with_teacher)
        if int8:
            t = time.perf_counter()
            made.onnx = export(made.pt, ctx.dir / "int8", ctx.cfg.data.imgsz, "qat")
            made.onnx640 = export(made.pt, ctx.dir / "int8-640", DEPLOY, "qat") if ctx.job.seed == 0 else None
            made.seconds += time.perf_counter() - t
        return made

    return make


def ptq(ctx: Ctx) -> Made:
    """Post-training INT8 of the baseline (ONNX Runtime static quantization through Ultralytics' exporter)."""
    t = time.perf_counter()
    pt = ctx.pt("baseline")
    onnx = export(pt, ctx.fresh("ptq"), ctx.cfg.data.imgsz, "ptq", ctx.data)
    onnx640 = export(pt, ctx.fresh("ptq-640"), DEPLOY, "ptq", ctx.data)
    return Made(pt, seconds=time.perf_counter() - t, onnx=onnx, onnx640=onnx640)


def reinitialize(model: nn.Module) -> None:
    """Reset every parameter as a fresh model from yaml would have it (the DFL's fixed projection excepted)."""
    from ultralytics.nn.modules import DFL
    from ultralytics.utils.torch_utils import initialize_weights

    fixed = {m.conv for m in model.modules() if isinstance(m, DFL)}
    for m in model.modules():
        if m is not model and m not in fixed and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    initialize_weights(model)
    model.model[-1].bias_init()


def scratch(ctx: Ctx) -> Made:
    """The same seed's slim-50 architecture, re-initialized (seeded) and trained from scratch."""
    import torch
    from ultralytics import YOLO

    init = ctx.dir / "init.pt"
    if not init.exists():
        model = YOLO(ctx.pt("slim-50"))
        torch.manual_seed(ctx.job.seed)
        reinitialize(model.model)
        model.save(ctx.fresh("init") / "init.pt")
        (ctx.dir / "init" / "init.pt").replace(init)
    return ctx.train(init)


def unstructured(ctx: Ctx) -> Made:
    """Global L1 unstructured pruning of all conv weights of the baseline down to slim-50's parameter count."""
    from torch.nn.utils import prune
    from ultralytics import YOLO
    from ultralytics.nn.modules import DFL
    from ultralytics.utils.torch_utils import get_num_params

    t = time.perf_counter()
    model = YOLO(ctx.pt("baseline"))
    target = get_num_params(load_float(ctx.pt("slim-50")))
    fixed = {m.conv for m in model.model.modules() if isinstance(m, DFL)}
    convs = [(m, "weight") for m in model.model.modules() if isinstance(m, nn.Conv2d) and m not in fixed]
    prune.global_unstructured(convs, prune.L1Unstructured, amount=get_num_params(model.model) - target)
    for m, name in convs:
        prune.remove(m, name)  # permanent: plain weight tensors with zeros
    pt = ctx.fresh("unstructured") / "model.pt"
    model.save(pt)
    return Made(pt, seconds=time.perf_counter() - t)


def macs_ratio(small: str, large: str, imgsz: int) -> float:
    """GFLOPs of `small` / `large`, both built from yaml with this set's classes: the pruning target that turns the
    large model into one as cheap as the small one."""
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import get_flops

    small_gflops, large_gflops = (
        get_flops(DetectionModel(m, nc=len(NAMES), verbose=False), imgsz) for m in (small, large)
    )
    return round(small_gflops / large_gflops, 4)


def row_specs(cfg: Config) -> dict[str, Row]:
    """The matrix, in dependency and display order."""
    E, F = cfg.epochs, cfg.finetune
    slim_rows = []
    for pct in (70, 50, 30):
        for suffix, shipped, label in (
            ("", "prune.yaml", "prune.yaml"),
            ("+distill", "prune_distill.yaml", "prune_distill.yaml, teacher self"),
        ):
            slim = recipe(shipped, pct / 100)
            slim_rows.append(
                Row(
                    f"slim-{pct}{suffix}",
                    f"{label}, {pct}% MACs ({phases(slim, F)})",
                    measured(continued("baseline", slim)),
                    claim=pct == 50,
                    epochs=F,
                    cost=F * (1.3 if suffix else 1),
                    group="claims" if pct == 50 else "others",
                    slim=slim,
                )
            )
    lamp = {"importance": "lamp", "lr_scale": 3.0}  # the former default
    three = {"steps": 3, "end": 0.3}  # the former default: larger cuts, more fine-tuning after the last
    one = {"steps": 1, "end": 0.1}  # one cut at the first epoch, the whole run to recover
    uncapped = {"max_step_cut": 1.0}  # the former default: the ranking alone decides how much of a layer one step takes
    per_mac = {"allocation": "cost"}  # importance per MAC: wide high-resolution layers give first
    uniform = {"allocation": "uniform"}  # every layer gives the same fraction: YOLOv8s keeps YOLOv8n's proportions
    for name, pct, change, what in (  # prune.yaml with one setting changed, to compare with slim-{pct}
        ("slim-50-lamp", 50, lamp, "importance lamp, lr_scale 3 (the former default)"),
        ("slim-50-r16", 50, {"round_to": 16}, "round_to 16"),  # x86 runtimes compute convolutions in 16-channel blocks
        ("slim-50-s3", 50, three, "3 pruning steps (the former default)"),
        ("slim-50-s1", 50, one, "1 pruning step"),
        ("slim-30-s3", 30, three, "3 pruning steps (the former default)"),
        ("slim-70-s3", 70, three, "3 pruning steps (the former default)"),
        ("slim-30-lamp", 30, lamp, "importance lamp, lr_scale 3 (the former default)"),
        ("slim-50-uncapped", 50, uncapped, "max_step_cut 1.0 (the former default)"),
        ("slim-30-uncapped", 30, uncapped, "max_step_cut 1.0 (the former default)"),
        ("slim-50-ca", 50, per_mac, "allocation cost (importance per MAC)"),
        ("slim-50-uniform", 50, uniform, "allocation uniform (the same fraction of every layer)"),
    ):
        variant = recipe("prune.yaml", pct / 100, prune=change)
        what = f"prune.yaml, {pct}% MACs, {what} ({phases(variant, F)})"
        slim_rows.append(
            Row(
                name,
                what,
                measured(continued("baseline", variant)),
                claim=pct == 50,
                epochs=F,
                cost=F,
                group="others",
                slim=variant,
            )
        )
    slim_50 = recipe("prune.yaml", 0.5)
    slim_rows.append(
        Row("slim-50-w0", f"prune.yaml, 50% MACs, without Ultralytics' warmup (warmup_epochs 0) ({phases(slim_50, F)})",
            measured(continued("baseline", slim_50)), claim=True, epochs=F, train=WARMUP_OFF, cost=F,
            group="others", slim=slim_50)
    )  # fmt: skip
    for name, change, what in (  # prune_distill.yaml with one setting changed, to compare with slim-50+distill
        ("slim-50+distill-feat", {"distill": {"loss": "head+feature"}}, "head and neck-feature distillation"),
        ("slim-50+distill-w2", {"distill": {"weight": 2.0}}, "distill weight 2"),
        ("slim-50+distill-lr3", {"prune": {"lr_scale": 3.0}}, "lr_scale 3"),  # the teacher may allow a faster recovery
        ("slim-50+distill-t2", {"distill": {"temperature": 2.0}}, "distill temperature 2"),
        ("slim-50+distill-t4", {"distill": {"temperature": 4.0}}, "distill temperature 4"),
        ("slim-50+distill-e05", {"distill": {"end": 0.5}}, "teacher for the first half only"),  # held back?
        ("slim-50+distill-flip", {"distill": {"flip": True}}, "a teacher that also sees the mirror images"),
        ("slim-50+distill-s1", {"prune": one}, "1 pruning step"),  # the teacher leads most right after a cut
        ("slim-50+distill-s3", {"prune": three}, "3 pruning steps (the former default)"),
    ):
        variant = recipe("prune_distill.yaml", 0.5, **change)
        slim_rows.append(
            Row(name, f"prune_distill.yaml, 50% MACs, {what} ({phases(variant, F)})",
                measured(continued("baseline", variant)), claim=True, epochs=F, cost=1.4 * F, group="others",
                slim=variant)
        )  # fmt: skip
    v8s = Dep("teacher-v8s")
    to_v8n = macs_ratio("yolov8n.yaml", "yolov8s.yaml", cfg.data.imgsz)
    v8s_slim = recipe("prune.yaml", to_v8n)
    v8s_slim_s3 = recipe("prune.yaml", to_v8n, prune=three)
    v8s_slim_uncapped = recipe("prune.yaml", to_v8n, prune=uncapped)
    v8s_slim_ca = recipe("prune.yaml", to_v8n, prune=per_mac)
    v8s_slim_uniform = recipe("prune.yaml", to_v8n, prune=uniform)
    v8s_slim_lr2 = recipe("prune.yaml", to_v8n, prune={"lr_scale": 2.0})
    v8s_slim_lr3 = recipe("prune.yaml", to_v8n, prune={"lr_scale": 3.0})
    v8s_slim_ca_lr3 = recipe("prune.yaml", to_v8n, prune={**per_mac, "lr_scale": 3.0})
    v8s_slim_distill = recipe("prune_distill.yaml", to_v8n)
    v8s_slim_distill_flip = recipe("prune_distill.yaml", to_v8n, distill={"flip": True})
    v8s_slim_distill_light = recipe("prune_distill.yaml", to_v8n, distill={"weight": 0.25})
    v8s_slim_lr3_distill = recipe("prune_distill.yaml", to_v8n, prune={"lr_scale": 3.0})
    v8s_slim_lr3_distill_w2 = recipe("prune_distill.yaml", to_v8n, prune={"lr_scale": 3.0}, distill={"weight": 2.0})
    v8s_slim_lr3_distill_feat = recipe(
        "prune_distill.yaml", to_v8n, prune={"lr_scale": 3.0}, distill={"loss": "head+feature"}
    )
    v8s_distill = recipe("prune_distill.yaml", 0.5, distill={"teacher": "teacher-v8s"})  # the path is set per job
    v8s_distill_feat = recipe("prune_distill.yaml", 0.5, distill={"teacher": "teacher-v8s", "loss": "head+feature"})

    def from_v8s(
        name: str, slim: dict, what: str, claim: bool, cost: float, group: str, train: dict | None = None
    ) -> Row:
        """A row that slims the YOLOv8s teacher towards YOLOv8n's MACs in F epochs."""
        return Row(name, what, measured(continued("teacher-v8s", slim)), deps=(v8s,), claim=claim, epochs=F,
                   train=train, cost=cost, group=group, slim=slim)  # fmt: skip

    qat, baseline_qat = recipe("prune_distill_qat.yaml", 0.5), recipe("qat.yaml")
    oneshot = {"prune": {"target": {"macs": 0.5}, "importance": "l1", "steps": 1, "start": 0, "end": 1}}
    slimming = recipe(  # the first release's prune.yaml: network slimming, pruning after sparsity training
        "prune.yaml",
        0.5,
        sparsity={"strength": "auto", "start": 0, "end": 0.4},
        prune={"steps": 4, "start": 0.4, "end": 0.7},
    )
    rows = [
        Row("baseline", f"YOLOv8n from yaml, {E} epochs, SGD (cached)", measured(trained("yolov8n.yaml")), deps=(),
            stock=True, epochs=E, train=FROM_SCRATCH, cost=E, group="scratch"),
        Row("teacher-v8s", f"YOLOv8s from yaml, {E} epochs, SGD (cached)", measured(trained("yolov8s.yaml")),
            deps=(), stock=True, epochs=E, train=FROM_SCRATCH, cost=2 * E, group="scratch"),
        Row("baseline+F", f"baseline + {F} stock epochs: the reference", measured(continued("baseline")),
            claim=True, stock=True, epochs=F, cost=F, group="claims"),
        Row("val-noise", "the baseline's best.pt validated again (.pt twice, ONNX twice)", val_noise, stock=True,
            group="", table=False),
        *slim_rows,
        Row("scratch-50", f"slim-50 architecture (same seed) re-initialized, {E + F} epochs from scratch, SGD",
            measured(scratch), deps=(Dep("slim-50", same_seed=True),), claim=True, epochs=E + F, train=FROM_SCRATCH,
            cost=E + F, group="scratch"),
        from_v8s("v8s-slim", v8s_slim, f"teacher-v8s + prune.yaml to YOLOv8n's MACs ({to_v8n:.0%} of YOLOv8s), {F} "
                 f"epochs ({phases(v8s_slim, F)}); compare with baseline+F (YOLOv8n, the same {E} + {F} epochs)",
                 claim=True, cost=1.5 * F, group="claims"),
        from_v8s("v8s-slim-s3", v8s_slim_s3, f"v8s-slim with 3 pruning steps ({phases(v8s_slim_s3, F)})",
                 claim=True, cost=1.5 * F, group="others"),
        from_v8s("v8s-slim-uncapped", v8s_slim_uncapped,
                 f"v8s-slim with max_step_cut 1.0 (the former default) ({phases(v8s_slim_uncapped, F)})",
                 claim=True, cost=1.5 * F, group="others"),
        from_v8s("v8s-slim-ca", v8s_slim_ca,
                 f"v8s-slim with allocation cost (importance per MAC) ({phases(v8s_slim_ca, F)})", claim=True,
                 cost=1.5 * F, group="others"),
        from_v8s("v8s-slim-lr2", v8s_slim_lr2,
                 f"v8s-slim with lr_scale 2 (a deeper cut to recover from) ({phases(v8s_slim_lr2, F)})", claim=True,
                 cost=1.5 * F, group="others"),
        from_v8s("v8s-slim-lr3", v8s_slim_lr3, f"v8s-slim with lr_scale 3 ({phases(v8s_slim_lr3, F)})", claim=True,
                 cost=1.5 * F, group="others"),
        from_v8s("v8s-slim-ca-lr3", v8s_slim_ca_lr3, f"v8s-slim with allocation cost and lr_scale 3 "
                 f"({phases(v8s_slim_ca_lr3, F)})", claim=True, cost=1.5 * F, group="others"),
        # a shorter warmup than Ultralytics' 3 epochs (at least 100 batches either way; from 0 for biases too:
        # optimizer=auto sets warmup_bias_lr to 0)
        from_v8s("v8s-slim-lr3-w1", v8s_slim_lr3, f"v8s-slim-lr3 with a one-epoch warmup (warmup_epochs 1) "
                 f"({phases(v8s_slim_lr3, F)})", claim=True, cost=1.5 * F, group="others", train={"warmup_epochs": 1.0}),
        from_v8s("v8s-slim-w0", v8s_slim, f"v8s-slim without Ultralytics' warmup (warmup_epochs 0) "
                 f"({phases(v8s_slim, F)})", claim=True, cost=1.5 * F, group="others", train=WARMUP_OFF),
        from_v8s("v8s-slim-uniform", v8s_slim_uniform,
                 f"v8s-slim with allocation uniform (YOLOv8n's proportions) ({phases(v8s_slim_uniform, F)})",
                 claim=True, cost=1.5 * F, group="others"),
        from_v8s("v8s-slim+distill", v8s_slim_distill, f"teacher-v8s + prune_distill.yaml (teacher self, the unpruned "
                 f"YOLOv8s) to YOLOv8n's MACs, {F} epochs ({phases(v8s_slim_distill, F)}); compare with baseline+F",
                 claim=True, cost=2 * F, group="claims"),
        from_v8s("v8s-slim+distill-flip", v8s_slim_distill_flip, f"v8s-slim+distill with a teacher that also sees the "
                 f"mirror images ({phases(v8s_slim_distill_flip, F)})", claim=True, cost=2.2 * F, group="others"),
        from_v8s("v8s-slim-lr3+distill", v8s_slim_lr3_distill, f"v8s-slim+distill with lr_scale 3 "
                 f"({phases(v8s_slim_lr3_distill, F)})", claim=True, cost=2 * F, group="others"),
        from_v8s("v8s-slim-lr3+distill-w2", v8s_slim_lr3_distill_w2, f"v8s-slim-lr3+distill with distill weight 2 "
                 f"({phases(v8s_slim_lr3_distill_w2, F)})", claim=True, cost=2 * F, group="others"),
        from_v8s("v8s-slim-lr3+distill-feat", v8s_slim_lr3_distill_feat, f"v8s-slim-lr3+distill with the neck "
                 f"features too ({phases(v8s_slim_lr3_distill_feat, F)})", claim=True, cost=2.2 * F, group="others"),
        from_v8s("v8s-slim+distill-w0.25", v8s_slim_distill_light,
                 f"v8s-slim+distill, distill weight 0.25 ({phases(v8s_slim_distill_light, F)})",
                 claim=False, cost=2 * F, group="others"),
        Row("slim-50+distill-v8s", f"prune_distill.yaml, teacher teacher-v8s, 50% MACs ({phases(v8s_distill, F)})",
            measured(continued("baseline", v8s_distill, teacher="teacher-v8s")), deps=(Dep("baseline"), v8s),
            claim=True, epochs=F, cost=1.6 * F, group="claims", slim=v8s_distill),
        Row("slim-50+distill-v8s-feat", "slim-50+distill-v8s with the neck features too, through projectors "
            f"({phases(v8s_distill_feat, F)})", measured(continued("baseline", v8s_distill_feat, teacher="teacher-v8s")),
            deps=(Dep("baseline"), v8s), claim=True, epochs=F, cost=1.8 * F, group="others", slim=v8s_distill_feat),
        Row("slim-50+qat", f"prune_distill_qat.yaml, 50% MACs ({phases(qat, F)})",
            measured(continued("baseline", qat, int8=True)), epochs=F, cost=1.3 * F, slim=qat),
        Row("baseline-qat", f"qat.yaml ({phases(baseline_qat, F)})",
            measured(continued("baseline", baseline_qat, int8=True)), epochs=F, cost=1.3 * F, slim=baseline_qat),
        Row("baseline-ptq", "baseline, Ultralytics export quantize=8 (ORT static PTQ, train-split calibration)",
            measured(ptq), stock=True, group=""),
        Row("oneshot-50", f"one-shot L1 pruning to 50% MACs, no sparsity ({phases(oneshot, F)})",
            measured(continued("baseline", oneshot)), epochs=F, cost=F, slim=oneshot),
        Row("slimming-50", f"sparsity training, then pruning with bn_scale_lamp, 50% MACs ({phases(slimming, F)})",
            measured(continued("baseline", slimming)), epochs=F, cost=F, slim=slimming),
        Row("unstructured-50", "global L1 unstructured on the baseline's convs to slim-50's param count, no fine-tune",
            measured(unstructured), deps=(Dep("baseline"), Dep("slim-50")), group=""),
    ]  # fmt: skip
    return {r.name: r for r in rows}


# ------------------------------------------------------------------------------------------------------ measurement
def load_float(pt: Path) -> nn.Module:
    """The float model of a checkpoint (ModelOpt quantizers removed from QAT checkpoints)."""
    from ultralytics.nn.tasks import load_checkpoint
    from ultralytics.utils.torch_utils import strip_qat

    model = load_checkpoint(pt)[0].float().eval()
    strip_qat(model)
    return model


def validate(ctx: Ctx, model: Path, batch: int, name: str = "val") -> tuple[float, float]:
    """mAP50-95 and mAP50 of a .pt or .onnx file from Ultralytics' validator on the val split."""
    from ultralytics import YOLO

    args = {"data": ctx.data, "imgsz": ctx.cfg.data.imgsz, "batch": batch, "plots": False, "device": "cpu"}
    metrics = YOLO(str(model), task="detect").val(**args, verbose=False, project=str(ctx.dir), name=name,
                                                  exist_ok=True)  # fmt: skip
    return float(metrics.box.map), float(metrics.box.map50)


def curve(run: Path | None) -> list[float]:
    """Val mAP50-95 after each epoch (1-based index - 1) from the run's results.csv; a repeated epoch keeps its last."""
    if run is None or not (run / "results.csv").exists():
        return []
    with open(run / "results.csv") as f:
        by_epoch = {
            int(float(r["epoch"])): float(r["metrics/mAP50-95(B)"]) for r in csv.DictReader(f, skipinitialspace=True)
        }
    return [by_epoch[e] for e in sorted(by_epoch)]


def measured(make: Callable[[Ctx], Made]) -> Callable[[Ctx], dict]:
    """A producer followed by the measurements every row gets, in the same worker: counters from the float model,
    mAP of the checkpoint (INT8 rows: of the INT8 ONNX) and of its ONNX file, the ONNX files that latency will time."""

    def run(ctx: Ctx) -> dict:
        from ultralytics.utils.torch_utils import get_flops, get_num_params

        made = make(ctx)
        imgsz = ctx.cfg.data.imgsz
        model = load_float(made.pt)
        onnx = made.onnx or export(made.pt, ctx.dir / "onnx", imgsz)
        onnx640 = made.onnx640 if made.onnx else None
        if ctx.job.seed == 0 and onnx640 is None:  # latency is timed on seed 0
            onnx640 = export(made.pt, ctx.dir / "onnx-640", DEPLOY)
        onnx_map = validate(ctx, onnx, 1, "val-onnx")
        pt_map = onnx_map if made.onnx else validate(ctx, made.pt, ctx.cfg.batch)
        return {
            "pt": str(made.pt),
            "int8": made.onnx is not None,
            "onnx": str(onnx),
            "onnx640": onnx640 and str(onnx640),
            "epochs": made.epochs,
            "train_s": made.seconds,
            "params": get_num_params(model),
            "nonzero": sum(int(p.count_nonzero()) for p in model.parameters()),
            "gflops": get_flops(model, imgsz),
            "onnx_mb": onnx.stat().st_size / 1e6,
            "gzip_mb": len(gzip.compress(onnx.read_bytes(), 6)) / 1e6,
            "map50_95": pt_map[0],
            "map50": pt_map[1],
            "onnx_map50_95": onnx_map[0],
            "curve": curve(made.run),
            "prune_at": list(made.prune_at),
        }

    return run


def val_noise(ctx: Ctx) -> dict:
    """The val set's own noise: the same weights validated twice as .pt (batch 16 and 1) and twice as ONNX."""
    pt = ctx.pt("baseline")
    onnx = export(pt, ctx.dir / "onnx", ctx.cfg.data.imgsz)
    labels = Path(ctx.data).parent / "labels" / "val"
    return {
        "pt_b16": [validate(ctx, pt, 16, f"pt{i}")[0] for i in range(2)],
        "pt_b1": validate(ctx, pt, 1, "pt-b1")[0],
        "onnx_b1": [validate(ctx, onnx, 1, f"onnx{i}")[0] for i in range(2)],
        "images": len(list(labels.glob("*.txt"))),
        "objects": sum(len(p.read_text().splitlines()) for p in labels.glob("*.txt")),
    }


# ------------------------------------------------------------------------------------------------------- scheduling
def package_hash() -> str:
    """A hash of the plugin's source and recipes: a row trained by other code is not reused."""
    root = Path(importlib.util.find_spec("ultralytics_slim").submodule_search_locations[0])
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.suffix in {".py", ".yaml"}:
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def plan(cfg: Config, specs: dict[str, Row]) -> dict[str, Job]:
    """Every job the asked-for rows need, dependencies first, each with a key of everything that decides its result."""
    from importlib.metadata import version

    wanted = set(specs) if ALL in cfg.rows else set(cfg.rows)
    unknown = wanted - set(specs)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; choose from {', '.join(specs)}")
    wanted.add("baseline")  # the report's ratios are against it
    for name in reversed(list(specs)):  # specs are in dependency order: one reverse pass collects what is read
        if name in wanted:
            wanted |= {d.row for d in specs[name].deps}
    common = (FORMAT, cfg.data.key, cfg.train_args(), version("ultralytics"), version("torch"))
    source = package_hash()
    jobs: dict[str, Job] = {}
    for name, row in specs.items():
        if name not in wanted:
            continue
        for seed in range(cfg.seeds if row.claim else 1):
            deps = tuple((d.row, f"{d.row}@{seed if d.same_seed else 0}") for d in row.deps)
            code = None if row.stock else source
            key = digest(common, row.fingerprint(), seed, [jobs[j].key for _, j in deps], code)
            jobs[f"{name}@{seed}"] = Job(name, seed, key, deps, code)
    return jobs


def record_path(cfg: Config, job: Job) -> Path:
    return cfg.work / "records" / f"{job.id}-{job.key}.json"


def log_path(cfg: Config, job: Job) -> Path:
    return cfg.work / "logs" / f"{job.id}-{job.key}.log"


def work(cfg: Config, data: str, job: Job, deps: dict[str, dict]) -> None:
    """Run one job in this (fresh) process with its output in its log file, and store its record."""
    log = log_path(cfg, job)
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        os.dup2(fd, stream.fileno())
    if job.source is not None and package_hash() != job.source:  # the key would name results of other code
        raise RuntimeError("ultralytics_slim changed since this benchmark started; run it again to redo its rows")
    import torch
    from ultralytics.utils import torch_utils

    if cfg.threads:  # Ultralytics' device selection sets torch's threads to this module constant
        torch_utils.NUM_THREADS = cfg.threads
    t = time.perf_counter()
    row = row_specs(cfg)[job.row]
    record = row.run(Ctx(cfg, data, job, deps, row.epochs, row.train))
    record |= {"row": job.row, "seed": job.seed, "key": job.key, "job_s": time.perf_counter() - t}
    record["threads"] = torch.get_num_threads()  # not in the key: other threads sum floats in another order only
    path = record_path(cfg, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)  # atomic: a record exists whole or not at all


def priorities(jobs: dict[str, Job], specs: dict[str, Row]) -> dict[str, float]:
    """Each job's cost plus the longest chain of jobs waiting for it: start the long chains first."""
    children: dict[str, list[str]] = {j: [] for j in jobs}
    for j, job in jobs.items():
        for _, dep in job.deps:
            children[dep].append(j)
    out: dict[str, float] = {}
    for j in reversed(list(jobs)):  # jobs are in dependency order
        out[j] = specs[jobs[j].row].cost + max((out[c] for c in children[j]), default=0.0)
    return out


def last_line(path: Path) -> str:
    """The last non-empty line of a log: the exception of a failed job."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    return lines[-1].strip() if lines else "no output"


def stored(cfg: Config, jobs: dict[str, Job]) -> dict[str, dict]:
    """The records of the jobs that have finished, by job id."""
    return {
        j: json.loads(record_path(cfg, job).read_text()) for j, job in jobs.items() if record_path(cfg, job).exists()
    }


def execute(cfg: Config, data: str, jobs: dict[str, Job], specs: dict[str, Row]) -> tuple[dict[str, dict], list[str]]:
    """Run the jobs without a stored record, `cfg.workers` at a time, each in a fresh process, longest chains first.

    Returns the records and the jobs that failed or could not start because a job they read failed. Stopping the
    benchmark (Ctrl-C, SIGTERM) stops its trainings; their last epoch is kept and resumed by the next invocation.
    """
    from ultralytics.utils import LOGGER

    records = stored(cfg, jobs)
    if records:
        LOGGER.info(f"Benchmark: {len(records)}/{len(jobs)} jobs already done: {', '.join(records)}")
    todo, failed = [j for j in jobs if j not in records], []
    rank = priorities(jobs, specs)
    spawn = multiprocessing.get_context("spawn")
    running: dict[str, Any] = {}
    t0 = time.perf_counter()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the `finally` below
    try:
        while todo or running:
            ready = sorted((j for j in todo if all(d in records for _, d in jobs[j].deps)), key=lambda j: -rank[j])
            for j in ready[: cfg.workers - len(running)]:
                deps = {row: records[d] for row, d in jobs[j].deps}
                running[j] = spawn.Process(target=work, args=(cfg, data, jobs[j], deps), name=j)
                running[j].start()
                todo.remove(j)
                LOGGER.info(f"Benchmark: started {j} (log: {log_path(cfg, jobs[j])})")
            if not running:
                break  # what is left reads a failed job
            multiprocessing.connection.wait([p.sentinel for p in running.values()])
            for j in [j for j, p in running.items() if not p.is_alive()]:
                running.pop(j).join()
                at = f"[{(time.perf_counter() - t0) / 60:.1f} min]"
                if record_path(cfg, jobs[j]).exists():
                    records[j] = rec = json.loads(record_path(cfg, jobs[j]).read_text())
                    what = f": mAP50-95 {rec['map50_95']:.3f}" if "map50_95" in rec else ""
                    LOGGER.info(f"Benchmark: finished {j} in {rec['job_s'] / 60:.1f} min{what} {at}")
                else:
                    failed.append(j)
                    LOGGER.error(f"Benchmark: {j} failed: {last_line(log_path(cfg, jobs[j]))} {at}")
    finally:
        for p in running.values():
            p.terminate()
            p.join()
        signal.signal(signal.SIGTERM, previous)
    return records, failed + todo


# ---------------------------------------------------------------------------------------------------------- latency
def ov_int8_convs(compiled: Any) -> str:
    """'k/n': convolutions OpenVINO executes in int8 out of all, read from its runtime (execution) graph."""
    info = [op.get_rt_info() for op in compiled.get_runtime_model().get_ops()]
    precisions = [rt["runtimePrecision"].astype(str) for rt in info if rt["layerType"].astype(str) == "Convolution"]
    int8 = sum(p.lower() in {"u8", "i8"} for p in precisions)
    return f"{int8}/{len(precisions)}"


def timed_file(name: str, rec: dict, imgsz: int, folder: Path) -> Path:
    """The ONNX file latency times: an INT8 row's own export; a float row's checkpoint exported now, as the plugin
    exports for deployment (`latency.export_onnx`, with `deploy.fast_dfl`), whatever exported its recorded file."""
    from ultralytics_slim.latency import export_onnx

    if rec["int8"]:
        return Path(rec["onnx640" if imgsz == DEPLOY else "onnx"])
    folder.mkdir(parents=True, exist_ok=True)
    return export_onnx(load_float(Path(rec["pt"])), imgsz, folder / f"{name}-{imgsz}.onnx")


def time_all(files: dict[str, Path], imgsz: int, runs: int) -> dict[str, dict[str, Any]]:
    """Batch-1 latencies (ms) of every ONNX file in onnxruntime and OpenVINO, interleaved by the package's one timer."""
    from ultralytics_slim.benchmark import interleaved_ms
    from ultralytics_slim.latency import ov_compile, runner

    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    out, fns = {}, []
    for name, onnx in files.items():
        compiled = ov_compile(onnx)
        request = compiled.create_infer_request()
        out[name] = {"int8_convs": ov_int8_convs(compiled)}
        fns += [runner(onnx, "onnxruntime", imgsz), lambda r=request: r.infer({0: x})]
    times = interleaved_ms(fns, runs, WARMUP)
    for i, name in enumerate(files):
        out[name] |= {"ort": times[2 * i], "ov": times[2 * i + 1]}
    return out


# ----------------------------------------------------------------------------------------------------------- report
def mean_std(xs: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def verdict(a: list[float], b: list[float]) -> str:
    """Whether mean(a) is above or below mean(b) by more than both standard deviations, or within noise."""
    if len(a) < 2 or len(b) < 2:
        return ""  # one seed: no spread, no claim
    d = statistics.fmean(a) - statistics.fmean(b)
    if abs(d) > statistics.stdev(a) and abs(d) > statistics.stdev(b):
        return "beats" if d > 0 else "below"
    return "within noise"


def plateau(values: list[float], window: int = 10) -> dict[str, Any]:
    """The convergence check: what the last `window` epochs added to the best mAP before them (NaN for a run not
    longer than that), and the first epoch at which the run came within PLATEAU of its final best."""
    best = max(values)
    gain = best - max(values[:-window]) if len(values) > window else float("nan")
    needed = next(e + 1 for e in range(len(values)) if max(values[: e + 1]) >= best - PLATEAU)
    return {"epochs": len(values), "best": best, "last_gain": gain, "converged": gain < PLATEAU, "needed": needed}


def pm(xs: list[float]) -> str:
    """`mean ± std`, or the value alone for one seed."""
    m, s = mean_std(xs)
    return f"{m:.3f}" + (f" ± {s:.3f}" if s is not None else "")


def by_row(specs: dict[str, Row], records: dict[str, dict]) -> dict[str, list[dict]]:
    """Records grouped by row, in display order, seeds ascending."""
    out: dict[str, list[dict]] = {}
    for rec in sorted(records.values(), key=lambda r: r["seed"]):
        out.setdefault(rec["row"], []).append(rec)
    return {name: out[name] for name, row in specs.items() if name in out and row.table}


def accuracy_table(specs: dict[str, Row], rows: dict[str, list[dict]]) -> str:
    """Mean +- std over seeds of every row, with its difference to baseline+F and whether that exceeds the spreads."""
    ref = [r["map50_95"] for r in rows.get("baseline+F", [])]
    head = ["row", "what", "seeds", "epochs", "train min", "mAP50-95", "mAP50", "ONNX mAP50-95", "d base+F",
            "vs base+F"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, recs in rows.items():
        maps = [r["map50_95"] for r in recs]
        cells = [
            f"**{name}**" + (" (INT8)" if recs[0]["int8"] else ""),
            specs[name].what,
            str(len(recs)),
            str(recs[0]["epochs"]),
            f"{statistics.fmean(r['train_s'] for r in recs) / 60:.1f}",
            pm(maps),
            pm([r["map50"] for r in recs]),
            pm([r["onnx_map50_95"] for r in recs]),
            f"{statistics.fmean(maps) - statistics.fmean(ref):+.3f}" if ref and name != "baseline+F" else "",
            verdict(maps, ref) if ref and name != "baseline+F" else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CLAIMS = (  # (row A, row B, target on mean(A) - mean(B) in mAP50-95, what it means); targets from the issues
    ("slim-50", "baseline+F", -0.010, "prune.yaml at 50% MACs within 1 point of the same-budget baseline"),
    ("slim-50+distill", "slim-50", 0.005, "distillation adds at least 0.5 point"),
    ("slim-50", "scratch-50", 0.0, "pruning beats the pruned architecture trained from scratch for E + F epochs"),
    ("v8s-slim", "baseline+F", 0.0, "YOLOv8s pruned to YOLOv8n's MACs beats YOLOv8n trained the same E + F epochs"),
    ("v8s-slim+distill", "baseline+F", 0.0, "the same with prune_distill.yaml (the unpruned YOLOv8s as teacher)"),
    ("slim-50+distill-v8s", "slim-50", 0.005, "distillation from the larger YOLOv8s adds at least 0.5 point"),
)


def claims_table(rows: dict[str, list[dict]]) -> str:
    """The comparisons the project's targets are about, each with its spreads, verdict and target."""
    head = ["A", "B", "mean A - B", "std A", "std B", "verdict", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a, b, target, means in CLAIMS:
        if a not in rows or b not in rows:
            continue
        xa, xb = [r["map50_95"] for r in rows[a]], [r["map50_95"] for r in rows[b]]
        d = statistics.fmean(xa) - statistics.fmean(xb)
        sa, sb = mean_std(xa)[1], mean_std(xb)[1]
        cells = [a, b, f"{d:+.3f}", f"{sa:.3f}" if sa is not None else "-", f"{sb:.3f}" if sb is not None else "-",
                 verdict(xa, xb).replace("beats", f"{a} beats {b}").replace("below", f"{a} below {b}"),
                 f"{target:+.3f}: {means}", "yes" if d >= target else "no"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def speed_table(rows: dict[str, list[dict]], lat: dict[str, dict], imgsz: int) -> str:
    """Size and batch-1 latency of seed 0 of every row, ratios against the baseline."""
    if "baseline" not in rows:
        return "(no baseline record yet: the ratios need it)"
    base, base_lat = rows["baseline"][0], lat.get("baseline")
    head = ["row", "params M", "GFLOPs", "MACs x", "ONNX MB", "size x", "gzip MB"]
    for size in (imgsz, DEPLOY):
        head += [f"ORT ms {size}", "ORT x", f"OV ms {size}", "OV x"]
    head.append("OV int8 convs")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, recs in rows.items():
        m = recs[0]
        params = f"{m['params'] / 1e6:.3f}"
        if m["nonzero"] < 0.95 * m["params"]:
            params += f" ({m['nonzero'] / 1e6:.3f} nonzero)"
        cells = [f"**{name}**" + (" (INT8)" if m["int8"] else ""), params, f"{m['gflops']:.3f}",
                 f"{m['gflops'] / base['gflops']:.2f}", f"{m['onnx_mb']:.2f}", f"{m['onnx_mb'] / base['onnx_mb']:.2f}",
                 f"{m['gzip_mb']:.2f}"]  # fmt: skip
        t = lat.get(name)
        for size in ("train", "deploy"):
            for rt in ("ort", "ov"):
                if t and base_lat:
                    xs = t[size][rt]
                    q1, q3 = np.percentile(xs, [25, 75])
                    cells += [f"{med(xs):.2f} ({q1:.2f}-{q3:.2f})", f"{med(base_lat[size][rt]) / med(xs):.2f}"]
                else:
                    cells += ["", ""]
        cells.append(t["train"]["int8_convs"] if t else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def convergence(rows: dict[str, list[dict]]) -> str:
    """The baselines' curves in numbers, and the verdict: F more stock epochs (the +F control) must add less than
    PLATEAU to the baseline; without that control, the in-run rule (the last 10 epochs) decides. The in-run rule is
    the stricter one: Ultralytics turns mosaic off for the last 10 epochs (`close_mosaic`), which lifts them too."""
    lines, in_run = [], None
    for name, label in (("baseline", "YOLOv8n baseline"), ("teacher-v8s", "YOLOv8s teacher")):
        if name not in rows or not rows[name][0]["curve"]:
            continue
        c = rows[name][0]["curve"]
        p = plateau(c)
        in_run = p["converged"] if name == "baseline" else in_run
        every = ", ".join(f"{e}: {c[e - 1]:.3f}" for e in range(5, len(c) + 1, 5))
        gain = f"{p['last_gain'] * 100:+.2f} points" if p["last_gain"] == p["last_gain"] else "n/a (too short)"
        lines.append(
            f"- **{label}** ({p['epochs']} epochs): best val mAP50-95 {p['best']:.3f}, first within "
            f"{PLATEAU * 100:.1f} point of it at epoch {p['needed']}; its last 10 epochs added {gain}. "
            f"Curve (epoch: mAP50-95): {every}."
        )
    if "baseline+F" in rows and "baseline" in rows:
        ref, base = [r["map50_95"] for r in rows["baseline+F"]], rows["baseline"][0]["map50_95"]
        gain = statistics.fmean(ref) - base
        lines.append(
            f"- **Converged?** {rows['baseline+F'][0]['epochs']} more stock epochs (baseline+F, {len(ref)} seed(s): "
            f"{pm(ref)}) add {gain * 100:+.2f} points to the baseline's {base:.3f} (rule: < {PLATEAU * 100:.1f}): "
            + ("**yes**" if gain < PLATEAU else "**no: raise --epochs**")
        )
    elif in_run is not None:
        lines.append(f"- **Converged?** By its last 10 epochs: {'**yes**' if in_run else '**no: raise --epochs**'}")
    return "\n".join(lines)


def noise(rows: dict[str, list[dict]], records: dict[str, dict]) -> str:
    """What the val set's numbers move by without any change of method."""
    lines = []
    if (n := records.get("val-noise@0")) is not None:
        a, b = n["pt_b16"]
        c, d = n["onnx_b1"]
        lines += [
            f"- Val split: {n['images']} images, {n['objects']} labeled objects.",
            (
                f"- The baseline's best.pt validated twice (.pt, batch 16): {a:.4f} and {b:.4f} (difference "
                f"{b - a:+.4f}); at batch 1: {n['pt_b1']:.4f}. Its ONNX file twice (onnxruntime, batch 1): {c:.4f} and "
                f"{d:.4f} (difference {d - c:+.4f}); .pt - ONNX: {a - c:+.4f} (letterboxing: the .pt validator pads "
                "each batch to its own rectangle, the ONNX file takes a fixed square)."
            ),
        ]
    spreads = [(name, len(recs), mean_std([r["map50_95"] for r in recs])[1]) for name, recs in rows.items()]
    if any(n > 1 for _, n, _ in spreads):
        lines.append(
            "- Seed-to-seed standard deviation of mAP50-95 (run-to-run noise of training and val together): "
            + ", ".join(f"{name} {s * 100:.2f} points ({n} seeds)" for name, n, s in spreads if n > 1)
            + ". A difference of means smaller than either row's spread is reported as within noise."
        )
    return "\n".join(lines)


LEGEND = """\
Columns: `seeds` = trainings of the row with seeds 0..n-1 (Ultralytics `seed=`: data order, augmentation and, for
scratch rows, the initialization); figures are mean ± sample standard deviation over them. `epochs`/`train min` =
epochs trained and minutes of training (plus INT8 export or PTQ calibration) to produce the row from its starting
model, per seed. `mAP50-95`/`mAP50` = Ultralytics `val` on the val split: the `.pt` checkpoint (batch 16) for float
rows, the INT8 ONNX file (onnxruntime, batch 1) for INT8 rows; `ONNX mAP50-95` = the ONNX file of every row validated
the same way. `d base+F` = mean mAP50-95 minus that of baseline+F (the same starting model trained the same extra
epochs without compression). `vs base+F`: "beats"/"below" only when that difference exceeds both rows' standard
deviations, "within noise" otherwise; rows with one seed make no claim.

Size and speed (seed 0 of each row): `params M` = parameters stored (nonzero in brackets where much lower),
`GFLOPs` = `ultralytics.utils.torch_utils.get_flops` at the training size, `MACs x` = GFLOPs / baseline GFLOPs.
`ONNX MB` = the batch-1 ONNX export (`simplify=False`), `gzip MB` = that file gzip-compressed. Latency = batch 1,
of the graph the plugin exports for deployment (float rows exported again for the timing, with the DFL's softmax over
the last axis, `ultralytics_slim.deploy`; INT8 rows: their own export),
median (25th-75th percentile) in ms of {runs} timed runs per model after {warmup} warm-up runs, interleaved
round-robin across all models and both runtimes (`ultralytics_slim.benchmark.interleaved_ms`), once at the training
size and once at {deploy} px (latency does not depend on the training resolution); onnxruntime CPU EP with 2
intra-op threads; OpenVINO CPU with 2 threads, 1 stream, f32 inference precision (int8 where the graph has Q/DQ).
`ORT x`/`OV x` = baseline latency / row latency in the same runtime and size. `OV int8 convs` = convolutions that
OpenVINO's execution graph runs in u8/i8 precision.

Training: every run is a stock `YOLO(...).train(data, epochs, imgsz, batch=16, nbs=16, workers=0, seed=s)` (the slim
rows add `slim=`); `nbs=16` gives an optimizer step per batch. Runs from scratch (baseline, teacher-v8s, scratch-50)
add `optimizer=SGD, lr0=0.01`, which converges in far fewer epochs here than the AdamW that `optimizer=auto` picks for
short runs; every other row starts from the baseline's best.pt (v8s-slim from the YOLOv8s teacher's) with
`optimizer=auto`, as a user's fine-tuning would. best.pt of each run is measured.
"""


def curves(specs: dict[str, Row], rows: dict[str, list[dict]], path: Path) -> None:
    """Val mAP50-95 per epoch of every trained row (each seed a line), pruning steps marked: a panel for the runs from
    scratch, one for the claim rows after the baseline and one for the other rows after it (where there are any)."""
    from matplotlib import colormaps

    from ultralytics_slim.report import figure

    titles = {
        "scratch": "from scratch",
        "claims": "claim rows, after the baseline (dashed: the baseline's best)",
        "others": "other rows, after the baseline (dashed: the baseline's best)",
    }
    groups = [g for g in titles if any(specs[name].group == g for name in rows)]
    fig = figure(figsize=(6 * len(groups), 5.5))
    axes = dict(zip(groups, np.atleast_1d(fig.subplots(1, len(groups)))))
    colours = colormaps["tab10"].colors + colormaps["Dark2"].colors
    for i, (name, recs) in enumerate((n, r) for n, r in rows.items() if specs[n].group in axes):
        ax, c = axes[specs[name].group], colours[i % len(colours)]
        for j, rec in enumerate(recs):
            ys = rec["curve"]
            ax.plot(range(1, len(ys) + 1), ys, color=c, lw=1.2, alpha=0.85, label=name if j == 0 else None)
            for e in rec["prune_at"]:  # a step at the start of 0-based epoch e: between val points e and e + 1
                ax.plot(e + 0.5, ys[max(e - 1, 0)], marker="v", color=c, ms=6, ls="none")
    for g, ax in axes.items():
        if g != "scratch" and "baseline" in rows:
            ax.axhline(rows["baseline"][0]["map50_95"], color="gray", ls="--", lw=1)
        ax.set(title=titles[g], xlabel="epoch of the run (▼: a pruning step before the next epoch)",
               ylabel="val mAP50-95")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def label_points(ax: Any, points: list[tuple[float, float, str, dict]]) -> None:
    """Label every point, moving a label down or up in steps while it would overlap one already placed."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    w, h = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float]] = []
    for x, y, text, style in sorted(points, key=lambda p: -p[1]):
        for dy in (3, -10, 14, -21, 25, -32):
            at = (x / w, y / h + dy / 300)  # ~300 points of axis height
            if all(abs(at[0] - px) > 0.12 or abs(at[1] - py) > 0.035 for px, py in placed):
                break
        placed.append(at)
        line = {} if dy == 3 else {"arrowprops": {"arrowstyle": "-", "lw": 0.4, "color": "gray"}}  # moved: a leader
        ax.annotate(text, (x, y), xytext=(4, dy), textcoords="offset points", **style, **line)


def pareto(rows: dict[str, list[dict]], lat: dict[str, dict], path: Path) -> None:
    """Mean ONNX mAP50-95 (bars: std over seeds) vs batch-1 CPU latency at 640 px and vs ONNX file size."""
    from matplotlib import colormaps

    from ultralytics_slim.report import figure

    fig = figure(figsize=(15, 6.5))
    ax1, ax2 = fig.subplots(1, 2)
    named = [n for n in rows if n in lat]
    colors = colormaps["tab20"](np.linspace(0, 1, max(len(named), 2)))
    left, right = [], []
    for name, c in zip(named, colors):
        recs, t = rows[name], lat[name]["deploy"]
        y, s = mean_std([r["onnx_map50_95"] for r in recs])
        marker = "s" if recs[0]["int8"] else "o"
        hollow = {"facecolors": "none", "edgecolors": c}
        for ax, x, style in ((ax1, med(t["ort"]), {"color": c}), (ax1, med(t["ov"]), hollow),
                             (ax2, recs[0]["onnx_mb"], {"color": c})):  # fmt: skip
            ax.scatter(x, y, marker=marker, s=50, **style)
            if s is not None:
                ax.errorbar(x, y, yerr=s, color=c, lw=1, capsize=2)
        left += [
            (med(t["ort"]), y, name, {"fontsize": 7}),
            (med(t["ov"]), y, f"{name} (OV)", {"fontsize": 6, "color": "gray"}),
        ]
        right.append((recs[0]["onnx_mb"], y, name, {"fontsize": 7}))
    label_points(ax1, left)
    label_points(ax2, right)
    ax1.set(xlabel=f"batch-1 CPU latency at {DEPLOY} px, ms (filled: onnxruntime, hollow: OpenVINO; squares: INT8)",
            ylabel="mAP50-95 of the ONNX file (mean ± std over seeds)")  # fmt: skip
    ax2.set(xlabel="ONNX file size, MB", ylabel="mAP50-95 of the ONNX file (mean ± std over seeds)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle("ultralytics-slim on the hard synthetic detection set (2 CPU threads)")
    fig.savefig(path, dpi=120)


def lscpu() -> dict[str, str]:
    """`lscpu`'s fields (empty where it is missing)."""
    out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags."""
    return set(lscpu().get("Flags", "").split())


def machine() -> str:
    """CPU model, the ISA flags that matter for int8/f32 kernels, cores and installed package versions."""
    from importlib.metadata import PackageNotFoundError, version

    from ultralytics.utils import NUM_THREADS

    info, flags = lscpu(), cpu_flags()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    missing = [f for f in ("avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f not in flags]
    versions = [f"python {platform.python_version()}"]
    for dist in ("torch", "ultralytics", "ultralytics-slim", "torch-pruning", "nvidia-modelopt", "onnx", "onnxruntime",
                 "openvino"):  # fmt: skip
        try:
            versions.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            versions.append(f"{dist} -")
    return (
        f"- CPU: {info.get('Model name', platform.processor()).strip()}, {os.cpu_count()} cores visible; "
        f"flags: {', '.join(isa)} (no {', '.join(missing) or '-'}); Ultralytics trains and validates in torch on "
        f"{NUM_THREADS} thread(s) (its cpu_count - 1) unless `--threads` said otherwise (each record has its own)\n"
        f"- Versions: {', '.join(versions)}\n"
        f"- Plugin code: source hash {package_hash()[:10]} (every slim row's record is keyed by it: rows recorded with "
        "other code are not shown)\n"
        f"- Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (the machine is shared)"
    )


def command() -> str:
    """This invocation as anyone reruns it: the cache and output folders (paths of this machine) left out."""
    args, skip = [], False
    for a in sys.argv[1:]:
        if not skip and a.split("=")[0] not in {"--work", "--out"}:
            args.append(a)
        skip = a in {"--work", "--out"}
    return " ".join(["python benchmarks/run.py", *args])


def write_report(cfg: Config, specs: dict[str, Row], records: dict[str, dict], lat: dict[str, dict], failed: list[str],
                 out: Path, wall: float) -> None:  # fmt: skip
    """RESULTS.md (tables, convergence, noise, legend, setup), curves.png and pareto.png in `out`."""
    rows = by_row(specs, records)
    trained = sum(r["train_s"] for r in records.values() if "train_s" in r)
    text = [
        f"# ultralytics-slim benchmark ({cfg.mode})\n",
        "## Accuracy\n",
        accuracy_table(specs, rows),
        "\n## Claims\n",
        claims_table(rows),
        "\n## Size and speed\n",
        speed_table(rows, lat, cfg.data.imgsz),
        "\n## Baseline convergence\n",
        convergence(rows),
        "\n## Noise\n",
        noise(rows, records),
        "\n## Curves\n",
        "![val mAP50-95 per epoch](curves.png)\n\n![accuracy vs latency and size](pareto.png)\n",
        LEGEND.format(runs=cfg.runs, warmup=WARMUP, deploy=DEPLOY),
        "## Setup\n",
        f"- Command: `{command()}`",
        (
            f"- Date: {datetime.now().astimezone().isoformat(timespec='seconds')}; wall time of this invocation "
            f"{wall / 60:.1f} min; training time of all rows {trained / 60:.0f} min ({cfg.workers} side by side)"
        ),
        f"- Data: {cfg.data.describe()} (`benchmarks/data.py`)",
        (
            f"- Budget: E = {cfg.epochs} epochs from scratch, F = {cfg.finetune} epochs after the baseline; "
            f"claim rows with {cfg.seeds} seed(s)"
        ),
        machine(),
    ]
    if failed:
        text.insert(1, f"**Incomplete: no record of {', '.join(failed)} (failed or not run; see .work/logs).**\n")
    (out / "RESULTS.md").write_text("\n".join(text) + "\n")
    curves(specs, rows, out / "curves.png")
    if lat:
        pareto(rows, lat, out / "pareto.png")


# -------------------------------------------------------------------------------------------------------------- main
def make_config(args: argparse.Namespace) -> Config:
    """The preset of the chosen mode with the command line's overrides."""
    preset = dict(PRESETS[args.mode])
    for key in ("epochs", "finetune", "seeds", "runs"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    if args.rows:
        preset["rows"] = tuple(args.rows.split(","))
    if args.baseline_only:
        preset["rows"] = ("baseline+F", "teacher-v8s") if args.mode == "full" else ("baseline+F",)
        preset["seeds"] = 1  # the +F control of seed 0 says whether the baseline has converged
    sizes = {k: getattr(args, k) for k in ("n_train", "n_val", "imgsz") if getattr(args, k) is not None}
    preset["data"] = replace(preset["data"], **sizes)
    work = Path(args.work).resolve() if args.work else HERE / ".work"
    return Config(mode=args.mode, workers=args.workers, work=work, threads=args.threads, **preset)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="a slice (~10 min on 2 cores)")
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help="plumbing check (minutes)")
    p.set_defaults(mode="full")
    p.add_argument(
        "--baseline-only",
        action="store_true",
        help="only train (or find) the cached baseline(s) and the +F control that checks convergence",
    )
    p.add_argument("--rows", help="comma-separated rows to run (the rows they read run too); default: the preset's")
    p.add_argument("--seeds", type=int, help="seeds of the claim rows")
    p.add_argument("--epochs", type=int, help="override E, the baselines' epochs")
    p.add_argument("--finetune", type=int, help="override F, the epochs after the baseline")
    p.add_argument("--n-train", type=int, help="override the number of training images")
    p.add_argument("--n-val", type=int, help="override the number of val images")
    p.add_argument("--imgsz", type=int, help="override the image size of the set and the training")
    p.add_argument("--runs", type=int, help="timed latency runs per model, runtime and size")
    p.add_argument("--workers", type=int, default=2, help="trainings side by side (default 2)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads per training (default: Ultralytics' cpu_count - 1); "
        "e.g. 2 for one long training on 2 idle cores; recorded, not in the key",
    )
    p.add_argument("--work", help="cache folder (default benchmarks/.work)")
    p.add_argument("--no-train", action="store_true", help="report from the stored records only (missing rows listed)")
    p.add_argument("--out", help="where RESULTS.md and the plots go (default: benchmarks/ for the full matrix as "
                                 "preset, else <work>/reports/<mode>)")  # fmt: skip
    args = p.parse_args(argv)
    cfg = make_config(args)
    custom = any(
        getattr(args, k) is not None for k in ("rows", "seeds", "epochs", "finetune", "n_train", "n_val", "imgsz")
    )
    out = Path(args.out) if args.out else HERE if cfg.mode == "full" and not custom else cfg.work / "reports" / cfg.mode
    t0 = time.perf_counter()

    from ultralytics.utils import LOGGER

    data = str(make_hard_dataset(cfg.work / "datasets", cfg.data))
    specs = row_specs(cfg)
    jobs = plan(cfg, specs)
    LOGGER.info(f"Benchmark ({cfg.mode}): {len(jobs)} jobs: {', '.join(jobs)}")
    if args.no_train:
        records = stored(cfg, jobs)
        failed = [j for j in jobs if j not in records]
    else:
        records, failed = execute(cfg, data, jobs, specs)
    if not records:
        sys.exit(f"no records yet of {', '.join(failed)}: nothing to report")
    rows = by_row(specs, records)
    if args.baseline_only:
        print(convergence(rows))
        for name, recs in rows.items():
            print(f"{name}: {recs[0]['pt']}")
        if failed:
            sys.exit(f"failed: {', '.join(failed)}")
        return
    timed = {n: recs[0] for n, recs in rows.items() if recs[0]["seed"] == 0 and recs[0].get("onnx640")}
    lat = {}
    if timed:
        LOGGER.info(f"Benchmark: timing {len(timed)} models at {cfg.data.imgsz} and {DEPLOY} px ...")
        small, large = (
            time_all({n: timed_file(n, r, size, out / "timed") for n, r in timed.items()}, size, cfg.runs)
            for size in (cfg.data.imgsz, DEPLOY)
        )
        lat = {n: {"train": small[n], "deploy": large[n]} for n in timed}
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter() - t0
    write_report(cfg, specs, records, lat, failed, out, wall)
    print(f"{out / 'RESULTS.md'} ({wall / 60:.1f} min)")
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (RESULTS.md says so)")


if __name__ == "__main__":
    main()
