"""Sparsity regularization: network slimming (L1 on BN scales) or group lasso on coupled channel groups.

The term is added to the gradients after AMP has unscaled them (and the loss gradients were clipped), right before
the optimizer step, so AMP stays on and the strength means the same with and without it.
"""

from __future__ import annotations

from typing import Any

import torch
from ultralytics.utils.torch_utils import unwrap_model

from ultralytics_slim.recipe import SparsityConfig
from ultralytics_slim.techniques.base import Technique


def _rows(p: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    """The channels `idx` of `p` along `dim`, one flattened row per channel."""
    return p.index_select(dim, idx).transpose(0, dim).flatten(1)


class SparsityTechnique(Technique):
    """Drive the channels that pruning may remove towards zero, so that removing them costs little accuracy."""

    config = SparsityConfig

    cfg: SparsityConfig

    def __init__(self, name: str, cfg: SparsityConfig, schedule: Any):
        super().__init__(name, cfg, schedule)
        self._targets: list | None = None  # BN layers or channel groups, found once the model exists

    def strength(self, epoch: int) -> float:
        """Regularization strength during `epoch`: 0 outside the window, linearly decayed if asked."""
        if epoch not in self.window:
            return 0.0
        return self.cfg.strength * (1.0 - self.window.progress(epoch) if self.cfg.decay == "linear" else 1.0)

    def setup(self, trainer: Any) -> None:
        """Find what to regularize: only channels that pruning could remove."""
        from ultralytics_slim import pruning

        model = unwrap_model(trainer.model)
        if self.cfg.method == "bn_l1":
            self._targets = [bn for _, bn in pruning.prunable_batchnorms(model, self.cfg.ignore)]
        else:
            self._targets = pruning.channel_groups(model, self.cfg.ignore)

    @torch.no_grad()
    def on_grads_unscaled(self, trainer: Any) -> None:
        """Add the (sub)gradient of the sparsity term to the unscaled gradients."""
        s = self.strength(trainer.epoch)
        if not s:
            return
        if self.cfg.method == "bn_l1":
            for bn in self._targets:
                if bn.weight.grad is not None:
                    bn.weight.grad.add_(torch.sign(bn.weight), alpha=s)
            return
        for group in self._targets:  # group lasso: grad += s * w / ||w of the channel across its group||
            norms = sum(_rows(p, dim, idx).float().pow(2).sum(1) for p, dim, idx in group).sqrt().clamp_min(1e-12)
            for p, dim, idx in group:
                if p.grad is not None:
                    shape = [-1 if d == dim else 1 for d in range(p.dim())]
                    p.grad.index_add_(dim, idx, p.index_select(dim, idx) / norms.view(shape).to(p.dtype), alpha=s)

    def metrics(self, trainer: Any) -> dict[str, float]:
        return {"slim/sparsity_strength": self.strength(trainer.epoch)}
