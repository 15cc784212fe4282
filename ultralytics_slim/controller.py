"""The controller: builds the recipe's techniques and routes trainer events to them in schedule order."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from ultralytics import __version__
from ultralytics.utils import RANK
from ultralytics.utils.torch_utils import get_flops, get_num_params, unwrap_model

from ultralytics_slim import monitor, report
from ultralytics_slim.recipe import Recipe, load_recipe
from ultralytics_slim.schedule import ORDER, Schedule, build_schedule
from ultralytics_slim.techniques import TECHNIQUES, Technique, load_all


class SlimController:
    """Owns one run's techniques; all of its state is plain data in `state()`."""

    def __init__(self, recipe: Recipe, schedule: Schedule, state: dict[str, Any] | None = None):
        load_all()
        self.recipe = recipe
        self.schedule = schedule
        self.techniques: list[Technique] = [
            TECHNIQUES[name](getattr(recipe, name), schedule) for name in ORDER if getattr(recipe, name) is not None
        ]
        state = state or {}
        for t in self.techniques:
            t.load_state(state.get(t.name, {}))
        self.gamma_hist: list[list[int]] = list(state.get("gamma_hist", []))  # per epoch, for the report
        self.last_metrics: dict[str, float] = {}

    @classmethod
    def from_args(cls, args: Any) -> SlimController:
        """Rebuild the controller from the resolved `args.slim` (fresh run, resume or DDP worker alike)."""
        recipe = load_recipe(args.slim["recipe"])
        return cls(recipe, build_schedule(recipe, args.epochs), args.slim.get("state"))

    @staticmethod
    def preflight(recipe: Recipe) -> None:
        """Checks that need neither model nor data (optional packages, teacher files); run before any I/O."""
        load_all()
        for name in ORDER:
            if getattr(recipe, name) is not None:
                TECHNIQUES[name].preflight(getattr(recipe, name))

    def technique(self, name: str) -> Technique | None:
        """The technique of a recipe section, if the recipe has it."""
        return next((t for t in self.techniques if t.name == name), None)

    def setup(self, trainer: Any) -> None:
        """Check every technique against the real model, keep the starting model for the report, attach them."""
        for t in self.techniques:
            t.check(trainer)
        if not trainer.resume and RANK in {-1, 0}:
            start = deepcopy(unwrap_model(trainer.model)).half()
            torch.save({"model": start, "train_args": vars(trainer.args), "version": __version__}, trainer.wdir / "start.pt")
        for t in self.techniques:
            t.setup(trainer)

    def on_epoch_start(self, trainer: Any) -> bool:
        """Let each technique act at the epoch start; True if any changed the model's structure."""
        changed = False
        for t in self.techniques:
            changed |= t.on_epoch_start(trainer)
        return changed

    def on_grads_unscaled(self, trainer: Any) -> None:
        """Gradient-side regularization, between AMP unscaling and the optimizer step."""
        for t in self.techniques:
            t.on_grads_unscaled(trainer)

    def epoch_metrics(self, trainer: Any) -> dict[str, float]:
        """The plugin's per-epoch figures; the same keys every epoch so results.csv keeps its columns."""
        model = unwrap_model(trainer.ema.ema if trainer.ema else trainer.model)
        metrics = {
            "slim/params": float(get_num_params(model)),
            "slim/GFLOPs": float(get_flops(model)),  # at 640 px, as `yolo` prints it
            **monitor.gamma_stats(model),
        }
        self.gamma_hist.append(report.gamma_histogram(model))
        for t in self.techniques:
            metrics.update(t.metrics(trainer))
        self.last_metrics = metrics
        return metrics

    def state(self) -> dict[str, Any]:
        """Plain-data state of every technique, stored in `args.slim['state']`."""
        return {**{t.name: t.state() for t in self.techniques}, "gamma_hist": self.gamma_hist}
