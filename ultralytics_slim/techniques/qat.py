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
from ultralytics.utils.torch_utils import is_qat, prepare_qat, unwrap_model

from ultralytics_slim.deploy import fast_dfl
from ultralytics_slim.errors import SlimConfigError, SlimDependencyError
from ultralytics_slim.qdq import fold_weight_qdq, integer_convs
from ultralytics_slim.recipe import QuantizeConfig
from ultralytics_slim.techniques.base import Technique
from ultralytics_slim.techniques.batches import side_batches

PREFIX = colorstr("Slim: ")
INSTALL = 'pip install "ultralytics-slim[qat]"'
CALIB_IMAGES = 128  # images that calibrate the INT8 ONNX's convolution outputs


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
        # calibrate on the kind of images this epoch trains on (mosaic closed or not), without moving the run's data
        batches = side_batches(trainer, self.cfg.calib_batches)
        quantized = prepare_qat(model, batches, lambda batch: batch, self.cfg.calib_batches)  # batches: preprocessed
        if trainer.model is model:  # ModelOpt converts in place, so a DDP wrapper still holds the model
            trainer.model = quantized
        trainer.args.quantize = 8  # from here on, stock save/resume/load treat the run as a QAT run
        LOGGER.info(f"{PREFIX}INT8 quantization-aware training starts at epoch {trainer.epoch + 1}/{trainer.epochs}")
        return True


def export_int8_onnx(weights: str | Path, imgsz: int = 640, **kwargs: Any) -> Path:
    """Export a QAT checkpoint to an ONNX graph that onnxruntime runs with integer convolutions, with Ultralytics
    metadata.

    Ultralytics' exporter already emits the learned ranges as Q/DQ nodes for a model carrying ModelOpt quantizers, so
    this loads the checkpoint (which re-applies its `modelopt` state), refuses a float checkpoint, for which the stock
    exporter would silently write a float graph, stores the weights as INT8 (`qdq.fold_weight_qdq`), and then adds what
    onnxruntime needs to run the convolutions as integer kernels: output ranges calibrated on `CALIB_IMAGES` images
    of the `data` set's `split` (`qdq.integer_convs`).

    Args:
        weights (str | Path): A checkpoint written by a QAT run, e.g. `runs/detect/train/weights/best.pt`.
        imgsz (int): Input image size of the exported graph.
        **kwargs (Any): Further `model.export` arguments, e.g. `dynamic=True`, `opset=17`, `simplify=False`; `data`
            (default: the data set the checkpoint trained on) and `split` (default 'train') name the calibration
            images.

    Returns:
        (Path): The written `.onnx` file, next to the checkpoint, about 4x smaller than the float export.

    Raises:
        ValueError: If `weights` is not a QAT checkpoint, `format` is not 'onnx' or `data` is not found.
        SlimDependencyError: If nvidia-modelopt is not installed.
    """
    if (fmt := kwargs.pop("format", "onnx")) != "onnx":
        raise ValueError(f"export_int8_onnx writes ONNX only, got format={fmt!r}")
    model = _qat_model(weights, "onnx")
    kwargs["data"] = _calibration_data(model, kwargs.get("data"))
    kwargs.setdefault("split", "train")  # not the images a user validates on
    path, exporter = _export_qdq_onnx(model, imgsz, **kwargs)
    loader = exporter.get_int8_calibration_dataloader(PREFIX)
    images = (
        b["img"].float().div(255).numpy() for b, _ in zip(loader, range(max(CALIB_IMAGES // loader.batch_size, 1)))
    )
    count = integer_convs(path, images)
    LOGGER.info(
        f"{PREFIX}onnxruntime runs {count['integer']} convolutions in INT8 ({count['float']} of the stem in float)"
    )
    return path


def _calibration_data(model: Any, data: str | None) -> str:
    """The data set whose images calibrate the convolution outputs: `data`, or the one the checkpoint trained on."""
    from ultralytics.utils.checks import check_file

    data = data or (model.ckpt.get("train_args") or {}).get("data")
    try:
        if data:
            return check_file(str(data), download=False)
    except FileNotFoundError:
        pass
    raise ValueError(
        f"data={data}: not found. The INT8 ONNX export calibrates the convolution outputs on {CALIB_IMAGES} images "
        "for onnxruntime's integer kernels: pass data=path/to/data.yaml"
    )


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
        onnx_path, exporter = _export_qdq_onnx(_qat_model(weights, "openvino"), imgsz, into=Path(tmp), **kwargs)
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


def _qat_model(weights: str | Path, fmt: str) -> Any:
    """The checkpoint as a `YOLO` model with its quantizers; `fmt`, the format asked for, is named in the error for a
    float checkpoint."""
    from ultralytics import YOLO

    require_modelopt()  # loading a QAT checkpoint without it would make Ultralytics try to pip-install it
    model = YOLO(weights)
    if not isinstance(model.model, nn.Module) or not is_qat(model.model):  # a str for exported formats
        raise ValueError(
            f"{weights} is not a QAT checkpoint (it has no 'modelopt' quantization state). Train with a slim recipe "
            f"that has a 'quantize' section, or with quantize=8; for post-training INT8 of a float model use "
            f"'yolo export model={weights} format={fmt} quantize=8 data=...'."
        )
    return model


def _export_qdq_onnx(model: Any, imgsz: int, into: Path | None = None, **kwargs: Any) -> tuple[Path, Any]:
    """The QAT model's Q/DQ ONNX export with INT8 weights, and the exporter that wrote it (its metadata and args).

    The file is written next to the checkpoint, or into the folder `into`.
    """
    if into is not None:
        model.model.pt_path = str(into / Path(model.ckpt_path).name)  # the exporter names its output after this path
    exporters = []
    model.add_callback("on_export_end", exporters.append)
    with fast_dfl():  # the box decoding in the form onnxruntime runs fast (OpenVINO runs either as fast)
        path = Path(model.export(format="onnx", imgsz=imgsz, **kwargs))
    fold_weight_qdq(path)
    return path, exporters[-1]
