"""Pruning inside real `yolo train` runs: every family and task, stock loading, fine-tuning, resume, DDP decisions."""

from __future__ import annotations

import csv
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from conftest import BLOCK_PLUGIN, Interrupt, cli, interrupt_at, pickled_modules, run_yolo, train_args
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel, load_checkpoint
from ultralytics.utils import YAML
from ultralytics.utils.torch_utils import get_num_params

from ultralytics_slim import monitor, pruning
from ultralytics_slim.data import make_dataset
from ultralytics_slim.errors import SlimConfigError

# One pruning step at the start of epoch 1 of 2, straight to half the MACs.
ONE_STEP = {"prune": {"target": {"macs": 0.5}, "steps": 1, "start": 1, "end": 2}}
MODEL_FOR_TASK = {
    "segment": "yolo11n-seg.yaml",
    "pose": "yolov8n-pose.yaml",
    "obb": "yolo26n-obb.yaml",
    "classify": "yolo11n-cls.yaml",
}


def macs_ratio(before: torch.nn.Module, after: torch.nn.Module) -> float:
    return pruning.count_macs_params(after)[0] / pruning.count_macs_params(before)[0]


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"])
def test_families_prune_to_target_and_load_without_plugin(tmp_path, detect_data, cfg):
    YOLO(cfg).train(**train_args(tmp_path, data=detect_data), slim=ONE_STEP)
    best = tmp_path / "run" / "weights" / "best.pt"
    pruned = load_checkpoint(best)[0]
    assert 0.49 <= macs_ratio(type(pruned)(cfg, nc=pruned.nc, verbose=False), pruned) <= 0.51  # within 2% of 0.5
    assert get_num_params(pruned) == get_num_params(
        load_checkpoint(tmp_path / "run" / "weights" / "last.pt")[0]
    )  # best.pt: final shape
    assert pickled_modules(best) <= {
        "torch",
        "ultralytics",
        "collections",
        "builtins",
        "__builtin__",
        "numpy",
        "_codecs",
        "pathlib",
    }

    code = (
        BLOCK_PLUGIN
        + f"""
import numpy as np, onnxruntime
from ultralytics import YOLO
m = YOLO({str(best)!r})
m.val(data={detect_data!r}, imgsz=64, batch=8, plots=False, device="cpu")
m.predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, verbose=False)
onnx = m.export(format="onnx", imgsz=64, simplify=False)
out = onnxruntime.InferenceSession(onnx).run(None, {{"images": np.zeros((1, 3, 64, 64), np.float32)}})
assert "ultralytics_slim" not in sys.modules
print("params", sum(p.numel() for p in m.model.parameters()), "out", out[0].shape)
"""
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"params {get_num_params(pruned)}" in r.stdout


@pytest.mark.parametrize("task", list(MODEL_FOR_TASK))
def test_every_task_prunes(tmp_path, data_root, task):
    data = make_dataset(data_root / task, task, n_train=16, n_val=8, imgsz=64)
    model = YOLO(MODEL_FOR_TASK[task])
    before = get_num_params(model.model)
    model.train(**train_args(tmp_path, data=str(data), imgsz=64 if task != "classify" else 32), slim=ONE_STEP)
    pruned = load_checkpoint(tmp_path / "run" / "weights" / "best.pt")[0]
    assert pruned.task == task
    assert get_num_params(pruned) < 0.8 * before
    assert (tmp_path / "run" / "results.csv").read_text().count("\n") == 3  # header + 2 epochs


def test_cli_finetune_keeps_pruned_architecture(tmp_path, detect_data):
    """A stock fine-tune of a pruned best.pt (no `slim=`) keeps its width, also when it is interrupted and resumed
    with `yolo train resume`: the stock trainer would rebuild the model from its yaml at full width."""
    YOLO("yolov8n.yaml").train(**train_args(tmp_path, data=detect_data, name="pruned"), slim=ONE_STEP)
    best = tmp_path / "pruned" / "weights" / "best.pt"
    params = get_num_params(load_checkpoint(best)[0])
    r = run_yolo("train", *cli(train_args(tmp_path, data=detect_data, model=best, name="ft", epochs=1)), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert get_num_params(load_checkpoint(tmp_path / "ft" / "weights" / "best.pt")[0]) == params

    model = YOLO(best)
    model.add_callback("on_train_epoch_start", interrupt_at(1))
    with pytest.raises(Interrupt):
        model.train(**train_args(tmp_path, data=detect_data, name="cut"))
    last = tmp_path / "cut" / "weights" / "last.pt"
    r = run_yolo("train", "resume", f"model={last}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = torch.load(last, weights_only=False)
    assert resumed["epoch"] == -1 and get_num_params(resumed["model"]) == params  # finished (optimizer stripped)


def test_unreachable_target_is_reported_before_training(tmp_path, detect_data):
    recipe = {"prune": {"target": {"macs": 0.01}, "start": 0, "end": 1, "min_channels": 16}}
    with pytest.raises(SlimConfigError, match=r"unreachable.*smallest reachable ratio is 0\.\d+"):
        YOLO("yolov8n.yaml").train(**train_args(tmp_path, data=detect_data), slim=recipe)
    assert not (tmp_path / "run").exists()


def test_resume_after_first_step_matches_uninterrupted_run(tmp_path, detect_data):
    recipe = {"prune": {"target": {"macs": 0.5}, "steps": 2, "start": 1, "end": 3, "lr_scale": 3.0}}
    args = train_args(tmp_path, data=detect_data, epochs=4, deterministic=True, seed=0)

    YOLO("yolov8n.yaml").train(**{**args, "name": "full"}, slim=recipe)

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_epoch_start", interrupt_at(2))  # after the first pruning step and its fine-tune epoch
    with pytest.raises(Interrupt):
        model.train(**{**args, "name": "cut"}, slim=recipe)
    last = tmp_path / "cut" / "weights" / "last.pt"
    after_step1 = get_num_params(load_checkpoint(last)[0])
    assert torch.load(last, weights_only=False)["train_args"]["slim"]["state"]["prune"]["done"] == 1

    r = run_yolo("train", "resume", f"model={last}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = torch.load(last, weights_only=False)
    full = torch.load(tmp_path / "full" / "weights" / "last.pt", weights_only=False)
    assert resumed["train_args"]["slim"]["state"]["prune"]["done"] == 2
    assert full["train_args"]["slim"]["state"]["prune"]["done"] == 2
    p_resumed, p_full = get_num_params(resumed["model"]), get_num_params(full["model"])  # final: optimizer stripped
    assert p_resumed < after_step1
    assert abs(p_resumed - p_full) / p_full < 0.05
    base = resumed["train_args"]["slim"]["state"]["prune"]["base"]
    for ckpt in (resumed, full):
        assert abs(pruning.count_macs_params(ckpt["model"].float())[0] / base - 0.5) < 0.01
    assert learning_rates(tmp_path / "cut") == learning_rates(tmp_path / "full")  # lr_scale applied once, kept


def test_nan_loss_after_a_pruning_step_recovers_from_the_pruned_model(tmp_path, detect_data):
    """Ultralytics reloads last.pt into the live model after a NaN epoch; after a pruning step that must be the
    pruned model (the one from the epoch before has the old shapes)."""
    recovered = []

    def poison(trainer):  # the loss of epoch 2, the one after the second step, turns NaN once
        if trainer.epoch == 2 and not recovered:
            trainer.loss = torch.tensor(float("nan"))
            recover = trainer._handle_nan_recovery
            trainer._handle_nan_recovery = lambda epoch: recovered.append(recover(epoch)) or recovered[-1]

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_epoch_end", poison)
    recipe = {"prune": {"target": {"macs": 0.5}, "steps": 2, "start": 1, "end": 3}}
    model.train(**train_args(tmp_path, data=detect_data, epochs=4), slim=recipe)
    assert recovered[0] is True
    assert model.trainer.slim.technique("prune").done == 2
    best = load_checkpoint(tmp_path / "run" / "weights" / "best.pt")[0]
    assert get_num_params(best) < 0.6 * get_num_params(DetectionModel("yolov8n.yaml", nc=3, verbose=False))


def test_optimizer_state_follows_the_kept_channels(tmp_path, detect_data):
    """After a pruning step, AdamW keeps each surviving element's moments and its step count instead of restarting
    them; the other elements' state goes with them."""
    seen: dict[str, dict[str, dict[str, torch.Tensor]]] = {}

    def moments(trainer) -> dict[str, dict[str, torch.Tensor]]:
        params = dict(trainer.model.named_parameters())
        return {n: {k: v.clone() for k, v in trainer.optimizer.state[p].items()} for n, p in params.items()
                if p in trainer.optimizer.state}  # fmt: skip

    def before(trainer) -> None:  # runs before the plugin's epoch-start callback, registered after it
        if trainer.epoch == 1:
            seen["before"] = moments(trainer)

    def after(trainer) -> None:
        if trainer.epoch == 1 and "after" not in seen:
            seen["after"] = moments(trainer)
            seen["kept"] = trainer.slim.technique("prune").kept

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_epoch_start", before)
    model.add_callback("on_train_batch_start", after)
    model.train(**train_args(tmp_path, data=detect_data, nbs=8), slim=ONE_STEP)  # nbs=batch: a step per batch
    old, new, kept = seen["before"], seen["after"], seen["kept"]
    assert old and new.keys() == old.keys()  # every parameter keeps a state
    assert all(torch.equal(new[n]["step"], old[n]["step"]) for n in old)
    assert kept
    for bn, idx in kept.items():
        for part in ("weight", "bias"):
            o, n = old[f"{bn}.{part}"], new[f"{bn}.{part}"]
            assert torch.equal(n["exp_avg"], o["exp_avg"][idx]) and torch.equal(n["exp_avg_sq"], o["exp_avg_sq"][idx])
    conv = next(n for n in old if n.endswith("conv.weight") and old[n]["exp_avg"].shape != new[n]["exp_avg"].shape)
    assert new[conv]["exp_avg"].abs().sum() > 0  # the narrowed convolution kept moments, not zeros


def learning_rates(run: Path) -> list[list[float]]:
    """The lr/pg* columns of a run's results.csv, per epoch."""
    rows = list(csv.DictReader((run / "results.csv").open()))
    return [[float(v) for k, v in r.items() if k.strip().startswith("lr/")] for r in rows]


def test_lr_scale_multiplies_the_rates_from_the_first_step(tmp_path, detect_data):
    args = train_args(tmp_path, data=detect_data, deterministic=True, seed=0)
    for name, scale in (("plain", 1.0), ("scaled", 3.0)):
        YOLO("yolov8n.yaml").train(**{**args, "name": name}, slim={"prune": {**ONE_STEP["prune"], "lr_scale": scale}})
    plain, scaled = learning_rates(tmp_path / "plain"), learning_rates(tmp_path / "scaled")
    assert len(plain) == len(scaled) == 2 and all(lr > 0 for lr in plain[1])
    assert scaled[0] == plain[0]  # before the step (epoch 0)
    assert scaled[1] == pytest.approx([3 * lr for lr in plain[1]], rel=1e-4)  # results.csv rounds

    # never above 0.01: SGD at lr0=0.01 stays as the stock schedule has it
    recipe = {"prune": {**ONE_STEP["prune"], "lr_scale": 3.0}}
    YOLO("yolov8n.yaml").train(**{**args, "name": "sgd", "optimizer": "SGD", "lr0": 0.01}, slim=recipe)
    lf = (1 - 1 / 2) * (1 - 0.01) + 0.01  # Ultralytics' linear schedule at epoch 1 of 2, lrf=0.01
    assert learning_rates(tmp_path / "sgd")[1] == pytest.approx([0.01 * lf] * 3, rel=1e-4)


@pytest.mark.parametrize("cfg", ["yolo11n.yaml", "yolo26n.yaml"])
def test_taylor_ranks_with_the_runs_own_loss(tmp_path, detect_data, cfg):
    """`importance: taylor` in the stock loop: the loss gradients come from the trainer's batches before the step (C3k2
    halves, C2PSA attention, YOLO26's end-to-end loss), the target is met and the checkpoint loads without the plugin.
    The default `max_step_cut` (0.5) holds: half of every layer is enough for 50% of the MACs in one step, so no layer
    loses more, and the report says why."""
    YOLO(cfg).train(
        **train_args(tmp_path, data=detect_data), slim={"prune": {**ONE_STEP["prune"], "importance": "taylor"}}
    )
    pruned = load_checkpoint(tmp_path / "run" / "weights" / "best.pt")[0]
    start = type(pruned)(cfg, nc=pruned.nc, verbose=False)
    assert 0.49 <= macs_ratio(start, pruned) <= 0.51
    assert all(p.grad is None for p in pruned.parameters())
    before, after = monitor.channel_counts(start), monitor.channel_counts(pruned)
    assert all(after[n] >= before[n] / 2 for n in before) and after != before
    assert "more than max_step_cut=0.5 of a layer" in (tmp_path / "run" / "report.md").read_text()


def test_allocation_reaches_the_pruning_step_and_the_report(tmp_path, detect_data):
    """`allocation` in the stock loop: at the same MACs, `cost` keeps more parameters (the cheap deep channels) and
    `uniform` cuts every layer alike; the report's per-layer section says how the cut was spread."""
    params, kept = {}, {}
    for allocation in ("global", "cost", "uniform"):
        args = train_args(tmp_path, allocation, data=detect_data)
        YOLO("yolov8n.yaml").train(**args, slim={"prune": {**ONE_STEP["prune"], "allocation": allocation}})
        pruned = load_checkpoint(tmp_path / allocation / "weights" / "best.pt")[0]
        start = type(pruned)("yolov8n.yaml", nc=pruned.nc, verbose=False)
        assert 0.49 <= macs_ratio(start, pruned) <= 0.51
        params[allocation] = pruning.count_macs_params(pruned)[1]
        before, after = monitor.channel_counts(start), monitor.channel_counts(pruned)
        kept[allocation] = {n: after[n] / before[n] for n in before if before[n] >= 64}
        assert f"Allocation `{allocation}`: " in (tmp_path / allocation / "report.md").read_text()
    assert params["cost"] > 1.2 * params["global"]
    cut = [n for n in kept["global"] if min(k[n] for k in kept.values()) < 1]  # head outputs keep their widths
    spread = {a: max(k[n] for n in cut) - min(k[n] for n in cut) for a, k in kept.items()}
    assert spread["uniform"] <= 8 / 64 < 0.5 * spread["global"]  # one grid step of 8 channels


def test_a_step_inside_the_warmup_keeps_it(tmp_path, detect_data):
    """Ultralytics' warmup ramps a fresh AdamW in: its first steps move every weight by about lr whatever the gradient.
    A run whose first pruning step falls inside it trains at the stock rates (turning it off cost the demo 3-4 points
    of mAP50-95, its unpruned fine-tune as much)."""
    args = train_args(tmp_path, data=detect_data, deterministic=True, seed=0)
    YOLO("yolov8n.yaml").train(**{**args, "name": "stock"})
    YOLO("yolov8n.yaml").train(**{**args, "name": "slim"}, slim=ONE_STEP)  # its step at epoch 1 of a 3-epoch warmup
    assert YAML.load(tmp_path / "slim" / "args.yaml")["warmup_epochs"] == 3
    stock, slim = learning_rates(tmp_path / "stock"), learning_rates(tmp_path / "slim")
    assert slim == stock and stock[1][0] > stock[0][0] > 0  # ramping up through both epochs


DDP_WORKER = """
import sys, torch, torch.distributed as dist
from ultralytics.nn.tasks import DetectionModel
from ultralytics_slim import monitor, pruning
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=2)
torch.manual_seed(0)
model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
for p in model.parameters():  # the same (trained-looking) weights on both ranks, as DDP keeps them
    p.data.add_(torch.randn_like(p) * 0.1)
macs, _ = pruning.count_macs_params(model)
pruning.prune_to(model, "macs", 0.5 * macs, importance=sys.argv[3], seed=0)
shapes = [(n, tuple(p.shape)) for n, p in model.state_dict().items()]
gathered = [None, None]
dist.all_gather_object(gathered, shapes)
assert gathered[0] == gathered[1], "ranks took different pruning decisions"
print("rank", rank, "params", sum(p.numel() for p in model.parameters()))
dist.destroy_process_group()
"""


@pytest.mark.parametrize("importance", ["bn_scale", "random"])
def test_two_ranks_take_the_same_pruning_decision(tmp_path, importance):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), port, importance],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert outs[0][0].split()[-1] == outs[1][0].split()[-1]


def test_latency_target_measures_each_step(tmp_path, detect_data):
    """`target: {latency: r}`: every step's measured latency is recorded, lands within 10% of its goal (under it unless
    no candidate of the search was: then the fastest is taken, never the floor), and is reported."""
    recipe = {"prune": {"target": {"latency": 0.6, "imgsz": 96}, "steps": 2, "start": 1, "end": 3}}
    model = YOLO("yolov8n.yaml")
    model.train(**train_args(tmp_path, data=detect_data, epochs=4), slim=recipe)
    prune = model.trainer.slim.technique("prune")
    assert prune.base > 0 and [h["step"] for h in prune.history] == [1, 2]
    for h in prune.history:  # each ratio was timed interleaved with the start model; the tolerance: 10%
        assert 0 < h["latency_ratio"] <= 1.1 * 0.6 ** (h["step"] / 2), h
    header = (tmp_path / "run" / "results.csv").read_text().splitlines()[0]
    assert "slim/latency_ms" in header
    assert "latency (ms)" in (tmp_path / "run" / "report.md").read_text()


def test_validated_model_has_batchnorm_statistics_of_its_own_weights(tmp_path, detect_data):
    """After a pruning step, the model validated (and saved) normalizes with its own weights' statistics, not with the
    running ones, which still describe the unpruned network (benchmark: 0.000 mAP50-95 against 0.253 with fresh ones)."""
    still = {k: 0.0 for k in ("mosaic", "hsv_h", "hsv_s", "hsv_v", "fliplr", "scale", "translate")}
    model = YOLO("yolov8n.yaml")
    # one batch holds the whole set, so every batch, and so every BatchNorm input, is the same; an optimizer step each
    recipe = {"prune": {"target": {"macs": 0.5}, "steps": 1, "start": 1, "end": 2, "lr_scale": 3.0}}
    args = train_args(tmp_path, data=detect_data, epochs=3, batch=16, nbs=16, seed=0, **still)
    model.train(**args, slim={**recipe, "report": {"latency_runs": 0}})
    trainer = model.trainer
    validated = trainer.ema.ema  # as the last validation left it (last.pt holds its FP16 copy)
    ref = deepcopy(validated).train()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0  # running statistics := this batch's
    images = torch.cat([trainer.preprocess_batch(b)["img"] for b in trainer.train_loader])
    assert images.shape[0] == 16  # the whole training set, unaugmented
    with torch.no_grad():
        ref(images)
    pairs = [(a, b) for a, b in zip(validated.modules(), ref.modules()) if isinstance(a, torch.nn.BatchNorm2d)]
    shifts = torch.cat([(a.running_mean - b.running_mean).abs() / b.running_var.sqrt() for a, b in pairs])
    assert shifts.max() < 1e-3, f"validated BatchNorm means are up to {shifts.max():.3f} sd from the weights' own"
    assert {a.momentum for a, _ in pairs} == {0.03} and not validated.training  # Ultralytics' settings are back


def test_passes_over_the_data_leave_the_trained_weights_as_they_are(tmp_path, detect_data, monkeypatch):
    """The gradient pass of a `taylor` step and the BatchNorm re-estimation draw batches of their own: however often
    they draw, the run trains the same weights (on the same batches, under the same random draws); only the
    statistics they re-estimate differ."""
    recipe = {"prune": {"target": {"macs": 0.5}, "steps": 2, "start": 1, "end": 3}}  # importance auto: taylor
    # workers=0: the run loads its images in this process, where the passes load theirs; mosaic on all the way
    # (close_mosaic=0) draws partner images from the dataset's buffer, which batch=1 keeps at 8 of the 16 images, so
    # every load changes it (without putting it back, the weights differ, as they do without own random states)
    args = train_args(tmp_path, data=detect_data, epochs=4, batch=1, seed=0, deterministic=True, close_mosaic=0)

    def train(name: str) -> dict[str, torch.Tensor]:
        YOLO("yolov8n.yaml").train(**{**args, "name": name}, slim={**recipe, "report": {"latency_runs": 0}})
        return torch.load(tmp_path / name / "weights" / "last.pt", weights_only=False)["model"].float().state_dict()

    from ultralytics_slim.techniques import batches, prune

    plain = train("plain")
    draw = batches.side_batches

    def twice(trainer, n):  # one more draw first, thrown away
        for _ in draw(trainer, n):
            pass
        yield from draw(trainer, n)

    monkeypatch.setattr(prune, "side_batches", twice)
    monkeypatch.setattr(prune, "recalibrate_bn", lambda model, trainer: None)
    skipped = train("no-reestimation")
    assert plain.keys() == skipped.keys()
    stats = {k for k in plain if k.endswith(("running_mean", "running_var"))}
    weights = [k for k in plain if k not in stats and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(plain[k], skipped[k]) for k in weights), [
        k for k in weights if not torch.equal(plain[k], skipped[k])
    ][:5]
    assert any(not torch.equal(plain[k], skipped[k]) for k in stats)  # the re-estimation did run in the first
