"""Sparsity and compression monitoring in TensorBoard, written in the same run as Ultralytics' own scalars.

When Ultralytics' TensorBoard logging is on, its writer (`ultralytics.utils.callbacks.tensorboard.WRITER`) is reused
so everything lands in one event file; otherwise the plugin writes its own event file into the run directory, since
monitoring is a feature of the plugin, not of a setting. The controller calls `log_epoch` once per trained epoch (from
`save_metrics`, so the final validation of best.pt, which Ultralytics reports as an extra `on_fit_epoch_end`, adds no
step) and `close` at the end of training.
"""

from __future__ import annotations

from typing import Any

from ultralytics.utils import LOGGER, colorstr
from ultralytics.utils.torch_utils import unwrap_model

from ultralytics_slim import monitor

PREFIX = colorstr("Slim TensorBoard: ")


def _writer(trainer: Any):
    """Ultralytics' writer when it has one, else the plugin's own, created once per run."""
    from ultralytics.utils.callbacks import tensorboard as ul_tb

    if getattr(ul_tb, "WRITER", None) is not None:
        return ul_tb.WRITER
    if getattr(trainer, "_slim_writer", None) is None:
        from torch.utils.tensorboard import SummaryWriter

        trainer._slim_writer = SummaryWriter(str(trainer.save_dir))
        LOGGER.info(f"{PREFIX}writing sparsity and compression scalars to {trainer.save_dir}")
    return trainer._slim_writer


def log_epoch(trainer: Any, metrics: dict[str, float]) -> None:
    """The epoch's plugin figures, channels per layer, and per-layer |gamma| histograms, at step epoch + 1."""
    writer = _writer(trainer)
    step = trainer.epoch + 1
    scalars = dict(metrics)
    if writer is getattr(trainer, "_slim_writer", None) and trainer.tloss and "distill" in trainer.tloss:
        scalars["train/distill"] = float(trainer.tloss["distill"])  # Ultralytics' writer logs its loss items itself
    for k, v in scalars.items():
        writer.add_scalar(k, v, step)
    model = unwrap_model(trainer.ema.ema if trainer.ema else trainer.model)
    if trainer.slim.technique("prune"):
        for name, channels in monitor.channel_counts(model).items():
            writer.add_scalar(f"slim/channels/{name}", channels, step)
    for name, gamma in monitor.batchnorm_gammas(model).items():
        if gamma.numel() and bool(gamma.isfinite().all()):  # a diverged run must not crash the monitor
            writer.add_histogram(f"slim/gamma/{name}", gamma, step)
    writer.flush()


def close(trainer: Any) -> None:
    """Close the plugin's own writer (Ultralytics closes its own)."""
    if getattr(trainer, "_slim_writer", None) is not None:
        trainer._slim_writer.close()
        trainer._slim_writer = None
