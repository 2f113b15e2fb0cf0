"""The EMOv2-like iRMB space: exact child extraction (attention on and off), attention against torch's SDPA,
table keys by hand, a deterministic search, bad archs, and latency-table -> train -> run from the CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import run_cli

from test_search import assert_children_match_supernet, fake_table, search_twice
from test_search_cli import train_small

from slimkit.errors import BadInputError
from slimkit.search.evolution import mutate
from slimkit.search.irmb import attend, num_heads
from slimkit.search.latency import arch_parts
from slimkit.search.space import Arch, SearchSpace, load_space
from slimkit.search.table import LatencyTable


@pytest.fixture
def space() -> SearchSpace:
    return load_space("tiny_irmb")


def test_space_counts_and_attention_choices(space):
    # per block 2 kernels x 2 expands = 4; stage 0: 4 + 4^2 = 20; stage 1 (attention after its first block):
    # 4 + 4 * 8 = 36; x 2 widths x 2 resolutions
    assert space.size() == 2 * 2 * 20 * 36
    assert space.largest().attention == [[False, False], [False, True]]
    assert space.smallest().attention == [[False], [False]]
    assert "attention" not in load_space("tiny").largest().model_dump()  # MBConv archs dump as before
    assert load_space("emov2").block == "irmb" and load_space("emov2").size() > 1e10


def test_bad_attention_choices_are_one_line_errors(space):
    arch = space.largest()
    with pytest.raises(BadInputError, match="attention not allowed"):
        space.validate_arch(arch.model_copy(update={"attention": [[False, True], [True, True]]}))
    with pytest.raises(BadInputError, match="attention choices missing"):
        space.validate_arch(arch.model_copy(update={"attention": None}))
    with pytest.raises(BadInputError, match="attention choices given"):
        load_space("tiny").validate_arch(load_space("tiny").largest().model_copy(update={"attention": [[False]] * 2}))
    data = {**space.model_dump(), "block": "mbconv"}
    with pytest.raises(BadInputError, match="stage attention needs block: irmb"):
        SearchSpace.from_dict(data)


def test_attend_matches_torch_sdpa():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 8, 3, 3, generator=gen), torch.randn(2, 8, 3, 3, generator=gen)
    v = torch.randn(2, 12, 3, 3, generator=gen)
    heads = 2

    def split(t):  # (B, C, H, W) -> (B, heads, H*W, C/heads)
        return t.reshape(2, heads, t.shape[1] // heads, 9).transpose(-2, -1)

    ref = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(-2, -1).reshape(2, 12, 3, 3)
    assert torch.allclose(attend(q, k, v, heads), ref, atol=1e-6)
    assert [num_heads(c, 8) for c in (4, 8, 24, 28, 40)] == [1, 1, 3, 2, 5]


def test_extracted_child_matches_supernet_exactly(space):
    rng = random.Random(3)
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(4)]
    assert any(True in sum(a.attention, []) for a in archs) and any(not any(sum(a.attention, [])) for a in archs)
    assert_children_match_supernet(space, archs)


def test_table_keys_by_hand_and_lookup(space, tmp_path):
    table = fake_table(space)
    table.save(tmp_path / "t.json")
    again = LatencyTable.load(tmp_path / "t.json")
    # smallest: width 0.5 -> stem 4, stages 4 and 8 channels (divisor 4), expand 2, 12 px -> 6 -> 3
    assert arch_parts(space, space.smallest()) == [
        "stem:1-4-s2-silu@12", "irmb:4-8-4-k3-s1-r1-a0-h4@6", "irmb:4-8-8-k3-s2-r0-a0-h4@6", "head:8-16-10-silu@3"]
    largest = arch_parts(space, space.largest())
    assert largest[-2] == "irmb:12-36-12-k5-s1-r1-a1-h4@4" and largest[-3] == "irmb:8-24-12-k5-s2-r0-a0-h4@8"
    for arch in (space.largest(), space.smallest()):
        parts = arch_parts(space, arch)
        raw = sum(len(k) * 1e-3 for k in parts) - (len(parts) - 1) * 0.002
        assert all(again.lookup(k) == len(k) * 1e-3 for k in parts)
        assert again.predict_ms(arch) == pytest.approx(0.5 * raw + 0.01, abs=1e-12)


def test_search_is_deterministic_and_keeps_attention_valid(space):
    found, _ = search_twice(space)
    assert len({json.dumps(c.arch.attention) for c in found}) > 1
    rng = random.Random(0)
    for _ in range(20):  # mutations (depth changes included) stay inside the space
        space.validate_arch(mutate(space, space.sample(rng), rng, 0.5))


def test_latency_table_train_run_end_to_end(monkeypatch, capsys, tmp_path):
    from slimkit.models import load_model

    run = train_small(monkeypatch, capsys, "tiny_irmb", tmp_path / "run")
    code, out, err = run_cli(monkeypatch, capsys, "search", "latency-table", "tiny_irmb", "--threads", "1", "--out",
                             run / "latency_table.json", "--repetitions", "5", "--rounds", "1", "--calibrate", "3")
    assert code == 0, err
    table = LatencyTable.load(run / "latency_table.json")
    assert any("-a1-" in k for k in table.entries) and all(e["median_ms"] > 0 for e in table.entries.values())
    code, out, _ = run_cli(monkeypatch, capsys, "search", "predict", run / "latency_table.json", "--threads", "1")
    assert code == 0 and '"attention":[[false,false],[false,true]]' in out.replace("\n", "")  # not eaten as markup
    target = table.predict_ms(table.space.largest())
    code, out, err = run_cli(monkeypatch, capsys, "search", "run", run, "--latency", f"{target}ms", "--population", "4",
                             "--generations", "1", "--confirm", "1")
    assert code == 0, err
    winner = json.loads((run / "search" / "search.json").read_text())["winners"][0]
    arch = Arch.model_validate(winner["arch"])
    assert winner["predicted_ms"] == table.predict_ms(table.space.validate_arch(arch)) and winner["measured_ms"] > 0
    model, info = load_model(str(run / "search" / "child_0"))
    assert info.input_size == (1, arch.resolution, arch.resolution)
    assert model(torch.randn(1, 1, arch.resolution, arch.resolution)).shape == (1, 10)
