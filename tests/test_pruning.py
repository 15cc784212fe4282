"""Structured channel pruning on real (tiny, randomly initialised) YOLO models at imgsz 64.

The detect tests first kill 3 of every 4 channels of each coupled group (through `channel_groups`, as sparsity training
would) and the last head of every attention layer; pruning to half the MACs then removes only dead channels, so the
pruned model must reproduce the unpruned outputs exactly. That checks the index mapping of every coupled group (C2f /
C3k2 halves, SPPF, residuals, attention heads, the detection heads) as well as `channel_groups` itself.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import BLOCK_PLUGIN
from torch import nn
from ultralytics.nn.modules import C2PSA, Attention, C2f, Detect
from ultralytics.nn.tasks import ClassificationModel, DetectionModel, OBBModel, PoseModel, SegmentationModel

from ultralytics_slim import monitor, pruning
from ultralytics_slim.errors import SlimConfigError

IMGSZ = 64
_CACHE: dict[str, tuple[nn.Module, nn.Module, pruning.PruneResult]] = {}


def build(cfg: str) -> nn.Module:
    """A model from its yaml with spread-out BN scales, as a trained model has (fresh ones are all 1.0)."""
    torch.manual_seed(0)
    if "-seg" in cfg:
        model = SegmentationModel(cfg, nc=3, verbose=False)
    elif "-pose" in cfg:
        model = PoseModel(cfg, nc=1, data_kpt_shape=(4, 3), verbose=False)
    elif "-obb" in cfg:
        model = OBBModel(cfg, nc=3, verbose=False)
    elif "-cls" in cfg:
        model = ClassificationModel(cfg, nc=3, verbose=False)
    else:
        model = DetectionModel(cfg, nc=3, verbose=False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.05, 1.0)
            m.bias.data.uniform_(-0.1, 0.1)
    return model


@torch.no_grad()
def kill_channels(model: nn.Module) -> None:
    """Zero 3 of every 4 channels of each prunable group and the last head of every attention layer."""
    for group in pruning.channel_groups(model):
        dead = torch.arange(len(group[0][2])) % 4 != 0
        for p, dim, idx in group:
            p.index_fill_(dim, idx[dead.to(idx.device)], 0.0)
    for a in model.modules():
        if isinstance(a, Attention) and a.num_heads > 1:
            per, h = 2 * a.key_dim + a.head_dim, a.num_heads - 1
            for t in (a.qkv.conv.weight, a.qkv.bn.weight, a.qkv.bn.bias):
                t[h * per : (h + 1) * per] = 0
            for t in (a.pe.bn.weight, a.pe.bn.bias):
                t[h * a.head_dim : (h + 1) * a.head_dim] = 0


def tensors(out, skip: str = "feats") -> list[torch.Tensor]:
    """Every tensor of a (nested) model output except the head inputs, whose widths pruning changes."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k, v in out.items() if k != skip for t in tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in tensors(v)]
    return []


def train_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Raw head outputs in train mode, on a copy so that BN running statistics stay as they are."""
    with torch.no_grad():
        return tensors(copy.deepcopy(model).train()(x))


def assert_stock_and_consistent(model: nn.Module) -> None:
    """Only Ultralytics/torch classes are left, with attributes that match the weights."""
    for name, m in model.named_modules():
        assert type(m).__module__.startswith(("ultralytics.nn", "torch.nn")), f"{name}: {type(m)}"
        assert all(type(p) is nn.Parameter for p in m.parameters(recurse=False)), name
        if isinstance(m, (C2f, C2PSA)):  # the split needs equal halves (inner block widths are free)
            assert m.cv1.conv.out_channels == 2 * m.c == m.cv1.bn.num_features, name
        if isinstance(m, C2PSA):
            assert m.cv2.conv.in_channels == 2 * m.c, name
        if isinstance(m, Attention):
            c = m.num_heads * m.head_dim
            assert m.qkv.conv.out_channels == m.num_heads * (2 * m.key_dim + m.head_dim), name
            assert m.qkv.conv.in_channels == c == m.proj.conv.in_channels == m.pe.conv.out_channels == m.pe.conv.groups


def pruned_detect(cfg: str) -> tuple[nn.Module, nn.Module, pruning.PruneResult]:
    """(unpruned copy, model pruned to half the MACs, result), computed once per session."""
    if cfg not in _CACHE:
        model = build(cfg)
        kill_channels(model)
        before = copy.deepcopy(model)
        macs, _ = pruning.count_macs_params(model)
        model.train()
        result = pruning.prune_to(model, "macs", 0.5 * macs)
        _CACHE[cfg] = before, model, result
    return _CACHE[cfg]


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"])
def test_detect_half_macs_exact(cfg: str) -> None:
    before, model, r = pruned_detect(cfg)
    print(f"\n{cfg}: prune_to 50% MACs took {r.seconds:.2f}s, params {r.params_after / r.params_before:.3f}")
    target = 0.5 * r.macs_before
    assert r.macs_after <= target and r.macs_after >= 0.98 * target
    assert r.params_after < r.params_before
    assert (r.macs_after, r.params_after) == pruning.count_macs_params(model, IMGSZ)
    assert model.training and all(m.training for m in model.modules())
    assert_stock_and_consistent(model)
    assert any(r.channels_after[n] < c for n, c in r.channels_before.items())
    assert_same_outputs(before, model)
    if cfg == "yolo26n.yaml":  # a second step down to the floors reaches the attention heads too
        macs = r.macs_after
        target = 1.005 * pruning.min_keep_ratio(model, "macs") * macs
        r = pruning.prune_to(model, "macs", target)
        assert r.macs_after <= target
        assert_stock_and_consistent(model)
        pairs = zip(before.modules(), model.modules())
        heads = [(a.num_heads, b.num_heads) for a, b in pairs if isinstance(a, Attention)]
        assert heads and all(after == 1 < start for start, after in heads)
        x = torch.rand(2, 3, IMGSZ, IMGSZ)
        assert [t.shape for t in train_outputs(model, x)] == [t.shape for t in train_outputs(before, x)]
        with torch.no_grad():
            model.eval()(x)


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"])
def test_sources_trace_every_kept_element_and_its_gradient(cfg: str) -> None:
    """Every parameter after pruning is its elements before, gathered by `sources` (what the optimizer state follows),
    split halves and attention heads included, and its gradient is the kept part of the gradient it had."""
    model = build(cfg).train()
    torch.manual_seed(1)
    for p in model.parameters():  # distinct values, so that a wrong index cannot match by accident
        p.data = torch.randn_like(p)
        p.grad = torch.randn_like(p)
    before = {n: (p.detach().clone(), p.grad.clone()) for n, p in model.named_parameters()}
    r = pruning.prune_to(model, "macs", 0.5 * pruning.count_macs_params(model)[0], importance="l1")
    params = dict(model.named_parameters())
    assert r.sources.keys() == params.keys()
    assert sum(p.numel() < before[n][0].numel() for n, p in params.items()) > 0.8 * len(params)
    for n, p in params.items():
        w, g = before[n]
        assert torch.equal(p.detach().flatten(), w.flatten()[r.sources[n]]), n
        assert torch.equal(p.grad.flatten(), g.flatten()[r.sources[n]]), n
    for bn, idx in r.kept.items():
        assert r.sources[f"{bn}.weight"].tolist() == idx


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo26n.yaml"])
def test_kept_channels_map_pruned_features_to_the_unpruned_model(cfg: str) -> None:
    """What feature distillation from `teacher: self` relies on: student channel j is the teacher's kept[j]."""
    from ultralytics_slim.techniques.distill import _feats, _feature_bns, feature_distill_loss

    before = pruned_detect(cfg)[0]  # dead channels to remove; the cached pruned model may be pruned further by others
    model = copy.deepcopy(before).train()
    r = pruning.prune_to(model, "macs", 0.5 * pruning.count_macs_params(model)[0])
    assert r.kept and all(len(idx) == r.channels_after[n.removesuffix(".bn") + ".conv"] for n, idx in r.kept.items())
    assert all(idx == sorted(set(idx)) for idx in r.kept.values())
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        t_feats, s_feats = (_feats(copy.deepcopy(m).train()(x)) for m in (before, model))
    kept = [r.kept.get(n) for n in _feature_bns(model)]
    assert any(k is not None for k in kept)
    for t, s, idx in zip(t_feats, s_feats, kept):
        torch.testing.assert_close(s, t if idx is None else t[:, idx], atol=1e-4, rtol=1e-4)
    assert float(feature_distill_loss(s_feats, t_feats, kept)) < 1e-6
    shuffled = [None if k is None else k[1:] + k[:1] for k in kept]  # a wrong mapping must cost something
    assert float(feature_distill_loss(s_feats, t_feats, shuffled)) > 1e-3


def assert_same_outputs(before: nn.Module, model: nn.Module) -> None:
    """Pruning only dead channels leaves every head output unchanged, in train and in eval mode."""
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    for a, b in zip(train_outputs(before, x), train_outputs(model, x), strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    mode = model.training
    with torch.no_grad():  # raw predictions (decoded/top-k outputs may reorder near-ties)
        for a, b in zip(tensors(before.eval()(x)[1]), tensors(model.eval()(x)[1]), strict=True):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    model.train(mode)


@pytest.mark.parametrize("cfg", ["yolo26n-seg.yaml", "yolo26n-pose.yaml", "yolov8n-obb.yaml", "yolo11n-cls.yaml"])
def test_tasks_exact(cfg: str) -> None:
    """Task heads (Proto26 semantic branch, Pose26 sigma convs, OBB angle, Classify) keep exact outputs too."""
    model = build(cfg)
    kill_channels(model)
    before = copy.deepcopy(model)
    macs, _ = pruning.count_macs_params(model)
    r = pruning.prune_to(model, "macs", 0.5 * macs)
    assert 0.98 * 0.5 * macs <= r.macs_after <= 0.5 * macs
    assert_stock_and_consistent(model)
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    for a, b in zip(train_outputs(before, x), train_outputs(model, x), strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "cfg, kind, ratio, importance, ignore, kept",
    [
        ("yolo11n-seg.yaml", "macs", 0.5, "bn_scale", ["SPPF"], "model.9."),
        ("yolo26n-pose.yaml", "macs", 0.5, "l2", [], None),
        ("yolov8n-obb.yaml", "params", 0.6, "l1", [], None),
        ("yolo11n-cls.yaml", "macs", 0.5, "random", ["model.2"], "model.2."),
    ],
)
def test_tasks(cfg: str, kind: str, ratio: float, importance: str, ignore: list[str], kept: str | None) -> None:
    model = build(cfg).eval()
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    shapes = [t.shape for t in train_outputs(model, x)]
    channels = monitor.channel_counts(model)
    target = ratio * pruning.count_macs_params(model)[kind == "params"]
    r = pruning.prune_to(model, kind, target, importance=importance, ignore=ignore)
    after = r.macs_after if kind == "macs" else r.params_after
    assert 0.98 * target <= after <= target
    assert not model.training
    assert_stock_and_consistent(model)
    assert [t.shape for t in train_outputs(model, x)] == shapes
    with torch.no_grad():
        model(x)
    if kept:  # ignored layers keep their output channels
        names = [n for n in channels if n.startswith(kept)]
        assert names and all(r.channels_after[n] == channels[n] for n in names)


def test_deterministic() -> None:
    before, pruned, _ = pruned_detect("yolov8n.yaml")
    again = copy.deepcopy(before)
    pruning.prune_to(again, "macs", 0.5 * pruning.count_macs_params(again)[0])
    assert monitor.channel_counts(again) == monitor.channel_counts(pruned)
    for (n, a), b in zip(again.state_dict().items(), pruned.state_dict().values(), strict=True):
        assert torch.equal(a, b), n


def test_random_importance_follows_seed() -> None:
    models = [build("yolo11n-cls.yaml") for _ in range(3)]
    target = 0.5 * pruning.count_macs_params(models[0])[0]
    for m, seed in zip(models, (3, 3, 4)):
        pruning.prune_to(m, "macs", target, importance="random", seed=seed)
    counts = [monitor.channel_counts(m) for m in models]
    assert counts[0] == counts[1] != counts[2]


def test_floor_and_unreachable_target() -> None:
    model = build("yolov8n.yaml")
    floor = pruning.min_keep_ratio(model, "macs")
    assert 0 < floor < 0.5
    assert pruning.min_keep_ratio(model, "macs", min_channels=64) > floor
    assert 0 < pruning.min_keep_ratio(model, "params") < 1
    state = {k: v.clone() for k, v in model.state_dict().items()}
    macs, _ = pruning.count_macs_params(model)
    with pytest.raises(SlimConfigError, match="floor"):
        pruning.prune_to(model, "macs", 0.9 * floor * macs)
    assert_stock_and_consistent(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(SlimConfigError):
        pruning.prune_to(model, "flops", macs)


@pytest.mark.parametrize("ratio", [0.8, 0.15])
def test_max_cut_spreads_a_step_unless_the_target_needs_more(ratio: float) -> None:
    """`max_cut` bounds what one call takes from each layer while other layers can give; when they cannot, it gives way
    to the target rather than failing. Gradients that favour one cut (random `taylor` scores) make the cap bind."""
    torch.manual_seed(0)
    model = build("yolov8n.yaml")
    for p in model.parameters():
        p.grad = torch.rand_like(p) * torch.rand(1)
    macs, _ = pruning.count_macs_params(model)
    worst = {}
    for c in (1.0, 0.5):
        m = copy.deepcopy(model)
        for p, q in zip(model.parameters(), m.parameters()):
            q.grad = p.grad
        r = pruning.prune_to(m, "macs", macs * ratio, importance="taylor", max_cut=c)
        assert 0.99 * macs * ratio <= r.macs_after <= macs * ratio
        worst[c] = max(1 - r.channels_after[n] / r.channels_before[n] for n in r.channels_before)
    assert worst[1.0] > 0.9
    assert worst[0.5] <= 0.5 if ratio == 0.8 else worst[0.5] > 0.5  # halving every layer leaves ~25% of the MACs


def test_allocations_spread_the_same_cut_differently() -> None:
    """The same MACs target, three allocations. Ranked per MAC (`cost`), the high-resolution layers, where a channel
    costs the most MACs, give more and the cheap deep ones stay: more parameters. `uniform` takes the same fraction of
    every layer: YOLOv8s cut to YOLOv8n's MACs gets YOLOv8n's widths, within a grid step."""
    macs = pruning.count_macs_params(build("yolov8n.yaml"))[0]
    results = {}
    for allocation in ("global", "cost", "uniform"):
        r = pruning.prune_to(build("yolov8n.yaml"), "macs", 0.5 * macs, importance="l2", allocation=allocation)
        assert 0.99 * 0.5 * macs <= r.macs_after <= 0.5 * macs
        results[allocation] = r
    assert results["cost"].params_after > 1.2 * results["global"].params_after
    kept = {k: {n: r.channels_after[n] / r.channels_before[n] for n in r.channels_before} for k, r in results.items()}
    assert kept["cost"]["model.1.conv"] < kept["cost"]["model.7.conv"]  # stride 4 gives more than stride 32
    assert kept["cost"]["model.1.conv"] < kept["global"]["model.1.conv"]
    assert kept["cost"]["model.7.conv"] > kept["global"]["model.7.conv"]
    wide = [n for n, c in results["global"].channels_before.items() if c >= 64 and min(v[n] for v in kept.values()) < 1]
    spread = {k: max(v[n] for n in wide) - min(v[n] for n in wide) for k, v in kept.items()}
    assert spread["uniform"] <= 8 / 64 < 0.5 * min(spread["global"], spread["cost"])  # one grid step of 8 channels

    small, large = build("yolov8n.yaml"), build("yolov8s.yaml")
    r = pruning.prune_to(large, "macs", pruning.count_macs_params(small)[0], importance="l2", allocation="uniform")
    widths = monitor.channel_counts(small)  # within a grid step of 8 (in each half of a C2f's cv1)
    assert all(abs(r.channels_after[n] - widths[n]) <= 16 for n in widths if r.channels_before[n] == 2 * widths[n])
    assert (
        sum(r.channels_before[n] == 2 * widths[n] for n in widths) == 51
    )  # all but the box branch (64 in both) and outputs


def test_helpers_leave_the_model_alone() -> None:
    model = build("yolo26n.yaml").train()
    head = model.model[-1]
    head.shape = "cached"
    params = list(model.parameters())
    pruning.count_macs_params(model)
    groups = pruning.channel_groups(model, ignore=["model.22"])
    bns = pruning.prunable_batchnorms(model, ignore=["model.22"])
    assert isinstance(head, Detect) and head.shape == "cached" and "anchors" not in head.__dict__
    assert all(m.training for m in model.modules()) and list(model.parameters()) == params
    grouped = {id(p) for g in groups for p, _, _ in g}
    assert bns and all(model.get_submodule(n) is bn and id(bn.weight) in grouped for n, bn in bns)
    assert not any(n.startswith("model.22.") or ".attn.qkv" in n or ".attn.pe" in n for n, _ in bns)
    assert "model.10.cv1.bn" in dict(bns)  # a C2PSA cv1 is prunable as a whole (its halves stay equal)
    for g in groups:
        for p, dim, idx in g:
            assert idx.dtype == torch.long and len(idx) == len(g[0][2]) and int(idx.max()) < p.shape[dim]


_FRESH = (
    BLOCK_PLUGIN
    + r"""
import numpy as np
import onnxruntime as ort
import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import load_checkpoint, torch_safe_load

torch_safe_load(sys.argv[1], safe_only=True)  # allow-list of stock Ultralytics/torch classes
model, _ = load_checkpoint(sys.argv[1])
x = torch.rand(1, 3, 64, 64)
with torch.no_grad():
    ref = model(x)[0].numpy()
yolo = YOLO(sys.argv[1])
yolo.predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, device="cpu", verbose=False)
onnx = yolo.export(format="onnx", imgsz=64, simplify=False, device="cpu")
sess = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
assert out.shape == ref.shape and np.allclose(out, ref, atol=2e-3), float(np.abs(out - ref).max())
assert not [k for k in sys.modules if k.startswith("ultralytics_slim")]
print("FRESH OK")
"""
)


def test_checkpoint_loads_predicts_and_exports_without_plugin(tmp_path: Path) -> None:
    _, model, _ = pruned_detect("yolov8n.yaml")
    path = tmp_path / "pruned.pt"
    ckpt = {
        "epoch": -1,
        "best_fitness": None,
        "model": None,
        "ema": copy.deepcopy(model).half(),
        "updates": 0,
        "optimizer": None,
        "train_args": {"task": "detect", "imgsz": IMGSZ},
        "date": time.strftime("%Y-%m-%d"),
    }
    torch.save(ckpt, path)
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH, str(path)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0 and "FRESH OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
