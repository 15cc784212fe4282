"""Training batches for a technique's own passes over the data (BatchNorm statistics, loss gradients, quantizer
calibration), drawn without disturbing the run.

Drawn from the trainer's loader they would consume batches of the epoch and shift every later one, and loading images
advances the random streams and changes the dataset's mosaic buffer, on which later batches depend: the weights a run
trains would depend on whether a technique had looked at the data. Here the batches come from the trainer's own
dataset, so with this epoch's augmentations (mosaic closed or not), through a loader and under random states of their
own, and the dataset's buffer and in-memory images are put back.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from copy import copy
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


@contextmanager
def _own_random_state(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's CPU generators (the ones augmentation and multi-scale draw from) for the
    block, and give them back their states after it."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


@contextmanager
def _buffer_kept(dataset: Dataset) -> Iterator[None]:
    """Put back what loading images changes in an augmenting Ultralytics dataset: its buffer of recently loaded images,
    from which mosaic draws partner images, and the images it holds in memory (an image evicted in the block and loaded
    again later would enter the buffer twice; one loaded only for the block would stay)."""
    if getattr(dataset, "buffer", None) is None:
        yield
        return
    names = ("buffer", "ims", "im_hw0", "im_hw")
    kept = [list(getattr(dataset, k)) for k in names]  # references only: the images are not copied
    try:
        yield
    finally:
        for k, v in zip(names, kept):
            getattr(dataset, k)[:] = v


@contextmanager
def _epoch_augmentations(trainer: Any, dataset: Dataset) -> Iterator[None]:
    """The augmentations this epoch trains with. The trainer closes mosaic only after the epoch-start callbacks, in
    which the techniques act, so at that epoch the dataset still has it: closed for the block, put back after."""
    closing = trainer.args.close_mosaic and trainer.epoch >= trainer.epochs - trainer.args.close_mosaic
    if not (closing and hasattr(dataset, "close_mosaic")):
        yield
        return
    transforms = dataset.transforms
    dataset.close_mosaic(hyp=copy(trainer.args))  # closing twice builds the same transforms
    try:
        yield
    finally:
        dataset.transforms = transforms


def side_batches(trainer: Any, n: int) -> Iterator[dict]:
    """Up to `n` training batches, preprocessed as the trainer would, drawn by the run's seed and epoch (mosaic partners
    come from the run's buffer as it stands); the run's loader, random states and dataset are left as they were."""
    dataset = trainer.train_loader.dataset
    seed = hash((trainer.args.seed, trainer.epoch)) % 2**32  # a tuple of ints hashes the same in every process
    loader = DataLoader(
        dataset,
        batch_size=trainer.train_loader.batch_size,
        shuffle=True,
        collate_fn=getattr(dataset, "collate_fn", None),
        generator=torch.Generator().manual_seed(seed),
    )
    batches = iter(loader)
    for i in range(min(n, len(loader))):
        with _own_random_state(seed + i), _buffer_kept(dataset), _epoch_augmentations(trainer, dataset):
            batch = trainer.preprocess_batch(next(batches))
        yield batch
