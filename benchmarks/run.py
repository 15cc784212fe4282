"""Benchmark of ultralytics-slim on the deterministic synthetic detection set: accuracy, size and CPU speed per recipe.

    python benchmarks/run.py [--quick] [--out benchmarks]

Trains a YOLOv8n baseline from yaml for E epochs (or takes `--baseline best.pt`), then fine-tunes it for F = E/2 epochs
with every variant (stock fine-tuning, sparsity + pruning with and without distillation, QAT, controls), measures every
row the same way in this one process (mAP from Ultralytics' validator, params/GFLOPs from Ultralytics' counters, ONNX
size, batch-1 latency in onnxruntime and OpenVINO interleaved across all models) and writes `<out>/RESULTS.md` and
`<out>/pareto.png`. Runs, data and exported files go to `<out>/.work/`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np
from torch import nn

WARMUP = 10  # untimed runs per model and backend before the interleaved timing rounds


# ---------------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Config:
    """Everything that decides the numbers: data set, training budget, rows and latency runs."""

    quick: bool
    epochs: int  # E: the baseline's budget; every variant fine-tunes for F = E // 2
    imgsz: int
    n_train: int
    n_val: int
    batch: int
    runs: int  # timed latency runs per model and backend
    ratios: tuple[int, ...]  # pruning targets, percent of the baseline's MACs kept
    teacher: bool  # also train YOLOv8s and distil it into the 50% model
    baseline_qat: bool
    work: Path
    baseline: Path | None = None

    @property
    def finetune(self) -> int:
        """F, the fine-tune budget of every variant."""
        return max(self.epochs // 2, 1)

    def describe(self) -> str:
        """One line for RESULTS.md."""
        return (
            f"synthetic detect set ({self.n_train} train / {self.n_val} val images, {self.imgsz}px, 3 classes, "
            f"seed 0); "
            f"E={self.epochs} baseline epochs, F={self.finetune} fine-tune epochs, batch {self.batch}, CPU"
        )


def make_config(args: argparse.Namespace) -> Config:
    """Quick (~13 min on 2 idle cores) or full (~70 min estimated) settings, with overrides for smoke tests."""
    if args.quick:
        base = {
            "epochs": 20,
            "imgsz": 128,
            "n_train": 150,
            "n_val": 40,
            "runs": 100,
            "ratios": (50,),
            "teacher": False,
            "baseline_qat": False,
        }
    else:
        base = {
            "epochs": 24,
            "imgsz": 128,
            "n_train": 300,
            "n_val": 80,
            "runs": 300,
            "ratios": (70, 50, 30),
            "teacher": True,
            "baseline_qat": True,
        }
    for key in ("epochs", "imgsz", "n_train", "n_val", "runs"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    work = Path(args.out).resolve() / ".work"
    return Config(
        quick=args.quick, batch=16, work=work, baseline=args.baseline and Path(args.baseline).resolve(), **base
    )


# ------------------------------------------------------------------------------------------------------------- rows
@dataclass
class Artifact:
    """What a row produced: a checkpoint (always), its INT8 ONNX file (INT8 rows), epochs trained and seconds spent."""

    pt: Path
    onnx: Path | None = None
    epochs: int = 0
    seconds: float = 0.0


@dataclass
class Row:
    """One line of the table: a name, what it is, and the function that produces its checkpoint or ONNX."""

    name: str
    what: str
    make: Callable[[Bench], Artifact]
    int8: bool = False


@dataclass
class Bench:
    """The state shared by the row producers: settings, data and the artifacts made so far."""

    cfg: Config
    data: str
    done: dict[str, Artifact] = field(default_factory=dict)

    def train(self, name: str, model: str | Path, epochs: int, slim: dict | None = None) -> Artifact:
        """A stock `YOLO(model).train(...)` (with `slim=` when given) into `.work/runs/<name>`; returns best.pt."""
        from ultralytics import YOLO

        run = self.cfg.work / "runs" / name
        shutil.rmtree(run, ignore_errors=True)
        args = {
            "data": self.data,
            "epochs": epochs,
            "imgsz": self.cfg.imgsz,
            "batch": self.cfg.batch,
            "workers": 0,
            "device": "cpu",
        }
        args["nbs"] = (
            self.cfg.batch
        )  # an optimizer step per batch: with the default nbs=64, 150 images give 2 per epoch
        args |= {
            "plots": False,
            "project": str(run.parent),
            "name": name,
            "exist_ok": True,
            "verbose": False,
            "seed": 0,
        }
        t = time.perf_counter()
        YOLO(str(model)).train(**args, **({"slim": slim} if slim is not None else {}))
        return Artifact(run / "weights" / "best.pt", epochs=epochs, seconds=time.perf_counter() - t)

    def fresh_dir(self, kind: str, name: str) -> Path:
        """A new, empty `.work/<kind>/<name>` for files made outside a training run."""
        d = self.cfg.work / kind / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d


def recipe(shipped: str, macs: float | None = None, **sections: dict) -> dict:
    """A shipped recipe as data, with the pruning target set to `macs` and sections updated/added by `sections`."""
    from ultralytics_slim import load_recipe

    r = load_recipe(shipped).model_dump(mode="json", exclude_none=True)
    if macs is not None:
        r["prune"]["target"] = {"macs": macs}
    for name, values in sections.items():
        r[name] = {**r.get(name, {}), **values}
    return r


def baseline(b: Bench) -> Artifact:
    """YOLOv8n from yaml for E epochs, or the given checkpoint."""
    if b.cfg.baseline:
        return Artifact(b.cfg.baseline)
    return b.train("baseline", "yolov8n.yaml", b.cfg.epochs)


def long_baseline(b: Bench) -> Artifact:
    """YOLOv8n from yaml for E + F epochs in one run: what scratch-50 is compared with (same schedule, full width)."""
    return b.train("baseline-long", "yolov8n.yaml", b.cfg.epochs + b.cfg.finetune)


def finetune(name: str, slim: dict | None = None) -> Callable[[Bench], Artifact]:
    """The baseline's best.pt trained F more epochs, stock or with a slim recipe."""
    return lambda b: b.train(name, b.done["baseline"].pt, b.cfg.finetune, slim)


def with_int8_export(make: Callable[[Bench], Artifact]) -> Callable[[Bench], Artifact]:
    """A QAT row: train, then write the INT8 Q/DQ ONNX with the plugin's `export_int8_onnx`."""

    def run(b: Bench) -> Artifact:
        from ultralytics_slim import export_int8_onnx

        art = make(b)
        t = time.perf_counter()
        art.onnx = export_int8_onnx(art.pt, imgsz=b.cfg.imgsz, simplify=False)
        art.seconds += time.perf_counter() - t
        return art

    return run


def ptq(b: Bench) -> Artifact:
    """Post-training INT8 of the baseline: Ultralytics' `export(format="onnx", quantize=8)` (ONNX Runtime static
    quantization), calibrated on the training split so that the scored val images stay unseen."""
    from ultralytics import YOLO

    pt = Path(shutil.copy(b.done["baseline"].pt, b.fresh_dir("rows", "baseline-ptq") / "model.pt"))
    t = time.perf_counter()
    onnx = YOLO(pt).export(format="onnx", quantize=8, data=b.data, split="train", imgsz=b.cfg.imgsz, simplify=False)
    return Artifact(pt, Path(onnx), seconds=time.perf_counter() - t)


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


def scratch(b: Bench) -> Artifact:
    """The slim-50 architecture, re-initialized and trained from scratch for E + F epochs."""
    from ultralytics import YOLO

    model = YOLO(b.done["slim-50"].pt)
    reinitialize(model.model)
    init = b.fresh_dir("rows", "scratch-50") / "init.pt"
    model.save(init)
    return b.train("scratch-50", init, b.cfg.epochs + b.cfg.finetune)


def unstructured(b: Bench) -> Artifact:
    """Global L1 unstructured pruning of all conv weights of the baseline down to slim-50's parameter count."""
    from torch.nn.utils import prune
    from ultralytics import YOLO
    from ultralytics.nn.modules import DFL
    from ultralytics.utils.torch_utils import get_num_params

    t = time.perf_counter()
    model = YOLO(b.done["baseline"].pt)
    target = get_num_params(load_float(b.done["slim-50"].pt))
    fixed = {m.conv for m in model.model.modules() if isinstance(m, DFL)}
    convs = [(m, "weight") for m in model.model.modules() if isinstance(m, nn.Conv2d) and m not in fixed]
    prune.global_unstructured(convs, prune.L1Unstructured, amount=get_num_params(model.model) - target)
    for m, name in convs:
        prune.remove(m, name)  # permanent: plain weight tensors with zeros
    pt = b.fresh_dir("rows", "unstructured-50") / "model.pt"
    model.save(pt)
    return Artifact(pt, seconds=time.perf_counter() - t)


def teacher(b: Bench) -> Artifact:
    """YOLOv8s from yaml for E epochs: the larger teacher of the same family."""
    return b.train("teacher-v8s", "yolov8s.yaml", b.cfg.epochs)


def phases(slim: dict, epochs: int) -> str:
    """The recipe's phases resolved for a run of `epochs`, in 1-based epochs as Ultralytics prints them."""
    from ultralytics_slim import load_recipe
    from ultralytics_slim.schedule import build_schedule

    schedule = build_schedule(load_recipe(slim), epochs)
    parts = []
    for name, w in schedule.windows.items():
        if name == "prune":
            parts.append("prune at " + ",".join(str(e + 1) for e in schedule.prune_epochs))
        else:
            parts.append(
                f"{'QAT' if name == 'quantize' else name} {w.start + 1}" + (f"-{w.end}" if w.end > w.start + 1 else "")
            )
    return ", ".join(parts)


def slim_row(cfg: Config, name: str, label: str, slim: dict, int8: bool = False) -> Row:
    """A row that fine-tunes the baseline for F epochs with a recipe (and exports INT8 ONNX for a QAT recipe)."""
    make = finetune(name, slim)
    return Row(name, f"{label} ({phases(slim, cfg.finetune)})", with_int8_export(make) if int8 else make, int8)


def rows(cfg: Config) -> list[Row]:
    """The matrix, in dependency order (a producer only reads rows listed before it)."""
    F = cfg.finetune
    out = [
        Row(
            "baseline",
            f"YOLOv8n from yaml, {cfg.epochs} epochs" if not cfg.baseline else f"given: {cfg.baseline}",
            baseline,
        ),
        Row("baseline+F", f"baseline + {F} stock fine-tune epochs", finetune("baseline+F")),
        Row(
            "baseline-long",
            f"YOLOv8n from yaml, {cfg.epochs + F} epochs in one run (reference for scratch-50)",
            long_baseline,
        ),
    ]
    for r in sorted(cfg.ratios, reverse=True):
        out.append(slim_row(cfg, f"slim-{r}", f"prune.yaml, {r}% MACs", recipe("prune.yaml", r / 100)))
        out.append(
            slim_row(
                cfg,
                f"slim-{r}+distill",
                f"prune_distill.yaml, teacher self, {r}% MACs",
                recipe("prune_distill.yaml", r / 100),
            )
        )
    qat = recipe("prune_distill_qat.yaml", 0.5)
    out.append(slim_row(cfg, "slim-50+qat", "prune_distill_qat.yaml, 50% MACs", qat, int8=True))
    if cfg.baseline_qat:
        out.append(slim_row(cfg, "baseline-qat", "qat.yaml", recipe("qat.yaml"), int8=True))
    oneshot = {"prune": {"target": {"macs": 0.5}, "importance": "l1", "steps": 1, "start": 0, "end": 1}}
    out += [
        Row(
            "baseline-ptq",
            "baseline, Ultralytics export quantize=8 (ORT static PTQ, train-split calibration)",
            ptq,
            int8=True,
        ),
        slim_row(cfg, "oneshot-50", "one-shot L1 pruning to 50% MACs, no sparsity", oneshot),
        Row(
            "unstructured-50",
            "global L1 unstructured on the baseline's convs to slim-50's param count, no fine-tune",
            unstructured,
        ),
        Row("scratch-50", f"slim-50 architecture re-initialized, {cfg.epochs + F} epochs from scratch", scratch),
    ]
    if cfg.teacher:
        v8s = cfg.work / "runs" / "teacher-v8s" / "weights" / "best.pt"  # where teacher() leaves it
        out += [
            Row("teacher-v8s", f"YOLOv8s from yaml, {cfg.epochs} epochs (teacher)", teacher),
            slim_row(
                cfg,
                "slim-50+distill-v8s",
                "prune_distill.yaml, teacher teacher-v8s, 50% MACs",
                recipe("prune_distill.yaml", 0.5, distill={"teacher": str(v8s)}),
            ),
        ]
    return out


# ------------------------------------------------------------------------------------------------------ measurement
@dataclass
class Measured:
    """Every figure of one row; latencies are filled in later by the interleaved timing."""

    params: int
    nonzero: int
    gflops: float
    onnx: Path
    onnx_mb: float
    gzip_mb: float
    map50_95: float  # the .pt checkpoint for float rows, the ONNX file for INT8 rows
    map50: float
    onnx_map50_95: float  # the ONNX file, batch 1, for every row: the same pipeline everywhere
    ort_ms: list[float] = field(default_factory=list)
    ov_ms: list[float] = field(default_factory=list)
    ov_int8_convs: str = ""


def load_float(pt: Path) -> nn.Module:
    """The float model of a checkpoint (ModelOpt quantizers removed from QAT checkpoints)."""
    from ultralytics.nn.tasks import load_checkpoint
    from ultralytics.utils.torch_utils import strip_qat

    model = load_checkpoint(pt)[0].float().eval()
    strip_qat(model)
    return model


def validate(b: Bench, name: str, model: Path, batch: int) -> tuple[float, float]:
    """mAP50-95 and mAP50 of a .pt or .onnx file from Ultralytics' validator on the val split."""
    from ultralytics import YOLO

    args = {"data": b.data, "imgsz": b.cfg.imgsz, "batch": batch, "plots": False, "device": "cpu", "verbose": False}
    metrics = YOLO(str(model), task="detect").val(**args, project=str(b.cfg.work / "val"), name=name, exist_ok=True)
    return float(metrics.box.map), float(metrics.box.map50)


def measure(b: Bench, row: Row, art: Artifact) -> Measured:
    """Counters from the float model, mAP from Ultralytics' validator (the ONNX file for INT8 rows), the ONNX file."""
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    model = load_float(art.pt)
    params, gflops = get_num_params(model), get_flops(model, b.cfg.imgsz)
    nonzero = sum(int(p.count_nonzero()) for p in model.parameters())
    onnx = art.onnx
    if onnx is None:  # float rows: a stock ONNX export of a copy of the checkpoint
        pt = Path(shutil.copy(art.pt, b.fresh_dir("export", row.name) / "model.pt"))
        onnx = Path(YOLO(pt).export(format="onnx", imgsz=b.cfg.imgsz, simplify=False))
    on_onnx = validate(b, row.name, onnx, 1)
    map50_95, map50 = on_onnx if row.int8 else validate(b, row.name, art.pt, b.cfg.batch)
    return Measured(
        params=params,
        nonzero=nonzero,
        gflops=gflops,
        onnx=onnx,
        onnx_mb=onnx.stat().st_size / 1e6,
        gzip_mb=len(gzip.compress(onnx.read_bytes(), 6)) / 1e6,
        map50_95=map50_95,
        map50=map50,
        onnx_map50_95=on_onnx[0],
    )


def ort_runner(onnx: Path, x: np.ndarray) -> Callable[[], Any]:
    """A batch-1 onnxruntime CPU session with 2 intra-op threads that do not spin between runs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads would otherwise spin after each run and steal the 2 cores from the next model timed.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def ov_compile(onnx: Path) -> Any:
    """The ONNX file compiled by OpenVINO for the CPU: 2 threads, one stream, latency mode, float ops kept in f32."""
    import openvino as ov

    config = {
        "INFERENCE_NUM_THREADS": 2,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    return ov.Core().compile_model(str(onnx), "CPU", config)


def ov_int8_convs(compiled: Any) -> str:
    """'k/n': convolutions OpenVINO executes in int8 out of all, read from its runtime (execution) graph."""
    info = [op.get_rt_info() for op in compiled.get_runtime_model().get_ops()]
    precisions = [rt["runtimePrecision"].astype(str) for rt in info if rt["layerType"].astype(str) == "Convolution"]
    int8 = sum(p.lower() in {"u8", "i8"} for p in precisions)
    return f"{int8}/{len(precisions)}"


def time_all(results: dict[str, Measured], imgsz: int, runs: int) -> None:
    """Median-ready batch-1 latencies of every model in both runtimes, interleaved: each round runs every model once,
    starting at a different model each round, so that the machine's noise is shared by all of them."""
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    timers: list[tuple[list[float], Callable[[], Any]]] = []
    for m in results.values():
        compiled = ov_compile(m.onnx)
        m.ov_int8_convs = ov_int8_convs(compiled)
        request = compiled.create_infer_request()
        timers += [(m.ort_ms, ort_runner(m.onnx, x)), (m.ov_ms, lambda r=request: r.infer({0: x}))]
    for _, run in timers:
        for _ in range(WARMUP):
            run()
    for i in range(runs):
        for times, run in timers[i % len(timers) :] + timers[: i % len(timers)]:
            t = time.perf_counter()
            run()
            times.append((time.perf_counter() - t) * 1e3)


# ----------------------------------------------------------------------------------------------------------- report
def machine() -> str:
    """CPU model, the ISA flags that matter for int8/f32 kernels, cores and installed package versions."""
    from importlib.metadata import PackageNotFoundError, version

    from ultralytics.utils import NUM_THREADS

    lscpu = subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = set(info.get("Flags", "").split())
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    missing = [f for f in ("avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f not in flags]
    versions = [f"python {platform.python_version()}"]
    for dist in (
        "torch",
        "ultralytics",
        "ultralytics-slim",
        "torch-pruning",
        "nvidia-modelopt",
        "onnx",
        "onnxruntime",
        "openvino",
    ):
        try:
            versions.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            versions.append(f"{dist} -")
    return (
        f"- CPU: {info.get('Model name', platform.processor()).strip()}, {os.cpu_count()} cores visible; "
        f"flags: {', '.join(isa)} (no {', '.join(missing) or '-'}); Ultralytics trains and validates in torch on "
        f"{NUM_THREADS} thread(s) (its cpu_count - 1)\n"
        f"- Versions: {', '.join(versions)}\n"
        f"- Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (the machine is shared)"
    )


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def table(rows_: list[Row], arts: dict[str, Artifact], res: dict[str, Measured]) -> str:
    """One Markdown table; ratios and deltas against the baseline (and baseline+F) measured in this run."""
    base, ref = res["baseline"], res.get("baseline+F")
    head = [
        "row", "what", "epochs", "train s", "params M", "GFLOPs", "MACs x", "ONNX MB", "size x", "gzip MB",
        "mAP50-95", "mAP50", "ONNX mAP50-95", "d base", "d base+F", "ORT ms", "ORT x", "OV ms", "OV x", "OV int8 convs",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows_:
        m, a = res[row.name], arts[row.name]
        params = f"{m.params / 1e6:.3f}" + (f" ({m.nonzero / 1e6:.3f} nonzero)" if m.nonzero < 0.95 * m.params else "")
        cells = [
            f"**{row.name}**" + (" (INT8)" if row.int8 else ""),
            row.what,
            str(a.epochs),
            f"{a.seconds:.0f}",
            params,
            f"{m.gflops:.3f}",
            f"{m.gflops / base.gflops:.2f}",
            f"{m.onnx_mb:.2f}",
            f"{m.onnx_mb / base.onnx_mb:.2f}",
            f"{m.gzip_mb:.2f}",
            f"{m.map50_95:.3f}",
            f"{m.map50:.3f}",
            f"{m.onnx_map50_95:.3f}",
            f"{m.map50_95 - base.map50_95:+.3f}",
            f"{m.map50_95 - ref.map50_95:+.3f}" if ref else "",
            f"{med(m.ort_ms):.2f} ({np.percentile(m.ort_ms, 25):.2f}-{np.percentile(m.ort_ms, 75):.2f})",
            f"{med(base.ort_ms) / med(m.ort_ms):.2f}",
            f"{med(m.ov_ms):.2f} ({np.percentile(m.ov_ms, 25):.2f}-{np.percentile(m.ov_ms, 75):.2f})",
            f"{med(base.ov_ms) / med(m.ov_ms):.2f}",
            m.ov_int8_convs,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


LEGEND = """\
Columns: `epochs`/`train s` = epochs trained and wall seconds to produce the row from the baseline (training, pruning,
QAT export or PTQ calibration; the baseline row: its own training). `params M` = parameters stored (nonzero in
brackets where much lower), `GFLOPs` = `ultralytics.utils.torch_utils.get_flops` at the benchmark image size,
`MACs x` = GFLOPs / baseline GFLOPs. `ONNX MB` = file size of the batch-1 ONNX export (`simplify=False`), `gzip MB` =
that file gzip-compressed (what zeros are worth in storage). `mAP50-95`/`mAP50` = Ultralytics `val` on the val split:
the `.pt` checkpoint (batch 16) for float rows, the ONNX file (onnxruntime, batch 1) for INT8 rows; `ONNX mAP50-95` =
the ONNX file of every row validated the same way (read INT8 effects on this column: the .pt and ONNX paths of one
float model differ by up to ~0.01 on this small val set). `d base`/`d base+F` = mAP50-95 minus that of the baseline /
of baseline+F (the fair reference: the same total epochs). Latency = batch 1, median
(25th-75th percentile) in ms of {runs} timed runs per model after {warmup} warm-up runs, interleaved round-robin across
all models and both runtimes; onnxruntime CPU EP with 2 intra-op threads; OpenVINO CPU with 2 threads, 1 stream,
f32 inference precision (int8 where the graph has Q/DQ). `ORT x`/`OV x` = baseline latency / row latency in the same
runtime. `OV int8 convs` = convolutions that OpenVINO's execution graph runs in u8/i8 precision.

Training: every run is a stock `YOLO(...).train(data, epochs, imgsz, batch=16, nbs=16, workers=0, seed=0)` (the slim
rows add `slim=`); `nbs=16` gives an optimizer step per batch (the default nbs=64 would give 2 per epoch on this small
set). Every variant starts from the baseline's best.pt; best.pt of each run is measured.
"""


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


def pareto(rows_: list[Row], res: dict[str, Measured], path: Path) -> None:
    """ONNX mAP50-95 vs batch-1 CPU latency (onnxruntime filled, OpenVINO hollow) and vs ONNX file size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6.5))
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(rows_), 2)))
    left, right = [], []
    for row, c in zip(rows_, colors):
        m = res[row.name]
        marker, y = ("s" if row.int8 else "o"), m.onnx_map50_95
        ax1.scatter(med(m.ort_ms), y, color=c, marker=marker, s=50)
        ax1.scatter(med(m.ov_ms), y, facecolors="none", edgecolors=c, marker=marker, s=50)
        ax2.scatter(m.onnx_mb, y, color=c, marker=marker, s=50)
        left += [
            (med(m.ort_ms), y, row.name, {"fontsize": 7}),
            (med(m.ov_ms), y, f"{row.name} (OV)", {"fontsize": 6, "color": "gray"}),
        ]
        right.append((m.onnx_mb, y, row.name, {"fontsize": 7}))
    label_points(ax1, left)
    label_points(ax2, right)
    ax1.set(
        xlabel="batch-1 CPU latency, ms (filled: onnxruntime, hollow: OpenVINO; squares: INT8)",
        ylabel="mAP50-95 of the ONNX file",
    )
    ax2.set(xlabel="ONNX file size, MB", ylabel="mAP50-95 of the ONNX file")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle("ultralytics-slim on the synthetic detection set (2 CPU threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(
    cfg: Config, rows_: list[Row], arts: dict[str, Artifact], res: dict[str, Measured], out: Path, wall: float
) -> str:
    """RESULTS.md: the table, the legend, the setup and the machine."""
    md = table(rows_, arts, res)
    text = (
        f"# ultralytics-slim benchmark ({'quick' if cfg.quick else 'full'})\n\n"
        f"{md}\n\n{LEGEND.format(runs=cfg.runs, warmup=WARMUP)}\n"
        f"## Setup\n\n"
        f"- Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`\n"
        f"- Date: {datetime.now().astimezone().isoformat(timespec='seconds')}; wall time {wall / 60:.1f} min\n"
        f"- Data/budget: {cfg.describe()}\n"
        f"- Latency: {cfg.runs} timed runs per model and runtime, {WARMUP} warm-up runs, batch 1, "
        f"{cfg.imgsz}x{cfg.imgsz}\n"
        f"{machine()}\n"
    )
    (out / "RESULTS.md").write_text(text)
    return md


# -------------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the ~13 min matrix (50%% only, no teacher, no baseline-qat)")
    p.add_argument("--out", default=str(Path(__file__).parent), help="where RESULTS.md and pareto.png go")
    p.add_argument("--baseline", help="a trained YOLOv8n best.pt on this set, instead of training one")
    p.add_argument("--epochs", type=int, help="override E")
    p.add_argument("--imgsz", type=int, help="override the image size")
    p.add_argument("--n-train", type=int, help="override the number of training images")
    p.add_argument("--n-val", type=int, help="override the number of val images")
    p.add_argument("--runs", type=int, help="override the number of timed latency runs (at least 50 recommended)")
    args = p.parse_args(argv)
    cfg = make_config(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    from ultralytics_slim.data import make_dataset

    data = str(
        make_dataset(cfg.work / "datasets" / "shapes", "detect", n_train=cfg.n_train, n_val=cfg.n_val, imgsz=cfg.imgsz)
    )
    bench = Bench(cfg, data)
    matrix = rows(cfg)
    for row in matrix:
        print(f"\n===== {row.name}: {row.what}", flush=True)
        bench.done[row.name] = row.make(bench)
    results = {row.name: measure(bench, row, bench.done[row.name]) for row in matrix}
    time_all(results, cfg.imgsz, cfg.runs)
    wall = time.perf_counter() - t0
    md = write_results(cfg, matrix, bench.done, results, out, wall)
    pareto(matrix, results, out / "pareto.png")
    (cfg.work / "results.json").write_text(
        json.dumps({k: {**vars(v), "onnx": str(v.onnx)} for k, v in results.items()}, indent=1)
    )
    print(f"\n{md}\n\nwall time {wall / 60:.1f} min; wrote {out / 'RESULTS.md'} and {out / 'pareto.png'}")


if __name__ == "__main__":
    main()
