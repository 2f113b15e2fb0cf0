"""One verb per technique, from the package: prune_, distill, quantize, compress; the library never imports the CLI."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import slimkit
from slimkit.data import load_data

SRC = Path(slimkit.__file__).parent


def tiny(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", (3, 16, 16), train_samples=256, val_samples=128)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("slimkit."):
            names.add(node.value)  # importlib.import_module("slimkit....")
    return names


def test_no_library_module_imports_the_cli():
    offenders = {str(p.relative_to(SRC)): sorted(n for n in _imports(p) if n.startswith("slimkit.cli"))
                 for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] != "cli"}
    assert {k: v for k, v in offenders.items() if v} == {}
    code = ("import sys, slimkit, slimkit.compress.pipeline, slimkit.compress.prune.job, slimkit.compress.quantize.api, "
            "slimkit.compress.distill, slimkit.engine.setup; print([m for m in sys.modules if m.startswith('slimkit.cli')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_verbs_are_lazy_package_names():
    code = ("import sys, slimkit; names = ['prune_', 'distill', 'quantize', 'compress', 'PruneConfig', 'DistillConfig', "
            "'PTQConfig', 'QATConfig', 'CodebookConfig']; assert set(names) <= set(dir(slimkit)); "
            "print([m for m in ('torch', 'onnxruntime') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    from slimkit.compress.distill.api import distill
    from slimkit.compress.prune.api import prune_
    from slimkit.compress.quantize.api import quantize

    assert slimkit.prune_ is prune_ and slimkit.distill is distill and slimkit.quantize is quantize
    assert callable(slimkit.compress)  # the package itself calls the compress verb once a submodule is loaded


def test_prune_verb_takes_the_input_size_from_the_data_and_trains(digits):
    model = tiny()
    result = slimkit.prune_(model, slimkit.PruneConfig(target="macs=0.5", round_to=1, epochs=0.5, kd=True),
                            data=digits)
    assert abs(result.achieved - 0.5) <= 0.05 and result.after["macs"] < result.before["macs"]
    assert result.training["steps"] == 2 and result.training["kd"] and 0 <= result.training["accuracy"] <= 1
    with pytest.raises(slimkit.SlimkitError, match="needs example_inputs"):
        slimkit.prune_(tiny(), slimkit.PruneConfig(target="macs=0.5"))


def test_distill_verb_trains_the_student_from_frozen_teachers(digits):
    teacher, student = tiny(), tiny()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = slimkit.distill(student, [teacher], slimkit.DistillConfig(temperature=2.0, alpha=0.7), data=digits,
                             train=slimkit.TrainConfig(epochs=1, batch_size=64), progress=False)
    assert result.metrics["distillation"]["temperature"] == 2.0 and result.history[0]["train_kd"] > 0
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher never moves
    peer = slimkit.distill(tiny(), None, slimkit.DistillConfig(method="dml"), data=digits,
                           train=slimkit.TrainConfig(epochs=1, batch_size=64), progress=False)
    assert peer.history[0]["train_peer"] > 0
    with pytest.raises(slimkit.SlimkitError, match="needs at least one teacher"):
        slimkit.distill(tiny(), [], slimkit.DistillConfig(), data=digits)


def test_quantize_verb_covers_ptq_qat_and_codebook(digits, tmp_path):
    model = tiny().eval()
    ptq = slimkit.quantize(model, slimkit.PTQConfig(speed_guard=False, max_drop=None, calib_samples=64), data=digits,
                           out_dir=tmp_path / "ptq")
    assert ptq.kind == "ptq" and ptq.onnx_path.is_file() and ptq.report["accuracy"]["val_samples"] == 128
    qat = slimkit.quantize(model, slimkit.QATConfig(epochs=1, distill_alpha=0.5), data=digits, out_dir=tmp_path / "qat")
    assert qat.onnx_path.is_file() and qat.report["export"]["check"]["passed"] and len(qat.report["history"]) == 1
    assert json.loads((tmp_path / "qat" / "report.json").read_text())["kind"] == "qat"
    cb = slimkit.quantize(model, slimkit.CodebookConfig(bits=2, min_params=200), data=digits, out_dir=tmp_path / "cb")
    sizes = cb.report["size_bytes"]
    assert cb.files["codebook"].is_file() and sizes["codebook"] < sizes["fp32_safetensors"] / 3
    assert all(len(torch.unique(cb.model.get_submodule(n).weight)) <= 4 for n in cb.report["layers"])
    assert not any(isinstance(m, type(qat.model[0])) for m in model.modules())  # the given model is unchanged


def test_compress_takes_an_in_memory_model_and_resumes_it(tmp_path):
    from slimkit.compress.recipe import Recipe

    recipe = Recipe(name="prune-only", steps=[{"type": "prune", "params": {"criterion": "l1", "round_to": 1}},
                                              {"type": "export"}])
    model = tiny()
    kw = dict(out_dir=tmp_path / "run", data="digits", input_size=(3, 16, 16), train_samples=128, val_samples=64)
    report = slimkit.compress(model, recipe, "macs=0.6", **kw)
    assert report["budget_met"] and report["model"] == "Sequential"
    assert report["final"]["macs"] <= 0.6 * report["baseline"]["macs"]
    again = slimkit.compress(tiny(), recipe, "macs=0.6", resume=True, **kw)  # steps reload on the module's architecture
    assert again["final"]["macs"] == report["final"]["macs"]


def test_recipe_step_types_come_from_the_step_registry():
    from slimkit.compress.recipe import STEPS, Recipe, register_step

    with pytest.raises(Exception, match="unknown compress step 'prunee'.*did you mean 'prune'"):
        Recipe(name="typo", steps=[{"type": "prunee"}])
    register_step("noop_for_test")(lambda ctx, model, params, work: None)
    try:
        assert Recipe(name="custom", steps=[{"type": "noop-for-test"}]).steps[0].type == "noop_for_test"
    finally:
        STEPS.pop("noop_for_test")
