"""Feature distillation from the unpruned model: channel-mapped through the pruning steps, measured as a loss share."""

from __future__ import annotations

import csv

import pytest
from ultralytics import YOLO
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils.torch_utils import get_num_params

from conftest import train_args
from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.recipe import load_recipe

RECIPE = {
    "distill": {"teacher": "self", "loss": "head+feature", "start": 1, "end": 1.0},
    "prune": {"target": {"macs": 0.5}, "steps": 2, "start": 1, "end": 3},
}


def test_feature_distillation_through_pruning_steps(tmp_path, detect_data):
    model = YOLO("yolov8n.yaml")
    model.train(**train_args(tmp_path, data=detect_data, epochs=4), slim=RECIPE)
    run = tmp_path / "run"
    with open(run / "results.csv") as f:
        rows = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    shares = [r["slim/distill_share"] for r in rows]
    assert shares[0] == 0 and all(0 < s < 1 for s in shares[1:])  # off before the window, a part of the loss in it
    assert all(r["train/distill"] > 0 for r in rows[1:])
    teacher, best = (load_checkpoint(run / "weights" / f"{w}.pt")[0] for w in ("teacher", "best"))
    assert get_num_params(best) < 0.6 * get_num_params(teacher)
    kept = model.trainer.slim.technique("prune").kept
    assert kept["model.21.cv2.bn"] and max(kept["model.21.cv2.bn"]) < teacher.model[21].cv2.bn.num_features


def test_feature_loss_needs_teacher_self(tmp_path):
    with pytest.raises(SlimConfigError, match="only 'teacher: self' allows"):
        load_recipe({"distill": {"teacher": str(tmp_path / "t.pt"), "loss": "feature"}})
