"""ONNX Runtime's arm64 int8 kernels, run under qemu-user (benchmarks/arm64_qemu), against exact int32 arithmetic.

The hand-built 1x1 conv whose 8-bit pairs saturate on x86 without VNNI (129 of 255 steps) must come out exact on
arm64 with and without the dot product, and so must attention scores (a MatMul of two activations). Slow (it
fetches an arm64 Python and ORT's aarch64 wheel once) and root only (apt, a mount namespace).
"""

import importlib.util
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or sys.platform != "linux" or os.geteuid() != 0
    or not (shutil.which("apt-get") and shutil.which("unshare")),
    reason="emulating arm64 needs Linux x86-64, root, apt and unshare")]


def _check_module():
    spec = importlib.util.spec_from_file_location("arm64_check_int8", ROOT / "benchmarks" / "arm64_qemu" / "check_int8.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arm64_int8_kernels_are_exact_with_and_without_the_dot_product(tmp_path):
    check = _check_module()
    check.build(tmp_path, ["ones_conv", "attention_scores"])
    check.capture_on_arm64(tmp_path)
    for name, ops in (("ones_conv", 1), ("attention_scores", 3)):
        for cpu, path in check.CPUS.items():
            arm = check.compare(tmp_path / name, cpu)
            assert arm["machine"] == "aarch64" and arm["int8_path"] == path
            assert arm["passed"] and arm["ops_checked"] == ops, arm
    # exact: all 255 steps of 8/255 on every output, where a saturating x86 kernel gives 129
    np.testing.assert_allclose(check.compare(tmp_path / "ones_conv", "cortex-a53")["logits"], 8.0, rtol=1e-6)
