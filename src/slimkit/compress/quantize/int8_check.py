"""The exact int8 check: every int8 matrix op ONNX Runtime runs, against an exact int32 reference.

A float comparison (PyTorch vs ONNX Runtime with a tolerance) cannot tell a rounding step from a
saturated accumulator. This check can. ONNX Runtime's optimized graph (its fused QLinearConv / QGemm /
QLinearMatMul nodes, the kernels that really run) is saved, every int8 op's uint8 input and output are
captured on real images, and each output is recomputed from the captured input with exact integer
accumulation (float64 holds these sums exactly). ONNX Runtime rounds `acc * scale` to the nearest step,
so an honest output lies within half a step (plus float32 error) of the exact value; a saturated VPMADDUBSW
pair (x86 without VNNI) loses thousands of accumulator units and lands steps away.

`vpmaddubsw_matmul` simulates the saturating x86 kernel in numpy, so tests show the check catching
saturation on any machine.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from slimkit.errors import SlimkitError

__all__ = ["Int8Check", "Int8CheckError", "int8_exact_check", "capture_int8_ops", "compare_captured", "enforce_exact",
           "vpmaddubsw_matmul", "conv_columns", "INT8_OPS"]

INT8_OPS = ("QLinearConv", "QGemm", "QLinearMatMul")
_SLACK = 1e-3  # steps of float32 rounding allowed beyond the half step of rounding to nearest


@dataclass
class Int8Check:
    """How far ONNX Runtime's int8 ops are from exact int32 arithmetic, in output quantization steps."""

    passed: bool
    ops_checked: int
    max_steps: float  # worst |ORT - exact| over all checked outputs, in output steps (<= 0.5: exact)
    mismatched: dict[str, dict] = field(default_factory=dict)  # op name -> {max_steps, outputs_off, outputs}
    int8_path: str = ""
    images: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        worst = max(self.mismatched.items(), key=lambda kv: kv[1]["max_steps"], default=(None, None))
        return (f"{len(self.mismatched)} of {self.ops_checked} int8 ops differ from exact int32 arithmetic "
                f"on this CPU ({self.int8_path}); worst {worst[0]}: up to {self.max_steps:.0f} steps")


def _optimized(path: Path, out: Path) -> onnx.ModelProto:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath, opts.intra_op_num_threads, opts.log_severity_level = str(out), 1, 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return onnx.load(str(out))


def _capture(model: onnx.ModelProto, ops: list, x: np.ndarray, tmp: Path) -> dict[str, np.ndarray]:
    """Run ORT's own optimized graph (no further optimization) with every int8 op's input and output exposed."""
    import onnxruntime as ort

    # Data inputs are 0 (A / x) and 3 (B / w): B is an activation too in attention's QLinearMatMul (q @ k).
    constant = {t.name for t in model.graph.initializer}
    data = {t for n in ops for t in (n.input[0], n.input[3], n.output[0]) if t and t not in constant}
    names = sorted(data - {o.name for o in model.graph.output})
    model.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in names)
    onnx.save(model, str(tmp / "capture.onnx"))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    sess = ort.InferenceSession(str(tmp / "capture.onnx"), opts, providers=["CPUExecutionProvider"])
    values = sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})
    return dict(zip([o.name for o in sess.get_outputs()], values))


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv_acc(x: np.ndarray, w: np.ndarray, attrs: dict) -> np.ndarray:
    """Exact integer conv (x already minus its zero point), NCHW, in float64 (exact below 2**53)."""
    import torch
    import torch.nn.functional as F

    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])  # ONNX order: begins, then ends
    # ORT pads with the zero point, which is 0 once subtracted; asymmetric (TF "SAME") pads work too.
    padded = F.pad(torch.from_numpy(x), (left, right, top, bottom))
    out = F.conv2d(padded, torch.from_numpy(w), stride=attrs.get("strides", 1), dilation=attrs.get("dilations", 1),
                   groups=attrs.get("group", 1))
    return out.numpy()


def _reference(node, v: dict[str, np.ndarray], consts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(exact output in steps before rounding and clamping, ORT's output) for one int8 op, both float64."""
    get = lambda i: consts[node.input[i]] if node.input[i] in consts else v[node.input[i]]  # noqa: E731
    attrs = _attrs(node)
    x = v[node.input[0]].astype(np.float64)
    y = v[node.output[0]].astype(np.float64)
    if node.op_type == "QLinearConv":
        last = attrs.get("channels_last", 0)
        x = x.transpose(0, 3, 1, 2) if last else x
        w = get(3).astype(np.float64) - get(5).astype(np.float64).reshape(-1, 1, 1, 1)
        acc = _conv_acc(x - get(2).astype(np.float64), w, attrs)
        bias = get(8).astype(np.float64).reshape(1, -1, 1, 1) if len(node.input) > 8 and node.input[8] else 0.0
        scale = (get(1) * get(4)).astype(np.float64).reshape(1, -1, 1, 1) / float(get(6))
        exact = (acc + bias) * scale + float(get(7))
        return (exact.transpose(0, 2, 3, 1) if last else exact), y
    a = x - get(2).astype(np.float64)
    b_zp = get(5).astype(np.float64)  # per output column when per channel
    trans_b = node.op_type == "QGemm" and attrs.get("transB", 0)
    b = get(3).astype(np.float64) - (b_zp.reshape(-1, 1) if trans_b else b_zp)
    if node.op_type == "QGemm":
        a = a.T if attrs.get("transA", 0) else a
        b = b.T if trans_b else b
        acc = a @ b
        bias = get(6).astype(np.float64) if len(node.input) > 6 and node.input[6] else 0.0
        scale = (get(1) * get(4)).astype(np.float64) * attrs.get("alpha", 1.0)
        if len(node.input) > 7 and node.input[7]:  # quantized output
            return (acc + bias) * scale / float(get(7)) + float(get(8)), y
        return (acc + bias) * scale, y  # float output: compared in units of one accumulator step
    acc = a @ b  # QLinearMatMul: a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp
    return acc * (get(1) * get(4)).astype(np.float64) / float(get(6)) + float(get(7)), y


_OUT_ZP = {"QLinearConv": 7, "QGemm": 8, "QLinearMatMul": 7}  # input index of the output zero point


def _off_by(node, exact: np.ndarray, got: np.ndarray, consts: dict) -> tuple[np.ndarray, np.ndarray]:
    """(|ORT - exact| in output steps, the allowed distance) per output element.

    Quantized outputs: after the clamp to the output type (ORT clamps too), half a step of rounding plus
    float32 slack. A float output (QGemm without y_scale) is measured in accumulator steps.
    """
    index = _OUT_ZP[node.op_type]
    if len(node.input) <= index or not node.input[index]:
        step = float(np.max(np.abs(consts[node.input[1]] * consts[node.input[4]])))
        return np.abs(got - exact) / step, 0.5 + 1e-5 * np.abs(exact) / step
    info = np.iinfo(consts[node.input[index]].dtype)
    return np.abs(got - np.clip(exact, info.min, info.max)), 0.5 + _SLACK * (1.0 + np.abs(exact))


def int8_exact_check(path: str | Path, x: np.ndarray) -> Int8Check:
    """Check every int8 matrix op ORT runs for `path` on images `x` against exact int32 arithmetic."""
    from slimkit.utils.cpu import int8_path

    with tempfile.TemporaryDirectory(prefix="slimkit-int8check-") as tmp:
        model, values = capture_int8_ops(path, x, Path(tmp))
    return compare_captured(model, values, int8_path(), len(x))


def capture_int8_ops(path: str | Path, x: np.ndarray, tmp: Path) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """ORT's optimized graph for `path` and every int8 op's input and output on `x`: the half that needs ORT.

    Split from the comparison so that a CPU without PyTorch (an arm64 board, an emulator) can capture and
    another machine can compare (benchmarks/arm64_qemu).
    """
    model = _optimized(Path(path), tmp / "opt.onnx")
    ops = [n for n in model.graph.node if n.op_type in INT8_OPS]
    return model, (_capture(model, ops, x, tmp) if ops else {})


def compare_captured(model: onnx.ModelProto, values: dict[str, np.ndarray], int8_path: str, images: int) -> Int8Check:
    """Each captured int8 op output against its exact int32 recomputation from the captured input."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    worst, mismatched = 0.0, {}
    ops = [n for n in model.graph.node if n.op_type in INT8_OPS]
    for node in ops:
        exact, got = _reference(node, values, consts)
        steps, limit = _off_by(node, exact, got, consts)
        off = steps > limit
        worst = max(worst, float(steps.max(initial=0.0)))
        if off.any():
            mismatched[node.name or node.output[0]] = {"max_steps": float(steps.max()), "outputs_off": int(off.sum()),
                                                       "outputs": int(off.size), "op": node.op_type}
    return Int8Check(not mismatched, len(ops), worst, mismatched, int8_path, images)


class Int8CheckError(SlimkitError):
    """ONNX Runtime's int8 ops differ from exact int32 arithmetic (saturation), on a CPU the model targets."""


def enforce_exact(check: Int8Check, fmt) -> str | None:
    """Raise Int8CheckError where the target would lose accuracy; a warning where only this machine does.

    `fmt` is the WeightFormat taken. Building on an x86 without VNNI for a VNNI or arm64 target with s8
    weights: this machine saturates, the target does not, so int8 accuracy measured here is pessimistic.
    """
    from slimkit.utils.cpu import saturates

    if check.passed:
        return None
    if saturates(check.int8_path) and not saturates(fmt.target_cpu) and fmt.weights == "s8":
        return (f"WARNING: {check.summary()}; the target {fmt.target_cpu} accumulates exactly, so int8 accuracy "
                "measured here is lower than on the target")
    hint = (" Quantize with 7-bit weights (--weight-format s7, or --target-cpu x86-avx2), which cannot saturate."
            if fmt.weights == "s8" and saturates(check.int8_path) else "")
    raise Int8CheckError(f"int8 check failed: {check.summary()}.{hint}")


def conv_columns(x: np.ndarray, w: np.ndarray, attrs: dict) -> tuple[np.ndarray, np.ndarray]:
    """im2col of an NCHW uint8 input and OIHW weights (group 1), K ordered (kh, kw, c) as in NHWC kernels.

    Returns (columns [N*L, K], weights [K, O]).
    """
    import torch
    import torch.nn.functional as F

    kh, kw = w.shape[2:]
    pads = attrs.get("pads", [0, 0, 0, 0])
    cols = F.unfold(torch.from_numpy(x.astype(np.float64)), (kh, kw), dilation=attrs.get("dilations", 1),
                    padding=tuple(pads[:2]), stride=attrs.get("strides", 1)).numpy()  # [N, C*kh*kw, L]
    n, c, length = x.shape[0], x.shape[1], cols.shape[-1]
    cols = cols.reshape(n, c, kh * kw, length).transpose(0, 3, 2, 1).reshape(n * length, kh * kw * c)
    return cols, w.transpose(2, 3, 1, 0).reshape(kh * kw * c, -1).astype(np.float64)


def vpmaddubsw_matmul(a_u8: np.ndarray, b_s8: np.ndarray) -> np.ndarray:
    """a @ b as x86 without VNNI computes it: u8*s8 products summed in pairs along K into saturating int16.

    a: [M, K] raw uint8 values (zero point not yet subtracted), b: [K, N] int8. Returns int64 [M, N].
    """
    a, b = a_u8.astype(np.int64), b_s8.astype(np.int64)
    if a.shape[1] % 2:
        a, b = np.pad(a, ((0, 0), (0, 1))), np.pad(b, ((0, 1), (0, 0)))
    pairs = a[:, 0::2, None] * b[None, 0::2, :] + a[:, 1::2, None] * b[None, 1::2, :]  # [M, K/2, N]
    return np.clip(pairs, -32768, 32767).sum(axis=1)
