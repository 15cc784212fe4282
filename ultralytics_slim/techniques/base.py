"""The interface every technique implements, and the registry that maps recipe keys to technique classes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ultralytics_slim.schedule import Schedule

TECHNIQUES: dict[str, type[Technique]] = {}


def register(name: str):
    """Class decorator: register a technique under the recipe section it reads."""

    def wrap(cls: type[Technique]) -> type[Technique]:
        cls.name = name
        TECHNIQUES[name] = cls
        return cls

    return wrap


class Technique:
    """One compression technique, driven by the trainer's controller at Ultralytics events.

    Every hook has a do-nothing default so a technique implements only the events it needs. `state` must be plain,
    picklable data: it travels in the checkpoint's `train_args` and comes back through `load_state` on resume.
    """

    name: ClassVar[str]

    def __init__(self, cfg: BaseModel, schedule: Schedule):
        self.cfg = cfg
        self.schedule = schedule
        self.window = schedule.windows[self.name]

    @classmethod
    def preflight(cls, cfg: BaseModel) -> None:
        """Checks that need neither model nor data (optional packages, files); run before any run directory exists."""

    def check(self, trainer: Any) -> None:
        """Validate against the real model and data before epoch 0; raise SlimConfigError on a problem."""

    def setup(self, trainer: Any) -> None:
        """Attach to a trainer whose model, optimizer and EMA exist (fresh start or resume)."""

    def on_epoch_start(self, trainer: Any) -> bool:
        """Act at the start of `trainer.epoch`; return True if the model's structure changed."""
        return False

    def on_grads_unscaled(self, trainer: Any) -> None:
        """Modify gradients after AMP unscaling and clipping, right before the optimizer step."""

    def metrics(self, trainer: Any) -> dict[str, float]:
        return {}

    def state(self) -> dict[str, Any]:
        """Plain data needed to resume."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what `state` returned."""
