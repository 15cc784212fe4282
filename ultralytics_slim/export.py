"""CLI: `python -m ultralytics_slim.export model=best.pt [format=onnx|openvino] ...`: files for a CPU runtime.

Arguments use the `yolo` key=value style. A QAT checkpoint goes to `export_int8_onnx` (default) or
`export_int8_openvino`, a float one to `deploy.export_fp32_onnx` (ONNX whose box decoding onnxruntime runs fast), and
every other key is passed on to Ultralytics' exporter (e.g. `imgsz=640`, `dynamic=True`, `simplify=False`). The written
path is printed on stdout, alone; logs go to stderr. Mistakes (no such file, an unknown key, a format it does not
write) end in a one-line error.
"""

from __future__ import annotations

import sys
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from ultralytics_slim._cli import stdout_for_result_only
from ultralytics_slim.errors import SlimError

PROG = "python -m ultralytics_slim.export"
HELP = f"""usage: {PROG} model=path/to/best.pt [format=onnx] [imgsz=640] [data=data.yaml] [key=value ...]

Export a checkpoint for a CPU runtime, next to it, and print the written path. A QAT checkpoint (from a run whose
slim recipe has a 'quantize' section, or from quantize=8) is exported in INT8 with its learned ranges; a float one as
FP32 ONNX whose box decoding (DFL) onnxruntime runs faster than in `yolo export`'s graph, with the same outputs.

arguments:
  model=PATH       the checkpoint, e.g. runs/detect/train/weights/best.pt
  format=onnx      onnx: best.onnx; for a QAT checkpoint, one that onnxruntime runs with integer convolutions
                     (INT8 weights, uint8 activations)
                   openvino (QAT checkpoints): best_int8_openvino_model/, an OpenVINO model that `yolo val
                     model=...` reads; a float checkpoint runs as fast from `yolo export format=openvino`
  imgsz=640        input size of the exported model
  data=DATA.yaml   INT8 onnx: the data set whose images (128, of split=train) calibrate the convolution outputs;
                     default: the one the checkpoint trained on
  key=value        any other `yolo export` argument, e.g. dynamic=True simplify=False
"""


def _error(message: str) -> SystemExit:
    """A one-line error on stderr and exit status 1, instead of a traceback."""
    return SystemExit(f"{PROG}: error: {message}")


def _parse(args: list[str]) -> dict[str, Any]:
    """`key=value` words as export arguments; the model must be an existing file, so nothing is ever downloaded."""
    from ultralytics.cfg import DEFAULT_CFG_DICT, smart_value

    if bad := [a for a in args if "=" not in a]:
        raise _error(f"not key=value: {bad} (see --help)")
    kwargs = {k: smart_value(v) for k, v in (a.split("=", 1) for a in args)}
    if unknown := sorted(kwargs.keys() - {"model"} - DEFAULT_CFG_DICT.keys()):
        close = {k: get_close_matches(k, DEFAULT_CFG_DICT, 1) for k in unknown}
        hints = ", ".join(f"'{k}'" + (f" (did you mean '{m[0]}'?)" if m else "") for k, m in close.items())
        raise _error(f"not export arguments: {hints} (see --help)")
    if "model" not in kwargs:
        raise _error("missing model=path/to/best.pt (see --help)")
    model = Path(str(kwargs["model"]))
    if not model.is_file():
        raise _error(f"model={model}: " + ("a directory, not a .pt checkpoint" if model.is_dir() else "no such file"))
    return kwargs


def main(argv: list[str] | None = None) -> Path:
    """Parse `key=value` arguments, export, and print the path of the written file or directory."""
    args = sys.argv[1:] if argv is None else argv
    if {"-h", "--help", "help"} & set(args):
        print(HELP, end="")
        raise SystemExit(0)
    with stdout_for_result_only():
        kwargs = _parse(args)
        from ultralytics_slim import deploy
        from ultralytics_slim.techniques import qat

        if (fmt := kwargs.pop("format", "onnx")) not in {"onnx", "openvino"}:
            raise _error(f"format={fmt}: this export writes onnx or openvino (see --help)")
        model = str(kwargs.pop("model"))
        if deploy.is_qat_checkpoint(model):
            exporter = qat.export_int8_onnx if fmt == "onnx" else qat.export_int8_openvino
        elif fmt == "onnx":
            exporter = deploy.export_fp32_onnx
        else:
            raise _error(
                f"model={model} is a float checkpoint: OpenVINO runs Ultralytics' own export of it as fast, "
                f"'yolo export model={model} format=openvino'"
            )
        try:
            path = exporter(model, **kwargs)
        except (SlimError, ValueError) as e:  # modelopt or openvino missing, no calibration data
            raise _error(str(e)) from None
    print(path)
    return path


if __name__ == "__main__":
    main()
