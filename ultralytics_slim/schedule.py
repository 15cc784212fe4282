"""Recipe -> schedule: the recipe's `start`/`end` resolved to epochs and checked against each other and the run.

Pure Python (no torch), so a bad recipe is rejected in milliseconds, before Ultralytics creates a run directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.recipe import Recipe, When

ORDER = ("sparsity", "distill", "prune", "quantize")  # acting order within an epoch: the teacher is copied before a prune


@dataclass(frozen=True)
class Window:
    """Epochs [start, end) during which a phase is active."""

    start: int
    end: int

    def __contains__(self, epoch: int) -> bool:
        return self.start <= epoch < self.end

    def progress(self, epoch: int) -> float:
        """Fraction of the window elapsed at the start of `epoch`, in [0, 1]."""
        return min(max((epoch - self.start) / max(self.end - self.start, 1), 0.0), 1.0)


@dataclass(frozen=True)
class Schedule:
    """Resolved phase windows of one run; `prune_epochs[i]` is the epoch whose start runs pruning step i."""

    epochs: int
    windows: dict[str, Window]
    prune_epochs: tuple[int, ...] = ()

    def active(self, name: str, epoch: int) -> bool:
        """Whether phase `name` is active during `epoch`."""
        return name in self.windows and epoch in self.windows[name]


def _epoch(when: When, epochs: int) -> int:
    """An int is an epoch; a float is a fraction of the run."""
    return when if isinstance(when, int) else round(when * epochs)


def build_schedule(recipe: Recipe, epochs: int) -> Schedule:
    """Resolve a recipe's windows for a run of `epochs` epochs and check that they fit together.

    Args:
        recipe (Recipe): A validated recipe.
        epochs (int): The run's `epochs`.

    Returns:
        (Schedule): The resolved windows.

    Raises:
        SlimConfigError: When a window is empty, ends after the run, or phases overlap in an unsupported way.
    """
    windows: dict[str, Window] = {}
    problems: list[str] = []
    for name in ORDER:
        cfg = getattr(recipe, name)
        if cfg is None:
            continue
        start = _epoch(cfg.start, epochs)
        end = epochs if name == "quantize" else _epoch(cfg.end, epochs)
        where = f"{name}.start={cfg.start!r} (epoch {start})" + ("" if name == "quantize" else f", {name}.end={cfg.end!r} (epoch {end})")
        if start >= end:
            problems.append(f"'{where}': start must come before end" + (f" and before epochs={epochs}" if name == "quantize" else ""))
        elif end > epochs:
            problems.append(f"'{where}': the phase ends after the run's last epoch (epochs={epochs})")
        windows[name] = Window(start, end)

    def before(a: str, b: str, why: str) -> None:
        if a in windows and b in windows and windows[a].end > windows[b].start:
            problems.append(f"'{a}' (epochs {windows[a].start}-{windows[a].end}) must end before '{b}' starts (epoch {windows[b].start}): {why}")

    before("sparsity", "prune", "pruning ranks the channels that sparsity training drove towards zero")
    before("sparsity", "quantize", "QAT is the last phase")
    before("prune", "quantize", "QAT is the last phase and quantizes the final, pruned architecture")
    if recipe.distill and recipe.distill.teacher == "self" and "prune" in windows and windows["distill"].start > windows["prune"].start:
        problems.append(
            f"'distill.start' (epoch {windows['distill'].start}) is after 'prune.start' (epoch {windows['prune'].start}): "
            "teacher 'self' is the model before the first pruning step, so distillation must start by then"
        )
    if problems:
        raise SlimConfigError("slim recipe does not fit the run:\n  " + "\n  ".join(problems))

    prune_epochs: tuple[int, ...] = ()
    if recipe.prune:
        w = windows["prune"]
        steps = recipe.prune.steps
        prune_epochs = tuple(w.start + (i * (w.end - w.start)) // steps for i in range(steps))
    return Schedule(epochs=epochs, windows=windows, prune_epochs=prune_epochs)
