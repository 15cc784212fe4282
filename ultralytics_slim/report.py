"""The before/after report every slim run ends with: what was gained and what was lost, side by side.

Built on rank 0 at `on_train_end` from what the run left on disk (`weights/start.pt` with its `train_args`,
`weights/best.pt`, `results.csv`) and the techniques' recorded state, so it can be rebuilt from a finished run with
`build_report`. Besides the table it says what the table cannot: whether the starting model was trained at all,
whether sparsity training drove enough BatchNorm scales to zero for the pruning target, what each pruning step cost
in val mAP and how much fine-tuning recovered, and how many channels each layer kept, and when it lost them.

Epochs in the report are 1-based, as in `results.csv` and Ultralytics' console: epoch e's row holds the validation
after epoch e, and a pruning step taken at the start of epoch e falls between the rows e - 1 and e.
"""

from __future__ import annotations

import csv
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from ultralytics import YOLO
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import LOGGER, colorstr
from ultralytics.utils.torch_utils import get_flops, get_num_params

from ultralytics_slim import monitor
from ultralytics_slim.benchmark import torch_latency_ms
from ultralytics_slim.importance import ALLOCATIONS, IMPORTANCES
from ultralytics_slim.recipe import Recipe, load_recipe
from ultralytics_slim.schedule import Window, build_schedule

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PREFIX = colorstr("Slim report: ")
GAMMA_BINS = np.logspace(-6, 1, 36)  # |gamma| histogram edges, shared by every epoch of every run
NEAR_ZERO = 1e-2  # |gamma| below this counts as a channel that pruning can remove at little cost
UNTRAINED = 0.01  # a starting mAP50-95 below this means the starting model was untrained
TEACHER_BEHIND = 0.01  # a student this far above its `self` teacher (mAP50-95) had a teacher still learning


def figure(**kwargs: Any) -> Figure:
    """A matplotlib Figure drawn without pyplot: no GUI backend or global state is touched, and nothing to close."""
    from matplotlib.figure import Figure

    return Figure(**{"layout": "constrained", **kwargs})


def gamma_histogram(model: nn.Module) -> list[int]:
    """Counts of all BatchNorm |gamma| in GAMMA_BINS (values below the first edge land in the first bin)."""
    gammas = list(monitor.batchnorm_gammas(model).values())
    g = torch.cat(gammas).numpy() if gammas else np.zeros(0)
    return np.histogram(np.clip(g, GAMMA_BINS[0], GAMMA_BINS[-1]), GAMMA_BINS)[0].tolist()


def _metric(metrics: dict[str, float], name: str) -> float:
    """mAP50-95 / mAP50 of any task (box, mask, pose, obb) or top-1/top-5 accuracy for classification."""
    keys = {"mAP50-95": ("mAP50-95", "top1"), "mAP50": ("mAP50(", "top5")}[name]
    return next((float(v) for k, v in metrics.items() if any(x in k for x in keys)), float("nan"))


def _row(name: str, path: Path, model: nn.Module, metrics: dict[str, float], imgsz: int, runs: int) -> dict:
    """One model's figures: accuracy, size, compute and (when asked for) CPU latency."""
    row = {
        "model": name,
        "mAP50-95": _metric(metrics, "mAP50-95"),
        "mAP50": _metric(metrics, "mAP50"),
        "params": get_num_params(model),
        "GFLOPs": round(get_flops(model), 3),
        "size_MB": round(path.stat().st_size / 1e6, 3),
    }
    if runs:
        row["latency_ms"] = round(torch_latency_ms(deepcopy(model), imgsz, runs=runs), 2)  # it fuses BN in place
    return row


def _results(run: Path) -> dict[int, dict[str, float]]:
    """results.csv rows by (1-based) epoch; an epoch written twice (NaN recovery) keeps its last row."""
    if not (run / "results.csv").exists():
        return {}
    with open(run / "results.csv") as f:
        rows = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return {int(r["epoch"]): r for r in rows}


def _short(name: str) -> str:
    """`model.21.cv2.conv` -> `21.cv2`: enough to find the layer, short enough for an axis label."""
    return name.removeprefix("model.").removesuffix(".conv")


def _bn_channels(model: nn.Module) -> int:
    return sum(g.numel() for g in monitor.batchnorm_gammas(model).values())


def _pct(x: float) -> str:
    return f"{x:.1%}"


class _Run:
    """What one finished run recorded, read once and shared by the report's sections and plots."""

    def __init__(self, run: Path, state: dict[str, Any], start: nn.Module, final: nn.Module, args: dict[str, Any]):
        self.args = args  # train_args of the run's start (a resumed process only knows last.pt)
        self.recipe = load_recipe(args["slim"]["recipe"]) if isinstance(args.get("slim"), dict) else None
        self.windows: dict[str, Window] = build_schedule(self.recipe, args["epochs"]).windows if self.recipe else {}
        self.results = _results(run)
        first = next(iter(self.results.values()), {})
        self.fitness = next((k for k in first if "mAP50-95" in k or "top1" in k), None)
        self.validated = bool(self.fitness) and args.get("val", True) is not False
        prune = state.get("prune") or {}
        self.history: list[dict[str, Any]] = prune.get("history", [])
        self.start_channels: dict[str, int] = prune.get("start_channels", {})
        self.final_channels = monitor.channel_counts(final)
        self.gamma_hist = np.asarray(state.get("gamma_hist") or [], dtype=float)
        self.bn_start, self.bn_final = _bn_channels(start), _bn_channels(final)

    @property
    def removed(self) -> float | None:
        """Fraction of the BatchNorm channels that pruning removed over the run (None without pruning)."""
        return 1 - self.bn_final / self.bn_start if self.history and self.bn_start else None

    def enough(self, below: float) -> bool:
        """Whether a share `below` of the starting BN channels covers those pruning removed (counted: CSV rounds)."""
        return round(below * self.bn_start) >= self.bn_start - self.bn_final

    def near_zero(self) -> tuple[int, float, float] | None:
        """(epoch, share of BN channels with |gamma| < NEAR_ZERO, mean |gamma|) when sparsity ended or pruning began."""
        window = self.windows.get("sparsity")
        if window is None and not self.history:
            return None
        epoch = window.end if window else self.history[0]["epoch"]  # the last validation before pruning
        row = self.results.get(epoch)
        return (epoch, row[f"slim/bn_sparsity@{NEAR_ZERO:g}"], row["slim/bn_gamma_mean"]) if row else None

    def step_groups(self) -> list[tuple[int, list[dict[str, Any]]]]:
        """Pruning steps grouped by the (0-based) epoch at whose start they ran, in order."""
        groups: dict[int, list[dict[str, Any]]] = {}
        for h in self.history:
            groups.setdefault(h["epoch"], []).append(h)
        return sorted(groups.items())

    def val(self, epoch: int, start_map: float) -> float | None:
        """Val mAP50-95 after (1-based) `epoch`; epoch 0 is the starting model."""
        if epoch == 0:
            return start_map
        row = self.results.get(epoch)
        return row[self.fitness] if row and self.validated else None


def _untrained(r: _Run, start_map: float) -> str | None:
    """A plain sentence when the starting model was untrained: its before/after shows training, not compression."""
    model, pretrained = str(r.args.get("model", "")), r.args.get("pretrained")
    from_yaml = model.endswith((".yaml", ".yml")) and not isinstance(pretrained, str)
    if not from_yaml and not start_map < UNTRAINED:
        return None
    why = [f"model={model} builds random weights"] if from_yaml else []
    why += [f"its mAP50-95 is {start_map:.3f}"] if start_map < UNTRAINED else []
    return (
        f"The starting model was untrained ({'; '.join(why)}): the change below is what training did, not what "
        "compression cost. Train the model first and slim its best.pt (model=path/to/best.pt) for a real before/after."
    )


def _teacher_behind(recipe: Recipe | None, start_map: float, end_map: float) -> str | None:
    """A plain sentence when the student ended well above its `teacher: self`, the starting model.

    Such a teacher had not finished training, and distilling from it holds the student back: on the README demo
    (a 40-epoch baseline) `prune_distill.yaml` ended 1.2 points below `prune.yaml`. From a converged teacher the
    student ends below or level with it (the benchmark's distilled seeds: -0.5 to +0.3 point), which says nothing.
    """
    distill = recipe.distill if recipe else None
    if distill is None or distill.teacher != "self" or end_map - start_map < TEACHER_BEHIND:
        return None
    return (
        f"The student ended {(end_map - start_map) * 100:.1f} points above its teacher (the starting model, "
        f"{start_map:.3f}), which had not finished training: distilling from it likely held the student back (the "
        "README demo: 0.776 mAP50-95 with prune_distill.yaml, 0.789 with prune.yaml). Distil from a converged model, "
        "or run the recipe without its 'distill' section."
    )


def _sparsity(r: _Run, start_map: float) -> tuple[list[str], str | None]:
    """Whether sparsity training left enough near-zero BatchNorm scales for the channels pruning removed."""
    point, removed, window = r.near_zero(), r.removed, r.windows.get("sparsity")
    if point is None:
        return [], None
    epoch, below, mean = point
    when = f"at the end of the sparsity window (epoch {epoch})" if window else f"when pruning began (epoch {epoch})"
    text = f"{when[0].upper() + when[1:]}, {_pct(below)} of the BatchNorm channels had |gamma| < {NEAR_ZERO:g} "
    text += f"(mean |gamma| {mean:.3f})"
    text += f"; pruning removed {_pct(removed)} of them over the run." if removed else "."
    row = r.results[epoch]
    if window and "slim/sparsity_goal" in row:  # the sparsity phase's own measure, as its console warning states it
        reached, goal = _pct(row["slim/sparsity_reached"]), _pct(row["slim/sparsity_goal"])
        text += f" (Over the prunable BatchNorm scales, as the sparsity phase counts: {reached} below, goal {goal}.)"
    end_map = r.val(epoch, start_map)
    if window and end_map is not None:
        text += f" Val mAP50-95 over the sparsity window: {start_map:.3f} at the start, {end_map:.3f} at its end "
        text += f"({(end_map - start_map) * 100:+.1f} pts)."
    warning, verdict = None, []
    if not window:
        text += " There was no sparsity phase."
    elif removed and r.enough(below):
        verdict = ["✅ Sparsity worked: at least as many channels were near zero as pruning removed."]
        if below - removed > 0.05:
            verdict[0] += f" Another {_pct(below - removed)} were near zero but kept: they must recover in fine-tuning."
    elif removed:
        warning = (
            f"sparsity did not polarize the BatchNorm scales enough for the pruning target: {_pct(below)} of the "
            f"channels had |gamma| < {NEAR_ZERO:g} {when}, but pruning removed {_pct(removed)}, so it cut channels "
            "that still carried signal. Expect a larger accuracy drop; a stronger or longer sparsity phase "
            "(sparsity.strength, sparsity.end) leaves more near-zero channels."
        )
        verdict = [f"⚠️ **Not enough:** {warning}"]
    return ["## Sparsity", "", text, "", *verdict, *([""] if verdict else [])], warning


def _from_to(first: dict[str, Any], last: dict[str, Any], key: str, scale: float = 1.0) -> str:
    """`before -> after` of a figure over a group of steps (`after` alone for a history without `before`)."""
    after = f"{last[key] / scale:.2f}"
    return f"{first[key + '_before'] / scale:.2f} -> {after}" if key + "_before" in first else after


def _steps(r: _Run, start_map: float) -> list[str]:
    """Per pruning step: params and GFLOPs before/after, val mAP before and after, and what fine-tuning recovered."""
    groups, last = r.step_groups(), max(r.results, default=0)
    if not groups:
        return []
    timed = "latency" in groups[0][1][-1]  # a latency target: each step's measured latency
    lines = [
        "## Pruning steps",
        "",
        (
            "Val mAP50-95: *before* is the last validation before the step, *after* the one at the end of the step's "
            "epoch (one epoch of fine-tuning), *later* the last one before the next step or at the end of the run."
        ),
        "",
        "| step | at epoch | params (M) | GFLOPs | mAP50-95 before | after | later | recovered of the step's drop |"
        + (" latency (ms) |" if timed else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if timed else ""),
    ]
    for k, (epoch, steps) in enumerate(groups):
        later_epoch = groups[k + 1][0] if k + 1 < len(groups) else last
        before, after, later = (r.val(e, start_map) for e in (epoch, epoch + 1, later_epoch))
        cells = [
            "+".join(str(h["step"]) for h in steps) + (" (no fine-tuning between)" if len(steps) > 1 else ""),
            str(epoch + 1),
            _from_to(steps[0], steps[-1], "params", 1e6),
            _from_to(steps[0], steps[-1], "gflops") if "gflops" in steps[-1] else "",
        ]
        if before is None or after is None:
            cells += ["not validated" if not r.validated else "", "", "", ""]
        elif later is None or later_epoch <= epoch + 1:
            cells += [f"{before:.3f}", f"{after:.3f} ({(after - before) * 100:+.1f} pts)", "next step", ""]
        else:
            drop = before - after
            share = "" if drop <= 0 else ", all of it" if later >= before else f", {(later - after) / drop:.0%} of it"
            cells += [
                f"{before:.3f}",
                f"{after:.3f} ({(after - before) * 100:+.1f} pts)",
                f"{later:.3f} (epoch {later_epoch})",
                f"{(later - after) * 100:+.1f} pts{share}",
            ]
        cells += [f"{steps[-1]['latency']:.1f}"] if timed else []
        lines.append("| " + " | ".join(cells) + " |")
    first, end = r.val(groups[0][0], start_map), r.val(last, start_map)
    during = [(v, e) for e in range(groups[0][0] + 1, last + 1) if (v := r.val(e, start_map)) is not None]
    if first is not None and end is not None and during:
        low, at = min(during)
        if low < first:
            lines += [
                "",
                (
                    f"Over the run: {first:.3f} before the first step, {low:.3f} at the lowest (epoch {at}), {end:.3f} "
                    f"at the end (epoch {last}): fine-tuning recovered {(end - low) / (first - low):.0%} of the drop."
                ),
            ]
    return [*lines, ""]


def _layers(r: _Run) -> list[str]:
    """Per layer: start and final channels, the kept fraction, and which step cut how much."""
    if not r.start_channels:
        return []
    cfg = r.recipe.prune if r.recipe else None
    how = ""
    if cfg:
        doc = " ".join((IMPORTANCES[cfg.importance].__doc__ or "").split()).rstrip(".")  # one line, however wrapped
        doc = doc if doc[1:2].isupper() else doc[:1].lower() + doc[1:]  # mid-sentence, acronyms (LAMP) kept
        how = (
            f"Channels were ranked by importance `{cfg.importance}`: {doc}. Allocation `{cfg.allocation}`: "
            f"{ALLOCATIONS[cfg.allocation]}; every layer keeps at least min_channels={cfg.min_channels} and a multiple "
            f"of round_to={cfg.round_to}"
            + (
                f"; one step takes more than max_step_cut={cfg.max_step_cut:g} of a layer only when the other layers "
                "cannot give what the step needs."
                if cfg.max_step_cut < 1 and cfg.allocation != "uniform"
                else "."
            )
        )
    lines = ["## Channels per layer", "", how, "", "| layer | start | final | kept | cut by step (before -> after) |"]
    lines.append("|---|---|---|---|---|")
    for n, c0 in r.start_channels.items():
        c1 = r.final_channels.get(n, c0)
        cut = [(h["step"], *h["cut"][n]) for h in r.history if n in h.get("cut", {})]
        cuts = ", ".join(f"{step}: {a} -> {b}" for step, a, b in cut)
        lines.append(f"| {n} | {c0} | {c1} | {c1 / c0:.0%} | {cuts} |")
    return [*lines, ""]


# ------------------------------------------------------------------------------------------------------------- plots
def _mark_steps(ax: Any, r: _Run, labels: dict[int, str] | None = None) -> None:
    """A dashed red line between the last validation before each pruning step and the first after it, labelled."""
    for epoch, steps in r.step_groups():
        ax.axvline(epoch + 0.5, color="tab:red", ls="--", lw=0.9)
        if labels is not None:
            text = "+".join(str(h["step"]) for h in steps) + labels.get(epoch, "")
            ax.text(
                epoch + 0.5,
                0.98,
                text,
                transform=ax.get_xaxis_transform(),
                color="tab:red",
                ha="center",
                va="top",
                fontsize=7,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
            )


def _shade_sparsity(ax: Any, r: _Run, label: bool = False) -> None:
    """A grey band over the epochs of the sparsity window."""
    if "sparsity" in r.windows:
        w = r.windows["sparsity"]
        label = "sparsity window" if label else None
        ax.axvspan(w.start + 0.5, w.end + 0.5, color="gray", alpha=0.15, lw=0, label=label)


def _plot_curves(run: Path, r: _Run, start: dict[str, Any]) -> Path | None:
    """Val mAP50-95, params and GFLOPs per epoch from the starting model on, each pruning step and its cost marked."""
    if not r.results:
        return None
    from matplotlib.ticker import MaxNLocator

    epochs, rows = [0, *r.results], list(r.results.values())
    costs = {}
    for epoch, _ in r.step_groups():
        before, after = r.val(epoch, start["mAP50-95"]), r.val(epoch + 1, start["mAP50-95"])
        if before is not None and after is not None:
            costs[epoch] = f"\n{(after - before) * 100:+.1f}"
    fig = figure(figsize=(14, 4.2))
    axes = fig.subplots(1, 3, sharex=True)
    series = (
        ("val mAP50-95 (labels: step, change in points)", "mAP50-95", r.fitness if r.validated else None, 1),
        ("params (M)", "params", "slim/params", 1e6),
        ("GFLOPs", "GFLOPs", "slim/GFLOPs", 1),
    )
    for ax, (title, first, key, scale) in zip(axes, series):
        if key:
            ys = [start[first] / scale] + [row[key] / scale for row in rows]
            step = first != "mAP50-95"  # params and GFLOPs change at the step lines, not in between
            ax.plot(epochs, ys, marker=".", color="tab:blue", drawstyle="steps-mid" if step else "default")
        _shade_sparsity(ax, r, label=True)
        _mark_steps(ax, r, costs if first == "mAP50-95" else {})
        ax.set(xlabel="epoch (0: the starting model)", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.margins(y=0.15)
    if "sparsity" in r.windows:
        axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(
        "Across the run: red dashed lines are the pruning steps, each between the last validation before it "
        "and the first after it"
    )
    fig.savefig(run / "report_curves.png", dpi=130)
    return run / "report_curves.png"


def _quantile(h: np.ndarray, q: float) -> np.ndarray:
    """log10 |gamma| at quantile q of each epoch's histogram (linear within a bin)."""
    cdf = np.concatenate([np.zeros((len(h), 1)), np.cumsum(h, 1)], 1) / h.sum(1, keepdims=True).clip(min=1)
    return np.array([np.interp(q, c, np.log10(GAMMA_BINS)) for c in cdf])


def _plot_gamma(run: Path, r: _Run) -> Path | None:
    """Per-epoch distribution of log10 |gamma| with its quantiles, and the near-zero share against what pruning took."""
    h = r.gamma_hist
    if not h.size:
        return None
    from matplotlib import patheffects
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    frac, edges = h / h.sum(1, keepdims=True).clip(min=1), np.log10(GAMMA_BINS)
    used = np.flatnonzero(h.sum(0))
    epochs = np.arange(1, len(h) + 1)
    fig = figure(figsize=(13, 4.8))
    ax, ax2 = fig.subplots(1, 2, width_ratios=(1.4, 1))
    shown = np.ma.masked_equal(frac.T, 0)
    mesh = ax.pcolormesh(np.arange(len(h) + 1) + 0.5, edges, shown, cmap="viridis", norm=LogNorm(1e-3, 1, clip=True))
    fig.colorbar(mesh, ax=ax, label="share of BatchNorm channels in the bin", format="{x:.1%}")
    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    for q, style in ((0.5, "-"), (0.1, "--"), (0.01, ":")):
        ax.plot(
            epochs,
            _quantile(h, q),
            color="white",
            ls=style,
            lw=1.2,
            drawstyle="steps-mid",
            path_effects=outline,
            label=f"{q:.0%} quantile",
        )
    ax.axhline(np.log10(NEAR_ZERO), color="tab:red", ls="--", lw=1, label=f"|gamma| = {NEAR_ZERO:g}")
    _shade_sparsity(ax, r)
    _mark_steps(ax, r)
    lo, hi = min(edges[used[0]], np.log10(NEAR_ZERO)) - 0.5, max(edges[used[-1] + 1], 0.0) + 0.2  # 0: |gamma| = 1
    ax.set(xlabel="epoch", ylabel=f"log10 |gamma| (lowest bin: <= {GAMMA_BINS[1]:.1g})", ylim=(lo, hi))
    ax.set_title("BatchNorm |gamma| per epoch (white: quantiles)")

    for t, style in ((NEAR_ZERO, "-"), (NEAR_ZERO / 10, ":")):
        below = frac[:, : int(np.searchsorted(edges, np.log10(t) - 1e-9))].sum(1)
        ax2.plot(epochs, below, marker=".", color="tab:purple", ls=style, label=f"|gamma| < {t:g}")
    if r.removed:
        ax2.axhline(r.removed, color="tab:orange", lw=1.6, label=f"share pruning removed ({r.removed:.0%})")
    _shade_sparsity(ax2, r, label=True)
    _mark_steps(ax2, r)
    point = r.near_zero()
    if point and r.removed and "sparsity" in r.windows:
        epoch, below, _ = point
        ok = r.enough(below)
        verdict = f"end of the sparsity window: {below:.0%} near zero,\n{r.removed:.0%} needed: "
        verdict += "enough" if ok else "NOT enough"
        ax2.annotate(
            verdict,
            (epoch, below),
            xytext=(0.97, 0.6),
            textcoords="axes fraction",
            ha="right",
            fontsize=8,
            color="tab:green" if ok else "tab:red",
            arrowprops={"arrowstyle": "->", "color": "gray"},
        )
    ax2.set(xlabel="epoch", ylabel="share of BatchNorm channels", ylim=(0, 1))
    ax2.set_title("Near-zero channels against what pruning removed")
    ax2.yaxis.set_major_formatter(PercentFormatter(1.0))
    for a in (ax, ax2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [h for a in (ax, ax2) for h in zip(*a.get_legend_handles_labels())]
    fig.legend(*zip(*handles), loc="outside lower center", ncol=4, fontsize=8)
    fig.suptitle("Did sparsity training push the BatchNorm scales towards zero? (red dashed: pruning steps)")
    fig.savefig(run / "report_gamma.png", dpi=130)
    return run / "report_gamma.png"


def _plot_channels(run: Path, r: _Run) -> Path | None:
    """Kept share of each layer's output channels, with what each step removed stacked on top."""
    names = [n for n in r.start_channels if n in r.final_channels]
    if not names:
        return None
    start = np.array([r.start_channels[n] for n in names], dtype=float)
    final = np.array([r.final_channels[n] for n in names], dtype=float)
    x, kept = np.arange(len(names)), final / start
    fig = figure(figsize=(max(10.0, 0.17 * len(names)), 6))
    ax = fig.subplots()
    legend = [(ax.bar(x, kept, color="tab:blue", width=0.8), "kept")]
    steps = [h for h in r.history if "cut" in h]
    bottom, removed = kept, []
    for i, h in reversed(list(enumerate(steps))):  # the first step's cut on top, where those channels were
        cut = np.array([h["cut"][n][0] - h["cut"][n][1] if n in h["cut"] else 0 for n in names]) / start
        color = (0.85, 0.15 + 0.6 * i / max(len(steps) - 1, 1), 0.15)
        bar = ax.bar(x, cut, bottom=bottom, color=color, width=0.8)
        removed.insert(0, (bar, f"removed by step {h['step']} (epoch {h['epoch'] + 1})"))
        bottom = bottom + cut
    if r.history and not steps:  # a run recorded before per-step cuts were kept
        removed.append((ax.bar(x, 1 - kept, bottom=kept, color="tab:red", width=0.8), "removed"))
    total = final.sum() / start.sum()
    line = ax.axhline(total, color="black", ls=":", lw=1)
    legend += [*removed, (line, f"all layers: {total:.0%} of the channels kept")]
    ticks = [f"{_short(n)}  {int(a)}→{int(b)}" for n, a, b in zip(names, start, final)]
    ax.set_xticks(x, ticks, rotation=90, fontsize=6)
    ax.set(xlim=(-0.6, len(names) - 0.4), ylim=(0, 1), ylabel="share of the layer's output channels")
    fig.legend(*zip(*legend), loc="outside lower center", ncol=min(len(legend), 5), fontsize=8)
    fig.suptitle("Output channels kept per layer, in network order (tick label: layer  start→final channels)")
    fig.savefig(run / "report_channels.png", dpi=130)
    return run / "report_channels.png"


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
    start_pt, best_pt = run / "weights" / "start.pt", run / "weights" / "best.pt"
    (start, ckpt), (final, _) = load_checkpoint(start_pt), load_checkpoint(best_pt)
    start, final = start.float().eval(), final.float().eval()
    val = {"data": data, "imgsz": imgsz, "plots": False, "verbose": False, "device": device}
    start_metrics = YOLO(start_pt).val(**val).results_dict
    final_metrics = final_metrics or YOLO(best_pt).val(**val).results_dict
    rows = [
        _row("start", start_pt, start, start_metrics, imgsz, latency_runs),
        _row("final", best_pt, final, final_metrics, imgsz, latency_runs),
    ]
    with open(run / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    s, e = rows
    r = _Run(run, state, start, final, ckpt.get("train_args") or {})
    ratio = {
        k: (s[k] / e[k] if e[k] else float("nan")) for k in ("params", "GFLOPs", "size_MB", "latency_ms") if k in s
    }
    table = ["| " + " | ".join(s) + " |", "|---" * len(s) + "|"]
    for row in rows:
        table.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    table.append(
        "| change | "
        + " | ".join(
            [f"{(e[k] - s[k]) * 100:+.1f} pts" for k in ("mAP50-95", "mAP50")]
            + [f"{ratio[k]:.2f}x smaller" if k != "latency_ms" else f"{ratio[k]:.2f}x faster" for k in ratio]
        )
        + " |"
    )
    untrained = _untrained(r, s["mAP50-95"])
    behind = None if untrained else _teacher_behind(r.recipe, s["mAP50-95"], e["mAP50-95"])
    sparsity, sparsity_warning = _sparsity(r, s["mAP50-95"])
    plots = [p for p in (_plot_curves(run, r, s), _plot_gamma(run, r), _plot_channels(run, r)) if p]
    (run / "report.md").write_text(
        "\n".join(
            [
                f"# Slim report: {run.name}",
                "",
                *(line for warning in (untrained, behind) if warning for line in (f"⚠️ **{warning}**", "")),
                f"Starting model (weights/start.pt) against the final one (weights/best.pt), validated on {data} at "
                f"imgsz {imgsz}"
                + (f"; latency: PyTorch CPU, batch 1, median of {latency_runs} runs." if latency_runs else "."),
                "",
                *table,
                "",
                *sparsity,
                *_steps(r, s["mAP50-95"]),
                *(f"![{p.stem}]({p.name})" for p in plots),
                "",
                *_layers(r),
            ]
        )
    )
    LOGGER.info(
        f"{PREFIX}mAP50-95 {s['mAP50-95']:.3f} -> {e['mAP50-95']:.3f} ({(e['mAP50-95'] - s['mAP50-95']) * 100:+.1f} pts), "
        f"params {s['params'] / 1e6:.2f}M -> {e['params'] / 1e6:.2f}M ({ratio['params']:.2f}x), "
        f"GFLOPs {s['GFLOPs']:.1f} -> {e['GFLOPs']:.1f} ({ratio['GFLOPs']:.2f}x), "
        f"size {s['size_MB']:.1f} -> {e['size_MB']:.1f} MB"
        + (f", latency {s['latency_ms']:.1f} -> {e['latency_ms']:.1f} ms" if latency_runs else "")
    )
    for warning in (untrained, behind, sparsity_warning):
        if warning:
            LOGGER.warning(f"{PREFIX}{warning[0].lower() + warning[1:]}")
    LOGGER.info(f"{PREFIX}written to {run / 'report.md'}")
    return rows
