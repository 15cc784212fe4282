"""Channel importance criteria for pruning, registered by the name a recipe's `prune.importance` uses.

Each entry is a factory returning a torch-pruning `Importance` (a callable that scores a group's channels). The module
imports neither torch nor the rest of the package, so the recipe schema can validate names against the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

IMPORTANCES: dict[str, Callable[[], Any]] = {}
NEEDS_GRADIENTS: set[str] = set()  # criteria that read the loss gradient of each weight (`.grad`) when ranking

# How a cut is spread over the layers (the recipe's `prune.allocation`; the report quotes these).
Allocation = Literal["global", "cost", "uniform"]
ALLOCATIONS: dict[str, str] = {
    "global": "one ranking over all layers: a layer loses channels when its scores are low against the rest of the "
    "network",
    "cost": "one ranking over all layers of importance per MAC (per param for a params target) a run of channels "
    "frees: wide high-resolution layers give first, the cheap deep ones stay",
    "uniform": "every layer gives the same fraction of its channels, so the model keeps its proportions (a smaller "
    "model of the same family has them); the ranking picks the channels within a layer",
}


def register_importance(name: str, gradients: bool = False) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorator: make a factory of torch-pruning importances available as `prune: {importance: name}`; with
    `gradients=True` the prune technique accumulates the training loss's gradients on the model before each step."""

    def wrap(factory: Callable[[], Any]) -> Callable[[], Any]:
        IMPORTANCES[name] = factory
        if gradients:
            NEEDS_GRADIENTS.add(name)
        return factory

    return wrap


@register_importance("bn_scale")
def bn_scale() -> Any:
    """Raw |BN gamma|, unnormalized so that it ranks globally (network slimming: pairs with sparsity training)."""
    import torch_pruning as tp

    return tp.importance.BNScaleImportance(normalizer=None)


@register_importance("l1")
def l1() -> Any:
    """L1 norm of each channel's weights across its coupled group."""
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=1)


@register_importance("l2")
def l2() -> Any:
    """L2 norm of each channel's weights across its coupled group."""
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=2)


@register_importance("random")
def random() -> Any:
    """Seeded random ranking: the control every criterion must beat."""
    import torch_pruning as tp

    return tp.importance.RandomImportance()


@register_importance("bn_scale_norm")
def bn_scale_norm() -> Any:
    """|BN gamma| divided by its layer's mean: raw gammas differ in scale between layers, so a global ranking of raw
    values lets a few low-scale layers absorb most of the cut; normalized, a layer loses what is weak *within* it.
    Measured by benchmarks/importance.py: the near-uniform cut this gives recovers less than raw |gamma|."""
    import torch_pruning as tp

    return tp.importance.BNScaleImportance(normalizer="mean")


@register_importance("lamp")
def lamp() -> Any:
    """Group L2 norms with LAMP normalization (Lee et al. 2021): each channel's squared norm over the sum of those not
    weaker in its layer, a score made to be ranked globally, so the per-layer allocation follows from one threshold.
    Measured by benchmarks/importance.py: it cuts the wide deep layers most and keeps mAP best after one-shot pruning."""
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=2, normalizer="lamp")


@register_importance("bn_scale_lamp")
def bn_scale_lamp() -> Any:
    """LAMP on BN scales alone (gamma^2): the layer-adaptive allocation of `lamp`, yet a channel that sparsity training
    faded to gamma = 0 still scores 0, so pruning takes what was faded (conv weights of a faded channel are not zero)."""
    import torch_pruning as tp
    from torch import nn

    return tp.importance.GroupMagnitudeImportance(
        p=2, normalizer="lamp", target_types=(nn.modules.batchnorm._BatchNorm,)
    )


@register_importance("taylor", gradients=True)
def taylor() -> Any:
    """First-order Taylor estimate of the loss change when a channel goes (Molchanov et al. 2019): |weight x gradient|
    summed over the channel's weights, averaged over its coupled group, unnormalized, so that it ranks globally. It
    knows what the data needs: on the benchmark it kept the high-resolution layers that the small objects there use
    and cut the deep ones, where magnitude criteria cut the other way."""
    import torch_pruning as tp

    return tp.importance.GroupTaylorImportance(normalizer=None)
