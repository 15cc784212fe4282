"""Deployed speed of pruned models: which `round_to` the CPU runtimes like, and where a latency target lands.

    python benchmarks/latency.py                          # YOLOv8n at 640 px, 100 runs, 2 threads, both runtimes
    python benchmarks/latency.py --model yolo11n.yaml --latency 0.6 --runtimes openvino
    python benchmarks/latency.py --runs 3 --imgsz 160     # the plumbing only (~3-5 min, mostly pruning)
    python benchmarks/latency.py --model .work/runs/baseline@0-<id>/train/weights/best.pt --no-target --profile \
        --compare .work/runs/slim-50@0-<id>/train/weights/best.pt   # trained checkpoints: where the time goes

Latency does not depend on trained weights, so the models are untrained, built from `--model` (seeded), unless
`--model` is a checkpoint; `--compare` adds checkpoints pruned from it (e.g. the benchmark's rows) to every table.
1. round_to study: the start model pruned one-shot to `--macs` of its MACs with each of `--round-to` (`prune_to`,
   importance `--importance`, seed 0).
2. latency target: for each runtime, what `prune: {target: {latency: r, runtime: ...}, steps: n}` does without the
   fine-tuning between steps: the start latency measured once, then per step the plugin's own search
   (`techniques.prune.macs_for_latency`, each candidate timed interleaved with the start model as in training) and
   `prune_to` to the MACs target it returns. Every measurement of the search is recorded.
Then every model (start, round_to rows, latency-target results) is exported to ONNX at `--imgsz` and timed batch 1 in
each runtime with `latency.runner`, all models of a runtime interleaved in one `interleaved_ms` call, so the measured
ratio of a latency-target model is against the start model timed in the same rounds. Beside the MACs ratio, each row
has the MACs its convolutions cost with channels padded to the runtimes' block (16 channels on AVX-512 CPUs, 8 on
AVX2: both runtimes compute convolutions in such blocks), and `--profile` adds the time per op type (onnxruntime's
profiler, OpenVINO's performance counters): what does not shrink with channels. Models are exported as the plugin
exports them (`deploy.fast_dfl`); `--stock-dfl` times each one a second time, exported as `yolo export` writes it, in
the same rounds, against the start model exported that way. The markdown tables go to stdout and
`--out/latency.md`, the raw times to `--out/latency.json`.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import statistics
import time
from copy import deepcopy
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np
from run import WARMUP, machine
from torch import nn

HERE = Path(__file__).resolve().parent
RUNTIMES = ("onnxruntime", "openvino")
SHORT = {"onnxruntime": "ORT", "openvino": "OV"}
TOLERANCE = 0.10  # the criterion: within 10% of the target ratio
STOCK = " (stock DFL)"  # the name suffix of a model exported as `yolo export` writes it


def build(cfg: str, seed: int = 0) -> nn.Module:
    """The model of a checkpoint, or an untrained detection model from a yaml (12 classes, seeded weights)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    if cfg.endswith(".pt"):
        return load_checkpoint(cfg, device="cpu")[0].float().eval()
    torch.manual_seed(seed)
    return DetectionModel(cfg, nc=12, verbose=False).eval()


def blocked_macs(model: nn.Module, imgsz: int, size: int) -> float:
    """Convolution MACs with channels rounded up to `size`: what a blocked (NCHWc) kernel computes, so pruning a
    64-channel layer to 56 saves MACs but no kernel time where blocks are 16 wide. The package's MACs count with
    every conv's widths on that grid."""
    from ultralytics_slim.pruning import _Layer, _layer_areas, _pristine

    with _pristine(model):
        areas = _layer_areas(model, imgsz)
    total = 0.0
    for m, area in areas.items():
        if isinstance(m, nn.Conv2d):
            layer = _Layer.of(m, area)
            layer.cin, layer.cout = (math.ceil(c / size) * size for c in (layer.cin, layer.cout))
            total += layer.macs()
    return total


def round_to_study(start: nn.Module, args: argparse.Namespace) -> dict[str, nn.Module]:
    """The start model pruned one-shot to `--macs` of its MACs, once per `--round-to`."""
    from ultralytics_slim.pruning import count_macs_params, prune_to

    macs = count_macs_params(start)[0]
    out = {}
    for r in args.round_to:
        model = deepcopy(start)
        prune_to(model, "macs", args.macs * macs, importance=args.importance, round_to=r, seed=0)
        out[f"round_to {r}"] = model
    return out


def latency_target(start: nn.Module, runtime: str, args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """What the prune technique does for `target: {latency: --latency, runtime: runtime}`, minus the fine-tuning."""
    from ultralytics_slim.latency import RelativeLatency
    from ultralytics_slim.pruning import count_macs_params, prune_to
    from ultralytics_slim.techniques.prune import macs_for_latency

    macs0 = count_macs_params(start)[0]
    kwargs = {"round_to": args.target_round_to, "min_channels": args.min_channels}
    trail: list[dict[str, float]] = []
    relative = RelativeLatency(start, runtime, args.imgsz, threads=args.threads)  # as the technique's setup()

    def measure(m: nn.Module) -> tuple[float, float]:
        ratio, ms = relative(m)
        trail.append({"macs": count_macs_params(m)[0] / macs0, "ratio": ratio, "ms": ms})
        return ratio, ms

    model = deepcopy(start)
    base = measure(model)[1]
    steps = []
    for i in range(args.steps):
        goal = args.latency ** ((i + 1) / args.steps)
        first = len(trail)
        target, ratio, ms = macs_for_latency(model, goal, measure, importance=args.importance, seed=i, **kwargs)
        prune_to(model, "macs", target, importance=args.importance, seed=i, **kwargs)
        steps.append({"goal": goal, "search": trail[first:], "ratio": ratio, "ms": ms,
                      "macs": count_macs_params(model)[0] / macs0})  # fmt: skip
    return model, {"start_ms": base, "steps": steps}


def time_models(
    models: dict[str, nn.Module], folder: Path, args: argparse.Namespace
) -> tuple[dict[str, dict[str, list[float]]], dict[str, Path]]:
    """Batch-1 times (ms) of every model in every runtime, all models of a runtime interleaved in one call; the ONNX
    files timed."""
    from ultralytics_slim.benchmark import interleaved_ms
    from ultralytics_slim.latency import export_onnx, runner

    folder.mkdir(parents=True, exist_ok=True)
    files = {
        n: export_onnx(m, args.imgsz, folder / f"{n.replace(' ', '-')}.onnx", stock_dfl=n.endswith(STOCK))
        for n, m in models.items()
    }
    times: dict[str, dict[str, list[float]]] = {n: {} for n in models}
    for rt in args.runtimes:
        fns = [runner(f, rt, args.imgsz, args.threads) for f in files.values()]
        for name, t in zip(files, interleaved_ms(fns, args.runs, WARMUP)):
            times[name][rt] = t
    return times, files


def op_times(onnx: Path, runtime: str, args: argparse.Namespace) -> dict[str, float]:
    """Mean ms per run spent in each op type over `--runs` runs after the warm-up: onnxruntime's profiler, or OpenVINO's
    performance counters (which name a fused node by its main op: Convolution includes its SiLU)."""
    import numpy as np

    from ultralytics_slim.latency import ov_compile

    x = np.random.default_rng(0).random((1, 3, args.imgsz, args.imgsz), dtype=np.float32)
    times: collections.Counter[str] = collections.Counter()
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as latency.runner times it
        opts.enable_profiling, opts.profile_file_prefix = True, str(onnx.with_suffix(""))
        session = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
        for _ in range(WARMUP + args.runs):
            session.run(None, {session.get_inputs()[0].name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
        runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= runs[WARMUP]:
                times[e["args"]["op_name"]] += e["dur"] / 1e3
    else:
        import openvino as ov

        timed = ov_compile(onnx, args.threads)  # the settings of the timing, with the counters on
        keys = ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT")

        compiled = ov.Core().compile_model(
            str(onnx), "CPU", {k: timed.get_property(k) for k in keys} | {"PERF_COUNT": True}
        )
        request = compiled.create_infer_request()
        for i in range(WARMUP + args.runs):
            request.infer({0: x})
            if i >= WARMUP:
                for p in request.get_profiling_info():
                    times[p.node_type] += p.real_time.total_seconds() * 1e3
    return {op: t / args.runs for op, t in times.most_common()}


def profile_rows(profiles: dict[str, dict[str, dict[str, float]]], runtime: str, least: float = 0.1) -> str:
    """Per op type (at least `least` ms in some model): ms of the start model, then of each model with start / model."""
    start, *others = profiles
    ops = {op for p in profiles.values() for op, t in p[runtime].items() if t >= least}
    ops = sorted(ops, key=lambda op: -profiles[start][runtime].get(op, 0.0))
    lines = [f"| op | {start} ms | " + " | ".join(f"{n} ms (speed-up)" for n in others) + " |",
             "|" + "---|" * (len(profiles) + 1)]  # fmt: skip
    for op in [*ops, "all"]:
        ms = {n: sum(p[runtime].values()) if op == "all" else p[runtime].get(op, 0.0) for n, p in profiles.items()}
        cells = [f"{ms[n]:.2f} ({ms[start] / ms[n]:.2f}x)" if ms[n] else "-" for n in others]
        lines.append(f"| {op} | {ms[start]:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checkpoint_name(pt: str) -> str:
    """A checkpoint's row name: its run folder for `<run>/train/weights/best.pt` (the benchmark's layout), else the file."""
    path = Path(pt)
    return path.parents[2].name if path.parent.name == "weights" and len(path.parents) > 2 else path.name


def ms_cell(xs: list[float]) -> str:
    """Median (25th-75th percentile)."""
    q1, q3 = np.percentile(xs, [25, 75])
    return f"{statistics.median(xs):.2f} ({q1:.2f}-{q3:.2f})"


def speed_rows(rows: dict[str, dict[str, Any]], runtimes: list[str]) -> str:
    """Every model against the start model: MACs (as counted, and in kernel blocks), params, ms, speed-up and speed-up per
    MACs reduction per runtime."""
    head = ["model", "MACs ratio", "blocked MACs ratio", "params"]
    for rt in runtimes:
        head += [f"{SHORT[rt]} ms", f"{SHORT[rt]} speed-up", f"{SHORT[rt]} speed-up / MACs reduction"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = [name, f"{row['macs']:.3f}", f"{row['blocked']:.3f}", f"{row['params'] / 1e6:.3f}M"]
        for rt in runtimes:
            cells += [ms_cell(row["times"][rt]), f"{row['speedup'][rt]:.2f}x", f"{row['per_macs'][rt]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_rows(targets: dict[str, dict[str, Any]], r: float) -> str:
    """Per runtime: what the search measured, and the result re-measured interleaved with the start model."""
    head = ["runtime", "candidates timed", "MACs ratio", "search: start ms", "search: result ms", "search ratio",
            "re-measured ratio", f"within {TOLERANCE:.0%} of {r}"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rt, t in targets.items():
        last = t["steps"][-1]
        cells = [rt, str(sum(len(s["search"]) for s in t["steps"])), f"{last['macs']:.3f}", f"{t['start_ms']:.2f}",
                 f"{last['ms']:.2f}", f"{last['ratio']:.3f}", f"{t['measured_ratio']:.3f}",
                 "yes" if t["within"] else "no"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both studies, print and write the tables and the raw numbers; returns what went into the JSON."""
    from ultralytics_slim.recipe import PruneConfig, cpu_block

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="yolov8n.yaml", help="model yaml or checkpoint (default yolov8n.yaml)")
    p.add_argument("--compare", default="", help="comma-separated checkpoints pruned from --model, timed beside it")
    p.add_argument("--no-target", action="store_true", help="skip the latency-target check")
    p.add_argument("--profile", action="store_true", help="add the time per op type of every model and runtime")
    p.add_argument("--stock-dfl", action="store_true", help="time every model exported as `yolo export` writes it too")
    p.add_argument(
        "--block", type=int, default=cpu_block(), help="channels per kernel block (default: 16 on AVX-512, else 8)"
    )
    p.add_argument("--imgsz", type=int, default=640, help="deployment image size (default 640)")
    p.add_argument("--runs", type=int, default=100, help="timed interleaved runs per model and runtime (default 100)")
    p.add_argument("--threads", type=int, default=2, help="runtime threads (default 2)")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated (default both)")
    p.add_argument("--macs", type=float, default=0.5, help="kept MACs of the round_to study (default 0.5)")
    p.add_argument("--round-to", default="8,16,32", help="round_to values of the study (default 8,16,32)")
    p.add_argument("--importance", default="l2", help="channel ranking of every pruning (default l2)")
    p.add_argument("--latency", type=float, default=0.5, help="kept latency of the target check (default 0.5)")
    p.add_argument("--steps", type=int, default=1, help="pruning steps towards the latency target (default 1)")
    cfg = PruneConfig.model_fields
    p.add_argument(
        "--target-round-to",
        default=cfg["round_to"].default,
        help="round_to of the target check (default: the recipe's)",
    )
    p.add_argument(
        "--min-channels", type=int, default=cfg["min_channels"].default, help="min_channels of every pruning"
    )
    p.add_argument("--out", type=Path, help="output folder (default benchmarks/.work/latency/<model>-<imgsz>)")
    args = p.parse_args(argv)
    args.round_to = [int(r) for r in args.round_to.split(",")]
    grid = args.target_round_to  # resolved as a recipe would resolve it ('auto': this CPU's block for a latency target)
    args.target_round_to = PruneConfig(
        target={"latency": args.latency}, round_to=int(grid) if grid.isdigit() else grid
    ).round_to
    args.runtimes = args.runtimes.split(",")
    out = args.out or HERE / ".work" / "latency" / f"{Path(args.model).stem}-{args.imgsz}"

    from ultralytics.utils import LOGGER

    from ultralytics_slim.latency import require_runtime
    from ultralytics_slim.monitor import channel_counts
    from ultralytics_slim.pruning import count_macs_params

    for rt in args.runtimes:
        require_runtime(rt)
    t0, load_start = time.perf_counter(), os.getloadavg()
    start = build(args.model)
    models = {"start": start}
    LOGGER.info(f"Latency benchmark: pruning {args.model} to {args.macs} of its MACs with round_to {args.round_to} ...")
    models |= round_to_study(start, args)
    models |= {checkpoint_name(pt): build(pt) for pt in filter(None, args.compare.split(","))}
    targets = {}
    for rt in [] if args.no_target else args.runtimes:
        LOGGER.info(f"Latency benchmark: searching latency {args.latency} in {rt} at {args.imgsz} px ...")
        models[f"latency {args.latency} @ {rt}"], targets[rt] = latency_target(start, rt, args)
    models |= {n + STOCK: m for n, m in models.items()} if args.stock_dfl else {}
    LOGGER.info(f"Latency benchmark: timing {len(models)} models, {args.runs} interleaved runs per runtime ...")
    times, files = time_models(models, out / "onnx", args)
    profiles = (
        {n: {rt: op_times(f, rt, args) for rt in args.runtimes} for n, f in files.items()} if args.profile else {}
    )

    macs0, widths0 = count_macs_params(start)[0], channel_counts(start)
    blocked0 = blocked_macs(start, args.imgsz, args.block)
    rows: dict[str, dict[str, Any]] = {}
    for name, m in models.items():
        macs, params = count_macs_params(m)
        ratio = macs / macs0
        base = "start" + STOCK if name.endswith(STOCK) else "start"  # each export against the start model's
        speedup = {rt: statistics.median(times[base][rt]) / statistics.median(times[name][rt]) for rt in args.runtimes}
        rows[name] = {
            "macs": ratio,
            "blocked": blocked_macs(m, args.imgsz, args.block) / blocked0,
            "params": params,
            "times": times[name],
            "speedup": speedup,
            "per_macs": {rt: s * ratio for rt, s in speedup.items()},  # speed-up / (1 / MACs ratio)
            "widths": {n: c for n, c in channel_counts(m).items() if c != widths0[n]},  # pruned layers' output channels
        }
    for rt, t in targets.items():
        t["measured_ratio"] = 1 / rows[f"latency {args.latency} @ {rt}"]["speedup"][rt]
        t["within"] = abs(t["measured_ratio"] - args.latency) <= TOLERANCE * args.latency
    load_end = os.getloadavg()
    wall = time.perf_counter() - t0

    settings, info = {k: v for k, v in vars(args).items() if k != "out"}, machine()
    text = (
        f"# Deployed latency of pruned {args.model}\n\n"
        f"- Settings: {settings}\n"
        f"- Batch 1, {args.imgsz} px, {args.threads} threads; median (25th-75th percentile) of {args.runs} timed runs "
        f"after {WARMUP} warm-up runs, all models of a runtime interleaved, FP32 (OpenVINO held to f32); "
        + ("the checkpoints' weights\n" if args.model.endswith(".pt") else "untrained weights (seed 0)\n")
        + f"- Load average at the start: {', '.join(f'{x:.1f}' for x in load_start)}; wall time {wall / 60:.1f} min\n"
        f"{info}\n\n"
        f"## Speed-up against the start model (target: speed-up / MACs reduction >= 0.85)\n\n"
        f"Blocked MACs: every convolution's channels rounded up to {args.block} (the kernels' block on this CPU)."
        + (
            f" Rows '{STOCK.strip()}': exported as `yolo export` writes them, against 'start{STOCK}'."
            if args.stock_dfl
            else ""
        )
        + "\n\n"
        f"{speed_rows(rows, args.runtimes)}\n"
    )
    if targets:
        text += (
            f"\n## Latency target {args.latency} ({args.steps} step(s), round_to {args.target_round_to}; "
            f"target: re-measured ratio within {TOLERANCE:.0%} of {args.latency})\n\n"
            f"{target_rows(targets, args.latency)}\n"
        )
    for rt in args.runtimes if profiles else []:
        text += f"\n## Where the time goes in {rt} (ms per run by op type, mean of {args.runs} runs)\n\n"
        text += profile_rows(profiles, rt) + "\n"
    record = {
        "settings": settings,
        "warmup": WARMUP,
        "machine": info,
        "load_start": load_start,
        "load_end": load_end,
        "seconds": wall,
        "models": rows,
        "targets": targets,
        "profiles": profiles,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.md").write_text(text)
    (out / "latency.json").write_text(json.dumps(record, indent=1))
    print(text)
    print(f"{out / 'latency.json'}")
    return record


if __name__ == "__main__":
    main()
