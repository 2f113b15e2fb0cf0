"""PruneConfig validation and JSON round-trip; the criterion registry."""

import pytest
import torch

from slimkit.compress.prune import PruneConfig, available_criteria, parse_target, register_criterion
from slimkit.compress.prune.criteria import _CRITERIA
from slimkit.errors import BadInputError


def test_round_trip_json():
    cfg = PruneConfig(target="params=40%", criterion="taylor", allocation="adaptive", round_to=16, ignore=["head"])
    again = PruneConfig.from_json(cfg.to_json())
    assert again == cfg and again.target == "params=0.4" and again.parsed_target.ratio == 0.4


@pytest.mark.parametrize("kwargs,message", [
    ({"target": "macs:0.5"}, "malformed target"),
    ({"target": "flops=0.5"}, "unknown target kind"),
    ({"target": "macs=0"}, "strictly between"),
    ({"criterion": "nope"}, "unknown criterion"),
    ({"allocation": "best"}, "allocation must be one of"),
    ({"round_to": 0}, "round_to"),
    ({"target": None}, "give a target"),
    ({"unstructured": 1.0}, "unstructured"),
    ({"version": 99}, "newer"),
])
def test_invalid_configs_raise_one_line(kwargs, message):
    with pytest.raises(BadInputError, match=message):
        PruneConfig(**kwargs)


def test_unknown_keys_rejected():
    with pytest.raises(BadInputError, match="unknown prune config keys: colour"):
        PruneConfig.from_dict({"target": "macs=0.5", "colour": "red"})


def test_parse_target_percent_and_kinds():
    assert parse_target("latency=25%").ratio == 0.25 and parse_target(" macs = 0.5 ").kind == "macs"


def test_register_custom_criterion():
    import torch_pruning as tp

    class Ones(tp.importance.Importance):
        def __call__(self, group):
            return torch.ones(len(group[0].idxs))

    @register_criterion("ones_for_test")
    def _ones(model, calib, seed):
        """Every channel scores 1."""
        return Ones()

    try:
        assert "ones_for_test" in available_criteria()
        assert PruneConfig(criterion="ones_for_test").criterion == "ones_for_test"
    finally:
        _CRITERIA.pop("ones_for_test")


def test_layer_floor_default_follows_the_allocation(tmp_path):
    """The per-layer floor defaults to 10% kept, 25% for the latency table's greedy path; an explicit value wins
    and survives a round trip."""
    assert PruneConfig().max_layer_prune == 0.9
    table = PruneConfig(allocation="latency-table", latency_table=str(tmp_path / "t.json"))
    assert table.max_layer_prune == 0.75
    explicit = PruneConfig(allocation="latency-table", max_layer_prune=0.9)
    assert explicit.max_layer_prune == 0.9
    assert PruneConfig.from_json(table.to_json()).max_layer_prune == 0.75
