"""ultralytics-slim: sparsity training, structured pruning, distillation and INT8 QAT in the stock `yolo train` loop.

Importing this package is cheap: trainers and recipe helpers load on first access, so the start-up hook that imports
`ultralytics_slim._hook` never pulls in torch or Ultralytics.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "load_recipe": "ultralytics_slim.recipe",
    "Recipe": "ultralytics_slim.recipe",
    "SlimError": "ultralytics_slim.errors",
    "SlimConfigError": "ultralytics_slim.errors",
    "SlimDependencyError": "ultralytics_slim.errors",
    "SlimDetectionTrainer": "ultralytics_slim.trainer",
    "SlimSegmentationTrainer": "ultralytics_slim.trainer",
    "SlimPoseTrainer": "ultralytics_slim.trainer",
    "SlimOBBTrainer": "ultralytics_slim.trainer",
    "SlimClassificationTrainer": "ultralytics_slim.trainer",
    "export_int8_onnx": "ultralytics_slim.techniques.qat",
    "export_fp32_onnx": "ultralytics_slim.deploy",
}
__all__ = ("__version__", *_LAZY)

if TYPE_CHECKING:
    from ultralytics_slim.deploy import export_fp32_onnx
    from ultralytics_slim.errors import SlimConfigError, SlimDependencyError, SlimError
    from ultralytics_slim.recipe import Recipe, load_recipe
    from ultralytics_slim.techniques.qat import export_int8_onnx
    from ultralytics_slim.trainer import (
        SlimClassificationTrainer,
        SlimDetectionTrainer,
        SlimOBBTrainer,
        SlimPoseTrainer,
        SlimSegmentationTrainer,
    )


def __getattr__(name: str):
    """Import public names on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
