"""Iterative structured channel pruning: torch-pruning's dependency graph, stepped through the schedule.

The graph surgery lives in `ultralytics_slim.pruning`; this module decides when and how far to prune. Step i of n
keeps `ratio ** ((i + 1) / n)` of the starting model's MACs (or params), so every step removes the same fraction of
what is left and the last step lands on the target. Pruning acts on the EMA weights (what Ultralytics would save).
"""

from __future__ import annotations

from typing import Any

from ultralytics.utils import LOGGER, RANK, colorstr
from ultralytics.utils.torch_utils import get_flops, get_num_params, unwrap_model

from ultralytics_slim import pruning
from ultralytics_slim._patch import PRUNED_KEY
from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.recipe import PruneConfig
from ultralytics_slim.techniques.base import Technique, register

PREFIX = colorstr("Slim prune: ")


@register("prune")
class PruneTechnique(Technique):
    """Remove whole channels towards a MACs or params target, with fine-tuning epochs between the steps."""

    cfg: PruneConfig

    def __init__(self, cfg: PruneConfig, schedule: Any):
        super().__init__(cfg, schedule)
        self.base: float | None = None  # MACs or params of the model before the first step
        self.done = 0  # steps already taken
        self.history: list[dict[str, Any]] = []  # one entry per step, for the console, TensorBoard and the report
        self.start_channels: dict[str, int] = {}

    def _kwargs(self) -> dict[str, Any]:
        c = self.cfg
        return {"round_to": c.round_to, "min_channels": c.min_channels, "ignore": c.ignore}

    def check(self, trainer: Any) -> None:
        """Reject a target the floors and `ignore` cannot reach, naming the smallest reachable ratio."""
        if self.done:
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
        if self.base is None:
            model = unwrap_model(trainer.model)
            macs, params = pruning.count_macs_params(model)
            self.base = macs if self.cfg.target.kind == "macs" else float(params)
            self.start_channels = pruning.channel_counts(model)

    def on_epoch_start(self, trainer: Any) -> bool:
        """Take the steps scheduled for this epoch."""
        due = [i for i, e in enumerate(self.schedule.prune_epochs) if e <= trainer.epoch and i >= self.done]
        if not due:
            return False
        model = unwrap_model(trainer.model)
        model.load_state_dict(trainer.ema.ema.state_dict())  # prune what Ultralytics would have saved
        gflops_before = get_flops(model)
        for i in due:
            target = self.base * self.cfg.target.ratio ** ((i + 1) / self.cfg.steps)
            result = pruning.prune_to(
                model, self.cfg.target.kind, target, importance=self.cfg.importance, seed=i, **self._kwargs()
            )
            self.done = i + 1
            self.history.append(
                {
                    "step": self.done,
                    "epoch": trainer.epoch,
                    "macs": result.macs_after,
                    "params": result.params_after,
                    "seconds": round(result.seconds, 2),
                }
            )
        model.yaml[PRUNED_KEY] = True
        if RANK in {-1, 0}:
            self._summary(model, result, gflops_before)
        return True

    def _summary(self, model: Any, result: pruning.PruneResult, gflops_before: float) -> None:
        """One screen: params and GFLOPs before/after, the ratio reached, the most-pruned layers."""
        value = result.macs_after if self.cfg.target.kind == "macs" else result.params_after
        first, after = self.start_channels, result.channels_after
        worst = sorted(after, key=lambda n: after[n] / first.get(n, after[n]))[:5]
        LOGGER.info(
            f"{PREFIX}step {self.done}/{self.cfg.steps} at epoch {self.history[-1]['epoch'] + 1}: "
            f"{result.params_before / 1e6:.2f}M -> {get_num_params(model) / 1e6:.2f}M params, "
            f"{gflops_before:.2f} -> {get_flops(model):.2f} GFLOPs, "
            f"{self.cfg.target.kind} at {value / self.base:.1%} of start (this step "
            f"{self.cfg.target.ratio ** (self.done / self.cfg.steps):.1%}, final {self.cfg.target.ratio:.0%}) "
            f"in {result.seconds:.1f}s\n"
            + "\n".join(f"{'':>14}{n:<28} {first.get(n, after[n]):>5} -> {after[n]:>5} channels" for n in worst)
        )

    def metrics(self, trainer: Any) -> dict[str, float]:
        return {"slim/prune_steps": float(self.done)}

    def state(self) -> dict[str, Any]:
        return {"base": self.base, "done": self.done, "history": self.history, "start_channels": self.start_channels}

    def load_state(self, state: dict[str, Any]) -> None:
        self.base = state.get("base")
        self.done = state.get("done", 0)
        self.history = list(state.get("history", []))
        self.start_channels = dict(state.get("start_channels", {}))
