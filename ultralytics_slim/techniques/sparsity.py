"""Sparsity training: drive the channels that pruning will remove to zero while the network can still adapt.

Both modes are proximal steps on the weights right after the optimizer step, not gradient terms: Adam(W) normalizes an
L1 gradient together with the task gradient, so a gamma moves at most about lr per step whatever the strength, and a
gradient term cannot make a short AdamW run sparse. The step uses the lr of the BN scales' param group, so it means the
same under SGD and AdamW and through warmup, and it is applied to the EMA copy too: pruning ranks and removes the EMA
weights, which would otherwise trail the model by thousands of steps in long runs.

- `strength: auto` (default): the channels pruning will remove fade linearly, step by step, to zero after about `FADE`
  of the window, and are held there to its end. The fade counts optimizer steps, not learning rate: a schedule set
  from the lr still to come misjudged warmup, so channels still alive at the deadline were cut at once (one epoch
  fading on the quick benchmark: val mAP50-95 0.21 -> 0.02). How many channels each coupled group loses comes from a
  dry run of the recipe's pruning on a copy of the model, so the zeroed channels are what pruning takes; in each group
  they are the ones of smallest |gamma| at every step, so the task can still rescue one while it fades. A channel's BN
  scale and shift fade together (`bn_l1`) or all its weights (`group_lasso`): it then outputs zero, and removing it
  changes nothing.
- `strength: <number>`: decoupled L1 for experts: each step |gamma| shrinks by lr * strength, stopping at 0
  (`group_lasso`: the norm of each coupled channel's weights). The network picks the channels, given enough steps.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from ultralytics.utils import LOGGER, RANK, colorstr
from ultralytics.utils.torch_utils import unwrap_model

from ultralytics_slim import pruning
from ultralytics_slim.recipe import SparsityConfig
from ultralytics_slim.techniques.base import Technique

PREFIX = colorstr("Slim sparsity: ")
DEAD = 1e-2  # |gamma| below this counts as a removed channel (the goal's threshold, as slim/bn_sparsity@0.01)
FADE = 0.75  # auto: faded channels reach zero after about this fraction of the window's epochs, then rest at zero
GOAL = 0.3  # auto without a prune section: fraction of each layer's channels to fade (about what 50% MACs removes)
MIN_KEEP = 8  # auto without a prune section: channels every layer keeps (the prune section's default min_channels)


@dataclass
class _Unit:
    """One coupled channel group: pruning removes channel j from every entry at once.

    `entries` are (parameter name, dim, index of each channel) of what the step changes; `scales` those of the BN scales
    that rank the channels (and that the goal counts); `quota` is how many channels `strength: auto` fades.
    """

    entries: list[tuple[str, int, torch.Tensor]]
    scales: list[tuple[str, torch.Tensor]]
    quota: int = 0

    @property
    def n(self) -> int:
        return len(self.scales[0][1])


class SparsityTechnique(Technique):
    """Drive the channels that pruning may remove towards zero, so that removing them costs little accuracy."""

    config = SparsityConfig

    cfg: SparsityConfig

    def __init__(self, name: str, cfg: SparsityConfig, schedule: Any):
        super().__init__(name, cfg, schedule)
        self._units: list[_Unit] = []  # found once the model exists, while the window is not over
        self._params: tuple[list[nn.Module], list[dict[str, torch.Tensor]]] | None = None  # model, EMA; tensors
        self._groups: tuple[Any, dict[int, dict]] | None = None  # (optimizer, param id -> its param group)
        self._epoch_lambda: list[float | torch.Tensor] = []  # effective strength of each step of the current epoch
        self._left = 0  # auto: optimizer steps left until the deadline (set at each epoch start)
        # state (plain data, resumed): per-unit quotas, the goal, the last measure
        self.quota: list[int] | None = None
        self.goal: float | None = None
        self.reached: float | None = None

    @property
    def auto(self) -> bool:
        return self.cfg.strength == "auto"

    def strength(self, epoch: int) -> float:
        """Explicit strength during `epoch`: 0 outside the window, linearly decayed if asked."""
        if epoch not in self.window or self.auto:
            return 0.0
        return self.cfg.strength * (1.0 - self.window.progress(epoch) if self.cfg.decay == "linear" else 1.0)

    # ------------------------------------------------------------------------------------------------------- set-up
    def setup(self, trainer: Any) -> None:
        """Find the coupled channels pruning may remove and, once per run, the goal and each layer's quota."""
        if trainer.start_epoch >= self.window.end:
            return  # resumed after the window: nothing left to do, and the model may be pruned already
        model = unwrap_model(trainer.model)
        names = {id(p): n for n, p in model.named_parameters()}
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        scale_ids = {id(m.weight) for m in bns}
        affine_ids = scale_ids | {id(m.bias) for m in bns}
        self._units = []
        for group in pruning.channel_groups(model, self.cfg.ignore):
            scales = [(names[id(p)], idx) for p, _, idx in group if id(p) in scale_ids]
            if not scales:
                continue  # nothing ranks these channels by |gamma|
            lasso = self.cfg.method == "group_lasso"
            entries = [(names[id(p)], dim, idx) for p, dim, idx in group if lasso or id(p) in affine_ids]
            self._units.append(_Unit(entries, scales))
        if self.quota is None or len(self.quota) != len(self._units):
            self.quota = self._plan(trainer, model)
        for unit, q in zip(self._units, self.quota):
            unit.quota = q
        sizes = [(len(u.scales) * u.n, len(u.scales) * u.quota) for u in self._units]
        self.goal = sum(q for _, q in sizes) / max(sum(n for n, _ in sizes), 1)
        if RANK in {-1, 0} and self.goal:
            how = "fades" if self.auto else f"strength {self.cfg.strength:g} is to bring"
            LOGGER.info(
                f"{PREFIX}{how} {self.goal:.1%} of the prunable BN channels ({self._goal_source(trainer)}) to zero "
                f"by the end of epochs {self.window.start + 1}-{self.window.end}"
            )

    def _prune_cfg(self, trainer: Any) -> Any:
        slim = getattr(trainer, "slim", None)
        prune = slim.technique("prune") if slim else None
        return prune.cfg if prune else None

    def _goal_source(self, trainer: Any) -> str:
        p = self._prune_cfg(trainer)
        if self.cfg.goal is None and p is not None:
            about = " as a MACs ratio" if p.target.kind == "latency" else ""
            return f"what prune.target.{p.target.kind}={p.target.ratio}{about} removes"
        return f"goal {self.cfg.goal or GOAL} of each layer"

    def _plan(self, trainer: Any, model: nn.Module) -> list[int]:
        """Channels to remove per unit: from a dry run of the recipe's pruning on a copy, else `goal` of each unit."""
        p = self._prune_cfg(trainer)
        if self.cfg.goal is None and p is None and not self.auto:
            return [0] * len(self._units)  # an explicit strength with nothing to aim at: no goal, no warning
        if self.cfg.goal is not None or p is None:
            goal = self.cfg.goal or GOAL
            return [min(round(goal * u.n), max(u.n - MIN_KEEP, 0)) for u in self._units]
        copy = deepcopy(model)
        macs, params = pruning.count_macs_params(copy)
        kind = "params" if p.target.kind == "params" else "macs"  # a latency target: the same ratio of MACs
        pruning.prune_to(
            copy,
            kind,
            (params if kind == "params" else macs) * p.target.ratio,
            importance=p.importance,
            round_to=p.round_to,
            min_channels=p.min_channels,
            ignore=p.ignore,
            max_cut=1 - (1 - p.max_step_cut) ** p.steps,  # what the capped steps can take from a layer in all
        )
        kept = {n: m.num_features for n, m in copy.named_modules() if isinstance(m, nn.BatchNorm2d)}
        before = {n: m.num_features for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        quota = []
        for u in self._units:
            bn = u.scales[0][0].rpartition(".")[0]  # a BN belongs to one unit (a C2f cv1 holds both halves of it)
            quota.append(round(u.n * (1 - kept[bn] / before[bn])))
        return quota

    # -------------------------------------------------------------------------------------------------------- steps
    def on_epoch_start(self, trainer: Any) -> bool:
        """Count the optimizer steps left until the fade's deadline (Ultralytics steps once per `accumulate` batches)."""
        self._epoch_lambda = []
        steps = len(trainer.train_loader) / max(getattr(trainer, "accumulate", 1), 1)
        self._left = round(max(self._deadline - trainer.epoch, 0) * steps)
        return False

    def _tensors(self, trainer: Any) -> list[dict[str, torch.Tensor]]:
        """The model's parameters by name, and the EMA's (the step acts on both)."""
        modules = [m for m in (unwrap_model(trainer.model), trainer.ema.ema if trainer.ema else None) if m is not None]
        if self._params is None or list(map(id, self._params[0])) != list(map(id, modules)):  # either can be replaced
            self._params = (modules, [dict(m.named_parameters()) for m in modules])
        return self._params[1]

    def _group(self, trainer: Any, tensor: torch.Tensor) -> dict[str, Any]:
        """The optimizer's param group holding `tensor`: its `lr` follows warmup and the schedule."""
        if self._groups is None or self._groups[0] is not trainer.optimizer:
            groups = {id(p): g for g in trainer.optimizer.param_groups for p in g["params"]}
            self._groups = (trainer.optimizer, groups)
        return self._groups[1][id(tensor)]

    def _lr(self, trainer: Any, model: dict[str, torch.Tensor], unit: _Unit) -> float:
        """Learning rate of the param group holding the unit's BN scale (MuSGD boosts some groups)."""
        return float(self._group(trainer, model[unit.scales[0][0]])["lr"])

    @torch.no_grad()
    def after_optimizer_step(self, trainer: Any) -> None:
        """The proximal step of the mode, on the model and its EMA."""
        if trainer.epoch not in self.window or not self._units:
            return
        tensors = self._tensors(trainer)
        if self.auto:
            self._fade(trainer, tensors)
        else:
            self._shrink(trainer, tensors)

    def _fade(self, trainer: Any, tensors: list[dict[str, torch.Tensor]]) -> None:
        """Shrink each unit's `quota` weakest channels so that they fall linearly to 0 at the deadline, then hold them.

        With k steps left, a faded channel keeps (k - 1) / k of its magnitude, so whatever it has now (and whatever the
        task gave it back) reaches 0 on the last step; all of a channel's faded weights are scaled by the same factor.
        """
        model = tensors[0]
        picked = []
        for u in self._units:
            if u.quota:
                score = sum(model[n].index_select(0, idx).abs() for n, idx in u.scales) / len(u.scales)
                sel = torch.topk(score, u.quota, largest=False).indices
                picked.append((u, sel, score[sel]))
        if not picked:
            return
        keep = (self._left - 1) / self._left if self._left > 1 else 0.0  # 0: the last step of the fade, or the hold
        self._left = max(self._left - 1, 0)
        for u, sel, _ in picked:
            for t in tensors:
                self._scale(t, u, sel, torch.full_like(sel, keep, dtype=torch.float32))
        lr = self._lr(trainer, model, self._units[0])
        if lr and keep:
            shrunk = torch.cat([m for *_, m in picked]) * (1 - keep)
            self._epoch_lambda.append(shrunk.mean() / lr)  # the uniform L1 strength of this step (no sync)

    @property
    def _deadline(self) -> int:
        """First epoch of the hold: the fade takes about `FADE` of the window, and at least its last epoch holds."""
        n = self.window.end - self.window.start
        return self.window.start + (max(1, min(n - 1, round(FADE * n))) if n > 1 else 1)

    def _shrink(self, trainer: Any, tensors: list[dict[str, torch.Tensor]]) -> None:
        """Soft thresholding by lr * strength: of each BN scale (`bn_l1`), of each channel's group norm (`group_lasso`).

        Group norms are all taken before any weight changes; a weight in two groups (a conv's output and input channels)
        is scaled by both factors.
        """
        s = self.strength(trainer.epoch)
        self._epoch_lambda.append(s)
        taus = [self._lr(trainer, tensors[0], u) * s for u in self._units]
        for t in tensors:
            if self.cfg.method == "bn_l1":
                for u, tau in zip(self._units, taus):
                    for n, idx in u.scales:
                        w = t[n].index_select(0, idx)
                        t[n].index_copy_(0, idx, w.sign() * (w.abs() - tau).clamp_min(0))
                continue
            factors = []
            for u, tau in zip(self._units, taus):
                norm = sum(
                    t[n].index_select(d, i).transpose(0, d).reshape(len(i), -1).float().pow(2).sum(1)
                    for n, d, i in u.entries
                )
                factors.append((1 - tau / norm.sqrt().clamp_min(1e-12)).clamp_min(0))
            for u, f in zip(self._units, factors):
                self._scale(t, u, torch.arange(u.n, device=f.device), f)

    @staticmethod
    def _scale(t: dict[str, torch.Tensor], unit: _Unit, channels: torch.Tensor, factor: torch.Tensor) -> None:
        """Multiply the unit's `channels` by `factor` (one value per channel) in every entry of `unit`."""
        for n, dim, idx in unit.entries:
            i, w = idx[channels], t[n]
            shape = [-1 if d == dim else 1 for d in range(w.dim())]
            w.index_copy_(dim, i, w.index_select(dim, i) * factor.view(shape).to(w.dtype))

    # ------------------------------------------------------------------------------------------------------ figures
    def measure(self, trainer: Any) -> float:
        """Fraction of the prunable BN channels whose |gamma| (in the EMA, what pruning removes) is below `DEAD`."""
        t = self._tensors(trainer)[-1]
        scales = [t[n].index_select(0, idx).abs() for u in self._units for n, idx in u.scales]
        return float((torch.cat(scales) < DEAD).float().mean()) if scales else 0.0

    def metrics(self, trainer: Any) -> dict[str, float]:
        """Effective strength (mean over the epoch's steps), goal and reached fraction; warns if the window missed it."""
        if trainer.epoch in self.window and self._units:
            self.reached = self.measure(trainer)
            if trainer.epoch == self.window.end - 1 and self.goal and self.reached < 0.98 * self.goal:
                LOGGER.warning(
                    f"{PREFIX}by the end of its window (epoch {self.window.end}) only {self.reached:.1%} of the "
                    f"prunable BN scales are below {DEAD:g}, short of the goal of {self.goal:.1%} "
                    f"({self._goal_source(trainer)}): pruning that many channels will cut live ones. Use 'strength: auto', "
                    f"or a larger strength or a longer window."
                )
        lam = self._epoch_lambda if trainer.epoch in self.window else []
        return {
            "slim/sparsity_strength": sum(float(x) for x in lam) / len(lam) if lam else 0.0,
            "slim/sparsity_goal": self.goal or 0.0,
            "slim/sparsity_reached": self.reached or 0.0,
        }

    def state(self) -> dict[str, Any]:
        return {"quota": self.quota, "goal": self.goal, "reached": self.reached}

    def load_state(self, state: dict[str, Any]) -> None:
        self.quota = state.get("quota")
        self.goal = state.get("goal")
        self.reached = state.get("reached")
