"""Structured channel pruning of stock Ultralytics YOLO models (detect, segment, pose, obb, classify).

torch-pruning maps channel indices wrongly when a `chunk()`/`split()` output feeds a concat (C2f, C3k2, C2PSA, PSA,
C2), so each such block is swapped for a split-free twin whose two convolutions are the halves of the stock `cv1`. The
twin model is traced and pruned with both halves losing the same channel indices, then the halves are concatenated back
into the stock `cv1`: after pruning only stock Ultralytics classes remain and checkpoints load without this package.

Channels are ranked in blocks of `round_to` (kept widths stay multiples of 8 for fast kernels), over all layers or per
layer (`importance.ALLOCATIONS`), and the plan is computed on an exact MACs/params model before anything is cut, so
unreachable targets are rejected with the model untouched. An Attention layer is one opaque node on its residual
stream: the stream loses channels in multiples of head_dim and the layer drops as many whole heads (its
`view(...).split(dim=2)` head layout cannot be index-mapped). Head output layers (box/cls/mask/keypoint/angle convs,
DFL, Proto output, Classify.linear) keep their outputs; their inputs are pruned. Blocks that split channels in other
ways (C2fAttn, RepNCSPELAN4, ADown, A2C2f, ...) are refused.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch_pruning as tp
from torch import nn
from ultralytics.nn.modules import C2, C2PSA, DFL, PSA, Attention, C2f, Conv, Detect, Proto

from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.importance import IMPORTANCES, NEEDS_GRADIENTS, Allocation
from ultralytics_slim.monitor import channel_counts

_UNSET = object()
_CONV = nn.modules.conv._ConvNd
_BN = nn.modules.batchnorm._BatchNorm
_COSTED = (_CONV, nn.Linear, _BN)
# Blocks whose forward splits a conv output in ways the twin does not cover; torch-pruning would mis-map them.
_UNSUPPORTED_SPLIT = ("C2fAttn", "RepNCSPELAN4", "ELAN1", "ADown", "CBLinear", "A2C2f", "AAttn")
# forward function -> twin forward kind; keyed on the function so that subclasses (C3k2, C2fCIB, C2fPSA) follow C2f.
_SPLIT_FORWARDS = {C2f.forward: "c2f", C2.forward: "c2", C2PSA.forward: "c2psa", PSA.forward: "psa"}


# ----------------------------------------------------------------------------------------------------------- public API
def count_macs_params(model: nn.Module, imgsz: int = 64) -> tuple[float, int]:
    """MACs at imgsz (for ratios) and parameter count; does not change the model (mode, head caches).

    MACs are those of every convolution and linear layer (the cost pruning can change); ratios do not depend on imgsz.
    """
    with _pristine(model):
        areas = _layer_areas(model, imgsz)
    macs = sum(_Layer.of(m, areas.get(m, 0.0)).macs() for m in model.modules() if isinstance(m, (_CONV, nn.Linear)))
    return float(macs), sum(p.numel() for p in model.parameters())


def prunable_batchnorms(model: nn.Module, ignore: Sequence[str] = ()) -> list[tuple[str, nn.BatchNorm2d]]:
    """BatchNorm layers whose channels pruning may remove (used by the L1 sparsity regularizer).

    Excludes BNs inside ignored layers, attention internals and head outputs, so that sparsity pressure only goes where
    `prune_to` can cut. Returned in model order with stock module names.
    """
    with _twinned(model) as twins:
        units = _analyze(model, ignore, 64, twins).units
        bns = {_stock_module(m, twins) for u in units for g in u.groups for m in _out_modules(g) if isinstance(m, _BN)}
    return [(n, m) for n, m in model.named_modules() if m in bns]


def channel_groups(
    model: nn.Module, ignore: Sequence[str] = (), imgsz: int = 64
) -> list[list[tuple[nn.Parameter, int, torch.Tensor]]]:
    """Coupled channel groups of the STOCK model for group-lasso.

    Each group is a list of (stock parameter, dim, LongTensor idx) where idx[j] is the index along `dim` of that group's
    channel j; channel j of a group is what `prune_to` removes as one unit. Built through the twin and mapped back to
    the stock parameters (the cv1 halves map to idx and c + idx). A layer that sees a channel several times (SPPF
    concat) contributes one entry per copy; an Attention contributes its residual side (qkv input, proj output).
    """
    with _twinned(model) as twins:
        units = _analyze(model, ignore, imgsz, twins).units
        return [_stock_group(u, twins) for u in units]


def min_keep_ratio(
    model: nn.Module,
    kind: Literal["macs", "params"],
    *,
    round_to: int = 8,
    min_channels: int = 8,
    ignore: Sequence[str] = (),
    imgsz: int = 64,
) -> float:
    """Smallest reachable kept ratio (MACs or params after / before) when every prunable layer goes to its floor.

    Used to reject unreachable targets before training rather than after hours of sparsity training.
    """
    _check_kind(kind)
    with _twinned(model) as twins:
        an = _analyze(model, ignore, imgsz, twins)
        cost = _Cost(model, an.areas, kind)
        before = cost.total
        for u in an.units:
            for blk in _blocks(u, torch.zeros(u.n), round_to, min_channels):
                cost.remove(u, blk.channels)
        return cost.total / before


@dataclass
class PruneResult:
    """What one `prune_to` call did, for logs, reports and TensorBoard."""

    macs_before: float
    macs_after: float
    params_before: int
    params_after: int
    channels_before: dict[str, int] = field(repr=False)
    channels_after: dict[str, int] = field(repr=False)
    seconds: float
    kept: dict[str, list[int]] = field(default_factory=dict, repr=False)  # BN name -> surviving channel indices
    # parameter name -> for each of its elements (flattened), its flat index in the parameter before pruning
    sources: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def prune_to(
    model: nn.Module,
    kind: Literal["macs", "params"],
    target: float,
    *,
    importance: str = "lamp",
    round_to: int = 8,
    min_channels: int = 8,
    ignore: Sequence[str] = (),
    imgsz: int = 64,
    seed: int = 0,
    max_cut: float = 1.0,
    allocation: Allocation = "global",
) -> PruneResult:
    """Prune `model` IN PLACE until its MACs (or params) are <= `target` and within ~1% of it.

    `target` is an absolute count as returned by `count_macs_params` at `imgsz`. Channels of all coupled groups are
    scored with `importance` (a name in `ultralytics_slim.importance`; the default "lamp", conv weights with LAMP
    normalization) and `allocation` spreads the cut over the layers (`importance.ALLOCATIONS`: one global ranking by
    default); every layer keeps at least `min_channels` and a multiple of `round_to`. No layer loses more than `max_cut`
    of its channels while other layers still can give what the target needs (the ranking scores channels one at a
    time, and a layer emptied at once can become the network's bottleneck). Deterministic for the same weights, so
    every DDP rank takes the same decision. The model keeps its Python identity, train/eval mode, device and dtype;
    afterwards it holds only stock Ultralytics classes with consistent attributes, and head outputs keep their shapes.
    The result's `sources` say where every element of every parameter was before (what the optimizer state follows),
    and `kept` which channels of each narrowed BatchNorm survived (what feature distillation maps).

    Raises:
        SlimConfigError: unknown kind/importance, or a target below what the floors allow (the model is unchanged).
    """
    _check_kind(kind)
    if importance not in IMPORTANCES:
        raise SlimConfigError(f"importance must be one of {list(IMPORTANCES)}, got {importance!r}")
    if importance in NEEDS_GRADIENTS:  # the DFL's fixed projection, frozen by Ultralytics and never pruned, needs none
        dfl = {id(p) for m in model.modules() if isinstance(m, DFL) for p in m.parameters()}
        if missing := [n for n, p in model.named_parameters() if p.grad is None and id(p) not in dfl]:
            raise SlimConfigError(
                f"importance={importance!r} ranks channels by the loss gradient, but {missing[0]} (and "
                f"{len(missing) - 1} more) has none: run backward passes of the training loss first, with requires_grad "
                "on for frozen layers (the prune technique does)"
            )
    t0 = time.perf_counter()
    channels0 = channel_counts(model)
    requires_grad, grads, numel0 = {}, {}, {}
    for n, p in model.named_parameters():
        requires_grad[n], grads[n], numel0[n] = p.requires_grad, p.grad, p.numel()
    with _twinned(model) as twins:
        an = _analyze(model, ignore, imgsz, twins)
        macs0, params0 = _Cost(model, an.areas, "macs").total, sum(p.numel() for p in model.parameters())
        now = macs0 if kind == "macs" else params0
        plan, reached = _plan(
            model, an, kind, target, IMPORTANCES[importance](), round_to, min_channels, seed, max_cut, allocation
        )
        if reached > target:
            raise SlimConfigError(
                f"cannot prune {kind} to {target / now:.3f} of the current model: the floor is {reached / now:.3f} "
                f"(min_channels={min_channels}, round_to={round_to}); lower min_channels or raise the target"
            )
        twins.commit = bool(plan)  # from here on the halves must go back into the blocks
        if plan:
            _number_elements(model, twins)
        for unit, channels in plan:
            _execute(an.graph, unit, channels)
    sources: dict[str, torch.Tensor] = {}
    if not plan:  # nothing moved
        sources = {n: torch.arange(p.numel(), device=p.device) for n, p in model.named_parameters()}
    else:
        for n, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(n, True))
            if p.grad is None:  # not numbered: its elements' origin is unknown
                continue
            sources[n], g = p.grad.flatten().long(), grads[n]
            p.grad = None if g is None else g.flatten()[sources[n]].view_as(p)  # the gradients of what was kept
        for m in model.modules():
            if hasattr(m, "np") and hasattr(m, "f"):  # Ultralytics layer summary attribute
                m.np = sum(p.numel() for p in m.parameters())
    macs1, params1 = count_macs_params(model, imgsz)
    kept = {
        n: sources[f"{n}.weight"].tolist()
        for n, m in model.named_modules()
        if isinstance(m, _BN) and f"{n}.weight" in sources and m.num_features < numel0[f"{n}.weight"]
    }
    return PruneResult(
        macs0, macs1, params0, params1, channels0, channel_counts(model), time.perf_counter() - t0, kept, sources
    )


def _number_elements(model: nn.Module, twins: _Twins) -> None:
    """Give every parameter a gradient holding its elements' flat indices: torch-pruning selects gradients as it selects
    weights, so afterwards each gradient says where its elements came from (what the optimizer's per-element state
    and the teacher's channel map need). A split block's cv1b numbers on from its cv1a, as their merge concatenates them
    back into one cv1. A parameter too large for its dtype to count exactly gets no gradient, and so no sources."""
    for p in model.parameters():
        exact = p.dtype.is_floating_point and p.numel() <= 2 / torch.finfo(p.dtype).eps
        p.grad = torch.arange(p.numel(), dtype=p.dtype, device=p.device).view_as(p) if exact else None
    for twin in twins:
        for a, b in zip(twin.cv1a.parameters(), twin.cv1b.parameters()):
            if a.grad is not None and b.grad is not None:
                b.grad += a.numel()


# -------------------------------------------------------------------------------------------------- split-free twins
class _Twin(nn.Module):
    """Split-free stand-in for a block that splits `cv1` into halves; shares every other submodule with the block."""

    def __init__(self, stock: nn.Module, kind: str):
        """Slice the stock `cv1` into `cv1a`/`cv1b`; borrow the other submodules, so pruning them prunes the block."""
        super().__init__()
        self.kind = kind
        self.stock = [stock]  # a list keeps the block (and its untouched cv1) out of named_modules and the trace
        c = stock.c
        self.cv1a = _slice_conv(stock.cv1, torch.arange(c))
        self.cv1b = _slice_conv(stock.cv1, torch.arange(c, 2 * c))
        for name, child in stock.named_children():
            if name != "cv1":
                setattr(self, name, child)
        for attr in ("f", "i", "type", "np"):  # Ultralytics routing/summary attributes of top-level layers
            if hasattr(stock, attr):
                setattr(self, attr, getattr(stock, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same computation as the stock block with the split replaced by two convolutions."""
        a, b = self.cv1a(x), self.cv1b(x)
        if self.kind == "c2f":
            y = [a, b]
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))
        if self.kind == "c2":
            return self.cv2(torch.cat((self.m(a), b), 1))
        if self.kind == "c2psa":
            return self.cv2(torch.cat((a, self.m(b)), 1))
        b = b + self.attn(b)  # psa
        return self.cv2(torch.cat((a, b + self.ffn(b)), 1))

    def merge(self) -> nn.Module:
        """Write the (pruned) halves back into the stock `cv1` and update `c`; returns the stock block."""
        stock = self.stock[0]
        for part in ("conv", "bn"):
            new, a, b = getattr(stock.cv1, part, None), getattr(self.cv1a, part, None), getattr(self.cv1b, part, None)
            if new is None:
                continue
            for name, t in list(new.named_parameters(recurse=False)) + list(new.named_buffers(recurse=False)):
                ta, tb = getattr(a, name), getattr(b, name)
                if t.ndim == 0:  # num_batches_tracked
                    continue
                cat = torch.cat((ta.detach(), tb.detach()), 0)
                if isinstance(t, nn.Parameter):
                    p = nn.Parameter(cat, requires_grad=t.requires_grad)
                    if ta.grad is not None and tb.grad is not None:
                        p.grad = torch.cat((ta.grad, tb.grad), 0)
                    setattr(new, name, p)
                else:
                    setattr(new, name, cat)
        conv = stock.cv1.conv
        conv.in_channels, conv.out_channels = self.cv1a.conv.in_channels, conv.weight.shape[0]
        if hasattr(stock.cv1, "bn"):
            stock.cv1.bn.num_features = conv.out_channels
        stock.c = self.cv1a.conv.out_channels
        return stock


def _slice_conv(conv: Conv, idx: torch.Tensor) -> Conv:
    """Copy of an Ultralytics Conv keeping output channels `idx` (conv weight/bias and every BN tensor)."""
    new = deepcopy(conv)
    for stock, part in ((conv.conv, new.conv), (getattr(conv, "bn", None), getattr(new, "bn", None))):
        if part is None:
            continue
        for name, t in list(part.named_parameters(recurse=False)) + list(part.named_buffers(recurse=False)):
            if t.ndim == 0:
                continue
            sliced = t.detach().index_select(0, idx.to(t.device)).clone()
            if isinstance(t, nn.Parameter):
                sliced = nn.Parameter(sliced, requires_grad=t.requires_grad)
                if (grad := getattr(stock, name).grad) is not None:  # deepcopy drops it; gradient criteria rank halves
                    sliced.grad = grad.index_select(0, idx.to(grad.device)).clone()
            setattr(part, name, sliced)
    new.conv.out_channels = len(idx)
    if hasattr(new, "bn"):
        new.bn.num_features = len(idx)
    return new


class _Twins(list):
    """Twins swapped into a model; `commit` decides whether leaving merges the halves back or restores the blocks."""

    commit = False


@contextlib.contextmanager
def _twinned(model: nn.Module) -> Iterator[_Twins]:
    """Swap every split block for its twin for the duration of the context; always leaves only stock classes."""
    for name, m in model.named_modules():
        if type(m).__name__ in _UNSUPPORTED_SPLIT:
            raise SlimConfigError(f"{name} ({type(m).__name__}) splits channels in a way pruning does not support yet")
    twins, slots = _Twins(), []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            kind = _SPLIT_FORWARDS.get(getattr(type(child), "forward", None))
            if kind and isinstance(getattr(child, "cv1", None), Conv) and child.cv1.conv.out_channels == 2 * child.c:
                twin = _Twin(child, kind)
                setattr(parent, name, twin)
                twins.append(twin)
                slots.append((parent, name))
    try:
        yield twins
    finally:
        for twin, (parent, name) in zip(twins, slots):
            setattr(parent, name, twin.merge() if twins.commit else twin.stock[0])


def _stock_module(m: nn.Module, twins: _Twins) -> nn.Module:
    """The stock module a twin-model module stands for (a cv1 half maps to the stock cv1 part)."""
    for twin in twins:
        for half in (twin.cv1a, twin.cv1b):
            for part in ("conv", "bn"):
                if getattr(half, part, None) is m:
                    return getattr(twin.stock[0].cv1, part)
    return m


# ------------------------------------------------------------------------------------------------------------ analysis
@dataclass
class _Unit:
    """Channels pruned together: one torch-pruning group, or the two cv1-half groups of a twin with shared indices.

    `heads` lists the Attention layers fed by this unit's residual stream: the unit then drops whole heads, one head of
    every such layer per `head_dim` residual channels.
    """

    groups: list
    n: int
    name: str
    heads: list[Attention] = field(default_factory=list)

    @functools.cached_property
    def entries(self) -> list[tuple[nn.Module, bool, torch.Tensor]]:
        """(target, output side?, root index of each pruned index) of every group item, for the cost model."""
        return [
            (it.dep.target.module, g._DG.is_out_channel_pruning_fn(it.dep.handler), torch.tensor(it.root_idxs))
            for g in self.groups
            for it in g
        ]

    @property
    def step(self) -> int:
        """Channels per head (the residual must stay num_heads * head_dim), or 1."""
        return self.heads[0].head_dim if self.heads else 1


@dataclass
class _Analysis:
    """Dependency graph of the twin model, its prunable units and per-layer spatial areas for the cost model."""

    graph: tp.DependencyGraph
    units: list[_Unit]
    areas: dict[nn.Module, float]


def _analyze(model: nn.Module, ignore: Sequence[str], imgsz: int, twins: _Twins) -> _Analysis:
    """Trace the twin model and collect the prunable units (deterministic order)."""
    fixed, banned, outputs = _fixed_and_banned(model, ignore, twins)
    with _pristine(model):
        areas = _layer_areas(model, imgsz)
        graph = _build_graph(model, imgsz, outputs)
    attention = [n for n, m in model.named_modules() if isinstance(m, Attention)]

    def inside_attention(name: str) -> bool:
        return any(name.startswith(a + ".") for a in attention)

    untraced = [
        n
        for n, m in model.named_modules()
        if isinstance(m, (_CONV, nn.Linear))
        and m not in graph.module2node
        and not inside_attention(n)  # traced as one node
        and ".flow_model." not in n  # Pose26 RealNVP works on keypoint coordinates, not on feature channels
    ]
    if untraced:
        raise SlimConfigError(f"layers not reached by the pruning trace, cannot prune safely: {untraced[:5]}")
    names = {m: n for n, m in model.named_modules()}
    groups = [
        g
        for g in graph.get_all_groups(ignored_layers=list(fixed), root_module_types=(_CONV, nn.Linear))
        if not any(it.dep.target.module in banned for it in g)
    ]
    halves = {t.cv1a.conv: t for t in twins} | {t.cv1b.conv: t for t in twins}
    units, pairs = [], {}
    for g in groups:
        half = next((m for m in _out_modules(g) if m in halves), None)
        if half is None:
            units.append(_Unit([g], len(g[0].idxs), names[g[0].dep.target.module]))
        else:
            pairs.setdefault(halves[half], []).append(half)
    for twin, found in pairs.items():
        if len(found) == 2:  # both halves prunable; otherwise equal halves force both to stay
            c, prune_out = twin.cv1a.conv.out_channels, tp.prune_conv_out_channels
            gs = [graph.get_pruning_group(h.conv, prune_out, list(range(c))) for h in (twin.cv1a, twin.cv1b)]
            units.append(_Unit(gs, c, names[twin.cv1a.conv][: -len(".cv1a.conv")] + ".cv1"))
    units = [u for u in (_attach_heads(u) for u in units) if u is not None]
    units.sort(key=lambda u: u.name)
    return _Analysis(graph, units, areas)


def _fixed_and_banned(
    model: nn.Module, ignore: Sequence[str], twins: _Twins
) -> tuple[set[nn.Module], set[nn.Module], set[nn.Module]]:
    """Layers whose output channels stay, layers no pruned group may touch at all, and the head output layers.

    Head outputs are the bare Conv2d/Linear of the last layer (box/cls/mask/kpt/angle/dfl convs, Classify.linear) plus
    the Proto output conv. An ignored Attention is banned: its residual stream must keep num_heads * head_dim channels.
    Grouped (non-depthwise) convolutions are banned because torch-pruning does not keep their group structure.
    """
    outputs, banned = set(), set()
    head = model.model[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else None
    if head is not None:
        wrapped = {c.conv for c in head.modules() if isinstance(c, Conv)}
        outputs |= {m for m in head.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in wrapped}
        outputs |= {p.cv3.conv for p in head.modules() if isinstance(p, Proto)}
    fixed = set(outputs)
    for name, m in _stock_named_modules(model, twins):
        if any(name == s or name.startswith(s + ".") or type(m).__name__ == s for s in ignore):
            fixed |= {c for c in m.modules() if isinstance(c, (_CONV, nn.Linear))}
    for twin in twins:  # an ignored stock cv1 fixes both halves
        if twin.stock[0].cv1.conv in fixed:
            fixed |= {twin.cv1a.conv, twin.cv1b.conv}
    for m in model.modules():
        if (isinstance(m, Attention) and any(c in fixed for c in m.modules())) or (
            isinstance(m, _CONV) and 1 < m.groups and not _depthwise(m)
        ):
            banned.add(m)
    return fixed, banned, outputs


def _stock_named_modules(model: nn.Module, twins: _Twins) -> Iterator[tuple[str, nn.Module]]:
    """named_modules of the twin model as the stock model would name them, twins reported as their stock block."""
    stock_of = {t: t.stock[0] for t in twins}
    for name, m in model.named_modules():
        if m in stock_of:
            yield name, stock_of[m]
            yield from ((f"{name}.{n}", c) for n, c in stock_of[m].named_modules() if n.startswith("cv1"))
        elif ".cv1a" not in name and ".cv1b" not in name:
            yield name, m


def _attach_heads(unit: _Unit) -> _Unit | None:
    """Mark a unit whose residual stream feeds Attention layers; None when their head layout cannot be kept."""
    layers = [it.dep.target.module for g in unit.groups for it in g if isinstance(it.dep.target.module, Attention)]
    if not layers:
        return unit
    if len({a.head_dim for a in layers}) > 1 or any(a.num_heads * a.head_dim != unit.n for a in layers):
        return None
    unit.heads = list(dict.fromkeys(layers))
    return unit


class _AttentionPruner(tp.pruner.BasePruningFunc):
    """torch-pruning handler that treats an Attention layer as one node on its residual stream.

    Its head layout (`view(...).split(..., dim=2)`) cannot be index-mapped, so the residual channels it reads (qkv
    input) and writes (proj output) are pruned here, and every `head_dim` removed output channels drop the weakest
    whole head: its q/k/v rows of qkv, its value channels in pe and in proj's input.
    """

    def prune_in_channels(self, layer: Attention, idxs: Sequence[int]) -> Attention:
        """Residual channels read by qkv."""
        tp.prune_conv_in_channels(layer.qkv.conv, list(idxs))
        return layer

    def prune_out_channels(self, layer: Attention, idxs: Sequence[int]) -> Attention:
        """Residual channels written by proj, plus one whole head per head_dim channels."""
        tp.prune_conv_out_channels(layer.proj.conv, list(idxs))
        tp.prune_batchnorm_out_channels(layer.proj.bn, list(idxs))
        _drop_heads(layer, _weakest_heads(layer, len(idxs) // layer.head_dim))
        return layer

    def get_out_channels(self, layer: Attention) -> int:
        """Residual width written."""
        return layer.proj.conv.out_channels

    def get_in_channels(self, layer: Attention) -> int:
        """Residual width read."""
        return layer.qkv.conv.in_channels


def _build_graph(model: nn.Module, imgsz: int, outputs: set[nn.Module]) -> tp.DependencyGraph:
    """torch-pruning dependency graph of the (twin) model, traced in eval mode including training-only branches.

    Eval mode keeps BN statistics untouched and links the end-to-end one2one heads (detached in training); the
    training-only Pose26 sigma convs and Proto26 semantic head are run from hooks so their inputs get pruned too.
    The traced outputs are those of the head output layers, which keeps box decoding and NMS-free top-k out
    of the graph. Attention layers are traced as identity nodes handled by `_AttentionPruner`.
    """
    extras, hooks = [], [m.register_forward_hook(lambda m, i, o: extras.append(o)) for m in outputs]

    def forward(mod: nn.Module, inp: torch.Tensor) -> list:
        out = mod(inp)
        return extras if outputs else [out, extras]

    def run_after(module: nn.Module, fn) -> None:
        hooks.append(module.register_forward_hook(lambda m, i, o: extras.append(fn(i, o))))

    for m in model.modules():
        if isinstance(m, Detect):
            for trunk, branch in (("cv4", "cv4_sigma"), ("one2one_cv4", "one2one_cv4_sigma")):
                t, b = getattr(m, trunk, None), getattr(m, branch, None)
                if t is not None and b is not None:
                    for ti, bi in zip(t, b):
                        run_after(ti, lambda i, o, bi=bi: bi(o))
        if isinstance(m, Proto) and getattr(m, "semseg", None) is not None and hasattr(m, "feat_fuse"):
            run_after(m.feat_fuse, lambda i, o, s=m.semseg: s(i[0]))
    attention = [m for m in model.modules() if isinstance(m, Attention)]
    for a in attention:  # one opaque node per Attention: its internal reshapes would blow up index mapping
        a.forward = torch.Tensor.clone
    p = next(model.parameters())
    x = torch.zeros(1, _in_channels(model), imgsz, imgsz, device=p.device, dtype=p.dtype, requires_grad=True)
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model,
                example_inputs=x,
                forward_fn=forward,
                customized_pruners={Attention: _AttentionPruner()},
                verbose=False,
            )
    finally:
        for h in hooks:
            h.remove()
        for a in attention:
            del a.forward


def _in_channels(model: nn.Module) -> int:
    """Input image channels (first convolution)."""
    return next(m.in_channels for m in model.modules() if isinstance(m, _CONV))


@contextlib.contextmanager
def _pristine(model: nn.Module) -> Iterator[None]:
    """Run in eval mode and restore every module's mode and the detection heads' anchor caches afterwards.

    The head caches anchors by input shape; a cache made under inference_mode cannot join an autograd trace, so it is
    cleared for the context and put back after.
    """
    modes = {m: m.training for m in model.modules()}
    keys = ("shape", "anchors", "strides")
    caches = {m: {k: m.__dict__.get(k, _UNSET) for k in keys} for m in modes if isinstance(m, Detect)}
    for m in caches:
        m.shape = None
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        for m, saved in caches.items():
            for k, v in saved.items():
                if v is _UNSET:
                    m.__dict__.pop(k, None)
                else:
                    m.__dict__[k] = v


def _layer_areas(model: nn.Module, imgsz: int) -> dict[nn.Module, float]:
    """Output positions per image of every conv/linear (input positions for transposed convs), from one forward."""
    areas: dict[nn.Module, float] = {}

    def hook(m: nn.Module, i: tuple, o: torch.Tensor) -> None:
        if isinstance(m, nn.Linear):
            pos = o.numel() / o.shape[-1] / o.shape[0]
        else:
            pos = math.prod((i[0] if m.transposed else o).shape[2:])
        areas[m] = areas.get(m, 0.0) + pos

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (_CONV, nn.Linear))]
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, _in_channels(model), imgsz, imgsz, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    return areas


# ------------------------------------------------------------------------------------------------ cost model, planning
@dataclass
class _Layer:
    """Mutable width of one conv/linear/BN layer with the MACs and params it implies."""

    cin: int
    cout: int
    ka: int  # kernel area
    area: float  # positions per image
    dw: bool  # depthwise: one input per output, input/output/groups shrink together
    groups: int
    bias: bool
    bn: bool

    @classmethod
    def of(cls, m: nn.Module, area: float) -> _Layer:
        """Describe module `m` as it is now."""
        if isinstance(m, _BN):
            return cls(m.num_features, m.num_features, 1, 0.0, False, 1, m.affine, True)
        if isinstance(m, nn.Linear):
            return cls(m.in_features, m.out_features, 1, area, False, 1, m.bias is not None, False)
        dw = _depthwise(m)
        ka, bias = math.prod(m.kernel_size), m.bias is not None
        return cls(m.in_channels, m.out_channels, ka, area, dw, m.groups, bias, False)

    def macs(self) -> float:
        """Multiply-accumulates per image."""
        return 0.0 if self.bn else self.area * self.ka * (1 if self.dw else self.cin // self.groups) * self.cout

    def params(self) -> int:
        """Parameter count."""
        if self.bn:
            return 2 * self.cout if self.bias else 0
        return self.ka * (1 if self.dw else self.cin // self.groups) * self.cout + (self.cout if self.bias else 0)


class _Cost:
    """Exact MACs/params of a model under hypothetical channel removals (same formula as `count_macs_params`)."""

    def __init__(self, model: nn.Module, areas: dict[nn.Module, float], kind: str):
        """Describe every layer; parameters outside conv/linear/BN layers are a constant."""
        self.kind = kind
        self.layers = {m: _Layer.of(m, areas.get(m, 0.0)) for m in model.modules() if isinstance(m, _COSTED)}
        self.total = sum(self._of(layer) for layer in self.layers.values())
        if kind == "params":
            self.total += sum(p.numel() for p in model.parameters()) - sum(l.params() for l in self.layers.values())

    def _of(self, layer: _Layer) -> float:
        return layer.macs() if self.kind == "macs" else layer.params()

    def remove(self, unit: _Unit, channels: torch.Tensor, commit: bool = True) -> float:
        """Cost after removing root `channels` of `unit`; applied only when `commit` (else a what-if).

        Attention layers on the unit's residual stream also lose one whole head per head_dim channels.
        """
        saved, total = {}, self.total
        for m, out, k in _shrinks(unit, channels):
            layer = self.layers.get(m)
            if layer is None or k == 0:
                continue
            saved.setdefault(m, (layer.cin, layer.cout))
            before, tied = self._of(layer), layer.dw or layer.bn  # one width for input and output
            if out or tied:
                layer.cout -= k
            if not out or tied:
                layer.cin -= k
            total += self._of(layer) - before
        if commit:
            self.total = total
        else:
            for m, (cin, cout) in saved.items():
                self.layers[m].cin, self.layers[m].cout = cin, cout
        return total


def _shrinks(unit: _Unit, channels: torch.Tensor) -> Iterator[tuple[nn.Module, bool, int]]:
    """(layer, output side?, channels lost) for every layer touched by removing root `channels` of `unit`."""
    for m, out, roots in unit.entries:
        k = int(torch.isin(roots, channels).sum())
        for layer, side in _layers_of(m, out):
            yield layer, side, k
        if isinstance(m, Attention) and out:
            heads = k // m.head_dim
            yield m.qkv.conv, True, heads * (2 * m.key_dim + m.head_dim)
            yield m.qkv.bn, True, heads * (2 * m.key_dim + m.head_dim)
            yield m.pe.conv, True, k
            yield m.pe.bn, True, k
            yield m.proj.conv, False, k


def _layers_of(m: nn.Module, out: bool) -> list[tuple[nn.Module, bool]]:
    """Conv/linear/BN layers (and direction) a group entry prunes; an Attention node stands for its residual side."""
    if isinstance(m, Attention):
        return [(m.proj.conv, True), (m.proj.bn, True)] if out else [(m.qkv.conv, False)]
    return [(m, out)] if isinstance(m, _COSTED) else []


@dataclass
class _Block:
    """A run of a unit's least important channels whose removal keeps the width on the round_to grid."""

    score: float
    frac: float  # fraction of the unit removed once this block goes (spreads ties evenly)
    unit: int
    channels: torch.Tensor


def _blocks(unit: _Unit, scores: torch.Tensor, round_to: int, min_channels: int, index: int = 0) -> list[_Block]:
    """Removal blocks of one unit, least important first; widths stay multiples of round_to (and of head_dim)."""
    step = math.lcm(round_to, unit.step)
    floor = max(step, math.ceil(min_channels / step) * step)
    if unit.n <= floor:
        return []
    order = torch.argsort(scores, stable=True)
    widths = list(range(unit.n // step * step, floor - 1, -step))
    if widths[0] == unit.n:
        widths = widths[1:]
    blocks, start = [], 0
    for w in widths:
        chans = order[start : unit.n - w]
        blocks.append(_Block(float(scores[chans].mean()), 1 - w / unit.n, index, chans))
        start = unit.n - w
    return blocks


def _unit_scores(unit: _Unit, imp: tp.importance.Importance) -> torch.Tensor:
    """Per-channel importance of a unit (mean over its groups; magnitude fallback for groups without BN)."""
    scores = []
    for g in unit.groups:
        s = imp(g)
        if s is None:
            s = tp.importance.GroupMagnitudeImportance(p=2)(g)
        scores.append(torch.nan_to_num(s.detach().float().cpu(), nan=0.0))
    return torch.stack(scores).mean(0)


def _plan(
    model: nn.Module,
    an: _Analysis,
    kind: str,
    target: float,
    imp: tp.importance.Importance,
    round_to: int,
    min_channels: int,
    seed: int,
    max_cut: float = 1.0,
    allocation: Allocation = "global",
    tolerance: float = 0.01,
) -> tuple[list[tuple[_Unit, torch.Tensor]], float]:
    """Greedy plan: drop blocks in `allocation`'s order until the exact cost is <= target.

    Blocks that would take a unit past `max_cut` of its channels come after all others, in their own ranking, so the
    cap gives way only where the target needs it (a unit's blocks stay in order: its fraction removed only grows).

    A block that would undershoot `target` by more than `tolerance` is skipped (with the rest of its unit) so the result
    lands within ~1% of the target; when no block fits, the smallest undershoot is taken. Returns the removals per unit
    and the cost they reach (above target when the floors make it unreachable).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scores = [_unit_scores(u, imp) for u in an.units]
    blocks = [b for i, (u, s) in enumerate(zip(an.units, scores)) for b in _blocks(u, s, round_to, min_channels, i)]
    cost = _Cost(model, an.areas, kind)
    if allocation == "cost":  # mean importance per unit of cost of each channel, at the widths before this step
        for b in blocks:
            saved = cost.total - cost.remove(an.units[b.unit], b.channels, commit=False)
            b.score *= len(b.channels) / max(saved, 1e-12)
    if allocation == "uniform":  # every unit gives the same fraction; the scores pick the channels within a unit
        blocks.sort(key=lambda b: (b.frac, b.score, b.unit))
    else:
        blocks.sort(key=lambda b: (b.frac > max_cut, b.score, b.frac, b.unit))
    removed: dict[int, list[torch.Tensor]] = {}
    skipped: dict[int, tuple[float, _Block]] = {}  # first block of a unit that would undershoot the window
    for b in blocks:
        if cost.total <= target:
            break
        if b.unit in skipped:  # a unit's blocks go in order
            continue
        after = cost.remove(an.units[b.unit], b.channels, commit=False)
        if after < target * (1 - tolerance):
            skipped[b.unit] = (after, b)
            continue
        cost.remove(an.units[b.unit], b.channels)
        removed.setdefault(b.unit, []).append(b.channels)
    if cost.total > target and skipped:  # nothing lands in the window: take the smallest undershoot
        _, b = max(skipped.values(), key=lambda ab: (ab[0], -ab[1].unit))
        cost.remove(an.units[b.unit], b.channels)
        removed.setdefault(b.unit, []).append(b.channels)
    return [(an.units[i], torch.cat(c).sort().values) for i, c in sorted(removed.items())], cost.total


def _execute(graph: tp.DependencyGraph, unit: _Unit, channels: torch.Tensor) -> None:
    """Remove root `channels` from every group of the unit (the same indices in both cv1 halves)."""
    for g in unit.groups:
        graph.get_pruning_group(g[0].dep.target.module, g[0].dep.handler, channels.tolist()).prune()


def _weakest_heads(a: Attention, k: int) -> list[int]:
    """The k heads with the smallest L1 norm of their qkv rows (deterministic, ties to the lower index)."""
    w = a.qkv.conv.weight.detach().float().abs().flatten(1).sum(1).view(a.num_heads, -1).sum(1).cpu()
    return sorted(torch.argsort(w, stable=True)[:k].tolist())


def _drop_heads(a: Attention, heads: list[int]) -> None:
    """Remove whole heads: their q/k/v rows of qkv, their value channels in pe and proj's input; update num_heads."""
    per = 2 * a.key_dim + a.head_dim
    qkv = [h * per + j for h in heads for j in range(per)]
    v = [h * a.head_dim + j for h in heads for j in range(a.head_dim)]
    tp.prune_conv_out_channels(a.qkv.conv, qkv)
    tp.prune_batchnorm_out_channels(a.qkv.bn, qkv)
    tp.prune_depthwise_conv_out_channels(a.pe.conv, v)
    tp.prune_batchnorm_out_channels(a.pe.bn, v)
    tp.prune_conv_in_channels(a.proj.conv, v)
    a.num_heads -= len(heads)


# ------------------------------------------------------------------------------------------------------ group export
def _out_modules(group) -> Iterator[nn.Module]:
    """Layers whose output channels a group removes (an Attention node stands for its proj conv and BN)."""
    for it in group:
        if group._DG.is_out_channel_pruning_fn(it.dep.handler):
            yield from (m for m, _ in _layers_of(it.dep.target.module, True))


def _stock_group(unit: _Unit, twins: _Twins) -> list[tuple[nn.Parameter, int, torch.Tensor]]:
    """Map a unit of the twin model to (stock parameter, dim, idx) entries; idx[j] holds the unit's channel j.

    Output channels of the cv1b half sit at c + idx of the stock cv1; both halves read the same input channels of the
    stock cv1 weight, which is listed once.
    """
    offsets = {}
    for t in twins:
        for part in ("conv", "bn"):
            if hasattr(t.cv1a, part):
                offsets[getattr(t.cv1b, part)] = t.stock[0].c
    entries, seen = [], set()
    for g in unit.groups:
        for it in g:
            root = torch.tensor(it.root_idxs)
            for m, out in _layers_of(it.dep.target.module, g._DG.is_out_channel_pruning_fn(it.dep.handler)):
                idx = torch.tensor(it.idxs) + (offsets.get(m, 0) if out else 0)
                copies = [idx[root == r] for r in range(unit.n)]
                for k in range(min(len(c) for c in copies)):
                    sel = torch.stack([c[k] for c in copies])
                    for p, dim in _channel_params(_stock_module(m, twins), out):
                        if (key := (id(p), dim, tuple(sel.tolist()))) not in seen:
                            seen.add(key)
                            entries.append((p, dim, sel.to(p.device)))
    return entries


def _channel_params(m: nn.Module, out: bool) -> list[tuple[nn.Parameter, int]]:
    """Parameters of a layer that carry its output (or input) channels, with the dim they sit on."""
    if isinstance(m, _BN):
        return [(p, 0) for p in (m.weight, m.bias) if p is not None]
    transposed = getattr(m, "transposed", False)
    if out or (isinstance(m, _CONV) and _depthwise(m)):
        return [(m.weight, 1 if transposed else 0)] + ([(m.bias, 0)] if m.bias is not None else [])
    return [(m.weight, 0 if transposed else 1)]


def _depthwise(conv: nn.Module) -> bool:
    """One filter per channel: input, output and groups shrink together."""
    return 1 < conv.groups == conv.in_channels == conv.out_channels


def _check_kind(kind: str) -> None:
    """Reject unknown target kinds early."""
    if kind not in ("macs", "params"):
        raise SlimConfigError(f"kind must be 'macs' or 'params', got {kind!r}")
