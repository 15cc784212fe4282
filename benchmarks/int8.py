"""INT8 from a QAT checkpoint against the same model in float, in onnxruntime and OpenVINO, batch 1, 2 threads.

    python benchmarks/int8.py runs/detect/train/weights/best.pt --imgsz 640 --runs 100
    python benchmarks/int8.py runs/detect/train/weights/best.pt --imgsz 256 --val   # and mAP50-95 of every file

Exports, next to a copy of the checkpoint in a temporary folder: the INT8 ONNX (`export_int8_onnx`, integer
convolutions in onnxruntime), the same with the stem's convolutions integer too (what `qdq.FLOAT_BELOW_STRIDE` keeps
float), the stock exporter's Q/DQ ONNX of the same checkpoint (what `export_int8_onnx` wrote before it placed the Q/DQ
for onnxruntime), the INT8 OpenVINO model (`export_int8_openvino`) and the float model (quantizers stripped) as ONNX
with the plugin's box decoding (`deploy.fast_dfl`, as the INT8 files have it) and OpenVINO; then times all of them interleaved with the package's one timer and prints medians and speed-ups
against the float model in each runtime. `--val` validates every file on the val split of `--data` (default: the
data set the checkpoint trained on) at `--imgsz`, batch 1, in the runtime it is timed in.
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
    p.add_argument("--val", action="store_true", help="also validate every file (mAP50-95 on the val split)")
    p.add_argument("--data", help="data set of --val (default: the one the checkpoint trained on)")
    a = p.parse_args()

    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import strip_qat

    from ultralytics_slim import qdq
    from ultralytics_slim.deploy import fast_dfl
    from ultralytics_slim.techniques.qat import export_int8_onnx, export_int8_openvino

    with tempfile.TemporaryDirectory() as tmp:
        qat = Path(shutil.copy(a.weights, Path(tmp) / "qat.pt"))
        floating = YOLO(qat)
        strip_qat(floating.model)
        with fast_dfl():
            fp32 = Path(floating.export(format="onnx", imgsz=a.imgsz, simplify=False)).rename(Path(tmp) / "fp32.onnx")
        stock_qdq = Path(YOLO(qat).export(format="onnx", imgsz=a.imgsz, simplify=False)).rename(Path(tmp) / "qdq.onnx")
        int8 = export_int8_onnx(qat, imgsz=a.imgsz, simplify=False).rename(Path(tmp) / "int8.onnx")
        stem, qdq.FLOAT_BELOW_STRIDE = qdq.FLOAT_BELOW_STRIDE, 1  # every quantized convolution integer, the stem too
        int8_stem = export_int8_onnx(qat, imgsz=a.imgsz, simplify=False).rename(Path(tmp) / "int8_stem.onnx")
        qdq.FLOAT_BELOW_STRIDE = stem
        int8_ov = export_int8_openvino(qat, imgsz=a.imgsz, simplify=False)

        files = {  # name: (file, runtime)
            "onnxruntime FP32": (fp32, "onnxruntime"),
            "onnxruntime INT8": (int8, "onnxruntime"),
            "onnxruntime INT8 stem integer": (int8_stem, "onnxruntime"),
            "onnxruntime INT8 stock Q/DQ": (stock_qdq, "onnxruntime"),
            "OpenVINO FP32": (fp32, "openvino"),
            "OpenVINO INT8": (int8_ov, "openvino"),
        }
        fns = [
            runner(f if rt == "onnxruntime" or f.suffix else next(f.glob("*.xml")), rt, a.imgsz)
            for f, rt in files.values()
        ]
        ms = dict(zip(files, (statistics.median(t) for t in interleaved_ms(fns, a.runs, 10))))
        maps = {}
        if a.val:
            data = a.data or YOLO(qat).ckpt["train_args"]["data"]
            for name, (f, _) in files.items():
                if name != "OpenVINO FP32":  # the same file as onnxruntime FP32
                    metrics = YOLO(f, task=floating.task).val(
                        data=data, imgsz=a.imgsz, batch=1, plots=False, verbose=False
                    )
                    maps[name] = next(v for k, v in metrics.results_dict.items() if "mAP50-95" in k)
    print(f"{a.weights} at {a.imgsz} px, batch 1, 2 threads, median of {a.runs} interleaved runs")
    for name, v in ms.items():
        runtime = name.split()[0]
        score = f"  mAP50-95 {maps[name]:.4f}" if name in maps else ""
        print(f"{name:<30} {v:8.2f} ms  {ms[runtime + ' FP32'] / v:5.2f}x vs {runtime} FP32{score}")


if __name__ == "__main__":
    main()
