"""The x86-avx2 int8 path forced on this machine (benchmarks/avx2_path/run.sh), whatever its CPU.

On a VNNI machine the suite runs ONNX Runtime's exact VPDPBUSD kernels, so the tests written for saturating
VPMADDUBSW kernels only meet a simulation there. Under run.sh ONNX Runtime itself takes its AVX2 kernels: this
test runs the int8 tests that depend on the CPU's path in that mode, and first checks that the mode is real
(slimkit detects x86-avx2, and ORT's int8 conv on the hand-built case returns the saturated 129 steps).
"""

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "avx2_path" / "run.sh"

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or sys.platform != "linux" or os.geteuid() != 0
    or not (shutil.which("gcc") and shutil.which("objdump") and shutil.which("unshare")),
    reason="forcing the AVX2 path needs Linux x86-64, root (a mount namespace), gcc and objdump")

# The tests whose outcome depends on the CPU's int8 path (the three of issue 10 among them).
PATH_DEPENDENT = [
    "tests/test_quant_forced_avx2.py::test_inside_the_forced_path",
    "tests/test_quant_int8_cpu.py::test_weight_format_follows_the_target",
    "tests/test_quant_int8_cpu.py::test_exact_check_on_this_cpu_and_with_simulated_saturation",
    "tests/test_quant_qat.py::test_qat_exports_int8_qdq_that_matches_torch",
    "tests/test_quant_ptq.py::test_sensitivity_finds_a_damaged_layer_and_keeps_it_float",
]


def test_int8_tests_pass_on_the_forced_avx2_path(tmp_path):
    env = {**os.environ, "SLIMKIT_EXPECT_INT8_PATH": "x86-avx2", "AVX2_PATH_CACHE": str(tmp_path / "cache"),
           "PYTHON": sys.executable}
    env.pop("PYTEST_XDIST_WORKER", None)
    done = subprocess.run(["bash", str(RUN), sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *PATH_DEPENDENT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    tail = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail and "deselected" not in tail, tail


@pytest.mark.skipif(not os.environ.get("SLIMKIT_EXPECT_INT8_PATH"), reason="runs inside the forced path only")
def test_inside_the_forced_path(tmp_path):
    """Run by the test above under run.sh: the mode is real, not just a relabelled /proc/cpuinfo."""
    import numpy as np

    from slimkit.compress.quantize.ort_eval import predict
    from slimkit.utils.cpu import int8_path
    from test_quant_int8_cpu import _ones_conv

    assert int8_path() == os.environ["SLIMKIT_EXPECT_INT8_PATH"]
    s8, x = _ones_conv(tmp_path, "s8")
    np.testing.assert_allclose(predict(s8, x[:1]), 129 * 8 / 255, rtol=1e-6)  # VPMADDUBSW saturated: 129 of 255
