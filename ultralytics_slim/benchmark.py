"""The one latency timer: batch-1 wall times of several models, interleaved so that they share the machine's noise.

The end-of-run report times PyTorch models with it; `benchmarks/run.py` times ONNX files in onnxruntime and OpenVINO.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch


def interleaved_ms(fns: Sequence[Callable[[], object]], runs: int = 50, warmup: int = 5) -> list[list[float]]:
    """Wall times (ms) of each of `fns`: every round runs each once, starting at a different one each round."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for i in range(runs):
        for j in order[i % len(fns) :] + order[: i % len(fns)]:
            t = time.perf_counter()
            fns[j]()
            times[j].append((time.perf_counter() - t) * 1e3)
    return times


def torch_latency_ms(model: torch.nn.Module, imgsz: int, runs: int = 50, threads: int = 2) -> float:
    """Median batch-1 CPU latency of a PyTorch model in eval mode (BatchNorm fused where the model can fuse)."""
    model = model.float().cpu().eval()
    if hasattr(model, "fuse"):
        model = model.fuse(verbose=False)
    x = torch.zeros(1, model.yaml.get("channels", 3) if hasattr(model, "yaml") else 3, imgsz, imgsz)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return statistics.median(interleaved_ms([lambda: model(x)], runs)[0])
    finally:
        torch.set_num_threads(previous)
