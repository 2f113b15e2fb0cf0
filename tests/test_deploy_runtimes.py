"""Deploy runtimes: every artifact checked in its own runtime (ONNX Runtime, OpenVINO, LiteRT, ExecuTorch).

`make test` installs .[deploy] (OpenVINO, ExecuTorch, the LiteRT interpreter); `make test-deploy` and
`make test-all` also build the LiteRT converter venv and run the slow tests: every LiteRT conversion
starts a converter process (~30-60 s), so LiteRT's tests are marked slow. A test skips only where a
runtime cannot be installed on this platform, and says which.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from quant_helpers import SIZE, digits_tensors, one_thread, trained  # noqa: F401  (autouse)
from slimkit.deploy.multi import Int8Source, export_multi, runtime_unavailable_reason
from slimkit.deploy.runtime import ParityError, check_parity, open_runner, parse_runtimes
from slimkit.errors import BadInputError

RUNTIMES = ["onnx", "openvino", "tflite", "executorch"]
FAST = ["onnx", "openvino", "executorch"]  # LiteRT's converter process makes its tests slow
MISSING = {rt: runtime_unavailable_reason(rt) for rt in RUNTIMES}


def need(*runtimes):
    missing = [MISSING[r] for r in runtimes if MISSING[r]]
    if missing:
        pytest.skip("runtime not installable here: " + "; ".join(missing))


class TinyViT(nn.Module):
    """Patch embedding, one pre-norm attention block (softmax(QK^T/sqrt(d))V, two heads) and an MLP."""

    def __init__(self, dim=16, heads=2, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head, self.heads = nn.Linear(dim, classes), heads

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # (B, 16, dim)
        b, n, d = t.shape
        q, k, v = self.qkv(self.norm1(t)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        t = t + self.proj((att @ v).transpose(1, 2).reshape(b, n, d))
        t = t + self.mlp(self.norm2(t))
        return self.head(t.mean(1))


class Cummax(nn.Module):
    """A conv followed by cummax: no runtime here lowers aten::cummax."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return torch.cummax(self.conv(x), dim=1)[0]


@pytest.fixture(scope="module")
def digits():
    (tx, _), (vx, vy) = digits_tensors()
    return tx[:64].numpy(), vx[:200].numpy(), vy[:200].numpy()


@pytest.fixture(scope="module")
def qdq(tmp_path_factory, digits):
    from slimkit.compress.quantize.calib import QuantData
    from slimkit.compress.quantize.config import PTQConfig
    from slimkit.compress.quantize.pipeline import quantize_ptq

    calib, vx, vy = digits
    out = tmp_path_factory.mktemp("q") / "quant"
    quantize_ptq(trained("plain"), SIZE, QuantData("digits", calib, vx, vy), PTQConfig(max_drop=None, speed_guard=False,
                                                                                         calib_samples=64), out)
    return out / "model.int8.onnx"


def _bundle(tmp_path_factory, digits, qdq, runtimes):
    calib, vx, vy = digits
    torch.set_num_threads(1)
    model = trained("plain")
    out = tmp_path_factory.mktemp("bundle") / "deploy"
    data = export_multi(model, SIZE, out, runtimes, check_x=calib[:4], repetitions=5,
                        int8=Int8Source(qdq, calib, vx, vy, origin="test"))
    return model, out, data


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory, digits, qdq):
    """The digits CNN exported to ONNX Runtime, OpenVINO and ExecuTorch, fp32 and int8, in one call."""
    need(*FAST)
    return _bundle(tmp_path_factory, digits, qdq, FAST)


@pytest.fixture(scope="module")
def tflite_bundle(tmp_path_factory, digits, qdq):
    need("tflite")
    return _bundle(tmp_path_factory, digits, qdq, ["tflite"])


def _check_bundle(out, data, runtimes):
    on_disk = json.loads((out / "deploy.json").read_text())
    assert on_disk["artifacts"].keys() == data["artifacts"].keys() == {f"{r}:{p}" for r in runtimes for p in ("fp32", "int8")}
    files = {"onnx": ["model.onnx", "model.int8.onnx"], "openvino": ["model.xml", "model.bin", "model.int8.xml",
             "model.int8.bin"], "tflite": ["model.tflite", "model.int8.tflite"], "executorch": ["model.pte", "model.int8.pte"]}
    assert sorted(p.name for p in out.iterdir()) == sorted(["deploy.json"] + [f for r in runtimes for f in files[r]])
    for key, entry in on_disk["artifacts"].items():
        check = entry["check"]
        assert check["passed"] and check["max_abs_diff"] <= check["tolerance"], key
        assert entry["size_bytes"] == sum((out / f).stat().st_size for f in entry["files"])
        assert entry["latency_ms"]["median"] > 0 and entry["latency_ms"]["repetitions"] >= 5
        if entry["precision"] == "fp32":
            assert check["tolerance"] == pytest.approx(1e-4 * max(1.0, check["output_scale"])) and check["output_scale"] > 1
            assert check.get("reference", "pytorch") == "pytorch" and check["inputs"] == "given"
        else:
            assert "fake-quant" in check["reference"] and check["top1_agreement"] == 1.0
            assert check["tolerance"] == pytest.approx(0.15 * max(1.0, check["output_scale"]))
            acc = entry["accuracy"]
            assert acc["images"] == 200 and acc["top1"] > 80 and abs(acc["change"]) < 5
    lat = on_disk["latency"]
    assert lat["threads"] == 1 and lat["batch"] == 1 and lat["interleaved"]
    assert set(lat["fastest"]) == {"fp32", "int8"} and lat["fastest"]["fp32"] in runtimes
    assert lat["median_ms"][lat["fastest"]["int8"] + ":int8"] == min(
        v for k, v in lat["median_ms"].items() if k.endswith(":int8"))
    return on_disk


def test_cnn_fp32_and_int8_in_onnxruntime_openvino_executorch(cnn_bundle):
    model, out, data = cnn_bundle
    on_disk = _check_bundle(out, data, FAST)
    # the int8 ONNX is quantize's QDQ graph; OpenVINO's IR of it is smaller than its fp32 IR
    import onnx

    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    arts = on_disk["artifacts"]
    assert arts["openvino:int8"]["size_bytes"] < arts["openvino:fp32"]["size_bytes"]
    assert arts["executorch:int8"]["notes"]["xnnpack_delegates"] >= 1 and arts["executorch:fp32"]["notes"]["portable_ops"] == []


@pytest.mark.slow
def test_cnn_fp32_and_int8_in_litert(tflite_bundle):
    from ai_edge_litert.interpreter import Interpreter

    _, out, data = tflite_bundle
    _check_bundle(out, data, ["tflite"])
    interp = Interpreter(model_path=str(out / "model.int8.tflite"))
    assert interp.get_input_details()[0]["dtype"] == np.int8  # full integer: int8 input and output
    assert data["artifacts"]["tflite:int8"]["size_bytes"] < data["artifacts"]["tflite:fp32"]["size_bytes"] / 2.5


def _corrupt_and_check(model, out, entry, runtime, tmp_path):
    """Overwrite the head's weights inside the file with their negation: it still loads; the check refuses it."""
    from slimkit.deploy.artifact import torch_reference

    for name in entry["files"]:
        (tmp_path / name).write_bytes((out / name).read_bytes())
    x = digits_tensors()[0][0][:4].numpy()
    good = check_parity(open_runner(runtime, tmp_path / entry["file"]), torch_reference(model), x, runtime=runtime)
    head = model[-1].weight.detach().numpy().astype(np.float32)
    found = 0
    for name in entry["files"]:
        blob = bytearray((tmp_path / name).read_bytes())
        at = blob.find(head.tobytes())
        if at >= 0:
            blob[at : at + head.nbytes] = (-head).tobytes()
            (tmp_path / name).write_bytes(bytes(blob))
            found += 1
    assert found == 1, f"the head's weights were not found verbatim in the {runtime} artifact"
    with pytest.raises(ParityError, match=f"^{runtime} check failed"):
        check_parity(open_runner(runtime, tmp_path / entry["file"]), torch_reference(model), x, runtime=runtime)
    assert good.passed


@pytest.mark.parametrize("runtime", FAST)
def test_corrupted_artifact_is_caught(cnn_bundle, runtime, tmp_path):
    model, out, data = cnn_bundle
    _corrupt_and_check(model, out, data["artifacts"][f"{runtime}:fp32"], runtime, tmp_path)


@pytest.mark.slow
def test_corrupted_litert_artifact_is_caught(tflite_bundle, tmp_path):
    model, out, data = tflite_bundle
    _corrupt_and_check(model, out, data["artifacts"]["tflite:fp32"], "tflite", tmp_path)


def test_unreadable_artifact_names_runtime(tmp_path):
    need(*FAST)
    for runtime, suffix in (("openvino", ".xml"), ("executorch", ".pte"), ("onnx", ".onnx")):
        (tmp_path / f"bad{suffix}").write_bytes(b"not a model")
        with pytest.raises(BadInputError, match=f"^{runtime}: cannot load bad"):
            open_runner(runtime, tmp_path / f"bad{suffix}")


@pytest.mark.parametrize("runtime", ["onnx", "openvino", pytest.param("executorch", marks=pytest.mark.slow),
                                     pytest.param("tflite", marks=pytest.mark.slow)])
def test_attention_model_every_runtime(runtime, tmp_path):
    need(runtime)
    torch.manual_seed(0)
    model = TinyViT().eval()
    x = digits_tensors()[1][0][:4].numpy()
    data = export_multi(model, SIZE, tmp_path / "vit", [runtime], check_x=x, latency=False)
    check = data["artifacts"][f"{runtime}:fp32"]["check"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-4 * max(1.0, check["output_scale"])


@pytest.mark.parametrize("runtime", ["openvino", "executorch", pytest.param("tflite", marks=pytest.mark.slow)])
def test_unlowerable_op_names_runtime_and_op(runtime, tmp_path):
    need(runtime)
    with pytest.raises(BadInputError, match=rf"^{runtime}: cannot convert the model: unsupported op aten(::|\.)cummax"):
        export_multi(Cummax().eval(), SIZE, tmp_path / "d", [runtime], check_x=np.zeros((4, *SIZE), np.float32),
                     latency=False)
    assert not (tmp_path / "d").exists() and list(tmp_path.iterdir()) == []


def test_unknown_and_unavailable_runtimes(monkeypatch, tmp_path):
    with pytest.raises(BadInputError, match="unknown runtime 'coreml'; choose from executorch, onnx, openvino, tflite"):
        parse_runtimes("onnx,coreml")
    assert parse_runtimes("all") == RUNTIMES and parse_runtimes("OpenVINO, onnx ,openvino") == ["openvino", "onnx"]
    import slimkit.deploy.runtime as rt

    real = rt.importlib.util.find_spec
    monkeypatch.setattr(rt.importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(rt.RuntimeUnavailable, match=r"^openvino: OpenVINO Runtime is not installed .*slimkit\[openvino\]"):
        export_multi(trained("plain"), SIZE, tmp_path / "d", ["onnx", "openvino"], check_x=np.zeros((4, *SIZE)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_profile_times_deploy_runtimes_interleaved():
    need("openvino", "executorch")
    from slimkit.profile.latency import measure_latency

    x = digits_tensors()[1][0][:1]
    timings, errors = measure_latency(trained("plain"), x, threads=1, runtimes=["openvino", "executorch"],
                                      repetitions=6, warmup=1, min_time_s=0.0)
    assert errors == {} and set(timings) == {"torch", "onnxruntime", "openvino", "executorch"}
    assert len({t.repetitions for t in timings.values()}) == 1  # the same rounds for every runtime
