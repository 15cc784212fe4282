"""The controller: what the plugin does at each training event, in order, for one run's techniques.

    event (who fires it)                          what happens, in this order
    trainer __init__ (SlimTrainerMixin)           recipe validated, schedule built, `preflight` of each technique
    end of stock `_setup_train` (mixin)           `check` (real model and data), weights/start.pt, `setup`
    on_train_epoch_start (callback)               `on_epoch_start` of each technique in phase order; if one changed
                                                  the model's structure, the trainer rebuilds optimizer, EMA, DDP
                                                  and rewrites last.pt (Ultralytics' NaN recovery reloads it);
                                                  optimizer state follows the elements the techniques' `sources` trace
    optimizer step (wrapped `scaler.step`)        `on_grads_unscaled` (after AMP unscale and clipping), the stock
                                                  step, then `after_optimizer_step` (before the EMA update)
    validate (mixin, every epoch's validation)    `before_validation` of each technique (on the EMA model), then the
                                                  stock validation
    save_metrics (mixin, rank 0, once per epoch)  figures of every technique -> results.csv columns and TensorBoard
    save_model (mixin)                            state of every technique -> args.slim -> checkpoint train_args
    on_train_end (callback, rank 0)               report; TensorBoard writer closed

Phase order is the table's (`ultralytics_slim.recipe.PHASES`): the teacher is copied before a pruning step.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from ultralytics import __version__
from ultralytics.utils import RANK
from ultralytics.utils.torch_utils import get_flops, get_num_params, unwrap_model

from ultralytics_slim import monitor, report
from ultralytics_slim.callbacks import tensorboard
from ultralytics_slim.recipe import PHASES, Recipe, load_recipe
from ultralytics_slim.schedule import Schedule, build_schedule
from ultralytics_slim.techniques import Technique, technique_class


class SlimController:
    """Owns one run's techniques; all of its state is plain data in `state()`."""

    def __init__(self, recipe: Recipe, schedule: Schedule, state: dict[str, Any] | None = None):
        self.recipe = recipe
        self.schedule = schedule
        self.techniques: list[Technique] = [
            technique_class(PHASES[name])(name, cfg, schedule) for name, cfg in recipe.phases()
        ]
        state = state or {}
        for t in self.techniques:
            t.load_state(state.get(t.name, {}))
        self.gamma_hist: list[list[int]] = list(state.get("gamma_hist", []))  # per epoch, for the report

    @classmethod
    def from_args(cls, args: Any) -> SlimController:
        """Rebuild the controller from the resolved `args.slim` (fresh run, resume or DDP worker alike)."""
        recipe = load_recipe(args.slim["recipe"])
        return cls(recipe, build_schedule(recipe, args.epochs), args.slim.get("state"))

    @staticmethod
    def preflight(recipe: Recipe) -> None:
        """Checks that need neither model nor data (optional packages, teacher files); run before any I/O."""
        for name, cfg in recipe.phases():
            technique_class(PHASES[name]).preflight(cfg)

    def technique(self, name: str) -> Technique | None:
        """The technique of a recipe section, if the recipe has it."""
        return next((t for t in self.techniques if t.name == name), None)

    def setup(self, trainer: Any) -> None:
        """Check every technique against the real model, keep the starting model for the report, attach them."""
        for t in self.techniques:
            t.check(trainer)
        if not trainer.resume and RANK in {-1, 0}:
            start = deepcopy(unwrap_model(trainer.model)).half()
            torch.save(
                {"model": start, "train_args": vars(trainer.args), "version": __version__}, trainer.wdir / "start.pt"
            )
        for t in self.techniques:
            t.setup(trainer)

    def on_epoch_start(self, trainer: Any) -> None:
        """Let each technique act at the epoch start; rebuild training state if any changed the model's structure."""
        before = trainer.optimizer_snapshot()
        changed = [t.on_epoch_start(trainer) for t in self.techniques]  # every technique acts, in phase order
        if any(changed):
            moved = [t.sources() for t, c in zip(self.techniques, changed) if c]  # those that acted just now
            trainer.on_structure_changed(before, {n: i for m in moved for n, i in m.items()})

    def on_grads_unscaled(self, trainer: Any) -> None:
        """Gradient-side regularization, between AMP unscaling and the optimizer step."""
        for t in self.techniques:
            t.on_grads_unscaled(trainer)

    def after_optimizer_step(self, trainer: Any) -> None:
        """Weight-side updates (proximal steps) right after the optimizer step."""
        for t in self.techniques:
            t.after_optimizer_step(trainer)

    def before_validation(self, trainer: Any) -> None:
        """Let each technique prepare the EMA model that is about to be validated and saved."""
        for t in self.techniques:
            t.before_validation(trainer)

    def on_epoch_metrics(self, trainer: Any) -> dict[str, float]:
        """The plugin's per-epoch figures, also written to TensorBoard; the same keys every epoch (results.csv)."""
        model = unwrap_model(trainer.ema.ema if trainer.ema else trainer.model)
        metrics = {
            "slim/params": float(get_num_params(model)),
            "slim/GFLOPs": float(get_flops(model)),  # at 640 px, as `yolo` prints it
            **monitor.gamma_stats(model),
        }
        self.gamma_hist.append(report.gamma_histogram(model))
        for t in self.techniques:
            metrics.update(t.metrics(trainer))
        tensorboard.log_epoch(trainer, metrics)
        return metrics

    def on_train_end(self, trainer: Any) -> None:
        """Write the before/after report into the run directory and close the plugin's TensorBoard writer."""
        report.build_report(
            trainer.save_dir,
            trainer.args.data,
            trainer.args.imgsz,
            self.state(),
            final_metrics=trainer.metrics,
            latency_runs=self.recipe.report.latency_runs,
            device=trainer.args.device,
        )
        tensorboard.close(trainer)

    def state(self) -> dict[str, Any]:
        """Plain-data state of every technique, stored in `args.slim['state']`."""
        return {**{t.name: t.state() for t in self.techniques}, "gamma_hist": self.gamma_hist}
