"""Sparsity training: the proximal step is exact, and `strength: auto` zeroes what pruning removes under both optimizers."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import pytest
import torch
from conftest import train_args
from ultralytics import YOLO
from ultralytics.nn.tasks import load_checkpoint

from ultralytics_slim import SlimDetectionTrainer, pruning
from ultralytics_slim.data import make_dataset


@pytest.fixture(scope="module")
def steps_data(data_root: Path) -> str:
    """32 images: with batch 8 and nbs 8, four optimizer steps per epoch."""
    return str(make_dataset(data_root / "steps", "detect", n_train=32, n_val=4, imgsz=64))


def prunable_gammas(model: torch.nn.Module) -> torch.Tensor:
    """|gamma| of every BN channel that pruning may remove."""
    return torch.cat([bn.weight.detach().abs().float() for _, bn in pruning.prunable_batchnorms(model)])


def removed_fraction(model: torch.nn.Module, macs: float, max_cut: float) -> float:
    """Fraction of the prunable BN channels that pruning a copy of `model` to `macs` of its MACs in one step removes."""
    before = {n: bn.num_features for n, bn in pruning.prunable_batchnorms(model)}
    copy = deepcopy(model)
    pruning.prune_to(copy, "macs", pruning.count_macs_params(copy)[0] * macs, max_cut=max_cut)
    after = {n: m.num_features for n, m in copy.named_modules() if n in before}
    return 1 - sum(after.values()) / sum(before.values())


def test_explicit_strength_is_an_exact_proximal_step_on_model_and_ema(tmp_path, detect_data):
    """With zero gradients, one step moves each prunable gamma by exactly lr * strength, clipped at 0, in model and EMA."""
    strength = 0.5
    args = train_args(tmp_path, data=detect_data, model="yolov8n.yaml", optimizer="SGD", momentum=0.0, warmup_epochs=0)
    trainer = SlimDetectionTrainer(overrides={**args, "slim": {"sparsity": {"strength": strength, "end": 1}}})
    trainer._setup_train()
    trainer.epoch = 0
    bns = [bn for _, bn in pruning.prunable_batchnorms(trainer.model)]
    group = next(g for g in trainer.optimizer.param_groups if any(p is bns[0].weight for p in g["params"]))
    group["lr"] = lr = 0.03  # the BN scales' own group sets the step, whatever the other groups' lr
    with torch.no_grad():
        for i, bn in enumerate(bns):  # some gammas below the threshold lr * strength, of both signs
            bn.weight.copy_(torch.linspace(-2, 2, bn.num_features) * (0.01 if i % 2 else 1.0))
        trainer.ema.ema.load_state_dict(trainer.model.state_dict())
    before = [bn.weight.detach().clone() for bn in bns]
    (sum(p.sum() for p in trainer.model.parameters()) * 0.0).backward()
    trainer.optimizer_step()
    ema = dict(trainer.ema.ema.named_modules())
    names = {bn: n for n, bn in trainer.model.named_modules()}
    for bn, w in zip(bns, before):
        expected = w.sign() * (w.abs() - lr * strength).clamp_min(0)
        torch.testing.assert_close(bn.weight.detach(), expected)
        torch.testing.assert_close(ema[names[bn]].weight.detach(), expected)
    assert sum(int((w.abs() < lr * strength).sum()) for w in before) > 0  # the clip at 0 was exercised


def test_explicit_group_lasso_shrinks_each_channel_norm_by_lr_times_strength(tmp_path, detect_data):
    """Group soft thresholding: each coupled channel is scaled by (1 - lr * strength / its norm), clipped at 0.

    A BN scale belongs to one channel group only, so it shows that group's factor alone (conv weights, in an output
    and an input group, take both).
    """
    strength, lr = 130.0, 0.01  # a threshold of 1.3: the norms of a fresh YOLOv8n's channels lie on both sides
    args = train_args(
        tmp_path, data=detect_data, optimizer="SGD", lr0=lr, momentum=0.0, weight_decay=0.0, warmup_epochs=0
    )
    recipe = {"sparsity": {"method": "group_lasso", "strength": strength, "end": 1}}
    trainer = SlimDetectionTrainer(overrides={**args, "model": "yolov8n.yaml", "slim": recipe})
    trainer._setup_train()
    trainer.epoch = 0
    groups = pruning.channel_groups(trainer.model)

    def rows(group: list) -> torch.Tensor:
        return torch.cat([p.detach().index_select(d, i).transpose(0, d).reshape(len(i), -1) for p, d, i in group], 1)

    scales = {id(m.weight) for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    norms = [rows(g).norm(dim=1) for g in groups]
    gammas = [[(p, i, p.detach()[i].clone()) for p, _, i in g if id(p) in scales] for g in groups]
    (sum(p.sum() for p in trainer.model.parameters()) * 0.0).backward()
    trainer.optimizer_step()
    for norm, entries in zip(norms, gammas):
        for p, i, before in entries:
            torch.testing.assert_close(p.detach()[i], before * (1 - lr * strength / norm).clamp_min(0))
    norms = torch.cat(norms)
    assert (norms < lr * strength).any() and (norms > lr * strength).any()  # both the clip and the shrink happened


@pytest.mark.parametrize("optimizer", ["auto", "SGD"])  # auto picks AdamW for a run this short
def test_auto_strength_zeroes_what_pruning_removes(tmp_path, steps_data, optimizer):
    """By the end of the window, at least the fraction of prunable channels that the MACs target removes has
    |gamma| < 1e-2 (a stock run: none), and pruning then removes exactly those channels."""
    args = train_args(
        tmp_path, data=steps_data, model="yolov8n.yaml", epochs=3, nbs=8, optimizer=optimizer, save_period=1
    )
    recipe = {
        "sparsity": {"strength": "auto", "end": 2},
        "prune": {"target": {"macs": 0.5}, "steps": 1, "start": 2, "end": 3},
    }
    YOLO("yolov8n.yaml").train(**{**args, "name": "slim"}, slim=recipe)
    YOLO("yolov8n.yaml").train(**{**args, "name": "stock"})
    slim, stock = (load_checkpoint(tmp_path / n / "weights" / "epoch1.pt")[0] for n in ("slim", "stock"))  # window end
    start = load_checkpoint(tmp_path / "slim" / "weights" / "start.pt")[0].float()
    goal = removed_fraction(start, 0.5, max_cut=0.5)  # one step, capped as the recipe's default max_step_cut
    reached = float((prunable_gammas(slim) < 1e-2).float().mean())
    assert 0.2 < goal < 0.5
    assert reached >= goal - 1e-6, f"{reached:.3f} of prunable gammas below 1e-2, goal {goal:.3f}"  # float32 mean
    assert float((prunable_gammas(stock) < 1e-2).float().mean()) < 0.02
    pruned = load_checkpoint(tmp_path / "slim" / "weights" / "last.pt")[0]
    assert float((prunable_gammas(pruned) < 1e-2).float().mean()) < 0.02  # the faded channels were the ones cut


def test_auto_fade_is_linear_in_steps(tmp_path, steps_data):
    """Faded channels lose about 1/3 of their |gamma| in the first of three fade epochs (four steps each), not all of it
    at the deadline: the fade counts optimizer steps, so warmup's small learning rates do not delay it."""
    args = train_args(tmp_path, data=steps_data, model="yolov8n.yaml", epochs=4, nbs=8, save_period=1)
    YOLO("yolov8n.yaml").train(**args, slim={"sparsity": {"strength": "auto", "end": 4}})  # fades to 0 by epoch 3
    start, first, faded = (
        prunable_gammas(load_checkpoint(tmp_path / "run" / "weights" / f"{w}.pt")[0])
        for w in ("start", "epoch0", "epoch2")
    )
    goal = float((faded < 1e-2).float().mean())
    assert goal > 0.25  # the default goal without a prune section: 30% of each layer's channels
    weakest = first.sort().values[: int(goal * len(first))]
    assert 0.5 < float(weakest.mean() / start.mean()) < 0.85  # 8/12 of a yolov8n.yaml gamma (all start at 1)
    assert float((first < 1e-2).float().mean()) < 0.05
