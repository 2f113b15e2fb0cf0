"""Split computing: the prior's tables, the range-coder round trip, the two parts, and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from cli_helpers import run_cli, tiny_model_file

pytest.importorskip("constriction")

from slimkit.deploy.edge.split import PRIOR_GAIN, DevicePart, FactorizedPrior, ServerPart, SplitConfig, build_split  # noqa: E402
from slimkit.deploy.edge.split_codec import PriorTables, decode, encode  # noqa: E402


def _prior(channels: int = 3) -> FactorizedPrior:
    torch.manual_seed(0)
    prior = FactorizedPrior(channels)
    with torch.no_grad():
        prior.log_scale.fill_(np.log(0.7) / PRIOR_GAIN)
    return prior


def test_tables_are_pmfs_of_the_prior():
    prior = _prior()
    lows, pmfs = prior.tables()
    for c, (lo, p) in enumerate(zip(lows, pmfs)):
        assert abs(sum(p) - 1) < 1e-12 and lo <= -2
        q = torch.tensor([0.0]).view(1, 1, 1, 1).expand(1, 3, 1, 1)
        unnormalised = float(prior.likelihood(q)[0, c, 0, 0].detach())
        assert abs(p[-lo] - unnormalised) < 1e-5  # the tail mass cut off is < 2e-6


def test_range_coder_round_trip_is_exact_and_near_the_entropy():
    prior = _prior()
    tables = PriorTables(*prior.tables())
    rng = np.random.default_rng(0)
    symbols = np.stack([rng.choice(np.arange(lo, lo + len(p)), size=(6, 5), p=p)
                        for lo, p in zip(tables.lows, tables.pmfs)]).astype(np.float32)
    stream = encode(symbols, tables)
    assert np.array_equal(decode(stream, tables, symbols.shape), symbols)
    ideal = -sum(np.log2(tables.pmfs[c][int(s) - tables.lows[c]]) for c in range(3) for s in symbols[c].ravel())
    # a range coder spends at most a few 32-bit words over the information content
    assert ideal / 8 <= len(stream) <= ideal / 8 + 12


def test_parts_compose_to_the_split_net_and_send_integers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    net, shapes = build_split(model, (1, 8, 8), SplitConfig(at="2", channels=3))
    assert shapes == {"at": "2", "cut_shape": [6, 4, 4], "code_shape": [3, 4, 4]}
    net.eval().set_support_(*net.prior.tables())
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        codes = DevicePart(net)(x)
        assert torch.equal(codes, torch.round(codes)) and codes.shape == (5, 3, 4, 4)
        assert torch.equal(ServerPart(net)(codes), net(x))
        net.train()
        noisy = net.encoder(net.head(x))
        assert net.last_bits is None or net.last_bits.shape == (5,)
        assert not torch.equal(net(x), net(x))  # the training bottleneck is stochastic
    assert noisy.shape == (5, 3, 4, 4)


def _split_cli(monkeypatch, capsys, spec, out, *extra):
    return run_cli(monkeypatch, capsys, "deploy", "split", spec, "--at", "2", "--bottleneck", 4, "--data", "digits",
                   "--max-steps", 4, "--train-samples", 128, "--val-samples", 48, "--out", out, *extra)


def test_cli_split_sweep(tmp_path, monkeypatch, capsys):
    from slimkit.deploy.edge.split_measure import SplitRunner
    from slimkit.models import load_model

    spec = tiny_model_file(tmp_path)
    out = tmp_path / "s"
    code, stdout, err = _split_cli(monkeypatch, capsys, spec, out, "--lambda", "0.5,2")
    assert code == 0, err
    assert {"lambda-0.5", "lambda-2", "report.json", "report.html", "args.json", "run.json"} == \
        {p.name for p in out.iterdir()}  # no INCOMPLETE marker, no .work left
    one = out / "lambda-0.5"
    assert {"architecture.json", "model.safetensors", "model.onnx", "prior.json"} <= {p.name for p in (one / "device").iterdir()}
    report = json.loads((one / "report.json").read_text())
    assert report["split"]["decoded_exact"] and report["split"]["images"] == 48
    assert report["code_shape"] == [4, 16, 16]
    # conv 3->32 3x3, encoder 32->32 3x3 and 32->4 1x1, all at 16x16 (BN and ReLU are not MACs)
    assert report["macs"]["device"] == 256 * (3 * 32 * 9 + 32 * 32 * 9 + 32 * 4)
    summary = json.loads((out / "report.json").read_text())
    assert [p["lambda"] for p in summary["points"]] == [0.5, 2.0]
    assert {r["codec"] for r in summary["baselines"]} >= {"PNG", "JPEG q50", "WEBP q50"}
    assert "<img alt='rate against accuracy' src='data:image/png;base64," in (out / "report.html").read_text()
    runner = SplitRunner(one)
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    streams, codes = runner.streams(x)
    assert np.array_equal(decode(streams[1], runner.tables, runner.code_shape), codes[1])
    # the two halves are ordinary model directories: loaded by name, they run the saved ONNX's function
    device, info = load_model(str(one / "device"), trust_code=True)
    server, server_info = load_model(str(one / "server"), trust_code=True)
    assert info.input_size == (3, 16, 16) and server_info.input_size == (4, 16, 16) and server_info.num_classes == 10
    with torch.no_grad():
        assert torch.equal(device(torch.from_numpy(x)), torch.from_numpy(codes))
        logits = server(torch.from_numpy(codes)).numpy()
    assert np.allclose(logits, runner.logits(codes), atol=1e-4)
    assert "B/image" in stdout and stdout.count("lambda ") == 2


def test_cli_split_resume(tmp_path, monkeypatch, capsys):
    spec = tiny_model_file(tmp_path)
    out = tmp_path / "s"
    assert _split_cli(monkeypatch, capsys, spec, out, "--lambda", "0.5,2")[0] == 0
    # as if killed while training lambda 2: its folder is gone and the run is marked unfinished
    kept = (out / "lambda-0.5" / "device" / "model.safetensors").stat().st_mtime_ns
    import shutil

    shutil.rmtree(out / "lambda-2")
    (out / "INCOMPLETE").write_text("")
    code, _, err = _split_cli(monkeypatch, capsys, spec, out, "--lambda", "0.5,2")
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1
    code, _, err = _split_cli(monkeypatch, capsys, spec, out, "--lambda", "0.5,3", "--resume")
    assert code == 2 and "other settings (lambda)" in err
    code, _, err = _split_cli(monkeypatch, capsys, spec, out, "--lambda", "0.5,2", "--resume")
    assert code == 0, err
    assert (out / "lambda-0.5" / "device" / "model.safetensors").stat().st_mtime_ns == kept  # not retrained
    assert (out / "lambda-2" / "report.json").is_file() and not (out / "INCOMPLETE").exists()


@pytest.mark.parametrize("bad", ["x", "-1", "0.1,0.10", ""])
def test_cli_split_bad_lambda(tmp_path, monkeypatch, capsys, bad):
    spec = tiny_model_file(tmp_path)
    code, _, err = _split_cli(monkeypatch, capsys, spec, tmp_path / "bad", "--lambda", bad)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--lambda" in err
    assert not (tmp_path / "bad").exists()


def test_split_training_resumes_after_a_kill(tmp_path):
    """Killed after epoch 1 of 2, the rerun continues from the checkpoint to the uninterrupted run's weights."""
    from slimkit.data import load_data
    from slimkit.deploy.edge.split_build import train_split
    from slimkit.engine.config import TrainConfig
    from slimkit.engine.hooks import Hook

    class Kill(Hook):
        def on_epoch_begin(self, state):
            if state.epoch == 1:
                raise KeyboardInterrupt

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10)).eval()
    bundle = load_data("digits", input_size=(1, 8, 8), train_samples=96, val_samples=32)
    args = (model, (1, 8, 8), SplitConfig(at="1", channels=2), bundle, 0.5, TrainConfig(epochs=2, batch_size=32))
    whole, _ = train_split(*args, work=tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_split(*args, work=tmp_path / "killed", hooks=[Kill()], progress=False)
    resumed, shapes = train_split(*args, work=tmp_path / "killed", progress=False)
    assert shapes["resumed"] and [r["epoch"] for r in shapes["train_history"]] == [1, 2]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def _halves_reload(parent, info, tmp_path, at: str, size) -> None:
    from slimkit.deploy.edge.split_dir import part_info, save_part
    from slimkit.models import load_model

    cfg = SplitConfig(at=at, channels=3)
    net, shapes = build_split(parent, size, cfg)
    with torch.no_grad():
        net.encoder[2].bias.uniform_(-3, 3)  # non-trivial symbols
    net.eval().set_support_(*net.prior.tables())
    x = torch.randn(4, *size)
    device, server = DevicePart(net).eval(), ServerPart(net).eval()
    with torch.no_grad():
        codes = device(x)
    for name, part, example in (("device", device, x), ("server", server, codes)):
        save_part(part, part_info(name, info, cfg, shapes), tmp_path / name, parent, example)  # checks equality
    if info.source != "module":  # by name, as every command loads it
        again, _ = load_model(str(tmp_path / "server"), trust_code=True)
        with torch.no_grad():
            assert torch.equal(again(codes), server(codes))


def test_halves_of_a_pruned_parent_reload(tmp_path):
    """The parent's recorded architecture is narrower than its constructor's: the halves still reload exactly."""
    from slimkit.models import load_model, save_model_dir

    spec = tiny_model_file(tmp_path)
    model, info = load_model(spec)
    model[0], model[1] = nn.Conv2d(3, 20, 3, padding=1, bias=False), nn.BatchNorm2d(20)  # "pruned" 32 -> 20
    model[3] = nn.Conv2d(20, 64, 3, padding=1, stride=2, bias=False)
    save_model_dir(model, info, tmp_path / "pruned")
    pruned, pruned_info = load_model(str(tmp_path / "pruned"), trust_code=True)
    _halves_reload(pruned, pruned_info, tmp_path / "halves", "2", (3, 16, 16))


def test_halves_of_an_in_memory_parent_reload(tmp_path):
    from slimkit.models import ModelInfo

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 4)).eval()
    _halves_reload(model, ModelInfo("module", "Sequential", input_size=(1, 8, 8)), tmp_path, "1", (1, 8, 8))


def test_cli_split_bad_layer(tmp_path, monkeypatch, capsys):
    spec = tiny_model_file(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "deploy", "split", spec, "--at", "nope", "--out", tmp_path / "bad")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--at nope" in err and "possible:" in err
    assert not (tmp_path / "bad").exists()


def test_compare_needs_equal_accuracy():
    from slimkit.deploy.edge.split_measure import compare

    codecs = [{"codec": "WEBP q0", "bytes_mean": 100.0, "top1": 79.0}, {"codec": "PNG", "bytes_mean": 500.0, "top1": 85.0},
              {"codec": "naive split", "bytes_mean": 10.0, "top1": 90.0}]
    c = compare({"bytes_mean": 40.0, "top1": 78.8}, codecs)
    assert (c["best_input_codec"], c["bytes_ratio"], c["aim_met"]) == ("WEBP q0", 2.5, True)
    c = compare({"bytes_mean": 40.0, "top1": 75.0}, codecs)  # 2.5x fewer bytes, but 4 points worse
    assert (c["best_input_codec"], c["accuracy_gap_points"], c["aim_met"]) == ("WEBP q0", 4.0, False)
    c = compare({"bytes_mean": 400.0, "top1": 88.0}, codecs)  # more accurate than every input codec
    assert (c["best_input_codec"], c["codec_matches_accuracy"], c["aim_met"]) == ("PNG", False, False)
