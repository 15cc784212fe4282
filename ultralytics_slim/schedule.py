"""Recipe -> schedule: the recipe's `start`/`end` resolved to epochs and checked against each other and the run.

Pure Python (no torch), so a bad recipe is rejected in milliseconds, before Ultralytics creates a run directory. The
rules are generic: each phase's config declares which phases must end before it starts (`needs_ended`), whether it
runs to the end of the run (`runs_to_end`), its own value-dependent rules and the epochs at which it acts (`events`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.recipe import Recipe, When


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
    """Resolved phase windows of one run, the epochs at whose start each phase acts, and notes for the user."""

    windows: dict[str, Window]
    events: dict[str, tuple[int, ...]]
    notes: tuple[str, ...] = ()


def _epoch(when: When, epochs: int) -> int:
    """An int is an epoch; a float is a fraction of the run."""
    return when if isinstance(when, int) else round(when * epochs)


def build_schedule(recipe: Recipe, epochs: int) -> Schedule:
    """Resolve a recipe's windows for a run of `epochs` epochs and check that they fit together.

    Args:
        recipe (Recipe): A validated recipe.
        epochs (int): The run's `epochs`.

    Returns:
        (Schedule): The resolved windows, event epochs and notes.

    Raises:
        SlimConfigError: When a window is empty, ends after the run, or phases overlap in an unsupported way.
    """
    windows: dict[str, Window] = {}
    problems: list[str] = []
    for name, cfg in recipe.phases():
        start = _epoch(cfg.start, epochs)
        end = epochs if cfg.runs_to_end else _epoch(cfg.end, epochs)
        where = f"{name}.start={cfg.start!r} (epoch {start})"
        if not cfg.runs_to_end:
            where += f", {name}.end={cfg.end!r} (epoch {end})"
        if start >= end:
            problems.append(
                f"'{where}': start must come before end" + (f"={epochs} (epochs)" if cfg.runs_to_end else "")
            )
        elif end > epochs:
            problems.append(f"'{where}': the phase ends after the run's last epoch (epochs={epochs})")
        windows[name] = Window(start, end)
    for name, cfg in recipe.phases():
        for first, why in cfg.needs_ended.items():
            if first in windows and windows[first].end > windows[name].start:
                problems.append(
                    f"'{first}' (epochs {windows[first].start}-{windows[first].end}) must end before '{name}' starts "
                    f"(epoch {windows[name].start}): {why}"
                )
        problems += cfg.schedule_problems(windows)
    if problems:
        raise SlimConfigError("slim recipe does not fit the run:\n  " + "\n  ".join(problems))
    events, notes = {}, []
    for name, cfg in recipe.phases():
        events[name], phase_notes = cfg.events(windows[name])
        notes += phase_notes
    return Schedule(windows=windows, events=events, notes=tuple(notes))
