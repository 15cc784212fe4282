"""Tests of the OpenVINO export of QAT checkpoints: the learned INT8 ranges, run by OpenVINO in INT8, read by stock YOLO.

Real nvidia-modelopt, real OpenVINO and onnxruntime, 64 px images. Speed is measured in benchmarks, not here.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from conftest import run_yolo
from ultralytics import YOLO
from ultralytics.utils.torch_utils import strip_qat

from ultralytics_slim.errors import SlimDependencyError
from ultralytics_slim.qdq import fold_weight_qdq
from ultralytics_slim.techniques.qat import export_int8_openvino

ov = pytest.importorskip("openvino")

IMGSZ = 64
OV_CONFIG = {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"}  # float ops in f32, as onnxruntime


@pytest.fixture(scope="module")
def exports(qat_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One checkpoint exported to OpenVINO, to the Q/DQ ONNX graph it is converted from (the stock export with INT8
    weights), and as a float ONNX model."""
    tmp = tmp_path_factory.mktemp("openvino")
    weights = Path(shutil.copy(qat_weights, tmp / "qat.pt"))
    ov_dir = export_int8_openvino(weights, imgsz=IMGSZ, simplify=False)
    qdq = Path(YOLO(weights).export(format="onnx", imgsz=IMGSZ, simplify=False)).rename(tmp / "qdq.onnx")
    fold_weight_qdq(qdq)
    float_model = YOLO(weights)
    strip_qat(float_model.model)
    fp32 = Path(float_model.export(format="onnx", imgsz=IMGSZ, simplify=False)).rename(tmp / "fp32.onnx")
    return SimpleNamespace(weights=weights, ov_dir=ov_dir, qdq=qdq, fp32=fp32)


def _quantized_convs(path: Path) -> list[str]:
    """Outputs of the ONNX convolutions whose input is dequantized: those the learned ranges make INT8."""
    graph = onnx.load(str(path)).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [n.output[0] for n in graph.node if n.op_type == "Conv" and n.input[0] in dequantized]


def _ort(path: Path, x: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    model = onnx.load(str(path))
    model.graph.output.extend(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([model.graph.output[0].name, *outputs], {"images": x})


def _openvino(ov_dir: Path, x: np.ndarray, outputs: list[str]) -> tuple[list[np.ndarray], list[str]]:
    """The outputs asked for (by their ONNX names) and each convolution's runtime precision from the executed graph."""
    core = ov.Core()
    model = core.read_model(next(ov_dir.glob("*.xml")))
    model.add_outputs(outputs)
    compiled = core.compile_model(model, "CPU", OV_CONFIG)
    result = compiled(x)
    ops = [op.get_rt_info() for op in compiled.get_runtime_model().get_ops()]
    precisions = [rt["runtimePrecision"].astype(str) for rt in ops if rt["layerType"].astype(str) == "Convolution"]
    return [result[compiled.output(0)], *(result[compiled.output(o)] for o in outputs)], precisions


def test_openvino_export_has_the_stock_layout_and_metadata(exports: SimpleNamespace) -> None:
    """`qat_int8_openvino_model/{qat.xml,qat.bin,metadata.yaml}` as Ultralytics names it; nothing else is left behind."""
    ov_dir, weights = exports.ov_dir, exports.weights
    assert ov_dir == weights.with_name("qat_int8_openvino_model")
    assert sorted(p.name for p in ov_dir.iterdir()) == ["metadata.yaml", "qat.bin", "qat.xml"]
    assert not weights.with_suffix(".onnx").exists()  # the intermediate ONNX graph stays out of the user's folder
    meta = yaml.safe_load((ov_dir / "metadata.yaml").read_text())
    assert meta["task"] == "detect" and meta["imgsz"] == [IMGSZ, IMGSZ] and meta["stride"] == 32
    assert meta["names"] == {0: "circle", 1: "square", 2: "triangle"}
    assert meta["args"]["quantize"] == 8 and "opset" not in meta["args"]  # OpenVINO's export arguments, as stock
    model = ov.Core().read_model(ov_dir / "qat.xml")
    assert model.get_rt_info(["model_info", "labels"]).astype(str) == "circle square triangle"
    assert {op.get_type_name() for op in model.get_ops()} >= {"FakeQuantize", "Convolution"}
    consts = [op.get_element_type() for op in model.get_ops() if op.get_type_name() == "Constant"]
    assert consts.count(ov.Type.i8) == len(_quantized_convs(exports.qdq))  # INT8 weights in the .bin, not FP32
    assert (ov_dir / "qat.bin").stat().st_size < 0.35 * exports.fp32.stat().st_size


def test_openvino_runs_the_learned_int8_ranges_in_int8(exports: SimpleNamespace) -> None:
    """Every convolution the Q/DQ graph quantizes runs in INT8, with the same rounding as onnxruntime's Q/DQ model."""
    convs = _quantized_convs(exports.qdq)
    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    (y_ov,), precisions = _openvino(exports.ov_dir, x, [])
    y_int8, *convs_int8 = _ort(exports.qdq, x, convs)
    _, *convs_fp32 = _ort(exports.fp32, x, convs)
    assert len(convs) > 50 and sum(p in {"u8", "i8"} for p in precisions) == len(convs), precisions
    # The first convolution sees the image through the first learned quantizer, far from the float model. The two
    # runtimes are compared on the model's output (a rare tie rounded the other way may propagate): the tensors
    # OpenVINO exposes inside its graph depend on the CPU (on an AVX2 CPU without VNNI the first convolution's named
    # output differed by up to 46% of its range while the outputs agreed to 3e-8).
    first = np.abs(convs_int8[0]).max()
    assert np.abs(convs_fp32[0] - convs_int8[0]).max() > 1e-3 * first
    assert y_ov.shape == y_int8.shape and np.abs(y_ov - y_int8).mean() < 0.01 * np.abs(y_int8).mean()


def test_stock_yolo_predicts_and_validates_the_openvino_dir(
    exports: SimpleNamespace, detect_data: str, tmp_path: Path
) -> None:
    """`YOLO(dir)` and `yolo val model=dir` read it as any Ultralytics OpenVINO export, with the Q/DQ ONNX's results."""
    kwargs = {"data": detect_data, "imgsz": IMGSZ, "batch": 1, "plots": False, "project": str(tmp_path)}
    on_ov, on_onnx = (YOLO(f).val(**kwargs).results_dict for f in (exports.ov_dir, exports.qdq))
    assert set(on_ov) == set(on_onnx) and all(np.isfinite(v) for v in on_ov.values())
    assert all(abs(on_ov[k] - on_onnx[k]) < 0.01 for k in on_ov), (on_ov, on_onnx)
    image = next((Path(detect_data).parent / "images" / "val").glob("*"))
    ov_boxes, onnx_boxes = (
        YOLO(f).predict(image, imgsz=IMGSZ, conf=0.001, device="cpu", verbose=False)[0].boxes
        for f in (exports.ov_dir, exports.qdq)
    )
    assert len(ov_boxes) == len(onnx_boxes) > 0  # an untrained head still proposes boxes at conf 0.001
    np.testing.assert_allclose(ov_boxes.xyxy.numpy(), onnx_boxes.xyxy.numpy(), atol=0.5)
    r = run_yolo("val", f"model={exports.ov_dir}", f"data={detect_data}", f"imgsz={IMGSZ}", "plots=False", cwd=tmp_path)
    assert r.returncode == 0 and "OpenVINO" in r.stdout + r.stderr, r.stderr[-2000:]


def test_openvino_export_refuses_float_checkpoints_other_formats_and_names_missing_openvino(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "plain.pt"
    YOLO("yolov8n.yaml").save(plain)
    with pytest.raises(ValueError, match="not a QAT checkpoint") as e:
        export_int8_openvino(plain, imgsz=IMGSZ)
    assert str(e.value).startswith(f"{plain} is not") and "format=openvino quantize=8" in str(e.value)
    assert not (tmp_path / "plain_int8_openvino_model").exists()
    with pytest.raises(ValueError, match="OpenVINO only"):
        export_int8_openvino(plain, format="onnx")
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    with pytest.raises(SlimDependencyError, match="pip install openvino"):
        export_int8_openvino(plain)
