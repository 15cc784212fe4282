"""One module per technique, each registered under the recipe key it reads."""

from __future__ import annotations

from ultralytics_slim.techniques.base import TECHNIQUES, Technique, register

__all__ = ("TECHNIQUES", "Technique", "load_all", "register")


def load_all() -> None:
    """Import every technique module so that each registers itself."""
    from ultralytics_slim.techniques import distill, prune, qat, sparsity  # noqa: F401
