"""What the start-up patch, the trainer and the techniques share; imports nothing of the package, so no cycle forms."""

from __future__ import annotations

from typing import Any

PRUNED_KEY = "slim_pruned"  # set in a pruned model's `yaml`: its widths no longer follow the yaml's scale


def is_pruned(model: Any) -> bool:
    """Whether a model was pruned by ultralytics-slim and must not be rebuilt from its yaml."""
    yaml = getattr(model, "yaml", None)
    return isinstance(yaml, dict) and bool(yaml.get(PRUNED_KEY))


def register_slim_key(utils: Any) -> None:
    """Make `slim` a known key of Ultralytics' default config (`ultralytics.utils`), so its CLI accepts `slim=`."""
    utils.DEFAULT_CFG_DICT.setdefault("slim", None)
