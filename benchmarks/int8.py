"""INT8 from a QAT checkpoint against the same model in float, in onnxruntime and OpenVINO, batch 1, 2 threads.

    python benchmarks/int8.py runs/detect/train/weights/best.pt --imgsz 640 --runs 100

Exports, next to a copy of the checkpoint in a temporary folder: the INT8 ONNX (`export_int8_onnx`, integer
convolutions in onnxruntime), the stock exporter's Q/DQ ONNX of the same checkpoint (what `export_int8_onnx` wrote
before it placed the Q/DQ for onnxruntime), the INT8 OpenVINO model (`export_int8_openvino`) and the float model
(quantizers stripped) as ONNX and OpenVINO; then times all of them interleaved with the package's one timer and prints
medians and speed-ups against the float model in each runtime.
OpenVINO is timed with f32 inference precision (its default is bf16 on CPUs that have it).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from ultralytics_slim.benchmark import interleaved_ms
from ultralytics_slim.latency import runner


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", type=Path, help="a QAT checkpoint, e.g. runs/detect/train/weights/best.pt")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--runs", type=int, default=100)
    a = p.parse_args()

    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import strip_qat

    from ultralytics_slim.techniques.qat import export_int8_onnx, export_int8_openvino

    with tempfile.TemporaryDirectory() as tmp:
        qat = Path(shutil.copy(a.weights, Path(tmp) / "qat.pt"))
        floating = YOLO(qat)
        strip_qat(floating.model)
        fp32_onnx = Path(floating.export(format="onnx", imgsz=a.imgsz, simplify=False)).rename(Path(tmp) / "fp32.onnx")
        stock_qdq = Path(YOLO(qat).export(format="onnx", imgsz=a.imgsz, simplify=False)).rename(Path(tmp) / "qdq.onnx")
        int8_onnx = export_int8_onnx(qat, imgsz=a.imgsz, simplify=False)
        int8_ov = next(export_int8_openvino(qat, imgsz=a.imgsz, simplify=False).glob("*.xml"))

        fns = {
            "onnxruntime FP32": runner(fp32_onnx, "onnxruntime", a.imgsz),
            "onnxruntime INT8": runner(int8_onnx, "onnxruntime", a.imgsz),
            "onnxruntime INT8 stock Q/DQ": runner(stock_qdq, "onnxruntime", a.imgsz),
            "OpenVINO FP32": runner(fp32_onnx, "openvino", a.imgsz),
            "OpenVINO INT8": runner(int8_ov, "openvino", a.imgsz),
        }
        ms = dict(zip(fns, (statistics.median(t) for t in interleaved_ms(list(fns.values()), a.runs, 10))))
    print(f"{a.weights} at {a.imgsz} px, batch 1, 2 threads, median of {a.runs} interleaved runs")
    for name, v in ms.items():
        runtime = name.split()[0]
        print(f"{name:<30} {v:8.2f} ms  {ms[runtime + ' FP32'] / v:5.2f}x vs {runtime} FP32")


if __name__ == "__main__":
    main()
