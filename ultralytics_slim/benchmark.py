"""CPU latency of a PyTorch model, as the end-of-run report measures it (benchmarks/run.py times ONNX files itself,
interleaving all models so they share the machine's noise)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

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
