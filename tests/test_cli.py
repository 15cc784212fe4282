"""The command-line tools as a new user meets them: a machine where Ultralytics never ran, typos, missing files.

Each runs in a child interpreter with an empty `YOLO_CONFIG_DIR`, where Ultralytics' first import prints a settings
notice; stdout must still hold the result alone, and mistakes must end in one line, not a traceback or a download.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ultralytics.data.utils import check_det_dataset

EXPORT_ERROR = "python -m ultralytics_slim.export: error: "


def _run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m module args` in `cwd` as on a fresh machine: a new, empty Ultralytics config dir, offline."""
    config = cwd / "yolo-config"
    config.mkdir()
    env = {**os.environ, "YOLO_CONFIG_DIR": str(config), "YOLO_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        check=False,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_data_cli_prints_only_the_path_on_a_fresh_machine(tmp_path: Path) -> None:
    """`data=$(python -m ultralytics_slim.data ...)` must capture the path, even where Ultralytics never ran."""
    args = ["--out", "sets/shapes", "--n-train", "4", "--n-val", "2", "--imgsz", "48"]
    r = _run("ultralytics_slim.data", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Creating new Ultralytics Settings" in r.stderr  # the config dir was really fresh, and its notice went here
    path = tmp_path / "sets" / "shapes" / "data.yaml"  # --out decides the path: scripts need not read stdout at all
    assert r.stdout == f"{path.resolve()}\n"
    assert check_det_dataset(r.stdout.strip())["nc"] == 3  # what `yolo train data=...` checks first


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_export_help(tmp_path: Path, flag: str) -> None:
    r = _run("ultralytics_slim.export", flag, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python -m ultralytics_slim.export model=")
    assert "imgsz=" in r.stdout and not r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["model=best.pt"], "model=best.pt: no such file"),  # a bare asset name: stock Ultralytics would download it
        (["model=runs/detect/train/weights/best.pt", "imgsz=64"], "model=runs/detect/train/weights/best.pt: no such"),
        (["model=runs"], "model=runs: a directory, not a .pt checkpoint"),
        (["imgsz=64"], "missing model=path/to/best.pt"),
        (["model=best.pt", "imgsx=64"], "not export arguments: 'imgsx' (did you mean 'imgsz'?)"),
        (["best.pt"], "not key=value: ['best.pt']"),
    ],
    ids=["asset name", "missing path", "directory", "no model", "typo", "bare word"],
)
def test_export_mistakes_end_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    """No traceback, no download attempt, nothing on stdout, nothing written: one line that names the mistake."""
    (tmp_path / "runs").mkdir()
    r = _run("ultralytics_slim.export", *args, cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines()[-1].startswith(EXPORT_ERROR + message), r.stderr
    assert "Traceback" not in r.stderr and "download" not in r.stderr.lower(), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "yolo-config"]


@pytest.mark.parametrize(
    "fmt, message",
    [
        ("openvino", "model=float.pt is a float checkpoint: OpenVINO runs Ultralytics' own export of it as fast"),
        ("engine", "format=engine: this export writes onnx or openvino"),
    ],
)
def test_export_of_a_float_checkpoint_ends_in_one_line(tmp_path: Path, fmt: str, message: str) -> None:
    """A format the export does not write for a checkpoint ends in one line that says what to do, and writes nothing."""
    from ultralytics import YOLO

    YOLO("yolov8n.yaml").save(tmp_path / "float.pt")
    r = _run("ultralytics_slim.export", "model=float.pt", f"format={fmt}", "imgsz=64", cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines()[-1].startswith(EXPORT_ERROR + message), r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.pt", "yolo-config"]


def test_export_of_a_float_checkpoint_prints_its_onnx(tmp_path: Path) -> None:
    """`onnx=$(python -m ultralytics_slim.export model=float.pt)` on a fresh machine: the FP32 graph with the DFL's
    softmax over the last axis (`deploy.fast_dfl`), next to the checkpoint, its path alone on stdout."""
    import onnx
    from ultralytics import YOLO

    YOLO("yolov8n.yaml").save(tmp_path / "float.pt")
    r = _run("ultralytics_slim.export", "model=float.pt", "imgsz=64", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "float.onnx\n" and "Creating new Ultralytics Settings" in r.stderr  # as model= named it
    path = tmp_path / "float.onnx"
    graph = onnx.load(str(path)).graph
    (softmax,) = [n for n in graph.node if n.op_type == "Softmax"]
    assert [a.i for a in softmax.attribute if a.name == "axis"] in ([-1], [3]), softmax
