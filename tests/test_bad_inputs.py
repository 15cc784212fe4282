"""Every bad input a user is likely to give gets a SlimConfigError-style message before any run directory exists."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from conftest import train_args
from ultralytics import YOLO
from ultralytics.nn.tasks import ClassificationModel, DetectionModel

from ultralytics_slim import pruning
from ultralytics_slim.data import make_dataset
from ultralytics_slim.errors import SlimConfigError, SlimDependencyError
from ultralytics_slim.markers import PRUNED_KEY
from ultralytics_slim.recipe import load_recipe
from ultralytics_slim.schedule import build_schedule


@pytest.mark.parametrize(
    ("recipe", "key"),
    [
        ("sparsity: {strength: .inf}\n", "sparsity.strength"),
        ("distill: {weight: .inf}\n", "distill.weight"),
        ("distill: {temperature: .nan}\n", "distill.temperature"),
        ("prune: {end: true}\n", "prune.end"),
        ("prune: {importance: bn_scal}\n", "Did you mean 'bn_scale'"),
    ],
)
def test_bad_values_fail_before_a_run_directory(tmp_path, detect_data, recipe, key):
    path = tmp_path / "bad.yaml"
    path.write_text(recipe)
    with pytest.raises(SlimConfigError, match=key):
        YOLO("yolov8n.yaml").train(**train_args(tmp_path, data=detect_data), slim=str(path))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("slim", [True, 1, [1, 2], ".", "", "   "], ids=repr)
def test_slim_values_that_are_not_recipes(tmp_path, detect_data, slim):
    with pytest.raises(SlimConfigError, match=r"slim="):
        YOLO("yolov8n.yaml").train(**train_args(tmp_path, data=detect_data), slim=slim)
    assert not (tmp_path / "run").exists()


def test_directories_missing_paths_and_binary_files(tmp_path):
    with pytest.raises(SlimConfigError, match="is a directory"):
        load_recipe(tmp_path)
    with pytest.raises(SlimConfigError, match="no such file"):  # not silently the shipped prune.yaml
        load_recipe(tmp_path / "missing" / "prune.yaml")
    with pytest.raises(SlimConfigError, match="no such file"):
        load_recipe("some/missing/dir/prune.yaml")
    binary = tmp_path / "recipe.yaml"
    binary.write_bytes(b"\xff\xfe\x00prune: {}\x80")
    with pytest.raises(SlimConfigError, match="not a UTF-8 text file"):
        load_recipe(binary)
    assert load_recipe("prune").prune.target.macs == 0.5  # a bare name still finds the shipped recipe


def test_slim_none_is_a_stock_run(tmp_path, detect_data):
    """`model.train(slim=args.slim)` with the option unset must behave exactly as a run without `slim`."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    model = YOLO("yolov8n.yaml")
    model.train(**train_args(tmp_path, data=detect_data, epochs=1), slim=None)
    assert type(model.trainer) is DetectionTrainer
    assert "slim" not in yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())


def test_resume_of_a_missing_path_behaves_as_stock(tmp_path, detect_data, monkeypatch):
    """Stock falls back to the latest run, and says so in its own words when there is none."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="Resume checkpoint not found"):
        YOLO("yolov8n.yaml").train(**train_args(tmp_path, data=detect_data), resume=str(tmp_path / "no" / "last.pt"))


def test_relative_teacher_is_stored_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher.pt").write_bytes(b"")
    recipe = load_recipe({"distill": {"teacher": "teacher.pt"}})
    assert recipe.distill.teacher == str(tmp_path.resolve() / "teacher.pt")
    assert load_recipe({"distill": {"teacher": "self"}}).distill.teacher == "self"


def test_pruning_steps_never_stack_in_one_epoch():
    s = build_schedule(load_recipe({"prune": {"steps": 100, "start": 0, "end": 1}}), 2)
    assert s.events["prune"] == (0,)
    assert "prune.steps=100" in s.notes[0] and "taking 1 step" in s.notes[0]
    s = build_schedule(load_recipe({"prune": {"steps": 4, "start": 0.4, "end": 0.7}}), 12)  # 3 epochs for 4 steps
    assert len(set(s.events["prune"])) == len(s.events["prune"]) == 3 and s.notes


def test_pruned_model_on_data_with_other_classes_leaves_nothing(tmp_path, data_root):
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    pruning.prune_to(model, "macs", 0.7 * pruning.count_macs_params(model)[0], importance="l1")
    model.yaml[PRUNED_KEY] = True
    torch.save({"model": model.half(), "train_args": {}}, tmp_path / "pruned.pt")
    data = make_dataset(data_root / "nc5", "detect", n_train=8, n_val=4, imgsz=64, nc=5)
    with pytest.raises(SlimConfigError, match="nc=3"):
        YOLO(tmp_path / "pruned.pt").train(**train_args(tmp_path, data=str(data)))
    assert not (tmp_path / "run").exists()


def test_teacher_with_another_head_is_rejected_before_training(tmp_path, detect_data):
    """A classification checkpoint without train_args must not pass as a detection teacher."""
    teacher = ClassificationModel("yolo11n-cls.yaml", nc=3, verbose=False)
    teacher.names = {0: "circle", 1: "square", 2: "triangle"}
    torch.save({"model": teacher.half()}, tmp_path / "cls.pt")
    with pytest.raises(SlimConfigError, match="head Classify"):
        YOLO("yolov8n.yaml").train(
            **train_args(tmp_path, data=detect_data), slim={"distill": {"teacher": str(tmp_path / "cls.pt")}}
        )
    assert not (tmp_path / "run").exists()


def test_missing_torch_pruning_names_the_install_command(tmp_path):
    code = (
        "import sys; sys.modules['torch_pruning'] = None\n"
        "from ultralytics_slim.controller import SlimController\n"
        "from ultralytics_slim.recipe import load_recipe\n"
        "SlimController.preflight(load_recipe('prune.yaml'))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert r.returncode != 0
    assert SlimDependencyError.__name__ in r.stderr and 'pip install "ultralytics-slim"' in r.stderr
    assert "torch_pruning" in r.stderr.splitlines()[-1]
