"""The two patches that make `slim=` a stock Ultralytics argument; applied by `_hook` when Ultralytics loads.

1. `slim` becomes a known key of Ultralytics' default config, so the CLI accepts it (and still rejects `slimm=`
   with its own suggestion).
2. `Model.train` picks the slim trainer of the model's task when the run needs it: `slim=` was given, the run
   resumes a slim checkpoint, or the model was pruned (so it is not rebuilt from its yaml). Otherwise it calls the
   stock `train` unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

PRUNED_KEY = "slim_pruned"  # set in a pruned model's `yaml`: its widths no longer follow the yaml's scale


def is_pruned(model: Any) -> bool:
    """Whether a model was pruned by ultralytics-slim and must not be rebuilt from its yaml."""
    yaml = getattr(model, "yaml", None)
    return isinstance(yaml, dict) and bool(yaml.get(PRUNED_KEY))


def _slim_requested(model: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a `Model.train(**kwargs)` call needs the slim trainer."""
    if kwargs.get("slim") is not None:
        return True
    resume = kwargs.get("resume")
    if resume:
        if isinstance(resume, str):
            from ultralytics.nn.tasks import load_checkpoint

            ckpt = load_checkpoint(resume)[1]
        else:
            ckpt = model.ckpt or {}
        return (ckpt.get("train_args") or {}).get("slim") is not None
    return is_pruned(model.model)


def _patch_train(model_cls: type) -> None:
    """Wrap `Model.train` so that slim runs get the slim trainer."""
    if getattr(model_cls.train, "__slim__", False):
        return
    stock_train = model_cls.train

    @functools.wraps(stock_train)
    def train(self, trainer=None, **kwargs):
        if trainer is None and _slim_requested(self, kwargs):
            from ultralytics_slim.trainer import slim_trainer

            trainer = slim_trainer(self.task)
        return stock_train(self, trainer=trainer, **kwargs)

    train.__slim__ = True
    model_cls.train = train


def apply(name: str, module: Any) -> None:
    """Patch the Ultralytics module `name` that has just been executed."""
    if name == "ultralytics.utils":
        module.DEFAULT_CFG_DICT.setdefault("slim", None)
    elif name == "ultralytics.engine.model":
        _patch_train(module.Model)
