"""The timm family sweep (benchmarks/prune_sweep.py) as a test: a pruned family either meets
macs=0.5 +-10% with an exact reload and a verified ONNX export, or is refused with a reason that
names a module; nothing else escapes. (MetaFormer: a bias-free GroupNorm crashed Torch-Pruning) runs by default, ResMLP (affine blocks and
token mixing) and every timm module with --runslow (about as long as the benchmark)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from prune_sweep import prune_and_check, run_family  # noqa: E402

FAST = [("poolformerv2_s12", 64, {})]
SLOW = [("resmlp_12_224", 64, {"img_size": 64})]


def _assert_row(row: dict) -> None:
    assert row["outcome"] in ("pass", "refused", "no_input"), row
    if row["outcome"] == "pass":
        assert abs(row["macs_ratio"] - 0.5) <= 0.05 and row["reload_exact"] and row["onnx_ok"] and row["forward_ok"]
    if row["outcome"] == "refused":
        named = ("kept whole, the largest: ", "does not run", "pruning breaks the forward of ", "beyond the sweep's")
        assert any(n in row["reason"] for n in named), row["reason"]


@pytest.mark.parametrize("name,side,kwargs", FAST + [pytest.param(*s, marks=pytest.mark.slow) for s in SLOW],
                         ids=[n for n, _, _ in FAST + SLOW])
def test_family_prunes_to_half_and_reloads(name, side, kwargs):
    row = prune_and_check(name, side, kwargs)
    assert row["outcome"] == "pass", row
    _assert_row(row)


def _families() -> list[str]:
    import timm

    return timm.list_modules()


@pytest.mark.slow
@pytest.mark.parametrize("family", _families())
def test_every_timm_family_prunes_or_is_refused_with_a_reason(family):
    _assert_row(run_family(family))
