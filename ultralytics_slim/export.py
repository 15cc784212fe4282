"""CLI: `python -m ultralytics_slim.export model=best.pt imgsz=640 [key=value ...]` writes a QAT checkpoint's INT8 ONNX.

Arguments use the `yolo` key=value style; every key other than `model` is passed on to `export_int8_onnx` and from there
to Ultralytics' exporter (e.g. `dynamic=True`, `opset=17`, `simplify=False`). The written path is printed on stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = "usage: python -m ultralytics_slim.export model=path/to/best.pt [imgsz=640] [key=value ...]"


def main(argv: list[str] | None = None) -> Path:
    """Parse `key=value` arguments, export, and print the path of the ONNX file."""
    from ultralytics.cfg import smart_value

    from ultralytics_slim.techniques.qat import export_int8_onnx

    args = sys.argv[1:] if argv is None else argv
    bad = [a for a in args if "=" not in a]
    kwargs = {k: smart_value(v) for k, v in (a.split("=", 1) for a in args if "=" in a)}
    if bad or "model" not in kwargs:
        raise SystemExit(f"{USAGE}\n" + (f"not key=value: {bad}" if bad else "missing model=..."))
    path = export_int8_onnx(str(kwargs.pop("model")), **kwargs)
    print(path)
    return path


if __name__ == "__main__":
    main()
