"""Safe loading: torch files are read with weights_only=True; code-carrying pickles are refused unexecuted."""

import os
import pickle

import pytest
import torch

from slimkit.engine import load_state_file
from slimkit.engine.checkpoint import load_checkpoint
from slimkit.errors import BadInputError, SlimkitError, UnsafeFileError


class Evil:
    """Unpickling this calls os.system: the payload touches a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 2", "pickle protocol 4"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "weights.pt"
    payload = {"weight": torch.zeros(2), "extra": Evil(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps({"weight": [0.0, 0.0], "extra": Evil(marker)}, protocol=int(writer[-1])))
    # Protocol 4 framing is rejected by the safe unpickler before it reaches the payload's global.
    expected, pattern = (SlimkitError, "rejects it") if writer.endswith("4") else (UnsafeFileError, "posix.system")
    with pytest.raises(expected, match=pattern) as info:
        load_state_file(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    pickle.loads(pickle.dumps(Evil(marker)))  # the payload is real: a plain unpickle does run it
    assert marker.exists()


def test_plain_state_dicts_load_from_torch_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    state = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2])}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pth")
    save_file(state, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        loaded = load_state_file(tmp_path / name)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        load_state_file(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00not a torch file")
    with pytest.raises(BadInputError, match="cannot read weights"):
        load_state_file(tmp_path / "junk.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(BadInputError, match="state dict of tensors"):
        load_state_file(tmp_path / "list.pt")
    # A pickle dressed up as a checkpoint is not parsed as one, let alone unpickled.
    marker = tmp_path / "pwned"
    (tmp_path / "checkpoint.safetensors").write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(BadInputError, match="corrupt or not a slimkit checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert not marker.exists()
