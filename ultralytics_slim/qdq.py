"""Rewrites of the Q/DQ ONNX graph that Ultralytics exports for a QAT model, for CPU runtimes.

The stock graph quantizes convolution *inputs* only (the learned ranges) and stores FP32 weights that are quantized on
every run. `fold_weight_qdq` stores the weights as INT8. `integer_convs` makes onnxruntime run the convolutions as
integer `QLinearConv` kernels, which it does only for a `DequantizeLinear -> Conv -> QuantizeLinear` group whose bias
is an INT32 `DequantizeLinear` and whose activations are uint8 (its fast x86 path is uint8 x int8): without it
onnxruntime keeps float convolutions on dequantized weights and runs *slower* than the float model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

FLOAT_BELOW_STRIDE = 8  # the stem (strides 2 and 4) stays float, see `integer_convs`
CALIB_SAMPLES = 2000  # values kept per convolution and image for choosing its output range
LOWER_BOUNDS = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)  # candidate clips of a SiLU input's negative tail
UPPER_PERCENTILES = (99.999, 99.99, 99.9)  # candidate clips of the positive tail, besides the maximum


class _Graph:
    """An ONNX model with lookups by tensor name: initializer or Constant values, producers and consumers."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.g = model, model.graph
        self.inits = {t.name: t for t in self.g.initializer}
        self.consts = {n.output[0]: n.attribute[0].t for n in self.g.node if n.op_type == "Constant"}
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def value(self, name: str) -> np.ndarray | None:
        """The constant behind a tensor name, or None for an activation."""
        while (n := self.made_by(name, "Identity")) is not None:  # the exporter's link to a deduplicated constant
            name = n.input[0]
        t = self.inits.get(name, self.consts.get(name))
        return None if t is None else numpy_helper.to_array(t)

    def add(self, name: str, value: np.ndarray) -> str:
        """A new initializer; returns its name."""
        self.g.initializer.append(numpy_helper.from_array(value, name))
        self.inits[name] = self.g.initializer[-1]
        return name

    def made_by(self, name: str, op: str) -> onnx.NodeProto | None:
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op else None

    def finish(self, path: Path) -> None:
        """Order the nodes topologically, drop what nothing reads any more, and save."""
        g = self.g
        available, order, todo = {i.name for i in g.input} | set(self.inits) | {""}, [], list(g.node)
        while todo:  # inserted nodes were appended at the end: move them after their inputs
            rest = []
            for n in todo:
                if all(i in available for i in n.input):
                    order.append(n)
                    available.update(n.output)
                else:
                    rest.append(n)
            if len(rest) == len(todo):
                raise ValueError(f"the rewritten graph reads a tensor that nothing writes, at node {rest[0].name!r}")
            todo = rest
        needed, keep = {o.name for o in g.output}, []
        for n in reversed(order):  # a reader comes after what it reads
            if any(o in needed for o in n.output):
                keep.append(n)
                needed.update(n.input)
        order = keep[::-1]
        del g.node[:]
        g.node.extend(order)
        used = {i for n in order for i in n.input}
        for t in [t for t in g.initializer if t.name not in used]:
            g.initializer.remove(t)
        onnx.checker.check_model(self.model)
        onnx.save(self.model, str(path))


def _along(node: onnx.NodeProto, w: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A Q/DQ node's scale and zero point shaped to broadcast against `w`: per tensor, or 1-D along its `axis`."""
    if not scale.ndim:
        return scale, zp
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1) % w.ndim
    shape = [-1 if d == axis else 1 for d in range(w.ndim)]
    return scale.reshape(shape), zp.reshape(shape)


def fold_weight_qdq(path: Path) -> None:
    """Rewrite each `float initializer -> QuantizeLinear -> DequantizeLinear` as `int8 initializer -> DequantizeLinear`.

    The stock exporter keeps every weight as an FP32 initializer that is quantized at run time, so the file is as large
    as the float one. Quantizing it once here, as ONNX QuantizeLinear defines it (per-axis scale, round half to even,
    saturate), gives the same INT8 values the runtime would compute, in a quarter of the bytes. Activation Q/DQ, which
    have no constant input, and the model's metadata_props stay as they are.
    """
    gr = _Graph(onnx.load(str(path)))
    folded = []
    for node in gr.g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or attrs.get("block_size"):
            continue  # blocked quantization (opset 21) broadcasts differently
        w, scale, zp = (gr.value(i) for i in node.input)
        if w is None or scale is None or zp is None or w.dtype.kind != "f":
            continue  # an activation quantizer
        if zp.dtype not in (np.int8, np.uint8, np.int16, np.uint16):
            continue  # int4 is packed and float8 rounds differently: leave those to the runtime
        scale, zp = _along(node, w, scale, zp)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(w / scale) + zp.astype(np.int64), info.min, info.max).astype(zp.dtype)
        gr.add(node.output[0], q)  # consumers read it under the Q's name
        folded.append(node)
    for node in folded:
        gr.g.node.remove(node)
    gr.finish(path)  # a float weight that only its quantizer read goes


def integer_convs(path: Path, images: Iterable[np.ndarray]) -> dict[str, int]:
    """Rewrite a weight-folded Q/DQ graph in place so that onnxruntime runs its quantized convolutions in integer.

    - Activation Q/DQ pairs go from int8 with zero point 0 (ModelOpt's symmetric ranges) to uint8 with zero point 128:
      the same grid of values, in the type onnxruntime's fast x86 kernels take.
    - Each quantized convolution gets a uint8 Q/DQ pair on its output, with a range calibrated on `images` (float32
      NCHW in [0, 1], at the graph's input size): of the observed range and clipped variants, the one whose rounding
      changes the activation after the convolution (SiLU, where it follows) least in mean square. The maximum is kept
      unclipped unless clipping measurably helps: large activations carry detections. Its bias becomes INT32 at the
      scale of input times weight, as `QLinearConv` takes it.
    - Convolutions whose output has a stride below `FLOAT_BELOW_STRIDE` (the stem) become float convolutions on the
      float input, with the QAT-rounded weights: on the benchmark's QAT checkpoint an integer stem was both less
      accurate and slower (its few channels at high resolution suit onnxruntime's float kernels better;
      `benchmarks/int8.py --val` compares the two).

    Returns:
        (dict[str, int]): How many convolutions became `integer` and how many stayed `float`.
    """
    import onnxruntime as ort

    gr = _Graph(onnx.load(str(path)))
    _activations_to_uint8(gr)
    convs = [
        n
        for n in gr.g.node
        if n.op_type == "Conv"
        and gr.made_by(n.input[0], "DequantizeLinear")
        and (w := gr.made_by(n.input[1], "DequantizeLinear")) is not None
        and gr.value(w.input[0]) is not None
    ]
    probe = onnx.ModelProto()
    probe.CopyFrom(gr.model)
    probe.graph.output.extend(helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, None) for n in convs)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the probe's unused initializers are not worth a warning each
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names, rng = [o.name for o in session.get_outputs()], np.random.default_rng(0)
    seen: dict[str, list[np.ndarray]] = {n.output[0]: [] for n in convs}
    extremes: dict[str, tuple[float, float]] = {}
    strides: dict[str, int] = {}
    for x in images:
        outs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))
        for y, samples in seen.items():
            v = outs[y]
            lo, hi = extremes.get(y, (0.0, 0.0))
            extremes[y] = min(lo, float(v.min())), max(hi, float(v.max()))
            samples.append(rng.choice(v.ravel(), min(v.size, CALIB_SAMPLES), replace=False))
            strides[y] = round(x.shape[-1] / v.shape[-1])
    if not extremes:
        raise ValueError("no calibration images: integer convolutions need a few images to measure output ranges")
    count = {"integer": 0, "float": 0}
    for conv in convs:
        y = conv.output[0]
        if strides[y] < FLOAT_BELOW_STRIDE:
            _to_float(gr, conv)
            count["float"] += 1
        else:
            _quantize_output(gr, conv, *_output_range(np.concatenate(seen[y]), *extremes[y], _silu_follows(gr, y)))
            count["integer"] += 1
    gr.finish(path)
    return count


def _activations_to_uint8(gr: _Graph) -> None:
    """int8 zero-point-0 activation Q/DQ -> uint8 zero point 128: the same values, onnxruntime's fast input type."""
    u8: dict[str, str] = {}
    retyped: set[str] = set()
    for n in gr.g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3:
            continue
        q = n if n.op_type == "QuantizeLinear" else gr.made_by(n.input[0], "QuantizeLinear")
        zp = gr.value(n.input[2])
        if q is None or gr.value(q.input[0]) is not None or zp is None or zp.dtype != np.int8 or zp.any():
            continue  # a weight's quantizer, or not symmetric int8
        if n.input[2] not in u8:
            u8[n.input[2]] = gr.add(f"{n.input[2]}_uint8", np.full(zp.shape, 128, np.uint8))
        n.input[2] = u8[n.input[2]]
        if n is q:
            retyped.add(n.output[0])
    for vi in gr.g.value_info:  # types an export may have recorded: onnxruntime rejects an int8 one for a uint8 output
        if vi.name in retyped:
            vi.type.tensor_type.elem_type = onnx.TensorProto.UINT8


def _silu_follows(gr: _Graph, y: str) -> bool:
    """Whether `y` is read only by SiLU as the exporter writes it: `Mul(y, Sigmoid(y))`."""
    readers = gr.consumers.get(y, [])
    sig = [n for n in readers if n.op_type == "Sigmoid"]
    return (
        len(readers) == 2
        and len(sig) == 1
        and any(n.op_type == "Mul" and set(n.input) == {y, sig[0].output[0]} for n in readers)
    )


def _output_range(v: np.ndarray, lo: float, hi: float, silu: bool) -> tuple[float, float]:
    """The (low, high) uint8 range among the candidates with the least mean square error after the activation."""
    v = v.astype(np.float64)
    act = (lambda t: t / (1 + np.exp(-t))) if silu else (lambda t: t)
    ref = act(v)
    highs = [hi, *(float(np.percentile(v, p)) for p in UPPER_PERCENTILES)]
    lows = [lo, *(-b for b in LOWER_BOUNDS if -b > lo)] if silu else [lo]

    def error(a: float, b: float) -> float:
        scale = max(b - a, 1e-8) / 255
        zp = np.clip(np.round(-a / scale), 0, 255)
        return float(np.mean((act((np.clip(np.round(v / scale) + zp, 0, 255) - zp) * scale) - ref) ** 2))

    return min(((min(a, 0.0), max(b, 1e-6)) for a in lows for b in highs), key=lambda ab: error(*ab))


def _quantize_output(gr: _Graph, conv: onnx.NodeProto, lo: float, hi: float) -> None:
    """uint8 Q/DQ on the convolution's output and its bias as INT32 DequantizeLinear: a `QLinearConv` group."""
    y, x_dq, w_dq = conv.output[0], gr.producer[conv.input[0]], gr.producer[conv.input[1]]
    scale = np.float32((hi - lo) / 255)
    zp = np.uint8(np.clip(np.round(-lo / scale), 0, 255))
    s, z = gr.add(f"{y}_scale", np.array(scale)), gr.add(f"{y}_zero_point", np.array(zp))
    conv.output[0] = raw = f"{y}_float"  # readers keep the name `y`, now the dequantized output
    gr.g.node.extend(
        [
            helper.make_node("QuantizeLinear", [raw, s, z], [f"{y}_uint8"], name=f"{conv.name}_output_quantizer"),
            helper.make_node("DequantizeLinear", [f"{y}_uint8", s, z], [y], name=f"{conv.name}_output_dequantizer"),
        ]
    )
    if len(conv.input) > 2 and conv.input[2]:
        bias = gr.value(conv.input[2]).astype(np.float64)
        b_scale = (gr.value(x_dq.input[1]) * gr.value(w_dq.input[1])).astype(np.float32).reshape(-1)
        b_scale = np.broadcast_to(b_scale, bias.shape).copy()
        info = np.iinfo(np.int32)
        q = np.clip(np.round(bias / b_scale), info.min, info.max).astype(np.int32)
        name = conv.input[2]
        args = [gr.add(f"{name}_int32", q), gr.add(f"{name}_scale", b_scale), gr.add(f"{name}_zp", np.zeros_like(q))]
        gr.g.node.append(helper.make_node("DequantizeLinear", args, [f"{name}_dq"], axis=0, name=f"{name}_dequantizer"))
        conv.input[2] = f"{name}_dq"


def _to_float(gr: _Graph, conv: onnx.NodeProto) -> None:
    """A float convolution: the float tensor before the input's Q/DQ, the weight as its QAT-rounded float values."""
    w_dq = gr.producer[conv.input[1]]
    w, scale, zp = (gr.value(i) for i in w_dq.input)
    scale, zp = _along(w_dq, w, scale, zp)
    weight = (w.astype(np.float32) - zp.astype(np.float32)) * scale
    conv.input[1] = gr.add(f"{conv.input[1]}_float", weight.astype(np.float32))
    if (q := gr.made_by(gr.producer[conv.input[0]].input[0], "QuantizeLinear")) is not None:
        conv.input[0] = q.input[0]
