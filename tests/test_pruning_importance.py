"""The importance criteria added for the allocation study (benchmarks/importance.py) on a real YOLOv8n at imgsz 64.

Each criterion must reach a 50% MACs target with a model that still runs; the normalized ones must also
change the per-layer allocation the way their docstrings say.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from ultralytics_slim import pruning

IMGSZ = 64


SMALL = "model.2.cv2"  # a C2f output conv of 32 channels whose gammas are all 100x smaller than the others
FADED = "model.4.cv2"  # a C2f output conv of 64 channels whose first 16 were faded by sparsity training (gamma = 0)
_CACHE: dict[str, tuple[DetectionModel, pruning.PruneResult]] = {}


def pruned(importance: str) -> tuple[DetectionModel, pruning.PruneResult]:
    """YOLOv8n with spread-out BN scales (fresh ones are all 1.0), one small-scale layer and one faded layer, pruned to
    50% of its MACs with `importance` (once per session); the target must be met within prune_to's 1% window."""
    if importance not in _CACHE:
        torch.manual_seed(0)
        model = DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.data = torch.rand_like(m.weight) + 0.05
        model.get_submodule(SMALL).bn.weight.data *= 0.01
        model.get_submodule(FADED).bn.weight.data[:16] = 0
        macs, _ = pruning.count_macs_params(model, IMGSZ)
        r = pruning.prune_to(model, "macs", macs * 0.5, importance=importance, imgsz=IMGSZ)
        assert 0.99 * macs * 0.5 <= r.macs_after <= macs * 0.5
        _CACHE[importance] = model, r
    return _CACHE[importance]


@pytest.mark.parametrize("importance", ["bn_scale_norm", "lamp", "bn_scale_lamp"])
def test_new_criterion_meets_target_and_runs(importance: str) -> None:
    model, r = pruned(importance)
    assert r.channels_after != r.channels_before
    with torch.no_grad():
        y = model(torch.rand(1, 3, IMGSZ, IMGSZ))[0]
    assert y.shape == (1, 4 + 3, 84)  # boxes + classes for the 8x8 + 4x4 + 2x2 anchors at 64 px


def test_bn_scale_norm_ignores_layer_scale() -> None:
    """The small-scale layer loses nearly all of its channels under raw |gamma|, not once gammas are normalized."""
    kept = {}
    for importance in ("bn_scale", "bn_scale_norm"):
        r = pruned(importance)[1]
        kept[importance] = r.channels_after[f"{SMALL}.conv"] / r.channels_before[f"{SMALL}.conv"]
    assert kept["bn_scale"] <= 0.25 < kept["bn_scale_norm"], kept


@pytest.mark.parametrize("importance", ["bn_scale", "bn_scale_norm", "bn_scale_lamp"])
def test_bn_criteria_take_faded_channels(importance: str) -> None:
    """What sparsity training faded is what pruning removes, so removing it does not change the outputs."""
    kept = pruned(importance)[1].kept[f"{FADED}.bn"]
    assert min(kept) >= 16, kept
