"""Schedule events: technique actions at epoch starts and the report at the end of a slim run."""

from __future__ import annotations

from typing import Any


def on_train_epoch_start(trainer: Any) -> None:
    """Run the techniques' epoch-start actions; rebuild training state if the model's structure changed."""
    if trainer.slim.on_epoch_start(trainer):
        trainer.on_structure_changed()


def on_train_end(trainer: Any) -> None:
    """Write the before/after report into the run directory (rank 0; Ultralytics runs this event there only)."""
    from ultralytics_slim.report import build_report

    build_report(
        trainer.save_dir,
        trainer.args.data,
        trainer.args.imgsz,
        trainer.slim.state(),
        final_metrics=trainer.metrics,
        latency_runs=trainer.slim.recipe.report.latency_runs,
        device=trainer.args.device,
    )


callbacks = {"on_train_epoch_start": on_train_epoch_start, "on_train_end": on_train_end}
