"""One latency timer for the whole project: the report, the benchmarks and the examples all measure with it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def median_ms(fn: Callable[[], object], runs: int = 50, warmup: int = 5) -> float:
    """Median wall time of `fn()` in milliseconds, after warm-up calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def torch_latency_ms(model: torch.nn.Module, imgsz: int, runs: int = 50, threads: int = 2) -> float:
    """Batch-1 CPU latency of a PyTorch model in eval mode (BatchNorm fused where the model can fuse)."""
    model = model.float().cpu().eval()
    if hasattr(model, "fuse"):
        model = model.fuse(verbose=False)
    x = torch.zeros(1, model.yaml.get("channels", 3) if hasattr(model, "yaml") else 3, imgsz, imgsz)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return median_ms(lambda: model(x), runs)
    finally:
        torch.set_num_threads(previous)


def onnx_session(path: str | Path, threads: int = 2, runtime: str = "onnxruntime") -> Callable[[np.ndarray], object]:
    """A batch-1 CPU inference function for an ONNX file, in onnxruntime or OpenVINO."""
    if runtime == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
        return lambda x: compiled(x)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def onnx_latency_ms(path: str | Path, imgsz: int, runs: int = 50, threads: int = 2, runtime: str = "onnxruntime") -> float:
    """Batch-1 CPU latency of an ONNX file in onnxruntime or OpenVINO."""
    run = onnx_session(path, threads, runtime)
    x = np.zeros((1, 3, imgsz, imgsz), np.float32)
    return median_ms(lambda: run(x), runs)
