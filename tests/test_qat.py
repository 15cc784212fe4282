"""Tests of INT8 QAT: the technique that starts Ultralytics' own QAT mid-run, and the INT8 ONNX export of checkpoints.

Real nvidia-modelopt, real onnxruntime, 64 px images: fake quantization and the exported INT8 graph both run on CPU.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import Interrupt, interrupt_at, train_args
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel, load_checkpoint
from ultralytics.utils.torch_utils import is_qat, strip_qat

from ultralytics_slim.errors import SlimConfigError, SlimDependencyError
from ultralytics_slim.export import main as export_cli
from ultralytics_slim.qdq import _activations_to_uint8, _Graph, _output_range, fold_weight_qdq
from ultralytics_slim.recipe import PHASES, load_recipe
from ultralytics_slim.schedule import build_schedule
from ultralytics_slim.techniques import technique_class
from ultralytics_slim.techniques.qat import QuantizeTechnique, export_int8_onnx

IMGSZ = 64


def _technique(start: int = 2, epochs: int = 4) -> QuantizeTechnique:
    recipe = load_recipe({"quantize": {"start": start, "calib_batches": 2}})
    return QuantizeTechnique("quantize", recipe.quantize, build_schedule(recipe, epochs))


def _ops(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


def _run_with_convs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    """The output and every Conv's: a head trained for one epoch gives nearly the same output whatever the weights."""
    model = onnx.load(str(path))
    convs = [n.output[0] for n in model.graph.node if n.op_type == "Conv"]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(c, onnx.TensorProto.FLOAT, None) for c in convs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _quantized_float_weights(path: Path) -> list[str]:
    """Float initializers that a QuantizeLinear reads, directly or through the exporter's Identity link to an equal
    one: the weights the stock exporter leaves in FP32."""
    graph = onnx.load(str(path)).graph
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    floats |= {n.output[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in floats}
    return [n.input[0] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in floats]


@pytest.fixture(scope="module")
def onnx_files(qat_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The QAT weights exported once each: without quantizers, by the stock exporter, the stock export with its weights
    folded to INT8, and by `export_int8_onnx`."""
    tmp = tmp_path_factory.mktemp("onnx")
    weights = shutil.copy(qat_weights, tmp / "qat.pt")
    float_model = YOLO(weights)
    strip_qat(float_model.model)  # the same weights without fake quantization
    fp32 = Path(float_model.export(format="onnx", imgsz=IMGSZ, simplify=False)).rename(tmp / "fp32.onnx")
    qdq = Path(YOLO(weights).export(format="onnx", imgsz=IMGSZ, simplify=False)).rename(tmp / "qdq.onnx")
    folded = Path(shutil.copy(qdq, tmp / "folded.onnx"))
    fold_weight_qdq(folded)
    int8 = export_int8_onnx(weights, imgsz=IMGSZ, simplify=False)
    return SimpleNamespace(fp32=fp32, qdq=qdq, folded=folded, int8=int8)


def _optimized_ops(path: Path, tmp: Path) -> Counter[str]:
    """The op types of the graph onnxruntime runs after its own fusions."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp / f"{path.stem}.ort.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _ops(Path(options.optimized_model_filepath))


def test_export_int8_onnx_writes_qdq_graph_that_onnxruntime_runs(onnx_files: SimpleNamespace) -> None:
    """The learned ranges as Q/DQ nodes; the same output layout as the float graph, and about its outputs."""
    fp32, int8 = onnx_files.fp32, onnx_files.int8
    ops = _ops(int8)
    assert ops["QuantizeLinear"] > 50 and ops["DequantizeLinear"] > 50
    assert "QuantizeLinear" not in _ops(fp32)
    meta = _meta(int8)
    assert {"task", "names", "stride", "imgsz"} <= set(meta) and meta["task"] == "detect"
    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    y8, y32 = _run(int8, x), _run(fp32, x)
    assert y8.shape == y32.shape == (1, 4 + 3, 8 * 8 + 4 * 4 + 2 * 2)  # 4 box + 3 class rows, anchors of strides 8-32
    assert np.isfinite(y8).all()
    assert np.abs(y8 - y32).mean() < 0.05 * np.abs(y32).mean()  # INT8 rounding, not a different network
    with pytest.raises(ValueError, match="not a QAT checkpoint"):
        export_int8_onnx(fp32)  # an exported model carries no quantizers to export


def test_weight_folding_stores_int8_with_unchanged_outputs(onnx_files: SimpleNamespace) -> None:
    """Folding the weight Q/DQ pairs changes the file's size, not its numbers, its activation Q/DQ or its metadata."""
    qdq, folded = onnx_files.qdq, onnx_files.folded
    weights = _quantized_float_weights(qdq)
    assert len(weights) > 50  # the stock exporter quantizes every FP32 conv weight at run time
    assert _quantized_float_weights(folded) == [] and _quantized_float_weights(onnx_files.int8) == []
    graph = onnx.load(str(folded)).graph
    inits = {t.name: t.data_type for t in graph.initializer}
    dq_weights = [n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(dq_weights) == len(weights) and {inits[w] for w in dq_weights} == {onnx.TensorProto.INT8}
    assert not inits.keys() & set(weights)  # the float copies are gone
    before, after = _ops(qdq), _ops(folded)
    assert after["QuantizeLinear"] == before["QuantizeLinear"] - len(weights) > 0  # activation Q/DQ stay
    assert after["DequantizeLinear"] == before["DequantizeLinear"]
    assert {**_meta(folded), "date": ""} == {**_meta(qdq), "date": ""}
    x = np.random.default_rng(1).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    for y, y_ref in zip(_run_with_convs(folded, x), _run_with_convs(qdq, x), strict=True):
        np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    assert onnx_files.int8.stat().st_size < 0.35 * onnx_files.fp32.stat().st_size  # FP32 -> INT8 weights, about 4x


def test_onnxruntime_runs_the_int8_convolutions_as_integer_kernels(onnx_files: SimpleNamespace, tmp_path: Path) -> None:
    """Every quantized convolution past the stem becomes a QLinearConv; the stem's are float convolutions on float
    inputs; the stock Q/DQ graph gets none (onnxruntime keeps float convolutions on dequantized weights there)."""
    graph = onnx.load(str(onnx_files.folded)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    quantized = [n.name for n in graph.node if n.op_type == "Conv" and producer.get(n.input[0]) == "DequantizeLinear"]
    stem = [n for n in quantized if n.split("/")[1] in {"model.0", "model.1", "model.2"}]  # strides 2 and 4 at 64 px
    assert len(quantized) > 50 and len(stem) == 6
    assert _optimized_ops(onnx_files.folded, tmp_path)["QLinearConv"] == 0
    assert _optimized_ops(onnx_files.int8, tmp_path)["QLinearConv"] == len(quantized) - len(stem)
    int8 = onnx.load(str(onnx_files.int8)).graph
    producer = {o: n.op_type for n in int8.node for o in n.output}
    floats = {t.name for t in int8.initializer if t.data_type == onnx.TensorProto.FLOAT}
    for n in (n for n in int8.node if n.name in stem):
        assert n.input[1] in floats and producer.get(n.input[0]) != "DequantizeLinear", n.name
    zero_points = [t for t in int8.initializer if t.data_type == onnx.TensorProto.INT8 and t.dims == []]
    assert not [t.name for t in zero_points if t.name in {i for n in int8.node for i in n.input[2:3]}]  # all uint8
    x = np.random.default_rng(2).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    y, y_ref = _run(onnx_files.int8, x), _run(onnx_files.folded, x)
    assert np.abs(y - y_ref).mean() < 0.02 * np.abs(y_ref).mean()  # 8-bit conv outputs, not a different network


@pytest.mark.parametrize("cfg", ["yolo11n.yaml", "yolo26n.yaml"])
def test_integer_kernels_for_yolo11_and_yolo26(cfg: str, tmp_path: Path, detect_data: str) -> None:
    """Their C3k2, attention and depthwise head convolutions, and weights the exporter stores once for several layers
    (linked by Identity nodes), all become QLinearConv past the stem."""
    YOLO(cfg).train(**train_args(tmp_path, data=detect_data, epochs=1, batch=8, quantize=8))
    weights = tmp_path / "run" / "weights" / "best.pt"
    graph = onnx.load(YOLO(weights).export(format="onnx", imgsz=IMGSZ, simplify=False)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    quantized = [n.name for n in graph.node if n.op_type == "Conv" and producer.get(n.input[0]) == "DequantizeLinear"]
    stem = [n for n in quantized if n.split("/")[1] in {"model.0", "model.1", "model.2"}]  # strides 2 and 4 at 64 px
    int8 = export_int8_onnx(weights, imgsz=IMGSZ, simplify=False)
    assert len(quantized) > 60 and _optimized_ops(int8, tmp_path)["QLinearConv"] == len(quantized) - len(stem)


def test_activations_to_uint8_keeps_every_value(onnx_files: SimpleNamespace, tmp_path: Path) -> None:
    """int8 with zero point 0 -> uint8 with zero point 128 is the same grid: every convolution sees the same input.
    Also in a graph with its intermediate types recorded (as `simplify=True` exports have them)."""
    rewritten = tmp_path / "u8.onnx"
    graph = _Graph(onnx.shape_inference.infer_shapes(onnx.load(str(onnx_files.folded))))
    assert any(vi.type.tensor_type.elem_type == onnx.TensorProto.INT8 for vi in graph.g.value_info)
    _activations_to_uint8(graph)
    graph.finish(rewritten)
    zero_points = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(rewritten)).graph.initializer]
    zero_points = [z for z in zero_points if z.dtype == np.uint8]
    assert len(zero_points) > 50 and all((z == 128).all() for z in zero_points)
    x = np.random.default_rng(3).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    for y, y_ref in zip(_run_with_convs(rewritten, x), _run_with_convs(onnx_files.folded, x), strict=True):
        np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)


def test_output_range_clips_only_what_the_activation_hides() -> None:
    """Before a SiLU, a far negative outlier is clipped (SiLU maps it to about 0 anyway) and the finer steps win;
    without an activation every value counts, and the maximum stays whenever clipping it costs more than it saves."""
    v = np.concatenate([np.random.default_rng(0).normal(0.0, 1.5, 20000), [-40.0, 9.0]])
    lo, hi = _output_range(v, float(v.min()), float(v.max()), silu=True)
    assert -10.0 <= lo < -1.0 and hi == 9.0
    assert _output_range(v, float(v.min()), float(v.max()), silu=False)[0] == -40.0


def test_int8_onnx_validates_with_stock_yolo_val(onnx_files: SimpleNamespace, tmp_path: Path, detect_data: str) -> None:
    """Stock `val` and `predict` read the INT8 file (its metadata, its output layout) as any Ultralytics ONNX export."""
    kwargs = {"data": detect_data, "imgsz": IMGSZ, "plots": False, "device": "cpu", "project": str(tmp_path)}
    int8, qdq = (YOLO(f).val(**kwargs).results_dict for f in (onnx_files.int8, onnx_files.qdq))
    assert set(int8) == set(qdq) and all(np.isfinite(v) for v in int8.values())
    image = next((Path(detect_data).parent / "images" / "val").glob("*"))
    boxes = YOLO(onnx_files.int8).predict(image, imgsz=IMGSZ, conf=0.001, device="cpu", verbose=False)[0].boxes
    assert len(boxes) > 0 and np.isfinite(boxes.xyxy.numpy()).all()  # an untrained head still proposes boxes


def test_export_needs_calibration_images_and_writes_nothing_without(qat_weights: Path, tmp_path: Path) -> None:
    """The data set the checkpoint trained on calibrates by default; when it is gone, a clear error and no file."""
    ckpt = torch.load(qat_weights, map_location="cpu", weights_only=False)
    ckpt["train_args"]["data"] = str(tmp_path / "moved.yaml")
    torch.save(ckpt, weights := tmp_path / "moved.pt")
    with pytest.raises(ValueError, match=r"data=.*moved\.yaml: not found.*pass data="):
        export_int8_onnx(weights, imgsz=IMGSZ)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved.pt"]


def test_weight_folding_rounds_and_saturates_as_onnx_quantizelinear(tmp_path: Path) -> None:
    """Ties to even, saturation, per-axis zero points and a negative axis; the activation Q/DQ stays."""
    h, nh = onnx.helper, onnx.numpy_helper
    scale, zp = np.array([0.5, 0.25, 0.125], np.float32), np.array([0, 1, -1], np.int8)
    w = np.array([[0.25, 0.375, -0.1875], [0.75, 100.0, -100.0]], np.float32)  # 0.5, 1.5, -1.5, 1.5 steps; saturated
    nodes = [
        h.make_node("QuantizeLinear", ["w", "scale", "zp"], ["wq"], axis=-1),
        h.make_node("DequantizeLinear", ["wq", "scale", "zp"], ["wdq"], axis=-1),
        h.make_node("QuantizeLinear", ["x", "xscale", "xzp"], ["xq"]),
        h.make_node("DequantizeLinear", ["xq", "xscale", "xzp"], ["xdq"]),
        h.make_node("Mul", ["xdq", "wdq"], ["y"]),
    ]
    inits = {"w": w, "scale": scale, "zp": zp, "xscale": np.float32(0.1), "xzp": np.int8(0)}
    graph = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
        [nh.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    qdq, folded = tmp_path / "qdq.onnx", tmp_path / "folded.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=8), qdq)
    shutil.copy(qdq, folded)
    fold_weight_qdq(folded)
    model = onnx.load(str(folded))
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "QuantizeLinear", "DequantizeLinear", "Mul"]
    weight = {t.name: nh.to_array(t) for t in model.graph.initializer}["wq"]
    np.testing.assert_array_equal(weight, np.array([[0, 3, -3], [2, 127, -128]], np.int8))
    assert "w" not in {t.name for t in model.graph.initializer}
    sessions = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]) for f in (folded, qdq)]
    y, y_ref = (session.run(None, {"x": np.ones((2, 3), np.float32)})[0] for session in sessions)
    np.testing.assert_array_equal(y, y_ref)


def test_export_cli_prints_the_onnx_path(qat_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    weights = shutil.copy(qat_weights, tmp_path / "cli.pt")
    path = export_cli([f"model={weights}", f"imgsz={IMGSZ}", "simplify=False"])
    assert path == tmp_path / "cli.onnx" and path.exists() and _quantized_float_weights(path) == []
    assert capsys.readouterr().out.strip().endswith(str(path))
    with pytest.raises(SystemExit, match="missing model="):
        export_cli([f"imgsz={IMGSZ}"])
    with pytest.raises(SystemExit, match="not key=value"):
        export_cli([f"model={weights}", "onnx"])


def test_export_refuses_float_checkpoint_and_other_formats(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    YOLO("yolov8n.yaml").save(plain)
    with pytest.raises(ValueError, match="not a QAT checkpoint"):
        export_int8_onnx(plain, imgsz=IMGSZ)
    with pytest.raises(ValueError, match="ONNX only"):
        export_int8_onnx(plain, format="engine")


def test_recipe_starts_qat_mid_run_and_resume_keeps_it(tmp_path: Path, detect_data: str, monkeypatch) -> None:
    """Through the trainer glue: float epoch 0, QAT from epoch 1, interrupted, resumed without re-preparing."""

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_model_save", interrupt_at(1))  # right after epoch 1's checkpoint
    recipe = {"quantize": {"start": 1, "calib_batches": 2}}
    with pytest.raises(Interrupt):
        model.train(**train_args(tmp_path, data=detect_data, epochs=3), slim=recipe)
    last = tmp_path / "run" / "weights" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["train_args"]["quantize"] == 8 and ckpt["modelopt"]

    from ultralytics_slim.techniques import qat

    def no_second_prepare(*args, **kwargs):
        raise AssertionError("QAT was prepared again on resume")

    monkeypatch.setattr(qat, "prepare_qat", no_second_prepare)
    YOLO(last).train(resume=True)  # stock _setup_train restores the quantizers from the checkpoint
    best, _ = load_checkpoint(tmp_path / "run" / "weights" / "best.pt")
    assert is_qat(best)


class _Trainer(SimpleNamespace):
    """The trainer attributes the technique reads, around a real model; its training set is plain image tensors."""

    def __init__(self, epoch: int, **args):
        defaults = {"quantize": None, "compile": False, "seed": 0, "close_mosaic": 10}
        super().__init__(
            model=DetectionModel("yolov8n.yaml", nc=3, verbose=False),
            epoch=epoch,
            epochs=4,
            resume=False,
            train_loader=SimpleNamespace(dataset=[torch.rand(3, IMGSZ, IMGSZ) for _ in range(12)], batch_size=4),
            args=SimpleNamespace(**{**defaults, **args}),
            calibrated=[],
        )

    def preprocess_batch(self, batch: torch.Tensor) -> torch.Tensor:
        self.calibrated.append(batch)
        return batch


def test_technique_prepares_once_at_window_start() -> None:
    technique, trainer = _technique(start=2), _Trainer(epoch=1)
    model = trainer.model
    assert technique.on_epoch_start(trainer) is False and not is_qat(model)

    trainer.epoch = 2
    assert technique.on_epoch_start(trainer) is True
    assert trainer.model is model and is_qat(model) and trainer.args.quantize == 8
    # calibrated on calib_batches (2) of the 3 batches of the training set the trainer trains on
    assert [b.shape for b in trainer.calibrated] == [(4, 3, IMGSZ, IMGSZ)] * 2

    trainer.epoch = 3
    assert technique.on_epoch_start(trainer) is False and len(trainer.calibrated) == 2


def test_check_rejects_quantize_arg_and_compile() -> None:
    technique = _technique()
    technique.check(_Trainer(epoch=0))
    with pytest.raises(SlimConfigError, match="remove quantize=8"):
        technique.check(_Trainer(epoch=0, quantize=8))
    resumed = _Trainer(epoch=3, quantize=8)
    resumed.resume = True
    technique.check(resumed)  # a resumed QAT run carries quantize=8 in its own checkpoint args
    with pytest.raises(SlimConfigError, match="compile=False"):
        technique.check(_Trainer(epoch=0, compile=True))


def test_missing_modelopt_names_the_install_command(monkeypatch, tmp_path: Path) -> None:
    for name in ("modelopt", "modelopt.torch", "modelopt.torch.quantization"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import modelopt...` raise ImportError
    technique = _technique()
    with pytest.raises(SlimDependencyError, match=r'pip install "ultralytics-slim\[qat\]"'):
        QuantizeTechnique.preflight(technique.cfg)
    with pytest.raises(SlimDependencyError, match="nvidia-modelopt"):
        technique.check(_Trainer(epoch=0))
    with pytest.raises(SlimDependencyError):
        export_int8_onnx(tmp_path / "any.pt")


def test_module_imports_without_modelopt() -> None:
    code = (
        "import sys; sys.modules['modelopt'] = None\n"
        "from ultralytics_slim.recipe import PHASES\n"
        "from ultralytics_slim.techniques import technique_class\n"
        "print(technique_class(PHASES['quantize']).__name__)"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == "QuantizeTechnique"


def test_recipe_schema() -> None:
    assert technique_class(PHASES["quantize"]) is QuantizeTechnique
    with pytest.raises(SlimConfigError, match="quantize.bits"):
        load_recipe({"quantize": {"bits": 4}})
    with pytest.raises(SlimConfigError, match="quantize.calib_batches"):
        load_recipe({"quantize": {"calib_batches": 0}})
