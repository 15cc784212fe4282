"""Latency of a model as it is deployed: exported to ONNX as `python -m ultralytics_slim.export` exports it (the way
Ultralytics does, with `deploy.fast_dfl`'s box decoding), timed in a CPU runtime.

Used by the `prune: {target: {latency: r}}` search, which measures candidates on the machine that trains (run the
trainer where you deploy, or accept it as a proxy) against the starting model, with the package's one timer
(`benchmark.py`).
"""

from __future__ import annotations

import importlib
import statistics
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from ultralytics.nn.modules import C2f, Classify, Detect
from ultralytics.utils.export.engine import torch2onnx

from ultralytics_slim.benchmark import interleaved_ms
from ultralytics_slim.deploy import fast_dfl
from ultralytics_slim.errors import SlimDependencyError

RUNTIMES = {"onnxruntime": ("onnxruntime", "onnxruntime"), "openvino": ("openvino", "openvino")}  # module, pip name


def require_runtime(runtime: str) -> None:
    """Fail before any work when the runtime to measure on is not installed."""
    module, pip = RUNTIMES[runtime]
    try:
        importlib.import_module(module)
    except ImportError:
        raise SlimDependencyError(
            f"prune.target.runtime={runtime!r} needs {pip}. Install it with: pip install {pip}"
        ) from None


def export_onnx(model: nn.Module, imgsz: int, path: Path, stock_dfl: bool = False) -> Path:
    """A copy of `model` exported as `yolo export format=onnx` would (fused, export-mode head, split-based C2f), with the
    DFL in the form `python -m ultralytics_slim.export` writes (`stock_dfl`: as `yolo export` writes it)."""
    model = deepcopy(model).float().cpu().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model = model.fuse(verbose=False) if hasattr(model, "fuse") else model
    for m in model.modules():
        if isinstance(m, (Detect, Classify)):
            m.export, m.format = True, "onnx"
        if isinstance(m, Detect):
            m.dynamic, m.shape = False, None
        elif isinstance(m, C2f):
            m.forward = m.forward_split
    x = torch.zeros(1, model.yaml.get("channels", 3), imgsz, imgsz)
    with nullcontext() if stock_dfl else fast_dfl():
        return Path(torch2onnx(model, x, path, opset=17))


def runner(onnx: Path, runtime: str, imgsz: int, threads: int = 2) -> Callable[[], object]:
    """A batch-1 inference call of an ONNX file (or, for OpenVINO, an IR) in `runtime` (CPU, `threads` threads).

    OpenVINO is held to f32 (its default on CPUs with bf16 instructions is bf16, which is not the FP32 model), and
    onnxruntime's threads do not spin, so that an idle session does not take cores from the next one in interleaved
    timing.
    """
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda: session.run(None, {name: x})
    request = ov_compile(onnx, threads).create_infer_request()
    return lambda: request.infer({0: x})


def ov_compile(model: Path, threads: int = 2) -> Any:
    """`model` (ONNX or OpenVINO IR) compiled for the CPU: `threads` threads, one stream, latency mode, float ops in
    f32 (int8 where the graph has Q/DQ or FakeQuantize)."""
    import openvino as ov

    config = {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    return ov.Core().compile_model(str(model), "CPU", config)


def _runner_of(model: nn.Module, runtime: str, imgsz: int, threads: int) -> Callable[[], object]:
    with tempfile.TemporaryDirectory() as tmp:  # both runtimes hold the model in memory once the session exists
        return runner(export_onnx(model, imgsz, Path(tmp) / "model.onnx"), runtime, imgsz, threads)


class RelativeLatency:
    """Deployed latency of models relative to a reference model, each timed interleaved with the reference.

    A latency target is a ratio to the starting model; timing every candidate side by side with it keeps that ratio
    right when the machine's load changes between measurements (absolute times taken minutes apart do not).
    """

    def __init__(self, reference: nn.Module, runtime: str, imgsz: int, runs: int = 30, threads: int = 2):
        self.runtime, self.imgsz, self.runs, self.threads = runtime, imgsz, runs, threads
        self._reference = _runner_of(reference, runtime, imgsz, threads)

    def __call__(self, model: nn.Module) -> tuple[float, float]:
        """(median latency of `model` / median latency of the reference, median latency of `model` in ms)."""
        ref, ms = interleaved_ms(
            [self._reference, _runner_of(model, self.runtime, self.imgsz, self.threads)], self.runs
        )
        return statistics.median(ms) / statistics.median(ref), statistics.median(ms)
