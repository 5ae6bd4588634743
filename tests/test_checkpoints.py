"""Checkpoint files: round trips, refusals with clear errors, ordering of a series, weight loading."""

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.architectures import MLP
from pipeline.checkpoints import (
    METADATA_KEY,
    CheckpointError,
    checkpoint_name,
    checkpoint_step,
    discover_checkpoints,
    glob_hint,
    load_checkpoint,
    load_weights,
    name_checkpoints,
    save_checkpoint,
    sha256_file,
    training_order,
)


def _state_dict():
    generator = torch.Generator().manual_seed(0)
    return {
        "layer.weight": torch.randn(4, 3, generator=generator),
        "layer.bias": torch.randn(4, generator=generator).half(),
        "counter": torch.tensor([3, 1, 4], dtype=torch.int64),
    }


def _assert_same(loaded, expected):
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)


def _touch(path):
    Path(path).write_text("code ran")


class _Sneaky:
    """Pickles to a call of ``_touch``: loading it with code execution would create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _touch, (str(self.marker),)


def test_safetensors_round_trip_keeps_tensors_and_metadata(tmp_path):
    state = _state_dict()
    metadata = {"step": 120, "epoch": 2.5, "params": {"hidden": [32, 16], "activation": "tanh"}, "note": None}
    path = tmp_path / "ckpt" / "step-000120.safetensors"
    save_checkpoint(path, state, metadata)
    loaded, meta = load_checkpoint(path)
    _assert_same(loaded, state)
    assert meta == metadata
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as the user's other files are


def test_safetensors_plain_header_keys_are_the_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    header = {"step": "10", "epoch": "2", "accuracy": "0.91", "done": "true", "note": "null", "x": "NaN", "tag": "a"}
    save_file(_state_dict(), str(path), metadata=header)
    loaded, meta = load_checkpoint(path)
    _assert_same(loaded, _state_dict())
    assert meta == {"step": 10, "epoch": 2, "accuracy": 0.91, "done": True, "note": "null", "x": "NaN", "tag": "a"}
    assert checkpoint_step(meta) == 10
    save_file(_state_dict(), str(path))
    assert load_checkpoint(path)[1] == {}


def test_safetensors_pipeline_header_hides_plain_keys(tmp_path):
    path = tmp_path / "both.safetensors"
    save_file(_state_dict(), str(path), metadata={METADATA_KEY: '{"step": 3}', "step": "10"})
    assert load_checkpoint(path)[1] == {"step": 3}


def test_save_overwrites_and_failed_save_leaves_nothing(tmp_path):
    path = tmp_path / "a.safetensors"
    save_checkpoint(path, _state_dict(), {"step": 1})
    save_checkpoint(path, {"w": torch.zeros(2)}, {"step": 2})
    loaded, meta = load_checkpoint(path)
    assert list(loaded) == ["w"] and meta == {"step": 2}
    with pytest.raises(ValueError, match="not JSON-serializable"):
        save_checkpoint(tmp_path / "b.safetensors", _state_dict(), {"bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_torch_bare_state_dict_round_trip(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(_state_dict(), path)
    loaded, meta = load_checkpoint(path)
    _assert_same(loaded, _state_dict())
    assert meta == {}


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_torch_wrapped_state_dict_keeps_plain_keys_as_metadata(tmp_path, key):
    path = tmp_path / "epoch=3.ckpt"
    optimizer_state = {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]}
    torch.save({key: _state_dict(), "step": 300, "epoch": 3, "tag": "run-a", "optimizer": optimizer_state}, path)
    loaded, meta = load_checkpoint(path)
    _assert_same(loaded, _state_dict())
    assert meta == {"step": 300, "epoch": 3, "tag": "run-a"}


def test_lightning_checkpoint_loads_with_its_global_step(tmp_path):
    """The layout PyTorch Lightning saves: the module's attribute prefixes every key, the step is global_step."""
    source = MLP(hidden=(8, 4))
    path = tmp_path / "epoch=3-step=300.ckpt"
    torch.save({"epoch": 3, "global_step": 300, "pytorch-lightning_version": "2.4.0",
                "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
                "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]}],
                "hyper_parameters": {"hidden": [8, 4], "lr": 0.1}}, path)
    state, meta = load_checkpoint(path)
    assert checkpoint_step(meta) == 300
    target = MLP(hidden=(8, 4))
    load_weights(target, state, path)
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor)


@pytest.mark.parametrize("value, name", [(argparse.Namespace(lr=0.1), "argparse.Namespace"),
                                         (np.float64(0.9), "numpy")])
def test_metadata_object_is_named_with_the_fix(tmp_path, value, name):
    path = tmp_path / "run.pt"
    torch.save({"state_dict": _state_dict(), "step": 100, "extra": value}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert f"checkpoint {path} holds a {name}" in message and "\n" not in message
    assert "plain values in it (numbers, strings, lists, dicts; numpy numbers converted with float() or int())" \
        in message


def test_pickled_object_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "unsafe.pt"
    torch.save({"weights": torch.ones(2), "extra": _Sneaky(marker)}, path)
    with pytest.raises(CheckpointError, match="that would need code execution to load") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "safetensors" in str(info.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the same file does run code when loaded unsafely
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.98])
def test_truncated_or_empty_file_is_reported(tmp_path, suffix, keep):
    path = tmp_path / f"step-000010{suffix}"
    if suffix == ".pt":
        torch.save({"w": torch.ones(64, 64)}, path)
    else:
        save_checkpoint(path, {"w": torch.ones(64, 64)}, {"step": 10})
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupt; re-save or delete it"):
        load_checkpoint(path)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.safetensors")
    other = tmp_path / "weights.h5"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown extension '.h5'"):
        load_checkpoint(other)


def test_sha256_file_streams_to_the_hashlib_digest(tmp_path):
    path = tmp_path / "blob.bin"
    content = bytes(range(256)) * 1000
    path.write_bytes(content)
    assert sha256_file(path, chunk_size=4096) == hashlib.sha256(content).hexdigest()


def test_discover_orders_by_last_integer_without_recursion(tmp_path):
    for name in ["step-10.pt", "step-2.pt", "step-1.pt", "final.pt", "notes.txt", "run3-step-7.pt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "step-5.pt").write_bytes(b"")
    found = discover_checkpoints(tmp_path, "*.pt")
    assert [p.name for p in found] == ["step-1.pt", "step-2.pt", "run3-step-7.pt", "step-10.pt", "final.pt"]
    assert [p.relative_to(tmp_path).as_posix() for p in discover_checkpoints(tmp_path, "*/*.pt")] == ["sub/step-5.pt"]
    with pytest.raises(CheckpointError, match="does not exist"):
        discover_checkpoints(tmp_path / "missing", "*.pt")


def test_checkpoint_name_is_a_safe_path_component():
    assert checkpoint_name("runs/step-000100.safetensors") == "step-000100"
    assert checkpoint_name("out/epoch=3 (best).ckpt") == "epoch_3__best_"
    assert checkpoint_name("model.v1.2.pt") == "model.v1.2"
    assert checkpoint_name("runs/epoch-3/model.pt", "runs") == "epoch-3_model"
    assert checkpoint_name("$(touch x).pt") == "__touch_x_"


def test_checkpoints_in_subfolders_keep_their_folder_in_name_and_order(tmp_path):
    for epoch in (10, 2, 1):
        (tmp_path / f"epoch-{epoch}").mkdir()
        (tmp_path / f"epoch-{epoch}" / "model.pt").write_bytes(b"")
    found = discover_checkpoints(tmp_path, "*/model.pt")
    names = name_checkpoints(tmp_path, found)
    assert list(names) == ["epoch-1_model", "epoch-2_model", "epoch-10_model"]
    assert names["epoch-10_model"] == tmp_path / "epoch-10" / "model.pt"


def test_two_files_with_one_name_are_refused(tmp_path):
    for name in ("a b.pt", "a_b.pt"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match="would both be named 'a_b'; rename one"):
        name_checkpoints(tmp_path, discover_checkpoints(tmp_path, "*.pt"))


def test_random_bytes_are_corrupt_not_pickled_code(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("text", ["hello, not a checkpoint", "see notes.md", "epoch 3 done"])
def test_a_text_file_named_like_a_checkpoint_is_corrupt(tmp_path, text):
    path = tmp_path / "epoch-2.pt"
    path.write_text(text + "\n")
    with pytest.raises(CheckpointError, match=f"^checkpoint {path} is truncated or corrupt; re-save or delete it$"):
        load_checkpoint(path)


def test_metadata_header_that_is_not_an_object(tmp_path):
    path = tmp_path / "step-1.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={METADATA_KEY: "[1, 2]"})
    with pytest.raises(CheckpointError, match="not a JSON object"):
        load_checkpoint(path)


def test_load_weights_loads_matching_weights():
    source = MLP(hidden=(8, 4))
    target = MLP(hidden=(8, 4))
    load_weights(target, source.state_dict(), "a.pt")
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor)


def test_load_weights_names_shape_mismatch_in_one_line():
    with pytest.raises(CheckpointError) as info:
        load_weights(MLP(hidden=(8, 4)), MLP(hidden=(6, 4)).state_dict(), "runs/step-5.safetensors")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("checkpoint runs/step-5.safetensors does not fit MLP: ")
    assert "shape mismatch for hidden.0.linear.weight (checkpoint (6, 64) vs model (8, 64))" in message
    assert message.endswith("check the architecture params in the config")


def test_load_weights_names_missing_and_unexpected_keys():
    with pytest.raises(CheckpointError) as info:
        load_weights(MLP(hidden=(8, 4)), MLP(hidden=(8,)).state_dict(), "x.pt")
    message = str(info.value)
    assert "\n" not in message
    assert "missing keys [hidden.1.linear.weight, hidden.1.linear.bias]" in message
    assert "shape mismatch for readout.weight (checkpoint (10, 8) vs model (10, 4))" in message
    assert message.endswith("check the architecture params in the config")


def test_load_weights_with_other_key_names_says_so():
    renamed = {k.replace("linear", "dense"): v for k, v in MLP(hidden=(8, 4)).state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_weights(MLP(hidden=(8, 4)), renamed, "y.pt")
    message = str(info.value)
    assert "missing keys [hidden.0.linear.weight, hidden.0.linear.bias, hidden.1.linear.weight, " in message
    assert "unexpected keys [hidden.0.dense.weight, hidden.0.dense.bias, " in message
    assert message.endswith("its key names differ from the model's; check that the architecture is the class "
                            "that saved it")


class _Wrapper(torch.nn.Module):
    """A model whose own keys all start with ``module.``."""

    def __init__(self):
        super().__init__()
        self.module = MLP(hidden=(8, 4))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.", "model.", "module.net."])
def test_load_weights_removes_the_prefix_of_wrapped_models(prefix, caplog):
    source = MLP(hidden=(8, 4))
    target = MLP(hidden=(8, 4))
    with caplog.at_level("INFO", logger="pipeline.checkpoints"):
        load_weights(target, {prefix + k: v for k, v in source.state_dict().items()}, "ddp.pt")
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor)
    assert f"checkpoint ddp.pt: removed the prefix {prefix!r} of every key" in caplog.text
    wrapper = _Wrapper()
    load_weights(_Wrapper(), wrapper.state_dict(), "w.pt")  # the model's own 'module.' stays
    load_weights(_Wrapper(), {prefix + k: v for k, v in wrapper.state_dict().items()}, "w.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys \[hidden\.1\.linear\.weight, .*params in the config$"):
        load_weights(MLP(hidden=(8,)), {prefix + k: v for k, v in source.state_dict().items()}, "x.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys \[module\.foo\]"):  # kept when nothing fits better
        load_weights(MLP(hidden=(8,)), {"module.foo": torch.ones(1)}, "x.pt")


def test_metadata_is_stored_as_json_header(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, {"w": torch.ones(1)}, {"step": 3, "task": "digits"})
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()["pipeline"]) == {"step": 3, "task": "digits"}


def test_training_order_puts_checkpoints_without_a_step_last_like_discovery(tmp_path):
    for name in ("final.pt", "epoch-2.pt", "epoch-10.pt", "best.pt"):
        (tmp_path / name).touch()
    discovered = [p.stem for p in discover_checkpoints(tmp_path, "*.pt")]
    steps = {"epoch-2": 2, "epoch-10": 10, "final": -1, "best": None}
    assert sorted(steps, key=lambda name: training_order(steps[name], name)) == discovered
    assert discovered == ["epoch-2", "epoch-10", "best", "final"]


def test_glob_hint_names_the_checkpoints_a_glob_misses(tmp_path):
    assert glob_hint(tmp_path) == ""
    for name in ("epoch-1.pt", "epoch-2.pt", "last.ckpt", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.ckpt").write_bytes(b"")  # only files directly in the folder count
    (tmp_path / "sub" / "b.ckpt").write_bytes(b"")
    assert glob_hint(tmp_path) == "; it holds 2 .pt files (glob '*.pt' matches them)"
