"""INT8 quantization-aware training (QAT) as the last phase of a run, on top of Ultralytics' own `quantize=8` QAT.

Ultralytics 8.4 already trains INT8 QAT with nvidia-modelopt, but only from epoch 0: `_setup_train` calls `prepare_qat`
when `args.quantize == 8`. This technique calls the same `prepare_qat` at the start of the recipe's quantize window
instead, on the (possibly pruned) model, and then sets `args.quantize = 8` so that everything after is stock:
`save_model` writes the `modelopt` entry, resume re-applies it in `_setup_train`, `load_checkpoint` re-applies it for
val, predict and export, and the exporter writes the learned ranges as QuantizeLinear/DequantizeLinear nodes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from torch import nn
from ultralytics.utils import LOGGER, colorstr
from ultralytics.utils.patches import override_configs
from ultralytics.utils.torch_utils import is_qat, prepare_qat, unwrap_model

from ultralytics_slim.errors import SlimConfigError, SlimDependencyError
from ultralytics_slim.recipe import QuantizeConfig
from ultralytics_slim.techniques.base import Technique

PREFIX = colorstr("Slim: ")
INSTALL = 'pip install "ultralytics-slim[qat]"'
MOSAIC_AUGMENT = ("mosaic", "copy_paste", "mixup", "cutmix")  # what the trainer's close_mosaic switches off


def require_modelopt() -> None:
    """Fail early with the install command, rather than deep in `prepare_qat`, which would try to pip-install it."""
    try:
        importlib.import_module("modelopt.torch.quantization")
    except ImportError as e:  # modelopt itself, or huggingface_hub that its torch plugins import
        raise SlimDependencyError(
            f"INT8 QAT (recipe section 'quantize') needs nvidia-modelopt ({e}). Install it with: {INSTALL}"
        ) from None


class QuantizeTechnique(Technique):
    """Insert ModelOpt INT8 fake-quantization once, at the start of the quantize window; it stays to the end."""

    config = QuantizeConfig

    @classmethod
    def preflight(cls, cfg: QuantizeConfig) -> None:
        """Name the missing package before a run directory exists."""
        require_modelopt()

    def check(self, trainer: Any) -> None:
        """Reject setups in which Ultralytics would quantize at the wrong time or cannot train a QAT model."""
        require_modelopt()  # again here: a resumed run skips preflight
        if trainer.args.quantize == 8 and not trainer.resume:  # on resume, quantize=8 comes from our own checkpoint
            raise SlimConfigError(
                f"quantize=8 starts QAT at epoch 0, but the recipe's 'quantize' section starts it at epoch "
                f"{self.window.start}; remove quantize=8 from the train arguments and let the recipe schedule it."
            )
        if trainer.args.compile:
            raise SlimConfigError("the recipe's 'quantize' section needs compile=False: QAT models cannot be compiled")

    def on_epoch_start(self, trainer: Any) -> bool:
        """Calibrate and insert the quantizers as `_setup_train` does for `quantize=8`; True if the model changed."""
        model = unwrap_model(trainer.model)
        if trainer.epoch < self.window.start or is_qat(model):  # is_qat: done earlier, or restored on resume
            return False
        batch = max(trainer.batch_size // max(trainer.world_size, 1), 1) if trainer.batch_size >= 1 else 16
        overrides = {"cache": False}  # calibration must not cache the dataset a second time
        if trainer.args.close_mosaic and trainer.epoch >= trainer.epochs - trainer.args.close_mosaic:
            overrides |= dict.fromkeys(MOSAIC_AUGMENT, 0.0)  # calibrate on the kind of images this epoch trains on
        with override_configs(trainer.args, overrides):
            loader = trainer.get_dataloader(trainer.data["train"], batch_size=batch, rank=-1, mode="train")
        quantized = prepare_qat(model, loader, trainer.preprocess_batch, self.cfg.calib_batches)
        if trainer.model is model:  # ModelOpt converts in place, so a DDP wrapper still holds the model
            trainer.model = quantized
        trainer.args.quantize = 8  # from here on, stock save/resume/load treat the run as a QAT run
        LOGGER.info(f"{PREFIX}INT8 quantization-aware training starts at epoch {trainer.epoch + 1}/{trainer.epochs}")
        return True


def export_int8_onnx(weights: str | Path, imgsz: int = 640, **kwargs: Any) -> Path:
    """Export a QAT checkpoint to an ONNX graph with INT8 weights, Q/DQ activations and Ultralytics metadata.

    Ultralytics' exporter already emits the learned ranges as Q/DQ nodes for a model carrying ModelOpt quantizers, so
    this loads the checkpoint (which re-applies its `modelopt` state), refuses a float checkpoint, for which the stock
    exporter would silently write a float graph, and then stores the weights as INT8 (see `_fold_weight_qdq`).

    Args:
        weights (str | Path): A checkpoint written by a QAT run, e.g. `runs/detect/train/weights/best.pt`.
        imgsz (int): Input image size of the exported graph.
        **kwargs (Any): Further `model.export` arguments, e.g. `dynamic=True`, `opset=17`, `simplify=False`.

    Returns:
        (Path): The written `.onnx` file, next to the checkpoint, about 4x smaller than the float export.

    Raises:
        ValueError: If `weights` is not a QAT checkpoint or `format` is not 'onnx'.
        SlimDependencyError: If nvidia-modelopt is not installed.
    """
    if (fmt := kwargs.pop("format", "onnx")) != "onnx":
        raise ValueError(f"export_int8_onnx writes ONNX only, got format={fmt!r}")
    return _export_qdq_onnx(weights, imgsz, "onnx", **kwargs)[0]


def export_int8_openvino(weights: str | Path, imgsz: int = 640, **kwargs: Any) -> Path:
    """Export a QAT checkpoint to an OpenVINO model directory that runs its convolutions in INT8 with the learned ranges.

    The stock exporter refuses OpenVINO for a QAT model, and its `quantize=8` OpenVINO export of a float model
    re-calibrates with NNCF. OpenVINO's ONNX frontend instead reads the Q/DQ graph of `export_int8_onnx` as
    FakeQuantize ops with the trained ranges and INT8 weights, and its CPU plugin then runs the quantized convolutions
    in INT8. The directory has the stock layout (`best_int8_openvino_model/` holding `best.xml`, `best.bin` and
    `metadata.yaml`), so `YOLO(dir)` and `yolo val model=dir` use it like any Ultralytics OpenVINO export.

    Args:
        weights (str | Path): A checkpoint written by a QAT run, e.g. `runs/detect/train/weights/best.pt`.
        imgsz (int): Input image size of the exported model.
        **kwargs (Any): Further `model.export` arguments for the intermediate ONNX graph, e.g. `dynamic=True`.

    Returns:
        (Path): The model directory, next to the checkpoint.

    Raises:
        ValueError: If `weights` is not a QAT checkpoint or `format` is not 'openvino'.
        SlimDependencyError: If nvidia-modelopt or openvino is not installed.
    """
    from ultralytics.engine.exporter import export_formats
    from ultralytics.utils import YAML

    if (fmt := kwargs.pop("format", "openvino")) != "openvino":
        raise ValueError(f"export_int8_openvino writes OpenVINO only, got format={fmt!r}")
    try:
        import openvino as ov
    except ImportError as e:
        raise SlimDependencyError(
            f"OpenVINO export needs openvino ({e}); install it with: pip install openvino"
        ) from None
    weights = Path(weights)
    with TemporaryDirectory() as tmp:  # the intermediate ONNX file must not replace a best.onnx next to the weights
        onnx_path, exporter = _export_qdq_onnx(weights, imgsz, "openvino", into=Path(tmp), **kwargs)
        model = ov.convert_model(str(onnx_path))
    formats = export_formats()
    keys = dict(zip(formats["Argument"], formats["Arguments"]))["openvino"]  # the arguments stock OpenVINO records
    metadata = {**exporter.metadata, "args": {k: getattr(exporter.args, k) for k in keys}}
    for value, key in (  # what the stock OpenVINO export writes for OpenVINO's Model API
        ("YOLO", "model_type"),
        (True, "reverse_input_channels"),
        (114, "pad_value"),
        ([255.0], "scale_values"),
        (exporter.args.iou, "iou_threshold"),
        ([v.replace(" ", "_") for v in metadata["names"].values()], "labels"),
        ("fit_to_window_letterbox", "resize_type"),
    ):
        model.set_rt_info(value, ["model_info", key])
    out = weights.with_name(f"{weights.stem}_int8_openvino_model")
    ov.save_model(model, out / f"{weights.stem}.xml", compress_to_fp16=False)  # FP16 would round the float ops
    YAML.save(out / "metadata.yaml", metadata)
    LOGGER.info(f"{PREFIX}OpenVINO INT8 model with the learned ranges saved as '{out}'")
    return out


def _export_qdq_onnx(
    weights: str | Path, imgsz: int, fmt: str, into: Path | None = None, **kwargs: Any
) -> tuple[Path, Any]:
    """The checkpoint's Q/DQ ONNX export with INT8 weights, and the exporter that wrote it (its metadata and args).

    `fmt` is the format the user asked for, named in the error for a float checkpoint. The file is written next to the
    checkpoint, or into the folder `into`.
    """
    from ultralytics import YOLO

    require_modelopt()  # loading a QAT checkpoint without it would make Ultralytics try to pip-install it
    model = YOLO(weights)
    if not isinstance(model.model, nn.Module) or not is_qat(model.model):  # a str for exported formats
        raise ValueError(
            f"{weights} is not a QAT checkpoint (it has no 'modelopt' quantization state). Train with a slim recipe "
            f"that has a 'quantize' section, or with quantize=8; for post-training INT8 of a float model use "
            f"'yolo export model={weights} format={fmt} quantize=8 data=...'."
        )
    if into is not None:
        model.model.pt_path = str(into / Path(weights).name)  # the exporter names its output after this path
    exporters = []
    model.add_callback("on_export_end", exporters.append)
    path = Path(model.export(format="onnx", imgsz=imgsz, **kwargs))
    _fold_weight_qdq(path)
    return path, exporters[-1]


def _fold_weight_qdq(path: Path) -> None:
    """Rewrite each `float initializer -> QuantizeLinear -> DequantizeLinear` as `int8 initializer -> DequantizeLinear`.

    The stock exporter keeps every weight as an FP32 initializer that is quantized at run time, so the file is as large
    as the float one. Quantizing it once here, as ONNX QuantizeLinear defines it (per-axis scale, round half to even,
    saturate), gives the same INT8 values the runtime would compute, in a quarter of the bytes. Activation Q/DQ, which
    have no constant input, and the model's metadata_props stay as they are.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n.attribute[0] for n in graph.node if n.op_type == "Constant"}
    consts = {k: a.t for k, a in consts.items() if a.name == "value"} | inits  # scales and zero points are Constants
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    folded = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "QuantizeLinear"
            or node.input[0] not in inits  # an activation quantizer
            or inits[node.input[0]].data_type not in floats
            or len(node.input) < 3
            or not all(i in consts for i in node.input[1:])
            or attrs.get("block_size")  # blocked quantization (opset 21) broadcasts differently
        ):
            continue
        w, scale, zp = (numpy_helper.to_array(consts[i]) for i in node.input)
        if zp.dtype not in (np.int8, np.uint8, np.int16, np.uint16):
            continue  # int4 is packed and float8 rounds differently: leave those to the runtime
        if scale.ndim:  # per-axis: a 1-D scale and zero point along `axis`
            shape = [-1 if d == attrs.get("axis", 1) % w.ndim else 1 for d in range(w.ndim)]
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(w / scale) + zp.astype(np.int64), info.min, info.max).astype(zp.dtype)
        graph.initializer.append(numpy_helper.from_array(q, node.output[0]))  # consumers read it under the Q's name
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for name in {n.input[0] for n in folded} - used:  # a float weight that only its quantizer read
        graph.initializer.remove(inits[name])
    onnx.save(model, str(path))
