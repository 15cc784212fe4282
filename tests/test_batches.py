"""A technique's own batches (`side_batches`): this epoch's augmentations, and nothing of the run's data moved."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import torch
from conftest import side_trainer

from ultralytics_slim.techniques.batches import side_batches

STILL = dict.fromkeys(("hsv_h", "hsv_s", "hsv_v", "fliplr", "scale", "translate"), 0.0)  # mosaic the only change


def _trainer(detect_data: str, epoch: int, **overrides) -> SimpleNamespace:
    """A trainer over the 16-image set (4 batches of 4) in a 4-epoch run whose last 2 epochs close mosaic."""
    return side_trainer(
        detect_data, epoch, epochs=4, **{"seed": 0, "close_mosaic": 2, "mosaic": 1.0, **STILL, **overrides}
    )


def _images(batches) -> set[int]:
    return {int(im.long().sum()) for b in batches for im in b["img"]}


def test_side_batches_follow_the_epochs_mosaic(detect_data):
    unmixed = _images(side_batches(_trainer(detect_data, epoch=0, mosaic=0.0), 4))
    assert len(unmixed) == 16  # every image once: 4 batches of the 16

    trainer = _trainer(detect_data, epoch=1)  # before close_mosaic's last 2 epochs: mosaic
    dataset = trainer.train_loader.dataset
    transforms = dataset.transforms
    assert _images(side_batches(trainer, 4)) != unmixed  # mosaics: not the 16 images as they are

    trainer.epoch = 2  # the trainer closes mosaic only after the epoch-start callbacks: the batches must not wait
    assert _images(side_batches(trainer, 4)) == unmixed
    assert dataset.transforms is transforms  # the run's own dataset closes mosaic itself


def test_side_batches_leave_the_run_as_it_was(detect_data):
    trainer = _trainer(detect_data, epoch=1)
    dataset = trainer.train_loader.dataset
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    kept = list(dataset.buffer), list(dataset.ims)

    first = [b["img"] for b in side_batches(trainer, 2)]
    again = [b["img"] for b in side_batches(trainer, 2)]
    assert len(first) == 2 and all(torch.equal(a, b) for a, b in zip(first, again))  # same seed and epoch
    trainer.epoch = 0
    assert not torch.equal(next(side_batches(trainer, 1))["img"], first[0])  # another epoch, other batches

    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    assert dataset.buffer == kept[0] and all(a is b for a, b in zip(dataset.ims, kept[1]))
