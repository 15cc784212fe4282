"""The before/after report every slim run ends with: what was gained and what was lost, side by side.

Built on rank 0 at `on_train_end` from what the run left on disk (`weights/start.pt`, `weights/best.pt`,
`results.csv`) and the techniques' recorded state, so it can be rebuilt from a finished run with `build_report`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import LOGGER, colorstr
from ultralytics.utils.torch_utils import get_flops, get_num_params

from ultralytics_slim import monitor, pruning
from ultralytics_slim.benchmark import torch_latency_ms

PREFIX = colorstr("Slim report: ")
GAMMA_BINS = np.logspace(-6, 1, 36)  # |gamma| histogram edges, shared by every epoch of every run


def gamma_histogram(model: torch.nn.Module) -> list[int]:
    """Counts of all BatchNorm |gamma| in GAMMA_BINS (values below the first edge land in the first bin)."""
    gammas = list(monitor.batchnorm_gammas(model).values())
    g = torch.cat(gammas).numpy() if gammas else np.zeros(0)
    return np.histogram(np.clip(g, GAMMA_BINS[0], GAMMA_BINS[-1]), GAMMA_BINS)[0].tolist()


def _metric(metrics: dict[str, float], name: str) -> float:
    """mAP50-95 / mAP50 of any task (box, mask, pose, obb) or top-1/top-5 accuracy for classification."""
    keys = {"mAP50-95": ("mAP50-95", "top1"), "mAP50": ("mAP50(", "top5")}[name]
    return next((float(v) for k, v in metrics.items() if any(x in k for x in keys)), float("nan"))


def _row(name: str, path: Path, metrics: dict[str, float], imgsz: int, latency_runs: int) -> dict[str, Any]:
    """One model's figures: accuracy, size, compute and (when asked for) CPU latency."""
    model = load_checkpoint(path)[0].float().eval()
    row = {
        "model": name,
        "mAP50-95": _metric(metrics, "mAP50-95"),
        "mAP50": _metric(metrics, "mAP50"),
        "params": get_num_params(model),
        "GFLOPs": round(get_flops(model), 3),
        "size_MB": round(path.stat().st_size / 1e6, 3),
    }
    if latency_runs:
        row["latency_ms"] = round(torch_latency_ms(model, imgsz, runs=latency_runs), 2)
    return row


def _plot(run: Path, state: dict[str, Any], final: torch.nn.Module) -> list[Path]:
    """Channels per layer before/after, |gamma| over the epochs, and mAP/params/GFLOPs with pruning steps marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    prune = state.get("prune") or {}
    if prune.get("start_channels"):
        before, after = prune["start_channels"], pruning.channel_counts(final)
        names = [n for n in before if n in after]
        fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.12), 4))
        ax.bar(range(len(names)), [before[n] for n in names], color="lightgray", label="before")
        ax.bar(range(len(names)), [after[n] for n in names], color="tab:blue", label="after")
        ax.set(xlabel="layer (network order)", ylabel="output channels", title="Channels per layer")
        ax.legend()
        written.append(run / "report_channels.png")
        fig.savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    hist = state.get("gamma_hist") or []
    if hist:
        fig, ax = plt.subplots(figsize=(7, 4))
        h = np.asarray(hist, dtype=float)
        h = h / h.sum(1, keepdims=True).clip(min=1)
        ax.imshow(h.T, aspect="auto", origin="lower", cmap="viridis", extent=(0.5, len(h) + 0.5, -6, 1))
        ax.set(xlabel="epoch", ylabel="log10 |gamma|", title="BatchNorm |gamma| distribution over the run")
        written.append(run / "report_gamma.png")
        fig.savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    results = run / "results.csv"
    if results.exists():
        with open(results) as f:
            table = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]
        fitness = next((k for k in table[0] if "mAP50-95" in k or "top1" in k), None)
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
        for ax, key, label in zip(axes, (fitness, "slim/params", "slim/GFLOPs"), ("mAP50-95", "params", "GFLOPs")):
            if key in table[0]:
                ax.plot([r["epoch"] for r in table], [r[key] for r in table], marker=".")
            for step in prune.get("history", []):
                ax.axvline(step["epoch"] + 1, color="tab:red", ls="--", lw=0.8)
            ax.set(xlabel="epoch", title=label)
        fig.suptitle("Across the run (red: pruning steps)")
        written.append(run / "report_curves.png")
        fig.savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return written


def build_report(
    run: str | Path,
    data: str,
    imgsz: int,
    state: dict[str, Any],
    final_metrics: dict[str, float] | None = None,
    latency_runs: int = 0,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Write report.md, report.csv and plots into a run directory and return the table rows.

    Args:
        run (str | Path): The run directory (`save_dir`).
        data (str): The data set to validate the starting model on.
        imgsz (int): Validation and latency image size.
        state (dict): `args.slim["state"]` of the run (techniques' records, |gamma| histograms).
        final_metrics (dict, optional): Validation metrics of best.pt, if the trainer already computed them.
        latency_runs (int): Timed forward passes for CPU latency; 0 skips latency.
        device (str, optional): Device for validation, as in Ultralytics' `device=`.

    Returns:
        (list[dict]): One row for the starting model, one for the final model.
    """
    run = Path(run)
    start, best = run / "weights" / "start.pt", run / "weights" / "best.pt"
    val = {"data": data, "imgsz": imgsz, "plots": False, "verbose": False, "device": device}
    start_metrics = YOLO(start).val(**val).results_dict
    final_metrics = final_metrics or YOLO(best).val(**val).results_dict
    rows = [_row("start", start, start_metrics, imgsz, latency_runs), _row("final", best, final_metrics, imgsz, latency_runs)]

    with open(run / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    s, e = rows
    ratio = {k: (s[k] / e[k] if e[k] else float("nan")) for k in ("params", "GFLOPs", "size_MB", "latency_ms") if k in s}
    lines = ["| " + " | ".join(s) + " |", "|---" * len(s) + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in list(r.values())[1:]) + " |")
    lines.append(
        "| change | "
        + " | ".join(
            [f"{(e[k] - s[k]) * 100:+.1f} pts" for k in ("mAP50-95", "mAP50")]
            + [f"{ratio[k]:.2f}x smaller" if k != "latency_ms" else f"{ratio[k]:.2f}x faster" for k in ratio]
        )
        + " |"
    )
    plots = _plot(run, state, load_checkpoint(best)[0].float())
    (run / "report.md").write_text(
        f"# Slim report: {run.name}\n\nStarting model (weights/start.pt) against the final one (weights/best.pt), "
        f"validated on {data} at imgsz {imgsz}"
        + (f"; latency: PyTorch CPU, batch 1, median of {latency_runs} runs" if latency_runs else "")
        + ".\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "".join(f"![{p.stem}]({p.name})\n" for p in plots)
    )
    LOGGER.info(
        f"{PREFIX}mAP50-95 {s['mAP50-95']:.3f} -> {e['mAP50-95']:.3f} ({(e['mAP50-95'] - s['mAP50-95']) * 100:+.1f} pts), "
        f"params {s['params'] / 1e6:.2f}M -> {e['params'] / 1e6:.2f}M ({ratio['params']:.2f}x), "
        f"GFLOPs {s['GFLOPs']:.1f} -> {e['GFLOPs']:.1f} ({ratio['GFLOPs']:.2f}x), "
        f"size {s['size_MB']:.1f} -> {e['size_MB']:.1f} MB"
        + (f", latency {s['latency_ms']:.1f} -> {e['latency_ms']:.1f} ms" if latency_runs else "")
        + f"\n{PREFIX}written to {run / 'report.md'}"
    )
    return rows
