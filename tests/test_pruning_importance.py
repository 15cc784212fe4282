"""The importance criteria added for the allocation study (benchmarks/importance.py) on a real YOLOv8n at imgsz 64.

Each criterion must reach a 50% MACs target with a model that still runs; the normalized ones must also
change the per-layer allocation the way their docstrings say.
"""

from __future__ import annotations

from copy import deepcopy
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import side_trainer
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from ultralytics_slim import pruning
from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.techniques.batches import side_batches
from ultralytics_slim.techniques.distill import DistillCriterion
from ultralytics_slim.techniques.prune import loss_gradients

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


def test_taylor_ranks_by_the_loss_gradient() -> None:
    """`taylor` refuses a model without gradients (the frozen DFL needs none), and takes first what the loss does not
    feel: the P5 box and class branches, given zero gradient, go to the floor, where random gradients keep more; C2f
    halves are ranked too."""
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval()
    macs, _ = pruning.count_macs_params(model, IMGSZ)
    with pytest.raises(SlimConfigError, match=r"importance='taylor' ranks channels by the loss gradient"):
        pruning.prune_to(model, "macs", macs * 0.5, importance="taylor", imgsz=IMGSZ)
    kept = {}
    for case in ("random", "deaf P5"):
        m = deepcopy(model)
        for n, p in m.named_parameters():
            if ".dfl." in n:  # frozen by Ultralytics, so it has no gradient: never pruned, not needed
                p.requires_grad_(False)
                continue
            p.grad = torch.rand_like(p) * (case == "random" or not n.startswith(("model.22.cv2.2", "model.22.cv3.2")))
        r = pruning.prune_to(m, "macs", macs * 0.5, importance="taylor", imgsz=IMGSZ)
        assert 0.99 * macs * 0.5 <= r.macs_after <= macs * 0.5
        assert any(
            r.channels_after[f"model.{i}.cv1.conv"] < r.channels_before[f"model.{i}.cv1.conv"] for i in (2, 4, 6)
        )
        kept[case] = [r.channels_after[f"model.22.{b}.2.{j}.conv"] for b in ("cv2", "cv3") for j in (0, 1)]
    assert kept["deaf P5"] == [8, 8, 8, 8] != kept["random"], kept


def gradient_setup(data_yaml: str) -> tuple[DetectionModel, Any]:
    """A fresh YOLOv8n for `data_yaml` and a trainer-like object drawing real training batches (4 images, imgsz 64):
    epoch 0 of 100, so the same augmented images for every pass (`side_batches`)."""
    trainer = side_trainer(data_yaml, imgsz=IMGSZ, preprocess=lambda b: {**b, "img": b["img"].float() / 255})
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=trainer.data["nc"], verbose=False).eval()
    model.args = trainer.args
    return model, trainer


def test_loss_gradients_leave_training_state_alone(detect_data: str) -> None:
    """The gradient pass before a `taylor` step: every parameter (a frozen one too) gets the loss gradient, while the BN
    running statistics, the model's mode and what is frozen stay as they were."""
    model, trainer = gradient_setup(detect_data)
    model.model[0].conv.weight.requires_grad_(False)  # as `freeze=` leaves it
    stats = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
    loss_gradients(model, trainer, batches=2)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.model[1].parameters())
    assert model.model[0].conv.weight.grad.abs().sum() > 0 and not model.model[0].conv.weight.requires_grad
    assert not model.training
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers() if "running" in n)


def test_loss_gradients_rank_by_the_task_loss_alone(detect_data: str) -> None:
    """With distillation on, the gradient pass leaves the distillation term out (of the gradients and of its share of
    the loss) and the distillation criterion in place for training."""
    model, trainer = gradient_setup(detect_data)
    plain = deepcopy(model)
    loss_gradients(plain, trainer, batches=1)
    recorded = []
    term = SimpleNamespace(  # a term the gradients would show: the student's raw outputs pulled towards 0
        loss=lambda preds, batch: sum(p.square().mean() for p in preds["feats"]) * 100,
        record=lambda *a: recorded.append(a),
    )
    model.criterion = wrapped = DistillCriterion(model.init_criterion(), term)
    loss_gradients(model, trainer, batches=1)
    assert model.criterion is wrapped and not recorded
    for p, q in zip(plain.parameters(), model.parameters()):
        torch.testing.assert_close(q.grad, p.grad)
    batch = next(side_batches(trainer, 1))
    wrapped(model.train()(batch["img"]), batch)
    assert recorded  # the term is live: the pass above left it out, not a dead stub
