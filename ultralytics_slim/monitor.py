"""BatchNorm-scale statistics: how far sparsity training has driven channels towards zero."""

from __future__ import annotations

import torch
from torch import nn

THRESHOLDS = (1e-3, 1e-2)  # |gamma| below these counts as a (near-)dead channel


def batchnorm_gammas(model: nn.Module) -> dict[str, torch.Tensor]:
    """|gamma| of every BatchNorm2d, by module name, on the CPU."""
    return {n: m.weight.detach().abs().float().cpu() for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def gamma_stats(model: nn.Module) -> dict[str, float]:
    """Fraction of |gamma| below each threshold, and the mean |gamma|, over all BatchNorm2d channels."""
    gammas = list(batchnorm_gammas(model).values())
    g = torch.cat(gammas) if gammas else torch.zeros(1)
    return {
        **{f"slim/bn_sparsity@{t:g}": float((g < t).float().mean()) for t in THRESHOLDS},
        "slim/bn_gamma_mean": float(g.mean()),
    }


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution and linear layer by module name (for reports and TensorBoard)."""
    return {
        name: m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
        for name, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    }
