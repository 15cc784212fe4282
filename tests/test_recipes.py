"""Every shipped recipe through the stock `yolo` command, and the whole chain down to an INT8 ONNX file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import BLOCK_PLUGIN, cli, run_yolo, train_args
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils.torch_utils import get_num_params

from ultralytics_slim import export_int8_onnx, load_recipe
from ultralytics_slim.recipe import shipped_recipes


@pytest.mark.parametrize("name", shipped_recipes())
def test_shipped_recipe_through_yolo_cli(tmp_path, detect_data, name):
    r = run_yolo(
        "train",
        *cli(train_args(tmp_path, data=detect_data, model="yolov8n.yaml", epochs=10)),
        f"slim={name}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run, recipe = tmp_path / "run", load_recipe(name)
    start, best = (load_checkpoint(run / "weights" / f"{w}.pt")[0] for w in ("start", "best"))
    ckpt = torch.load(run / "weights" / "best.pt", weights_only=False)
    if recipe.prune:
        assert get_num_params(best) < 0.7 * get_num_params(start)
    assert bool(ckpt.get("modelopt")) == bool(recipe.quantize)
    assert (run / "report.md").exists() and (run / "slim.yaml").exists()
    if not recipe.quantize:
        return

    onnx_path = export_int8_onnx(run / "weights" / "best.pt", imgsz=64)
    ops = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    out = onnxruntime.InferenceSession(str(onnx_path)).run(None, {"images": np.zeros((1, 3, 64, 64), np.float32)})
    assert out[0].shape[0] == 1

    code = (
        BLOCK_PLUGIN
        + f"""
from ultralytics import YOLO
m = YOLO({str(run / "weights" / "best.pt")!r})
metrics = m.val(data={detect_data!r}, imgsz=64, batch=8, plots=False, device="cpu")
print("loaded", sum(p.numel() for p in m.model.parameters()))
"""
    )
    loaded = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "loaded" in loaded.stdout
