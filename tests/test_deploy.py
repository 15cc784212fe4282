"""The ONNX graph the plugin exports for deployment: the stock model's outputs, with a box decoding onnxruntime runs fast.

Real Ultralytics export, real onnxruntime; models from the yamls that ship with Ultralytics, 64 px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from ultralytics import YOLO
from ultralytics.nn.modules.block import DFL

from ultralytics_slim import export_fp32_onnx
from ultralytics_slim.deploy import is_qat_checkpoint
from ultralytics_slim.latency import export_onnx

IMGSZ = 64


def _softmax_axes(path: Path) -> list[tuple[int, int]]:
    """(axis, rank of its input) of every Softmax; the ranks come from shape inference."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.value_info}
    axes = []
    for node in (n for n in model.graph.node if n.op_type == "Softmax"):
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        axes.append((axis % ranks[node.input[0]], ranks[node.input[0]]))
    return axes


def _outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n-seg.yaml", "yolov8n-pose.yaml", "yolo26n.yaml"])
def test_fast_dfl_exports_the_stock_outputs_with_a_last_axis_softmax(tmp_path: Path, cfg: str) -> None:
    """Same outputs as the stock graph; where the stock graph has the DFL's softmax over axis 1, the fast one has none
    but over the last axis (YOLO26 has no DFL: both graphs are alike)."""
    model = YOLO(cfg).model
    fast = export_onnx(model, IMGSZ, tmp_path / "fast.onnx")
    stock = export_onnx(model, IMGSZ, tmp_path / "stock.onnx", stock_dfl=True)
    assert DFL.forward.__name__ == "forward"  # the stock method is back after the export
    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    for a, b in zip(_outputs(fast, x), _outputs(stock, x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    fast_axes, stock_axes = _softmax_axes(fast), _softmax_axes(stock)
    assert all(axis == rank - 1 for axis, rank in fast_axes), fast_axes
    if cfg.startswith("yolo26"):
        assert fast_axes == stock_axes  # its attention's softmax only: nothing to change
    else:
        assert (1, 4) in stock_axes and len(fast_axes) == len(stock_axes), (stock_axes, fast_axes)


def test_export_fp32_onnx_writes_what_ultralytics_reads(tmp_path: Path) -> None:
    """Next to the checkpoint, with the stock export's metadata and outputs: `YOLO(path)` predicts with it."""
    weights = tmp_path / "float.pt"
    YOLO("yolov8n.yaml").save(weights)
    assert not is_qat_checkpoint(weights)
    path = export_fp32_onnx(weights, imgsz=IMGSZ)
    assert path == tmp_path / "float.onnx" and _softmax_axes(path) == [(3, 4)]
    fast = path.rename(tmp_path / "fast.onnx")
    stock = Path(YOLO(weights).export(format="onnx", imgsz=IMGSZ))
    meta = [{p.key: p.value for p in onnx.load(str(f)).metadata_props} for f in (fast, stock)]
    assert meta[0].keys() == meta[1].keys() and meta[0]["names"] == meta[1]["names"]
    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    np.testing.assert_allclose(_outputs(fast, x)[0], _outputs(stock, x)[0], rtol=1e-5, atol=1e-4)
    result = YOLO(str(fast), task="detect")((x[0].transpose(1, 2, 0) * 255).astype(np.uint8), imgsz=IMGSZ)[0]
    assert result.names == YOLO(weights).names and result.boxes is not None
