"""Weight-only codebook compression: shared weights per layer/group, learnable centroids, exact storage round trip."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_model

from quant_helpers import digits_tensors, plain_cnn, torch_accuracy, trained, one_thread  # noqa: F401  (autouse)
from slimkit.compress.quantize.codebook import _pack, _unpack, codebook_compress, kmeans_1d, load_codebook_, save_codebook
from slimkit.compress.quantize.config import CodebookConfig
from slimkit.errors import BadInputError


def test_kmeans_1d_by_hand():
    c = kmeans_1d(torch.tensor([0.0, 0.1, 10.0, 10.1]), 2)
    torch.testing.assert_close(c, torch.tensor([0.05, 10.05]))


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_round_trip(bits):
    idx = np.random.default_rng(bits).integers(0, 2**bits, size=1001)
    packed = _pack(idx, bits)
    assert packed.nbytes == -(-1001 * bits // 8) and np.array_equal(_unpack(packed, bits, 1001), idx)


def test_codebook_compression_size_accuracy_and_round_trip(tmp_path):
    model = trained("plain")
    (x, y), _ = digits_tensors()
    cfg = CodebookConfig(bits=4, groups=2, min_params=700, epochs=1, lr=1e-3)
    result = codebook_compress(model, cfg, x, y)
    assert sorted(result.codes) == ["4", "8"]  # conv1 (144 weights) and the head (640) stay float
    for name, code in result.codes.items():
        w = result.model.get_submodule(name).weight
        assert code["centroids"].shape == (2, 16) and int(code["indices"].max()) < 16
        for g in range(2):
            assert len(torch.unique(w[code["groups"].long() == g])) <= 16
    path = save_codebook(result, tmp_path / "model.codebook.safetensors")
    save_model(model, str(tmp_path / "fp32.safetensors"))
    fp32_size, cb_size = (tmp_path / "fp32.safetensors").stat().st_size, path.stat().st_size
    assert cb_size < fp32_size / 4
    restored = load_codebook_(plain_cnn().eval(), path)
    for (k, a), b in zip(result.model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch_accuracy(model) - torch_accuracy(restored) <= 2.0


def test_learnable_centroids_move_during_finetuning():
    model = trained("plain")
    (x, y), _ = digits_tensors()
    still = codebook_compress(model, CodebookConfig(bits=2, min_params=700, epochs=0))
    tuned = codebook_compress(model, CodebookConfig(bits=2, min_params=700, epochs=1, lr=1e-3), x[:256], y[:256])
    assert not torch.equal(still.codes["8"]["centroids"], tuned.codes["8"]["centroids"])
    assert len(tuned.history) == 1


def test_bad_codebook_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BadInputError):
        load_codebook_(plain_cnn(), tmp_path / "junk.safetensors")
    save_model(nn.Linear(2, 2), str(tmp_path / "plain.safetensors"))
    with pytest.raises(BadInputError, match="not a slimkit codebook"):
        load_codebook_(nn.Linear(2, 2), tmp_path / "plain.safetensors")
