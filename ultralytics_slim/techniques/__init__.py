"""One module per technique; the phase table in `ultralytics_slim.recipe` names each one and its config."""

from __future__ import annotations

from ultralytics_slim.techniques.base import Technique, technique_class

__all__ = ("Technique", "technique_class")
