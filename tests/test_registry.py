"""The one plug-in registry (slimkit.utils.registry) and every plug-in kind that uses it."""

import sys

import pytest

from slimkit.errors import BadInputError, DataError
from slimkit.utils.registry import Registry


def test_lookup_scheme_closest_matches_and_metadata():
    reg = Registry("widget")

    @reg.register("bn_scale", needs_data=False)
    def bn_scale():
        return 1

    reg.add("Fashion-MNIST", 2, needs_data=True)
    assert reg.get("BN-Scale") is bn_scale and reg["fashion_mnist"] == 2
    assert reg.canonical("FASHION_mnist") == "Fashion-MNIST" and reg.meta("fashion-mnist") == {"needs_data": True}
    assert reg.names() == ["Fashion-MNIST", "bn_scale"] and "bn-scale" in reg and "nope" not in reg
    with pytest.raises(BadInputError) as exc:
        reg.get("bn_scal")
    message = str(exc.value)
    assert message == ("unknown widget 'bn_scal'; choose from Fashion-MNIST, bn_scale (did you mean 'bn_scale'?)")
    assert "\n" not in message
    assert reg.pop("BN_SCALE") is bn_scale and reg.names() == ["Fashion-MNIST"]


def test_builtins_load_lazily(monkeypatch, tmp_path):
    (tmp_path / "lazy_widgets_for_test.py").write_text(
        "from tests_registry_target import REG\nREG.add('late', 42)\n")
    (tmp_path / "tests_registry_target.py").write_text(
        "from slimkit.utils.registry import Registry\nREG = Registry('widget', modules={'late': 'lazy_widgets_for_test'})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from tests_registry_target import REG

    assert REG.names() == ["late"] and "lazy_widgets_for_test" not in sys.modules
    assert REG.get("LATE") == 42 and "lazy_widgets_for_test" in sys.modules


def test_every_plugin_kind_uses_the_registry():
    from slimkit.compress.distill.base import DISTILLERS
    from slimkit.compress.prune.criteria import CRITERIA
    from slimkit.compress.quantize.registry import QUANTIZERS
    from slimkit.compress.steps import STEPS
    from slimkit.data.base import SOURCES
    from slimkit.deploy.registry import EXPORTERS

    kinds = {"criterion": CRITERIA, "quantizer": QUANTIZERS, "export format": EXPORTERS,
             "distillation method": DISTILLERS, "compress step": STEPS, "data source": SOURCES}
    for kind, registry in kinds.items():
        assert isinstance(registry, Registry) and registry.kind == kind
    assert {"l1", "l2", "taylor", "lrp"} <= set(CRITERIA.names())
    assert {"train", "prune", "finetune", "quantize", "export"} <= set(STEPS.names())
    assert QUANTIZERS.names() == ["codebook", "ptq", "qat"]
    with pytest.raises(DataError, match="did you mean 'digits'"):
        SOURCES.get("digit")
    with pytest.raises(BadInputError, match="did you mean 'feature'"):
        DISTILLERS.get("features")
