"""Trainer glue: a mixin that routes Ultralytics' training events to the recipe's techniques, one subclass per task.

The mixin adds no training loop of its own. It takes `slim` out of the overrides and validates it before
`BaseTrainer.__init__` creates the run directory, keeps pruned models from being rebuilt from their yaml, hooks the
point between AMP unscaling/clipping and the optimizer step (the stock loop fires no event there), and rebuilds optimizer,
scheduler, EMA and the DDP wrapper after a technique changes the model's structure.
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

from ultralytics_slim import _patch
from ultralytics_slim.callbacks import events, tensorboard
from ultralytics_slim.controller import SlimController
from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.recipe import load_recipe
from ultralytics_slim.schedule import build_schedule

PREFIX = colorstr("Slim: ")
# Validators re-check the trainer's args against Ultralytics' defaults: `slim` must be known there even when the
# start-up hook did not run (e.g. the plugin is on the path but not installed).
_patch.apply("ultralytics.utils", ultralytics.utils)


def _resolve(slim: Any, epochs: int) -> dict[str, Any]:
    """Validate `slim=` (a path, a shipped recipe name, a dict, or the resolved form) into the form stored in args.

    The resolved form `{"recipe": {...}, "state": {...}}` is plain data, so it survives `args.yaml`, the
    checkpoint's `train_args` and the DDP re-launch, and `resume` finds the recipe there.
    """
    if isinstance(slim, dict) and "recipe" in slim:
        recipe, state = load_recipe(slim["recipe"]), slim.get("state") or {}
    else:
        recipe, state = load_recipe(slim), {}
    build_schedule(recipe, epochs)  # raises before anything is written
    SlimController.preflight(recipe)
    return {"recipe": recipe.model_dump(mode="json", exclude_none=True), "state": state}


class SlimTrainerMixin:
    """Adds a `slim=` recipe to an Ultralytics task trainer; without a recipe it only keeps pruned models pruned."""

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        cfg = {**cfg2dict(cfg), "slim": None}
        overrides = dict(overrides or {})
        slim = overrides.pop("slim", None)
        if slim is not None and not overrides.get("resume"):
            overrides["slim"] = _resolve(slim, int(overrides.get("epochs", cfg["epochs"])))
            self._new_dir = not get_save_dir(get_cfg(cfg, overrides)).exists()
        else:
            self._new_dir = False
        super().__init__(cfg=cfg, overrides=overrides, _callbacks=_callbacks)
        self.slim = SlimController.from_args(self.args) if self.args.slim else None
        if self.slim:
            if RANK in {-1, 0}:
                YAML.save(self.save_dir / "slim.yaml", self.args.slim["recipe"])
            for module in (events, tensorboard):
                for event, func in module.callbacks.items():
                    self.add_callback(event, func)

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        """Keep a pruned model's architecture; the stock path would rebuild it from the yaml and drop its weights."""
        if weights is None or not _patch.is_pruned(weights):
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        nc = self.data["nc"]
        if getattr(weights, "nc", nc) != nc:
            raise SlimConfigError(
                f"model={self.args.model} is a pruned model with nc={weights.nc}, but data={self.args.data} has "
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
        super()._setup_train()
        if not self.slim:
            return
        try:
            self.slim.setup(self)
        except SlimConfigError:
            if self._new_dir:
                shutil.rmtree(self.save_dir, ignore_errors=True)  # leave no half-made run behind
            raise
        step = self.scaler.step

        def regularize_then_step(optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            self.slim.on_grads_unscaled(self)
            return step(optimizer, *args, **kwargs)

        # Stock optimizer_step: unscale -> clip -> scaler.step. Regularizing here keeps AMP on and the clip (meant for
        # the task loss) from shrinking the sparsity term.
        self.scaler.step = regularize_then_step

    def on_structure_changed(self) -> None:
        """Rebuild what holds the old tensors: optimizer, LR scheduler, EMA, DDP wrapper, best-fitness tracking."""
        model = unwrap_model(self.model)
        if self.world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index], find_unused_parameters=True
            )
        accumulate = max(round(self.args.nbs / self.batch_size), 1)
        iterations = -(-len(self.train_loader.dataset) // max(self.batch_size, self.args.nbs)) * self.epochs
        self.optimizer = self.build_optimizer(
            model=model,
            name=self.args.optimizer,
            lr=self.args.lr0,
            momentum=self.args.momentum,
            decay=self.args.weight_decay * self.batch_size * accumulate / self.args.nbs,
            iterations=iterations,
        )
        self._setup_scheduler()
        self.scheduler.last_epoch = self.epoch - 1  # the loop steps it to self.epoch right after this event
        self.ema = ModelEMA(model)
        self.best_fitness, self.stopper = None, EarlyStopping(patience=self.args.patience)  # best.pt: final shape only

    def save_model(self):
        """Record the techniques' state in `args.slim` (and so in `train_args`) before the stock checkpoint write."""
        if self.slim:
            self.args.slim = {**self.args.slim, "state": self.slim.state()}
        return super().save_model()

    def save_metrics(self, metrics: dict) -> None:
        """Add the plugin's figures (sparsity, params, GFLOPs, ...) as results.csv columns."""
        if self.slim:
            metrics = {**metrics, **self.slim.epoch_metrics(self)}
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
