"""Channel importance criteria for pruning, registered by the name a recipe's `prune.importance` uses.

Each entry is a factory returning a torch-pruning `Importance` (a callable that scores a group's channels). The module
imports neither torch nor the rest of the package, so the recipe schema can validate names against the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

IMPORTANCES: dict[str, Callable[[], Any]] = {}


def register_importance(name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorator: make a factory of torch-pruning importances available as `prune: {importance: name}`."""

    def wrap(factory: Callable[[], Any]) -> Callable[[], Any]:
        IMPORTANCES[name] = factory
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
