"""The two patches that make `slim=` a stock Ultralytics argument; applied by `_hook` when Ultralytics loads.

1. `slim` becomes a known key of Ultralytics' default config, so the CLI accepts it (and still rejects `slimm=`
   with its own suggestion).
2. `Model.train` picks the slim trainer of the model's task when the run needs it: `slim=` was given, the run
   resumes a slim checkpoint, or the model (also one resumed) was pruned, so that it is not rebuilt from its yaml.
   Otherwise it calls the stock `train` unchanged, without `slim` (so `slim=None` is exactly a stock run).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ultralytics_slim.markers import is_pruned, register_slim_key


def _resumes_slim_run(model: Any, resume: Any) -> bool:
    """Whether the run that `resume=` continues needs the slim trainer: a slim run, or the fine-tune of a pruned model
    (which the stock trainer would rebuild at full width); the checkpoint is found as the stock trainer finds it."""
    if isinstance(resume, (str, Path)):
        from ultralytics.nn.tasks import load_checkpoint
        from ultralytics.utils.files import get_latest_run

        try:  # a missing path resumes the latest run, as in `BaseTrainer.check_resume`
            resumed, ckpt = load_checkpoint(resume if Path(resume).is_file() else get_latest_run())
        except Exception:  # noqa: BLE001 - nothing to resume: the stock trainer reports it in its own words
            return False
    else:
        resumed, ckpt = model.model, model.ckpt or {}
    return (ckpt.get("train_args") or {}).get("slim") is not None or is_pruned(resumed)


def _slim_requested(model: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a `Model.train(**kwargs)` call needs the slim trainer."""
    if kwargs.get("slim") is not None:
        return True
    if kwargs.get("resume"):
        return _resumes_slim_run(model, kwargs["resume"])
    return is_pruned(model.model)


def _patch_train(model_cls: type) -> None:
    """Wrap `Model.train` so that slim runs get the slim trainer."""
    if getattr(model_cls.train, "__slim__", False):
        return
    stock_train = model_cls.train

    @functools.wraps(stock_train)
    def train(self, trainer=None, **kwargs):
        if "slim" in kwargs and kwargs["slim"] is None:
            del kwargs["slim"]  # e.g. `model.train(slim=args.slim)` with the option unset: a stock run
        if trainer is None and _slim_requested(self, kwargs):
            from ultralytics_slim.trainer import slim_trainer

            trainer = slim_trainer(self.task)
        return stock_train(self, trainer=trainer, **kwargs)

    train.__slim__ = True
    model_cls.train = train


def apply(name: str, module: Any) -> None:
    """Patch the Ultralytics module `name` that has just been executed."""
    if name == "ultralytics.utils":
        register_slim_key(module)
    elif name == "ultralytics.engine.model":
        _patch_train(module.Model)
