"""The CPU's int8 path, the weight format it gets, and the exact int8 check that catches VPMADDUBSW saturation.

The saturation case is built by hand: a 1x1 conv over 8 channels, every weight 1.0 and every input 1.0,
so activations quantize to 255 and s8 weights to 127. Exact int32: 8 * 255 * 127 = 259080, output 255.
x86 without VNNI adds u8*s8 products in pairs into int16: 255*127*2 = 64770 saturates to 32767, so
4 * 32767 = 131068 and the output becomes 131068 / (127 * 8) = 129.0 steps instead of 255.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn

from quant_helpers import one_thread  # noqa: F401  (autouse)
from slimkit.compress.quantize import int8_check
from slimkit.compress.quantize.int8_check import Int8CheckError, enforce_exact, int8_exact_check, vpmaddubsw_matmul
from slimkit.compress.quantize.int8_format import choose_format
from slimkit.compress.quantize.ptq import QuantSettings, prepare_fp32, quantize_static_qdq
from slimkit.deploy import export_onnx
from slimkit.utils.cpu import int8_path, path_of_flags, saturates


@pytest.mark.parametrize("machine, flags, path", [
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, "x86-vnni"),
    ("x86_64", {"avx2", "avx_vnni"}, "x86-vnni"),
    ("x86_64", {"avx2", "fma"}, "x86-avx2"),
    ("x86_64", {"avx2", "avx512f", "avx512bw"}, "x86-avx2"),  # AVX-512 without VNNI still uses VPMADDUBSW
    ("aarch64", {"asimd", "asimddp"}, "arm64-dotprod"),
    ("aarch64", {"asimd"}, "arm64"),
    ("riscv64", set(), "other"),
])
def test_int8_path_of_cpu_flags(machine, flags, path):
    assert path_of_flags(machine, frozenset(flags)) == path


def test_weight_format_follows_the_target():
    assert choose_format("x86-avx2").weights == "s7" and choose_format("x86-avx2").qmax == 64
    assert choose_format("x86-vnni").weights == "s8" and choose_format("arm64").qmax == 127
    assert choose_format("x86-vnni", "s7").weights == "s7"
    forced = choose_format("x86-avx2", "s8")
    assert forced.weights == "s8" and "saturate" in forced.why
    assert choose_format().weights == ("s7" if saturates(int8_path()) else "s8")  # auto: this machine


def test_vpmaddubsw_simulation_by_hand():
    a = np.array([[255, 255, 255, 255]], dtype=np.uint8)
    assert vpmaddubsw_matmul(a, np.array([[127], [127], [1], [1]])).tolist() == [[32767 + 510]]  # exact: 65280
    assert vpmaddubsw_matmul(a, np.array([[-128], [-128], [0], [0]])).tolist() == [[-32768]]  # exact: -65280
    assert vpmaddubsw_matmul(a, np.array([[64], [64], [-64], [-64]])).tolist() == [[0]]  # s7 pairs fit: exact
    assert vpmaddubsw_matmul(a[:, :3], np.array([[64], [64], [64]])).tolist() == [[255 * 64 * 3]]  # odd K


def _ones_conv(tmp_path, weights: str):
    net = nn.Conv2d(8, 8, 1, bias=False)
    nn.init.ones_(net.weight)
    export_onnx(net, (8, 4, 4), tmp_path / "fp.onnx")
    pre = prepare_fp32(tmp_path / "fp.onnx", tmp_path / "pre.onnx")
    x = np.ones((4, 8, 4, 4), dtype=np.float32)
    return quantize_static_qdq(pre, tmp_path / f"{weights}.onnx", x, QuantSettings(weights=weights)), x


def test_saturation_by_hand_in_the_simulation():
    u8 = np.full((1, 8), 255, dtype=np.uint8)
    exact = int((u8.astype(np.int64) @ np.full(8, 127)).item())
    assert exact == 259080 and round(exact / (127 * 8)) == 255
    assert vpmaddubsw_matmul(u8, np.full((8, 1), 127)).item() == 4 * 32767 == 131068  # -> 129 steps
    assert vpmaddubsw_matmul(u8, np.full((8, 1), 64)).item() == 8 * 255 * 64  # s7: exact


def test_exact_check_on_this_cpu_and_with_simulated_saturation(tmp_path, monkeypatch):
    from slimkit.compress.quantize.ort_eval import predict

    s8, x = _ones_conv(tmp_path, "s8")
    s7, _ = _ones_conv(tmp_path, "s7")
    # 7-bit weights are exact on any CPU: output 255 steps of 8/255 = 8.0
    assert int8_exact_check(s7, x[:2]).passed
    np.testing.assert_allclose(predict(s7, x[:1]), 8.0, rtol=1e-6)
    # s8 runs the path of this machine: exact with VNNI, 129 steps (4.047) where pair sums saturate
    check = int8_exact_check(s8, x[:2])
    host_saturates = saturates(int8_path())
    assert check.ops_checked == 1 and check.passed is (not host_saturates)
    np.testing.assert_allclose(predict(s8, x[:1]), 129 * 8 / 255 if host_saturates else 8.0, rtol=1e-6)
    if host_saturates:
        assert check.max_steps == pytest.approx(255 - 129)
    # The other path, forced: ORT's int8 output replaced by the simulated x86-without-VNNI result.
    capture = int8_check._capture

    def saturated(model, ops, images, tmp):
        values = capture(model, ops, images, tmp)
        values[ops[0].output[0]] = np.full_like(values[ops[0].output[0]], 129)
        return values

    monkeypatch.setattr(int8_check, "_capture", saturated)
    forced = int8_exact_check(s8, x[:2])
    assert not forced.passed and forced.max_steps == pytest.approx(126)
    assert next(iter(forced.mismatched.values()))["outputs_off"] == 2 * 8 * 4 * 4
    with pytest.raises(Int8CheckError, match="7-bit weights") if saturates(forced.int8_path) else \
            pytest.raises(Int8CheckError, match="int8 check failed"):
        enforce_exact(forced, choose_format("x86-avx2", "s8"))


def test_building_for_vnni_on_a_saturating_machine_warns(tmp_path):
    s8, x = _ones_conv(tmp_path, "s8")
    check = int8_exact_check(s8, x[:2])
    check.int8_path, check.passed = "x86-avx2", False  # as measured on a machine without VNNI
    check.mismatched = check.mismatched or {"conv": {"max_steps": 126.0}}
    assert "lower than on the target" in enforce_exact(check, choose_format("x86-vnni"))
    with pytest.raises(Int8CheckError):
        enforce_exact(check, choose_format("x86-avx2", "s8"))


def test_int8_path_is_in_the_report_environment():
    from slimkit.profile.profiler import _environment

    assert _environment(1)["int8_path"] == int8_path()
    assert torch.get_num_threads() == 1


def test_target_cpu_reaches_the_int8_steps_of_a_recipe(monkeypatch, capsys, tmp_path):
    from cli_helpers import run_cli_code
    from slimkit.compress.recipe import Recipe

    recipe = Recipe.model_validate({"name": "r", "steps": [
        {"type": "prune", "params": {"target": "macs=0.5"}}, {"type": "quantize"},
        {"type": "quantize", "name": "cb", "params": {"kind": "codebook"}}]})
    steps = recipe.with_target_cpu("x86-avx2").steps
    assert steps[1].params == {"target_cpu": "x86-avx2"} and "target_cpu" not in steps[0].params | steps[2].params
    out = tmp_path / "run"
    assert run_cli_code(monkeypatch, "compress", "tv:resnet18", "--target-cpu", "pentium", "--out", out) == 2
    assert "--target-cpu" in capsys.readouterr().err and not out.exists()


class _QK(nn.Module):
    """Attention scores: both operands of the MatMul are activations (QLinearMatMul with an activation B)."""

    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.q(x) @ self.k(x).transpose(-1, -2)


def test_exact_check_covers_matmuls_of_two_activations(tmp_path):
    torch.manual_seed(0)
    export_onnx(_QK(), (1, 6, 8), tmp_path / "fp.onnx")
    pre = prepare_fp32(tmp_path / "fp.onnx", tmp_path / "pre.onnx")
    x = np.random.default_rng(0).standard_normal((8, 1, 6, 8)).astype(np.float32)
    q = quantize_static_qdq(pre, tmp_path / "q.onnx", x, QuantSettings(weights="s7"))
    import onnx

    opt = int8_check._optimized(q, tmp_path / "opt.onnx")
    constant = {t.name for t in opt.graph.initializer}
    act_b = [n for n in opt.graph.node if n.op_type in int8_check.INT8_OPS and n.input[3] not in constant]
    assert act_b, [n.op_type for n in opt.graph.node]  # ORT ran the scores as an int8 op on two activations
    check = int8_exact_check(q, x[:2])
    assert check.passed and check.ops_checked == len([n for n in opt.graph.node if n.op_type in int8_check.INT8_OPS])
    assert onnx.load(str(q)).graph.node
