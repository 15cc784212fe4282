"""The plugin as a user meets it: `slim=` on the stock `yolo` command and on `YOLO.train`, and nothing without it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import Interrupt, cli, events, interrupt_at, run_yolo, train_args
from ultralytics import YOLO
from ultralytics.nn.tasks import load_checkpoint

from ultralytics_slim import SlimDetectionTrainer, pruning
from ultralytics_slim.data import make_dataset
from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.monitor import gamma_stats

# Settings that make the L1 term visible in a few dozen steps: plain SGD, no warmup, one step per batch.
FAST_SGD = {"optimizer": "SGD", "lr0": 0.02, "momentum": 0.0, "warmup_epochs": 0, "batch": 2, "nbs": 2}


@pytest.fixture(scope="module")
def sparse_data(data_root: Path) -> str:
    return str(make_dataset(data_root / "sparse", "detect", n_train=32, n_val=4, imgsz=64))


def test_cli_sparsity_run_writes_tensorboard_and_sparsifies(tmp_path, sparse_data):
    """`yolo train ... slim=recipe.yaml` exits 0, logs sparsity to TensorBoard and drives BN scales to zero."""
    recipe = tmp_path / "strong.yaml"
    recipe.write_text(yaml.safe_dump({"sparsity": {"method": "bn_l1", "strength": 5.0, "start": 0, "end": 1.0}}))
    args = train_args(tmp_path, data=sparse_data, model="yolov8n.yaml", val=False, **FAST_SGD)
    for name, extra in (("slim", [f"slim={recipe}"]), ("stock", [])):
        r = run_yolo("train", *cli({**args, "name": name}), *extra, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]

    scalars, histograms = events(tmp_path / "slim")
    assert {
        "slim/bn_sparsity@0.01",
        "slim/bn_sparsity@0.001",
        "slim/bn_gamma_mean",
        "slim/sparsity_strength",
    } <= scalars
    assert any(h.startswith("slim/gamma/model.") for h in histograms)
    header = (tmp_path / "slim" / "results.csv").read_text().splitlines()[0]
    assert "slim/bn_sparsity@0.01" in header and "slim/GFLOPs" in header

    sparse, stock = (gamma_stats(load_checkpoint(tmp_path / n / "weights" / "last.pt")[0]) for n in ("slim", "stock"))
    assert sparse["slim/bn_sparsity@0.01"] > stock["slim/bn_sparsity@0.01"] + 0.05
    assert sparse["slim/bn_gamma_mean"] < 0.5 * stock["slim/bn_gamma_mean"]
    assert not (tmp_path / "stock" / "slim.yaml").exists()


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("sparsity: {strenght: 1.0e-4}\n", "sparsity.strenght"),
        ("sparsity: {strength: lots}\n", "sparsity.strength"),
        ("prune: {start: 0.8, end: 0.5}\n", "prune.start"),
    ],
)
def test_cli_bad_recipe_fails_before_any_run_directory(tmp_path, detect_data, content, key):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(content)
    r = run_yolo(
        "train", *cli(train_args(tmp_path, data=detect_data, model="yolov8n.yaml")), f"slim={recipe}", cwd=tmp_path
    )
    assert r.returncode != 0
    assert key in r.stdout + r.stderr
    assert not (tmp_path / "run").exists()


def test_cli_typo_is_still_rejected_by_ultralytics(tmp_path, detect_data):
    r = run_yolo(
        "train", *cli(train_args(tmp_path, data=detect_data, model="yolov8n.yaml")), "slimm=prune.yaml", cwd=tmp_path
    )
    assert r.returncode != 0
    assert re.search(r"'slimm' is not a valid YOLO argument.*\bslim\b", r.stdout + r.stderr, re.DOTALL)


def test_python_path_records_recipe_and_resume_uses_it(tmp_path, detect_data):
    """The resolved recipe lands in slim.yaml, args.yaml and the checkpoint; `resume` finds it there and continues."""
    model = YOLO("yolov8n.yaml")
    model.add_callback("on_model_save", interrupt_at(0))  # stop right after epoch 0's checkpoint
    with pytest.raises(Interrupt):
        model.train(**train_args(tmp_path, data=detect_data, epochs=2), slim={"sparsity": {"strength": 3e-4, "end": 2}})
    assert isinstance(model.trainer, SlimDetectionTrainer)
    run = tmp_path / "run"
    assert yaml.safe_load((run / "slim.yaml").read_text())["sparsity"]["strength"] == 3e-4
    assert yaml.safe_load((run / "args.yaml").read_text())["slim"]["recipe"]["sparsity"]["strength"] == 3e-4
    last = run / "weights" / "last.pt"
    assert torch.load(last, weights_only=False)["epoch"] == 0

    resumed = YOLO(last)
    resumed.train(resume=True)  # no slim= given: the recipe comes from the checkpoint
    assert isinstance(resumed.trainer, SlimDetectionTrainer)
    assert resumed.trainer.slim.recipe.sparsity.strength == 3e-4
    assert len((run / "results.csv").read_text().splitlines()) == 3  # header + epochs 1 and 2


def test_python_bad_recipe_raises_and_writes_nothing(tmp_path, detect_data):
    with pytest.raises(SlimConfigError, match="prune.target.macs"):
        YOLO("yolov8n.yaml").train(**train_args(tmp_path, data=detect_data), slim={"prune": {"target": {"macs": 2}}})
    assert not (tmp_path / "run").exists()


def test_explicit_trainer_works_without_the_startup_hook(tmp_path, detect_data):
    """`train(trainer=SlimDetectionTrainer, slim=...)` in an interpreter where the hook never patched Ultralytics."""
    code = f"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__name__", "") != "_Finder"]
from ultralytics import YOLO
from ultralytics.utils import DEFAULT_CFG_DICT
assert "slim" not in DEFAULT_CFG_DICT and not hasattr(YOLO.train, "__slim__")
from ultralytics_slim import SlimDetectionTrainer, pruning
m = YOLO("yolov8n.yaml")
m.train(trainer=SlimDetectionTrainer, slim="sparsity.yaml", **{train_args(tmp_path, data=detect_data, epochs=1)!r})
assert type(m.trainer).__name__ == "SlimDetectionTrainer"
"""
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "slim.yaml").exists()


def test_without_slim_ultralytics_is_stock(tmp_path, detect_data):
    from ultralytics.models.yolo.detect import DetectionTrainer

    model = YOLO("yolov8n.yaml")
    model.train(**train_args(tmp_path, data=detect_data, epochs=1))
    assert type(model.trainer) is DetectionTrainer
    assert "slim" not in yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())
    assert not list((tmp_path / "run").glob("events.out.tfevents*"))  # Ultralytics' own TensorBoard is off in tests


def test_startup_hook_is_cheap_and_imports_nothing_heavy():
    code = "import sys; print('torch' in sys.modules, 'ultralytics' in sys.modules, 'ultralytics_slim._hook' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True).stdout.split()
    assert out == ["False", "False", "True"]
    costs = []
    for _ in range(5):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "pass"], check=False, capture_output=True, text=True
        ).stderr
        costs.append(sum(int(m) for m in re.findall(r"import time:\s+(\d+) \|.*ultralytics_slim", err)))
    assert min(costs) < 10_000, f"start-up hook costs {min(costs)} us"  # microseconds, self time of its modules


def test_sparsity_step_does_not_depend_on_the_amp_scale(tmp_path, detect_data, monkeypatch):
    """With AMP on (a live loss scale of 1024), one optimizer step moves each prunable gamma by exactly lr * strength."""
    import ultralytics.engine.trainer as ul_trainer

    class CPUScaler(torch.amp.GradScaler):  # an enabled scaler, as AMP on a GPU would have
        def __init__(self, *args, **kwargs):
            super().__init__("cpu", init_scale=1024.0)

    monkeypatch.setattr(ul_trainer.torch.amp, "GradScaler", CPUScaler)
    strength, lr = 0.5, 0.01
    args = train_args(
        tmp_path, data=detect_data, model="yolov8n.yaml", optimizer="SGD", lr0=lr, momentum=0.0, warmup_epochs=0
    )
    trainer = SlimDetectionTrainer(overrides={**args, "slim": {"sparsity": {"strength": strength, "end": 1}}})
    trainer._setup_train()
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == 1024.0
    trainer.epoch = 0
    bns = [bn for _, bn in pruning.prunable_batchnorms(trainer.model)]
    before = [bn.weight.detach().clone() for bn in bns]
    trainer.scaler.scale(sum(p.sum() for p in trainer.model.parameters()) * 0.0).backward()
    trainer.optimizer_step()
    for bn, w in zip(bns, before):
        torch.testing.assert_close(bn.weight.detach(), w - lr * strength * torch.sign(w))
