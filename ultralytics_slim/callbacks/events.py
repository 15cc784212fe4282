"""Schedule events: technique actions at epoch starts and the report at the end of a slim run."""

from __future__ import annotations

from typing import Any


def on_train_epoch_start(trainer: Any) -> None:
    """Run the techniques' epoch-start actions; rebuild training state if the model's structure changed."""
    if trainer.slim.on_epoch_start(trainer):
        trainer.on_structure_changed()


callbacks = {"on_train_epoch_start": on_train_epoch_start}
