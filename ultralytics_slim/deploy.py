"""ONNX graphs in which onnxruntime runs the detection head's box decoding as fast as the rest of the model.

Ultralytics' DFL (the box decoding of YOLOv8 and YOLO11 heads: detect, segment, pose, obb) takes a softmax over
axis 1 of a (B, 16, 4, A) tensor. onnxruntime computes a softmax over any axis but the last by transposing there and
back: at 640 px (8400 anchors) that took 5 ms of YOLOv8n's 50 on the benchmark's CPU, at any width, so it capped what
pruning could gain in onnxruntime (OpenVINO runs either graph as fast). `fast_dfl` exports the same computation with the
bins on the last axis (one transpose, a last-axis softmax, a product with the DFL's bin values), whose outputs are the
stock graph's (bit for bit on the benchmark's YOLOv8n). Ultralytics' own `yolo export` is left as it is: only the
plugin's exports use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from ultralytics.nn.modules.block import DFL


def _dfl_last_axis(self: DFL, x: torch.Tensor) -> torch.Tensor:
    """`DFL.forward` with the softmax over the last axis: the same expected distances, (B, 4 * c1, A) -> (B, 4, A)."""
    b, _, a = x.shape
    p = x.view(b, 4, self.c1, a).transpose(2, 3).softmax(-1)
    return (p @ self.conv.weight.view(self.c1, 1).to(p.dtype)).view(b, 4, a)


@contextmanager
def fast_dfl() -> Iterator[None]:
    """Within this block, every DFL computes (and so exports) its softmax over the last axis."""
    stock = DFL.forward
    DFL.forward = _dfl_last_axis
    try:
        yield
    finally:
        DFL.forward = stock


def export_fp32_onnx(weights: str | Path, imgsz: int = 640, **kwargs: Any) -> Path:
    """Export a float checkpoint as `yolo export format=onnx` does, with the DFL in its fast form.

    Args:
        weights (str | Path): An Ultralytics checkpoint, e.g. `runs/detect/train/weights/best.pt`.
        imgsz (int): Input image size of the exported graph.
        **kwargs (Any): Further `model.export` arguments, e.g. `dynamic=True`, `simplify=False`.

    Returns:
        (Path): The `.onnx` file, next to the checkpoint, with Ultralytics' metadata (`yolo val`/`predict` read it).
    """
    from ultralytics import YOLO

    with fast_dfl():
        return Path(YOLO(weights).export(format="onnx", imgsz=imgsz, **kwargs))


def is_qat_checkpoint(weights: str | Path) -> bool:
    """Whether a checkpoint holds ModelOpt quantization state (read without ModelOpt, which restoring it needs)."""
    from ultralytics.nn.tasks import torch_safe_load

    return bool(torch_safe_load(str(weights))[0].get("modelopt"))
