"""Distillation with the unpruned model as teacher, resume during distillation, and the end-of-run report."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
from conftest import Interrupt, events, interrupt_at, pickled_modules, run_yolo, train_args
from ultralytics import YOLO
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel, load_checkpoint

from ultralytics_slim import monitor
from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.recipe import load_recipe
from ultralytics_slim.report import _teacher_behind
from ultralytics_slim.techniques.distill import head_distill_loss

CHAIN = {
    "sparsity": {"start": 0, "end": 1},
    "distill": {"teacher": "self", "start": 1, "end": 3},
    "prune": {"target": {"macs": 0.5}, "steps": 1, "start": 1, "end": 2},
    "report": {"latency_runs": 3},
}


def test_prune_with_self_teacher_resume_and_report(tmp_path, detect_data):
    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_epoch_start", interrupt_at(2))
    with pytest.raises(Interrupt):
        model.train(**train_args(tmp_path, data=detect_data, epochs=3), slim=CHAIN)
    run = tmp_path / "run"
    teacher, start = (load_checkpoint(run / "weights" / f"{w}.pt")[0].state_dict() for w in ("teacher", "start"))
    # the model the run started from, not the one sparsity had faded by the first pruning step
    assert all(torch.equal(teacher[k], start[k]) for k in start)

    r = run_yolo("train", "resume", f"model={run / 'weights' / 'last.pt'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    with open(run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    distill = [float(row["train/distill"]) for row in rows]
    assert len(rows) == 3 and distill[0] == 0 and all(d > 0 for d in distill[1:])
    scalars, _ = events(run)
    assert "train/distill" in scalars

    best = run / "weights" / "best.pt"
    assert best.stat().st_size < 0.6 * (run / "weights" / "start.pt").stat().st_size  # pruned, and no teacher inside
    assert "ultralytics_slim" not in pickled_modules(best)

    with open(run / "report.csv") as f:
        start, final = list(csv.DictReader(f))
    assert float(final["params"]) < 0.6 * float(start["params"])
    assert float(final["GFLOPs"]) < 0.6 * float(start["GFLOPs"])
    assert float(final["latency_ms"]) > 0
    report = (run / "report.md").read_text()
    for row in (start, final):  # the table holds the figures of report.csv
        assert re.search(rf"^\| {row['model']} \| .*\| {row['params']} \| ", report, re.MULTILINE)
    assert "x smaller" in report
    # read from the run's start (the resumed process was given last.pt), so the report knows it began untrained
    assert "The starting model was untrained (model=yolov8n.yaml builds random weights" in report
    assert re.search(
        r"^\| 1 \| 2 \| 3\.01 -> ", report, re.MULTILINE
    )  # step 1, at the start of epoch 2, from 3.01M params
    layers = dict(re.findall(r"^\| (model\.\S+) \| \d+ \| (\d+) \|", report, re.MULTILINE))
    assert {n: int(c) for n, c in layers.items()} == monitor.channel_counts(load_checkpoint(best)[0])
    start_pt = run / "weights" / "start.pt"
    n0, n1 = (sum(map(len, monitor.batchnorm_gammas(load_checkpoint(p)[0]).values())) for p in (start_pt, best))
    assert f"pruning removed {1 - n1 / n0:.1%} of them" in report  # counted on best.pt, not on the copy timed fused
    for png in ("report_channels.png", "report_gamma.png", "report_curves.png"):
        assert (run / png).stat().st_size > 1000


def test_teacher_with_other_classes_is_rejected_without_leaving_a_run(tmp_path, detect_data):
    teacher = DetectionModel("yolov8n.yaml", nc=5, verbose=False)
    teacher.names = {i: f"c{i}" for i in range(5)}
    torch.save({"model": teacher.half(), "train_args": {"task": "detect"}}, tmp_path / "teacher.pt")
    with pytest.raises(SlimConfigError, match=r"distill\.teacher=.*has classes"):
        YOLO("yolov8n.yaml").train(
            **train_args(tmp_path, data=detect_data),
            slim={"distill": {"teacher": str(tmp_path / "teacher.pt"), "start": 0}},
        )
    assert not (tmp_path / "run").exists()


def test_unreadable_teacher_is_rejected_before_anything_is_written(tmp_path, detect_data):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SlimConfigError, match="not a readable Ultralytics checkpoint"):
        YOLO("yolov8n.yaml").train(
            **train_args(tmp_path, data=detect_data),
            slim={"distill": {"teacher": str(tmp_path / "broken.pt"), "start": 0}},
        )
    assert not (tmp_path / "run").exists()


def tree(preds: dict, fn) -> dict:
    """Apply fn(key, value) to every leaf of a (nested) head-output dict."""
    return {k: tree(v, fn) if isinstance(v, dict) else fn(k, v) for k, v in preds.items()}


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo26n.yaml"])
def test_head_loss_pulls_student_towards_teacher(cfg):
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=3, verbose=False).train()
    teacher = tree(model(torch.rand(2, 3, 64, 64)), lambda k, v: v.detach() if isinstance(v, torch.Tensor) else v)
    noisy = tree(teacher, lambda k, v: v + torch.randn_like(v) if k in {"scores", "boxes"} else v)
    assert head_distill_loss(noisy, teacher) > head_distill_loss(teacher, teacher) + 0.1


def test_head_loss_weighs_like_the_task_loss():
    """The teacher's gradient on the class scores is of the order of the labels' (the first release's: 3e-4 of it)."""
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False).train()
    model.args = get_cfg()
    img = torch.rand(4, 3, 128, 128)
    boxes = [
        [0.3, 0.3, 0.2, 0.2],
        [0.6, 0.6, 0.3, 0.3],
        [0.5, 0.5, 0.4, 0.4],
        [0.2, 0.7, 0.1, 0.1],
        [0.7, 0.2, 0.2, 0.3],
    ]
    batch = {"batch_idx": torch.tensor([0.0, 0, 1, 2, 3]), "cls": torch.tensor([[0.0], [1], [2], [0], [1]]),
             "bboxes": torch.tensor(boxes)}  # fmt: skip
    preds = model(img)
    teacher = tree(preds, lambda k, v: v.detach() + torch.randn_like(v) if k in {"scores", "boxes"} else v)
    task = model.init_criterion()(preds, batch)[0].sum() / len(img)  # per image, as the distillation term is
    kd = head_distill_loss(preds, teacher, 1.0, (model.args.cls, model.args.dfl))
    g_task, g_kd = (torch.autograd.grad(x, preds["scores"], retain_graph=True)[0].norm() for x in (task, kd))
    assert 0.05 < g_kd / g_task < 20


def test_checkpoint_teacher_distils(tmp_path, detect_data):
    import yaml

    teacher = DetectionModel("yolov8s.yaml", nc=3, verbose=False)
    teacher.names = yaml.safe_load(Path(detect_data).read_text())["names"]
    torch.save({"model": teacher.half(), "train_args": {"task": "detect"}}, tmp_path / "teacher.pt")
    YOLO("yolov8n.yaml").train(
        **train_args(tmp_path, data=detect_data),
        slim={"distill": {"teacher": str(tmp_path / "teacher.pt"), "start": 0}},
    )
    with open(tmp_path / "run" / "results.csv") as f:
        assert all(float(row["train/distill"]) > 0 for row in csv.DictReader(f))
    assert not (tmp_path / "run" / "weights" / "teacher.pt").exists()  # a checkpoint teacher is read where it lies


def test_report_warns_when_the_student_outgrew_its_teacher():
    """A `self` teacher that the student ends well above had not finished training (the README demo: distilling from
    it cost 1.2 points); level with a converged teacher, with a checkpoint teacher or without one there is nothing
    to say."""
    distill = load_recipe("prune_distill.yaml")
    assert "ended 8.4 points above its teacher (the starting model, 0.681)" in _teacher_behind(distill, 0.681, 0.765)
    assert _teacher_behind(distill, 0.7885, 0.7905) is None  # the benchmark's distilled seeds: -0.5 to +0.3 point
    assert _teacher_behind(load_recipe({"distill": {"teacher": "yolov8s.pt"}}), 0.681, 0.765) is None
    assert _teacher_behind(load_recipe("prune.yaml"), 0.681, 0.777) is None
