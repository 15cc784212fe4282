"""Trainer glue: a mixin that hands Ultralytics' training events to the run's controller, one subclass per task.

The mixin adds no training loop of its own, and the order of events is written down in one place: the docstring of
`ultralytics_slim.controller`. Here: `slim` is taken out of the overrides and validated before `BaseTrainer.__init__`
creates the run directory, pruned models are kept from being rebuilt from their yaml, the optimizer step is wrapped
(the stock loop fires no event there), and training state is rebuilt after a technique changes the model's structure.
"""

from __future__ import annotations

import shutil
from copy import deepcopy
from typing import Any

import torch
import ultralytics.utils
from torch import nn
from ultralytics.cfg import cfg2dict, get_cfg, get_save_dir
from ultralytics.models.yolo.classify import ClassificationTrainer
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, YAML, colorstr
from ultralytics.utils.torch_utils import EarlyStopping, ModelEMA, strip_qat, unwrap_model

from ultralytics_slim import markers
from ultralytics_slim.controller import SlimController
from ultralytics_slim.errors import SlimConfigError, SlimError
from ultralytics_slim.recipe import load_recipe
from ultralytics_slim.schedule import build_schedule

PREFIX = colorstr("Slim: ")
# Validators re-check the trainer's args against Ultralytics' defaults: `slim` must be known there even when the
# start-up hook did not run (e.g. the plugin is on the path but not installed).
markers.register_slim_key(ultralytics.utils)
Snapshot = tuple[list[list[str]], dict[str, tuple[torch.Size, dict[str, Any]]]]  # optimizer groups, state by name


def _kept_state(
    shape: torch.Size, state: dict[str, Any], sources: torch.Tensor, param: torch.Tensor
) -> dict[str, Any] | None:
    """A parameter's optimizer state for the elements `sources` traces: per-element tensors follow their elements,
    scalars (the step count) carry over; None (a fresh state) for any other state, e.g. factored moments."""
    if len(sources) != param.numel():
        return None
    idx, out = sources.to(param.device), {}
    for k, v in state.items():
        if torch.is_tensor(v) and v.shape == shape:
            out[k] = v.flatten()[idx].view_as(param)
        elif not torch.is_tensor(v) or v.ndim == 0:
            out[k] = v
        else:
            return None
    return out


def _resolve(slim: Any, epochs: int) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Validate `slim=` (a path, a shipped recipe name, a dict, or the resolved form) into the form stored in args.

    The resolved form `{"recipe": {...}, "state": {...}}` is plain data, so it survives `args.yaml`, the
    checkpoint's `train_args` and the DDP re-launch, and `resume` finds the recipe there. Also returns the schedule's
    notes for the user.
    """
    if isinstance(slim, dict) and "recipe" in slim:
        recipe, state = load_recipe(slim["recipe"]), slim.get("state") or {}
    else:
        recipe, state = load_recipe(slim), {}
    schedule = build_schedule(recipe, epochs)  # raises before anything is written
    SlimController.preflight(recipe)
    resolved = {"recipe": recipe.model_dump(mode="json", exclude_none=True), "state": state}
    return resolved, schedule.notes


def _on_train_epoch_start(trainer: Any) -> None:
    trainer.slim.on_epoch_start(trainer)


def _on_train_end(trainer: Any) -> None:
    trainer.slim.on_train_end(trainer)


class SlimTrainerMixin:
    """Adds a `slim=` recipe to an Ultralytics task trainer; without a recipe it only keeps pruned models pruned."""

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        cfg = {**cfg2dict(cfg), "slim": None}
        overrides = dict(overrides or {})
        slim, notes = overrides.pop("slim", None), ()
        if slim is not None and not overrides.get("resume"):
            overrides["slim"], notes = _resolve(slim, int({**cfg, **overrides}["epochs"]))
        self._new_dir = not overrides.get("resume") and not get_save_dir(get_cfg(cfg, overrides)).exists()
        super().__init__(cfg=cfg, overrides=overrides, _callbacks=_callbacks)
        self.slim = SlimController.from_args(self.args) if self.args.slim else None
        if self.slim:
            if RANK in {-1, 0}:
                YAML.save(self.save_dir / "slim.yaml", self.args.slim["recipe"])
                for note in notes:
                    LOGGER.warning(f"{PREFIX}{note}")
            self.add_callback("on_train_epoch_start", _on_train_epoch_start)
            self.add_callback("on_train_end", _on_train_end)

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        """Keep a pruned model's architecture; the stock path would rebuild it from the yaml and drop its weights."""
        if weights is None or not markers.is_pruned(weights):
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        nc, head_nc = (
            self.data["nc"],
            weights.model[-1].nc,
        )  # the head's own count: what its output layers were built for
        if head_nc != nc:
            self._discard_new_run()  # `Model.train` calls get_model before `train()`, outside `_setup_train`
            raise SlimConfigError(
                f"model={self.args.model} is a pruned model with nc={head_nc}, but data={self.args.data} has "
                f"nc={nc}; a pruned model keeps its head, so train it on data with the same classes"
            )
        model = deepcopy(weights).float()
        strip_qat(model)  # a QAT checkpoint comes back quantized; stock `_setup_train` re-applies QAT on resume
        for p in model.parameters():
            p.requires_grad_(True)
        if verbose and RANK in {-1, 0}:
            LOGGER.info(f"{PREFIX}keeping the pruned architecture of {self.args.model}")
        return model

    def _setup_train(self):
        """Stock setup, then attach the techniques (their model checks run here, before epoch 0)."""
        try:
            super()._setup_train()
            if self.slim:
                self.slim.setup(self)
        except SlimError:
            self._discard_new_run()
            raise
        if not self.slim:
            return
        step = self.scaler.step

        def step_with_techniques(optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            self.slim.on_grads_unscaled(self)
            result = step(optimizer, *args, **kwargs)
            self.slim.after_optimizer_step(self)
            return result

        # Stock optimizer_step: unscale -> clip -> scaler.step -> EMA. Regularizing here keeps AMP on and the clip
        # (meant for the task loss) from shrinking the sparsity term.
        self.scaler.step = step_with_techniques

    def _discard_new_run(self) -> None:
        """Leave no half-made run behind when a check fails before epoch 0 (never a directory that existed before)."""
        if self._new_dir and RANK in {-1, 0}:
            shutil.rmtree(self.save_dir, ignore_errors=True)

    def optimizer_snapshot(self) -> Snapshot:
        """Each optimizer group's parameter names, and each parameter's shape and state by name, to re-populate the
        optimizer after a structural change."""
        name_of = {id(p): n for n, p in unwrap_model(self.model).named_parameters()}
        groups = [[name_of[id(p)] for p in g["params"] if id(p) in name_of] for g in self.optimizer.param_groups]
        return groups, {name_of[id(p)]: (p.shape, s) for p, s in self.optimizer.state.items() if id(p) in name_of}

    def on_structure_changed(self, before: Snapshot, sources: dict[str, torch.Tensor]) -> None:
        """Point the optimizer at the new tensors and rebuild what holds old shapes: EMA, DDP wrapper, best fitness.

        The optimizer, and so the LR scheduler that wraps it, keeps its class, groups and hyperparameters as
        Ultralytics built them, and each parameter whose elements `sources` traces (flat indices into the parameter
        before the change) keeps its per-element state (momentum, Adam's moments and step count) for those elements, as
        if the removed ones had never been there, instead of restarting Adam's estimates from zero after every pruning
        step (README, Results: +0.3 point on the benchmark's deepest cut). Other parameters start afresh.
        """
        groups, state = before
        model = unwrap_model(self.model)
        params = dict(model.named_parameters())
        self.optimizer.state.clear()
        for group, names in zip(self.optimizer.param_groups, groups):
            kept = [(n, params.pop(n)) for n in names if n in params]
            group["params"] = [p for _, p in kept]
            for n, p in kept:
                if n in state and n in sources and (new := _kept_state(*state[n], sources[n], p)) is not None:
                    self.optimizer.state[p] = new
        if lost := [n for n, p in params.items() if p.requires_grad]:
            raise RuntimeError(f"trainable parameters left out of the optimizer after a structural change: {lost[:5]}")
        if self.world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index], find_unused_parameters=True
            )
        self.ema = ModelEMA(model)
        self.best_fitness, self.stopper = None, EarlyStopping(patience=self.args.patience)  # best.pt: final shape only
        if RANK in {-1, 0} and self.epoch > self.start_epoch:
            self._save_recovery_point()

    def _save_recovery_point(self) -> None:
        """Rewrite last.pt with the changed model, as of the end of the previous epoch. Ultralytics recovers from a
        NaN loss by loading last.pt into the live model, which the shapes from before a pruning step do not fit; and
        a `resume` after a crash in this epoch continues from the pruned model, whose step the saved state counts."""
        epoch, period = self.epoch, self.save_period
        self.epoch, self.save_period = epoch - 1, -1  # no epoch{n}.pt
        try:
            self.save_model()
        finally:
            self.epoch, self.save_period = epoch, period

    def validate(self):
        """The techniques prepare the EMA model first (after a pruning step: fresh BatchNorm statistics)."""
        if self.slim:
            self.slim.before_validation(self)
        return super().validate()

    def save_model(self):
        """Record the techniques' state in `args.slim` (and so in `train_args`) before the stock checkpoint write."""
        if self.slim:
            self.args.slim = {**self.args.slim, "state": self.slim.state()}
        return super().save_model()

    def save_metrics(self, metrics: dict) -> None:
        """Add the plugin's figures (sparsity, params, GFLOPs, ...) as results.csv columns and TensorBoard scalars."""
        if self.slim:
            metrics = {**metrics, **self.slim.on_epoch_metrics(self)}
        super().save_metrics(metrics)


class SlimDetectionTrainer(SlimTrainerMixin, DetectionTrainer):
    """DetectionTrainer with `slim=` recipes."""


class SlimSegmentationTrainer(SlimTrainerMixin, SegmentationTrainer):
    """SegmentationTrainer with `slim=` recipes."""


class SlimPoseTrainer(SlimTrainerMixin, PoseTrainer):
    """PoseTrainer with `slim=` recipes."""


class SlimOBBTrainer(SlimTrainerMixin, OBBTrainer):
    """OBBTrainer with `slim=` recipes."""


class SlimClassificationTrainer(SlimTrainerMixin, ClassificationTrainer):
    """ClassificationTrainer with `slim=` recipes."""


_BY_TASK = {
    "detect": SlimDetectionTrainer,
    "segment": SlimSegmentationTrainer,
    "pose": SlimPoseTrainer,
    "obb": SlimOBBTrainer,
    "classify": SlimClassificationTrainer,
}


def slim_trainer(task: str) -> type[SlimTrainerMixin]:
    """The slim trainer class of an Ultralytics task."""
    if task not in _BY_TASK:
        raise SlimConfigError(f"slim= supports the tasks {list(_BY_TASK)}, not task={task!r}")
    return _BY_TASK[task]
