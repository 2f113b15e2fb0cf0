"""TrainConfig validation and round trips; the LR schedule and optimizer setup, exactly."""

import math

import pytest
import torch
import torch.nn as nn

from slimkit.engine import TrainConfig
from slimkit.engine.optim import build_optimizer, build_scheduler, lr_factor
from slimkit.errors import BadInputError, SlimkitError


def test_round_trips_json_yaml_and_files(tmp_path):
    cfg = TrainConfig(epochs=3, optimizer="SGD", lr=0.05, grad_clip=2, warmup_epochs=1, bf16=True, seed=7)
    assert cfg.optimizer == "sgd" and cfg.grad_clip == 2.0  # normalised on construction
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert TrainConfig.from_yaml(cfg.to_yaml()) == cfg
    for name in ("c.yaml", "c.json"):
        cfg.save(tmp_path / name)
        assert TrainConfig.load(tmp_path / name) == cfg
    assert cfg.replace(lr=None, epochs=5) == TrainConfig(**{**cfg.to_dict(), "epochs": 5})


@pytest.mark.parametrize("kwargs, fragment", [
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"optimizer": "lamb"}, "optimizer must be one of"),
    ({"lr": -1.0}, "lr must be > 0"),
    ({"lr": float("nan")}, "lr must be finite"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"warmup_epochs": 11}, "warmup_epochs"),
    ({"epochs": "three"}, "epochs must be an integer"),
    ({"bf16": "yes"}, "bf16 must be true or false"),
    ({"grad_clip": 0}, "grad_clip must be > 0"),
    ({"version": 99}, "newer than this slimkit"),
])
def test_bad_values_are_one_line_slimkit_errors(kwargs, fragment):
    with pytest.raises(SlimkitError, match=fragment) as info:
        TrainConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_unknown_keys_and_bad_files_are_refused(tmp_path):
    with pytest.raises(BadInputError, match="unknown key.*learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    (tmp_path / "bad.yaml").write_text("epochs: [1,\n")
    with pytest.raises(BadInputError, match="not valid YAML"):
        TrainConfig.load(tmp_path / "bad.yaml")
    with pytest.raises(BadInputError, match="cannot read train config"):
        TrainConfig.load(tmp_path / "missing.json")


def test_differences_ignore_runtime_only_fields():
    a = TrainConfig()
    assert a.differences(a.replace(num_workers=2, device="cpu", eval_batch_size=7)) == []
    assert a.differences(a.replace(lr=0.5, seed=3)) == ["lr", "seed"]


def test_warmup_then_cosine_factors_by_hand():
    # 10 steps, 2 warm-up: 0.5, 1.0, then cos over the remaining 8 steps, floor at 0.1.
    f = [lr_factor(s, 10, 2, "cosine", 0.1) for s in range(10)]
    assert f[:2] == [0.5, 1.0]
    for s in range(2, 10):
        assert f[s] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 8)))
    assert lr_factor(5, 10, 0, "constant", 0.0) == 1.0


def test_scheduler_steps_per_batch_and_no_decay_on_biases():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    cfg = TrainConfig(epochs=2, lr=0.1, warmup_epochs=1, weight_decay=0.5)
    opt = build_optimizer(model.parameters(), cfg)
    decays = sorted((g["weight_decay"], sum(p.numel() for p in g["params"])) for g in opt.param_groups)
    assert decays == [(0.0, 3 + 3 + 3), (0.5, 12)]  # linear bias, bn weight+bias undecayed; linear weight decayed
    sched = build_scheduler(opt, cfg, steps_per_epoch=4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert lrs[4:] == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])


def test_sgd_uses_momentum():
    opt = build_optimizer([nn.Parameter(torch.zeros(2, 2))], TrainConfig(optimizer="sgd", momentum=0.8))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.8
