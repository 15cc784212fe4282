"""The interface every technique implements; `technique_class` resolves a phase's technique and checks it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, ClassVar

from ultralytics_slim.errors import SlimDependencyError

if TYPE_CHECKING:
    import torch

    from ultralytics_slim.recipe import Phase, PhaseConfig
    from ultralytics_slim.schedule import Schedule


class Technique:
    """One compression technique, driven by the trainer's controller at Ultralytics events.

    Every hook has a do-nothing default so a technique implements only the events it needs. `state` must be plain,
    picklable data: it travels in the checkpoint's `train_args` and comes back through `load_state` on resume.
    """

    config: ClassVar[type[PhaseConfig]]  # the config class of the phase it implements (checked against the table)

    def __init__(self, name: str, cfg: PhaseConfig, schedule: Schedule):
        self.name = name
        self.cfg = cfg
        self.schedule = schedule
        self.window = schedule.windows[name]
        self.events = schedule.events[name]  # epochs at whose start the technique acts once

    @classmethod
    def preflight(cls, cfg: PhaseConfig) -> None:
        """Checks that need neither model nor data (optional packages, files); run before any run directory exists."""

    def check(self, trainer: Any) -> None:
        """Validate against the real model and data before epoch 0; raise SlimConfigError on a problem."""

    def setup(self, trainer: Any) -> None:
        """Attach to a trainer whose model, optimizer and EMA exist (fresh start or resume)."""

    def on_epoch_start(self, trainer: Any) -> bool:
        """Act at the start of `trainer.epoch`; return True if the model's structure changed."""
        return False

    def sources(self) -> dict[str, torch.Tensor]:
        """After an `on_epoch_start` that changed the structure: parameter name -> the flat index each of its elements
        had before, so that the optimizer keeps their state; parameters left out start with a fresh state."""
        return {}

    def on_grads_unscaled(self, trainer: Any) -> None:
        """Modify gradients after AMP unscaling and clipping, right before the optimizer step."""

    def after_optimizer_step(self, trainer: Any) -> None:
        """Modify weights right after the optimizer step (e.g. a proximal step), before the EMA update."""

    def before_validation(self, trainer: Any) -> None:
        """Act on the EMA model right before the epoch's validation, which is also what the epoch saves."""

    def metrics(self, trainer: Any) -> dict[str, float]:
        """Per-epoch figures for results.csv and TensorBoard; the same keys every epoch."""
        return {}

    def state(self) -> dict[str, Any]:
        """Plain data needed to resume."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what `state` returned."""


def technique_class(phase: Phase) -> type[Technique]:
    """Import a phase's technique and check that it implements that phase's config.

    Raises:
        SlimDependencyError: A package the technique imports is missing; the message gives the install command.
        TypeError: The table names something that is not a Technique of the phase's config (a registration bug).
    """
    module, _, name = phase.technique.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name is None or e.name == module or e.name.startswith("ultralytics_slim"):
            raise
        extra = f"[{phase.extra}]" if phase.extra else ""
        raise SlimDependencyError(
            f"the recipe section '{phase.key}' needs the package '{e.name}', which is not installed. "
            f'Install it with: pip install "ultralytics-slim{extra}"'
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Technique)) or getattr(cls, "config", None) is not phase.config:
        raise TypeError(
            f"phase '{phase.key}': {phase.technique} must be a Technique with config = {phase.config.__name__}"
        )
    return cls
