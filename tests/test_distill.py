"""Feature distillation through pruning steps: channel-mapped from the unpruned model, or through projectors from a
larger checkpoint; measured as a loss share. The teacher that also sees mirror images (`flip`)."""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import train_args
from ultralytics import YOLO
from ultralytics.nn.tasks import (
    ClassificationModel,
    DetectionModel,
    OBBModel,
    PoseModel,
    SegmentationModel,
    load_checkpoint,
)
from ultralytics.utils.torch_utils import get_num_params

from ultralytics_slim.data import SHAPES
from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.techniques.distill import Projectors, _feature_bns, flip_average, head_distill_loss

RECIPE = {
    "distill": {"teacher": "self", "loss": "head+feature", "flip": True, "start": 1, "end": 1.0},
    "prune": {"target": {"macs": 0.5}, "steps": 2, "start": 1, "end": 3},
}


def results(run) -> list[dict[str, float]]:
    with open(run / "results.csv") as f:
        return [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def assert_distilled_in_window(rows: list[dict[str, float]]) -> None:
    shares = [r["slim/distill_share"] for r in rows]
    assert shares[0] == 0 and all(0 < s < 1 for s in shares[1:])  # off before the window, a part of the loss in it
    assert all(r["train/distill"] > 0 for r in rows[1:])


def test_feature_distillation_through_pruning_steps(tmp_path, detect_data):
    model = YOLO("yolov8n.yaml")
    model.train(**train_args(tmp_path, data=detect_data, epochs=4), slim=RECIPE)
    run = tmp_path / "run"
    assert_distilled_in_window(results(run))
    teacher, best = (load_checkpoint(run / "weights" / f"{w}.pt")[0] for w in ("teacher", "best"))
    assert get_num_params(best) < 0.6 * get_num_params(teacher)
    kept = model.trainer.slim.technique("prune").kept
    assert kept["model.21.cv2.bn"] and max(kept["model.21.cv2.bn"]) < teacher.model[21].cv2.bn.num_features
    assert model.trainer.slim.technique("distill")._proj is None  # `self`: channels mapped, nothing learned


def test_projectors_keep_the_columns_of_surviving_channels():
    proj = Projectors([8], [16], [list(range(8))])
    w0 = proj.convs[0].weight.detach().clone()
    x = torch.rand(2, 8, 4, 4)
    kept = [0, 2, 5, 7]
    zeroed = x.clone()
    zeroed[:, [c for c in range(8) if c not in kept]] = 0
    before = proj([zeroed])[0]
    assert proj.follow([kept]) and proj.convs[0].in_channels == 4
    torch.testing.assert_close(proj([x[:, kept]])[0], before)
    assert not proj.follow([kept]) and not proj.follow([None])
    # a second step: indices into the unpruned student, as the prune technique composes them
    assert proj.follow([[2, 7]])
    torch.testing.assert_close(proj.convs[0].weight.detach(), w0[:, [2, 7]])
    assert proj.cols == [[2, 7]]


def test_feature_distillation_from_a_larger_checkpoint_through_pruning_steps(tmp_path, detect_data):
    """YOLOv8s teaching a YOLOv8n that is pruned twice: projectors follow the narrowing, learn, and stay out of
    the checkpoint."""
    teacher = DetectionModel("yolov8s.yaml", nc=3, verbose=False)
    teacher.names = dict(enumerate(SHAPES[:3]))
    torch.save({"model": teacher.half(), "train_args": {"task": "detect"}}, tmp_path / "v8s.pt")
    model = YOLO("yolov8n.yaml")
    recipe = {**RECIPE, "distill": {**RECIPE["distill"], "teacher": str(tmp_path / "v8s.pt")}}
    model.train(**train_args(tmp_path, data=detect_data, epochs=4, nbs=8), slim=recipe)  # a step per batch
    run = tmp_path / "run"
    rows = results(run)
    assert_distilled_in_window(rows)
    assert all(math.isfinite(v) for r in rows for v in r.values())
    distill = model.trainer.slim.technique("distill")
    assert all(bool(torch.isfinite(p).all()) for p in distill._proj.parameters())
    best = load_checkpoint(run / "weights" / "best.pt")[0]
    widths = [best.get_submodule(n).num_features for n in _feature_bns(best)]
    assert [c.in_channels for c in distill._proj.convs] == widths  # narrowed with the student
    assert [c.out_channels for c in distill._proj.convs] == [128, 256, 512]  # YOLOv8s's neck
    assert widths != [64, 128, 256]  # YOLOv8n's, before pruning: a step narrowed them
    state = distill._proj_opt.state.values()
    assert state and all(s["step"] > 0 for s in state)  # stepped since the last narrowing
    assert not any(isinstance(m, Projectors) for m in best.modules())
    assert get_num_params(best) < 0.6 * get_num_params(DetectionModel("yolov8n.yaml", nc=3, verbose=False))


def test_teacher_with_other_strides_is_rejected(tmp_path, detect_data):
    teacher = DetectionModel("yolov8n-p2.yaml", nc=3, verbose=False)
    teacher.names = dict(enumerate(SHAPES[:3]))
    torch.save({"model": teacher.half(), "train_args": {"task": "detect"}}, tmp_path / "p2.pt")
    with pytest.raises(SlimConfigError, match=r"has strides \[4\.0, 8\.0, 16\.0, 32\.0\]"):
        YOLO("yolov8n.yaml").train(
            **train_args(tmp_path, data=detect_data),
            slim={"distill": {"teacher": str(tmp_path / "p2.pt"), "loss": "feature", "start": 0}},
        )
    assert not (tmp_path / "run").exists()


def mirror_index(feats: list[torch.Tensor]) -> list[int]:
    """The anchor each anchor becomes in the mirror image, built cell by cell."""
    index, base = [], 0
    for f in feats:
        h, w = f.shape[-2:]
        index += [base + r * w + (w - 1 - c) for r in range(h) for c in range(w)]
        base += h * w
    return index


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo26n.yaml"])
def test_flip_average_maps_the_mirror_image_back(cfg):
    """For an image that is its own mirror image, the two views' average must decode to mirror-symmetric boxes and
    scores: it would not if the grid were flipped along y or the left and right box sides were not swapped."""
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=3, verbose=False).train()
    half = torch.rand(1, 3, 64, 48)
    img = torch.cat([half, half.flip(-1)], -1)  # 64 x 96: level widths 12, 6 and 3 (odd: a column is its own mirror)
    raw = model(img)
    avg = flip_average(raw, raw)
    head = model.model[-1]
    for r, a in [(raw[k], avg[k]) for k in ("one2many", "one2one")] if "one2many" in raw else [(raw, avg)]:
        decoded = head._inference(a).detach()  # (1, 4 + nc, anchors), boxes as xywh in training mode
        x = decoded[:, 0]  # box centers in x
        index = mirror_index(r["feats"])
        assert torch.allclose(x, 96 - x[:, index], atol=1e-3)
        assert torch.allclose(decoded[:, 4:], decoded[:, 4:, index], atol=1e-5)
        assert not torch.allclose(r["scores"], r["scores"][..., index], atol=1e-3)  # one view alone is not symmetric
    logits = torch.randn(2, 5)  # classification: two identical views are the one view's distribution
    assert torch.allclose(flip_average(logits, logits).softmax(1), logits.softmax(1), atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "cfg"),
    [
        (SegmentationModel, "yolo11n-seg.yaml"),
        (PoseModel, "yolov8n-pose.yaml"),
        (OBBModel, "yolo26n-obb.yaml"),
        (SegmentationModel, "yolo26n-seg.yaml"),
        (ClassificationModel, "yolo11n-cls.yaml"),
    ],
)
def test_flip_average_serves_every_task(kind, cfg):
    """Every head's outputs average into a teacher the loss takes; what a flip does not map stays the plain view's."""
    torch.manual_seed(0)
    model = kind(cfg, nc=3, verbose=False).train()
    img = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain, mirrored = model(img), model(img.flip(-1))
    teacher = flip_average(plain, mirrored)
    assert torch.isfinite(head_distill_loss(model(img), teacher))
    if isinstance(plain, dict):
        branch = plain.get("one2many", plain)
        averaged = teacher.get("one2many", teacher)
        assert not torch.allclose(averaged["scores"], branch["scores"])  # the mirror image's answers count
        for k in set(branch) - {"scores", "boxes", "feats"}:  # keypoints, angles, mask coefficients, prototypes
            assert averaged[k] is branch[k]


def test_flip_teacher_needs_mirrored_training_images(tmp_path, detect_data):
    with pytest.raises(SlimConfigError, match=r"distill.flip=true .* fliplr=0.0"):
        YOLO("yolov8n.yaml").train(**train_args(tmp_path, data=detect_data), fliplr=0.0,
                                   slim={"distill": {"flip": True, "start": 0}})  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_flip_teacher_script_validates_both_views(tmp_path, detect_data):
    """benchmarks/flip_teacher.py, which measures how much stronger the flip-averaged teacher is, on a real checkpoint."""
    import yaml

    names = yaml.safe_load(Path(detect_data).read_text())["names"]
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "flip_teacher.py"
    out = {}
    for cfg in ("yolov8n.yaml", "yolo26n.yaml"):
        model = DetectionModel(cfg, nc=len(names), verbose=False)
        model.names = names
        torch.save({"model": model.half(), "train_args": {"task": "detect"}}, tmp_path / f"{cfg}.pt")
        out[cfg] = subprocess.run(
            [sys.executable, str(script), str(tmp_path / f"{cfg}.pt"), "--data", detect_data, "--imgsz", "64"],
            check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
    assert out["yolov8n.yaml"].returncode == 0, out["yolov8n.yaml"].stderr
    last = out["yolov8n.yaml"].stdout.splitlines()[-1]
    assert re.fullmatch(r"plain \d\.\d{4}, flip-averaged \d\.\d{4} \([+-]\d\.\d{4}\)", last)
    assert (
        out["yolo26n.yaml"].returncode != 0
        and "a plain Detect head (YOLOv8, YOLO11) is needed" in out["yolo26n.yaml"].stderr
    )
