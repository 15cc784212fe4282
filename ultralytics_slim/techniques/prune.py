"""Iterative structured channel pruning: torch-pruning's dependency graph, stepped through the schedule.

The graph surgery lives in `ultralytics_slim.pruning`; this module decides when and how far to prune. Step i of n
keeps `ratio ** ((i + 1) / n)` of the starting model's MACs, params or latency, so every step removes the same
fraction of what is left and the last step lands on the target. A latency target is reached by a search over MACs
targets, each candidate exported to ONNX and timed in the named runtime on this machine, side by side with the
starting model (the target is a ratio to it). Pruning acts on the EMA weights (what Ultralytics would save).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import LOGGER, RANK, colorstr
from ultralytics.utils.torch_utils import get_flops, unwrap_model

from ultralytics_slim import latency, monitor, pruning
from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.importance import NEEDS_GRADIENTS, Allocation
from ultralytics_slim.markers import PRUNED_KEY
from ultralytics_slim.recipe import PruneConfig
from ultralytics_slim.techniques.base import Technique
from ultralytics_slim.techniques.batches import side_batches
from ultralytics_slim.techniques.distill import DistillCriterion

PREFIX = colorstr("Slim prune: ")
SEARCH_STEPS = 5  # latency-target candidates measured per step (each: prune a copy, export, time)
GRADIENT_BATCHES = 16  # training batches whose loss gradients a gradient-based criterion (taylor) ranks with
BN_BATCHES = 8  # training batches whose statistics replace BatchNorm running statistics in a pruned model
LR_CAP = 0.01  # lr_scale never raises a rate above this: Ultralytics' lr0 for training (SGD, MuSGD) from scratch


def macs_for_latency(
    model: nn.Module,
    goal: float,
    measure: Callable[[nn.Module], tuple[float, float]],
    *,
    importance: str,
    seed: int,
    max_cut: float = 1.0,
    allocation: Allocation = "global",
    **kwargs: Any,
) -> tuple[float, float, float]:
    """The MACs target whose pruned model runs in at most `goal` of the starting latency (closest from below).

    Latency follows MACs only roughly (per-op overheads, channel counts a kernel likes), so candidates are pruned
    on a copy and timed by `measure` (latency ratio to the starting model, ms): a proportional first guess, then
    bisection refined by the measured ratio. When no candidate gets under the goal, the fastest one measured is taken
    with a warning, never the floor: a noisy reading must not strip the model. `max_cut`, `allocation` and `kwargs`
    (round_to, min_channels, ignore) go to `prune_to`; benchmarks/latency.py runs this search outside training.
    Returns (MACs target, its latency ratio, its latency in ms).
    """
    macs = pruning.count_macs_params(model)[0]
    now, ms = measure(model)
    if now <= goal:
        return macs, now, ms
    lo, hi = pruning.min_keep_ratio(model, "macs", **kwargs), 1.0
    r = max(goal / now, lo)
    below = fastest = None  # (fraction of the current MACs, latency ratio, ms)
    rank = {"importance": importance, "max_cut": max_cut, "allocation": allocation}
    for _ in range(SEARCH_STEPS):
        candidate = deepcopy(model)
        for p, q in zip(model.parameters(), candidate.parameters()):
            q.grad = p.grad  # a gradient criterion ranks the copy as it would the model (pruning slices, never writes)
        pruning.prune_to(candidate, "macs", r * macs, seed=seed, **rank, **kwargs)
        ratio, ms = measure(candidate)
        fastest = min(fastest or (r, ratio, ms), (r, ratio, ms), key=lambda c: c[1])
        if ratio <= goal:
            lo, below = r, max(below or (r, ratio, ms), (r, ratio, ms))
            if ratio >= 0.97 * goal:
                break
        else:
            hi = r
        guess = r * goal / ratio  # latency ~ MACs near the goal
        r = guess if lo < guess < hi else (lo + hi) / 2
    if below is None:
        if RANK in {-1, 0}:
            LOGGER.warning(
                f"{PREFIX}no candidate reached {goal:.1%} of the starting latency; taking the fastest measured, "
                f"{fastest[1]:.1%} at {fastest[0]:.1%} of the current MACs"
            )
        below = fastest
    return below[0] * macs, below[1], below[2]


@contextmanager
def _batch_statistics(model: nn.Module, momentum: float | None) -> Iterator[list[nn.Module]]:
    """Train mode (BatchNorm normalizing with batch statistics), every BatchNorm's running statistics updated with
    `momentum`; the momenta and the mode are restored on exit. Yields the BatchNorm layers."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta, mode = [m.momentum for m in bns], model.training
    for m in bns:
        m.momentum = momentum
    model.train()
    try:
        yield bns
    finally:
        for m, kept in zip(bns, momenta):
            m.momentum = kept
        model.train(mode)


def recalibrate_bn(model: nn.Module, trainer: Any, batches: int = BN_BATCHES) -> None:
    """Replace every BatchNorm's running statistics with their average over `batches` training batches of the model
    as it is now.

    A pruning step leaves each BatchNorm with the running statistics of the unpruned network, whose layers before it
    summed more channels; they then follow the pruned network only at Ultralytics' momentum of 0.03 per batch. Training
    does not use them (batch statistics), but validation, `best.pt` and the report do: on the benchmark's deepest cut
    (YOLOv8s to YOLOv8n's MACs, 32 batches an epoch) the first step's epoch validated at 0.000 mAP50-95, and the same
    weights at 0.253 with fresh statistics. Gradients and the weights are left as they are.
    """
    with _batch_statistics(model, momentum=None) as bns, torch.no_grad():  # None: a cumulative average
        for m in bns:
            m.reset_running_stats()
        for batch in side_batches(trainer, batches):
            model(batch["img"])


def loss_gradients(model: nn.Module, trainer: Any, batches: int = GRADIENT_BATCHES) -> None:
    """Leave in every parameter's `.grad` the task loss's gradient summed over `batches` training batches, for the
    criteria that rank by it (`taylor`).

    Batches with the trainer's augmentations (`side_batches`: the run's own are untouched), BatchNorm normalizing with
    batch statistics as in training but with its running statistics left as they are, every parameter (frozen ones
    too) given a gradient, and the sum averaged over DDP ranks, so that every rank ranks the same numbers. A parameter
    the loss does not reach gets zeros.
    The task loss only, without a distillation term: what the pruned model must keep is what the task needs (with the
    term, `taylor` cut a high-resolution layer to half of what it kept without a teacher, README), and the pass must
    not count into the distillation's share of the loss.
    """
    needs = {p: p.requires_grad for p in model.parameters()}
    criterion = getattr(model, "criterion", None)
    if isinstance(criterion, DistillCriterion):
        model.criterion = criterion.criterion
    model.zero_grad(set_to_none=True)
    for p in needs:
        p.requires_grad_(True)
    try:
        with _batch_statistics(model, momentum=0.0):  # running = 1 * running + 0 * batch: unchanged
            for batch in side_batches(trainer, batches):
                loss, _ = model(batch)
                loss.sum().backward()
    finally:
        for p, needed in needs.items():
            p.requires_grad_(needed)
        model.criterion = criterion
    for p in needs:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


class PruneTechnique(Technique):
    """Remove whole channels towards a MACs or params target, with fine-tuning epochs between the steps."""

    config = PruneConfig

    cfg: PruneConfig

    def __init__(self, name: str, cfg: PruneConfig, schedule: Any):
        super().__init__(name, cfg, schedule)
        self.base: float | None = None  # MACs, params or latency (ms) of the model before the first step
        self._latency: latency.RelativeLatency | None = None  # a latency target: times models against the start model
        self._start_pt: Path | None = None  # where the start model is kept, to time against it after a resume
        self.imgsz = 0  # deployment image size of a latency target
        self.done = 0  # steps already taken
        self.history: list[dict[str, Any]] = []  # one entry per step, for the console, TensorBoard and the report
        self.start_channels: dict[str, int] = {}
        self.kept: dict[str, list[int]] = {}  # BN name -> its channels' indices in the model before the first step
        self.lr_scaled = False  # lr_scale applied to the optimizer (its param groups keep it in checkpoints)
        self._sources: dict[str, torch.Tensor] = {}  # this epoch start's steps: parameter -> elements' origin

    def _kwargs(self) -> dict[str, Any]:
        c = self.cfg
        return {"round_to": c.round_to, "min_channels": c.min_channels, "ignore": c.ignore}

    @classmethod
    def preflight(cls, cfg: PruneConfig) -> None:
        """A latency target needs its runtime installed."""
        if cfg.target.kind == "latency":
            latency.require_runtime(cfg.target.runtime or "onnxruntime")

    def check(self, trainer: Any) -> None:
        """Reject a target the floors and `ignore` cannot reach, naming the smallest reachable ratio."""
        if self.done or self.cfg.target.kind == "latency":  # latency: the search reports what it could reach
            return
        kind, ratio = self.cfg.target.kind, self.cfg.target.ratio
        floor = pruning.min_keep_ratio(unwrap_model(trainer.model), kind, **self._kwargs())
        if ratio < floor:
            raise SlimConfigError(
                f"prune.target.{kind}={ratio} is unreachable for this model with round_to={self.cfg.round_to}, "
                f"min_channels={self.cfg.min_channels}, ignore={self.cfg.ignore}: the smallest reachable ratio is "
                f"{floor:.3f}"
            )

    def setup(self, trainer: Any) -> None:
        """Measure the starting model once; on resume the measurement comes from the checkpoint."""
        self.imgsz = self.cfg.target.imgsz or trainer.args.imgsz
        self._start_pt = trainer.wdir / "start.pt"
        if self.base is None:
            model = unwrap_model(trainer.model)
            macs, params = pruning.count_macs_params(model)
            kind = self.cfg.target.kind
            if kind == "latency":
                self._latency = latency.RelativeLatency(model, *self._runtime())
            self.base = macs if kind == "macs" else float(params) if kind == "params" else self._measure(model)[1]
            self.start_channels = monitor.channel_counts(model)
            if kind == "latency" and RANK in {-1, 0}:
                LOGGER.info(f"{PREFIX}starting latency {self.base:.1f} ms ({self._where()})")
        self._sync_scheduler(trainer)

    @staticmethod
    def _sync_scheduler(trainer: Any) -> None:
        """The scheduler's base rates are the param groups' `initial_lr` (as LambdaLR sets them), also after a resume
        restored scaled groups into a scheduler built before."""
        trainer.scheduler.base_lrs = [g["initial_lr"] for g in trainer.optimizer.param_groups]

    def _scale_lr(self, trainer: Any) -> None:
        """Multiply every param group's rate by `lr_scale` for the rest of the run, but never above `LR_CAP`; warmup
        and the stock schedule (which read `initial_lr`) follow.

        LR rewinding (Renda et al., 2020): a pruned network retrained at the rate it was trained with recovers more
        than one fine-tuned at a small rate. Ultralytics' `optimizer=auto` fine-tunes short runs with AdamW at
        0.002 * 5 / (4 + nc) (6.25e-4 for 12 classes), ignoring lr0 (0.01); on the benchmark 2e-3 recovered 1.5 points
        more mAP50-95 at 50% MACs after `lamp` pruning, while the unpruned model lost by it, and so did the milder cuts of
        `taylor` (README, Results). The cap leaves SGD's and MuSGD's training rate (what `optimizer=auto` picks for long
        runs) as it is.
        """
        k = self.cfg.lr_scale
        factors = []
        for g in trainer.optimizer.param_groups:
            f = k if k <= 1 or not g["initial_lr"] else min(k, max(1.0, LR_CAP / g["initial_lr"]))
            g["initial_lr"] *= f
            g["lr"] *= f
            factors.append(f)
        self._sync_scheduler(trainer)
        self.lr_scaled = True
        if RANK in {-1, 0}:
            LOGGER.info(
                f"{PREFIX}learning rates x{max(factors):.3g} from epoch {trainer.epoch + 1} on (lr_scale={k:g}, "
                f"at most {LR_CAP:g}): {trainer.optimizer.param_groups[0]['initial_lr']:.3g} before the schedule"
            )

    def _runtime(self) -> tuple[str, int]:
        return self.cfg.target.runtime or "onnxruntime", self.imgsz

    def _where(self) -> str:
        return f"{self._runtime()[0]}, imgsz {self.imgsz}, batch 1, 2 threads, this machine"

    def _measure(self, model: nn.Module) -> tuple[float, float]:
        """(latency ratio to the start model, ms), timed interleaved with it on rank 0 and shared, so that every DDP
        rank takes the same decision; after a resume the start model is read back from weights/start.pt."""
        out = [(0.0, 0.0)]
        if RANK in {-1, 0}:
            if self._latency is None:
                self._latency = latency.RelativeLatency(load_checkpoint(self._start_pt)[0].float(), *self._runtime())
            out = [self._latency(model)]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast_object_list(out, 0)
        return out[0]

    def on_epoch_start(self, trainer: Any) -> bool:
        """Take the steps scheduled for this epoch."""
        due = [i for i, e in enumerate(self.events) if e <= trainer.epoch and i >= self.done]
        if not due:
            return False
        if self.cfg.lr_scale != 1 and not self.lr_scaled:
            self._scale_lr(trainer)
        model = unwrap_model(trainer.model)
        model.load_state_dict(trainer.ema.ema.state_dict())  # prune what Ultralytics would have saved
        gflops_before = get_flops(model)
        rank = {"importance": self.cfg.importance, "max_cut": self.cfg.max_step_cut, "allocation": self.cfg.allocation}
        for i in due:
            t = time.perf_counter()
            if self.cfg.importance in NEEDS_GRADIENTS:
                loss_gradients(model, trainer)
            goal = self.cfg.target.ratio ** ((i + 1) / len(self.events))
            if self.cfg.target.kind == "latency":  # a MACs target found by timing candidates
                macs, ratio, ms = macs_for_latency(model, goal, self._measure, seed=i, **rank, **self._kwargs())
                kind, target, timed = "macs", macs, {"latency": round(ms, 3), "latency_ratio": round(ratio, 4)}
            else:
                kind, target, timed = self.cfg.target.kind, self.base * goal, {}
            result = pruning.prune_to(model, kind, target, seed=i, **rank, **self._kwargs())
            model.zero_grad(set_to_none=True)
            self.done = i + 1
            for n, idx in result.kept.items():  # compose with earlier steps: indices into the unpruned model
                self.kept[n] = [self.kept[n][j] for j in idx] if n in self.kept else idx
            src = result.sources
            if i > due[0]:  # a later step at this epoch start: indices into the model before the first one
                src = {n: self._sources[n][idx] for n, idx in src.items() if n in self._sources}
            self._sources = src
            self.history.append(
                {
                    "step": self.done,
                    "epoch": trainer.epoch,
                    "macs": result.macs_after,
                    "params": result.params_after,
                    "params_before": result.params_before,
                    # a later step at the same epoch starts from the previous step's model
                    "gflops_before": self.history[-1]["gflops"] if i > due[0] else round(gflops_before, 3),
                    "gflops": round(get_flops(model), 3),
                    "cut": {  # what this step did: layer -> [channels before, after], changed layers only
                        n: [result.channels_before[n], c]
                        for n, c in result.channels_after.items()
                        if result.channels_before.get(n, c) != c
                    },
                    "seconds": round(time.perf_counter() - t, 2),  # the whole step: gradients, latency search, surgery
                    **timed,
                }
            )
        recalibrate_bn(model, trainer)
        model.yaml[PRUNED_KEY] = True
        if RANK in {-1, 0}:
            self._summary()
        return True

    def before_validation(self, trainer: Any) -> None:
        """Once the model is pruned, validate (and save) the EMA with BatchNorm statistics of its own weights: the
        running ones lag far behind while a pruned network recovers (`recalibrate_bn`)."""
        if self.done:
            recalibrate_bn(trainer.ema.ema, trainer)

    def _summary(self) -> None:
        """One line per step taken at this epoch start, with its own before/after figures and its largest cuts."""
        n, kind, epoch = len(self.events), self.cfg.target.kind, self.history[-1]["epoch"]
        for h in (h for h in self.history if h["epoch"] == epoch):
            cuts = sorted(h["cut"].items(), key=lambda kv: (kv[1][1] / kv[1][0], kv[1][1] - kv[1][0]))
            LOGGER.info(
                f"{PREFIX}step {h['step']}/{n} at epoch {epoch + 1}: "
                f"{h['params_before'] / 1e6:.2f}M -> {h['params'] / 1e6:.2f}M params, "
                f"{h['gflops_before']:.2f} -> {h['gflops']:.2f} GFLOPs, {kind} at "
                f"{h['latency_ratio'] if kind == 'latency' else h[kind] / self.base:.1%} of start "
                f"(this step's target {self.cfg.target.ratio ** (h['step'] / n):.1%}, "
                f"final {self.cfg.target.ratio:.0%}) in {h['seconds']:.1f}s"
                + (f", {h['latency']:.1f} ms ({self._where()})" if "latency" in h else "")
                + f"\n{'':>14}this step cut {len(cuts)} layers"
                + (", most: " + ", ".join(f"{name} {a} -> {b}" for name, (a, b) in cuts[:4]) if cuts else "")
            )

    def sources(self) -> dict[str, torch.Tensor]:
        """Handed over once: the trace is as large as the model (an index per weight)."""
        out, self._sources = self._sources, {}
        return out

    def metrics(self, trainer: Any) -> dict[str, float]:
        out = {"slim/prune_steps": float(self.done)}
        if self.cfg.target.kind == "latency":  # the last measured latency: no timing between steps
            out["slim/latency_ms"] = self.history[-1]["latency"] if self.history else float(self.base or 0.0)
        return out

    def state(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "done": self.done,
            "history": self.history,
            "start_channels": self.start_channels,
            "kept": self.kept,
            "lr_scaled": self.lr_scaled,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.base = state.get("base")
        self.done = state.get("done", 0)
        self.history = list(state.get("history", []))
        self.start_channels = dict(state.get("start_channels", {}))
        self.kept = dict(state.get("kept", {}))
        self.lr_scaled = bool(state.get("lr_scaled", False))
