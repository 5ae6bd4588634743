"""Experiment configuration: schema validation with defaults, clear errors, and derived names.

The schema lives in ``pipeline/schemas/config.schema.yaml``; the workflow validates with it in
``rules/common.smk`` and the command line validates with it here, so both reject the same
mistakes with the same one-line messages. jsonschema and yaml load only when a config is
validated: every job imports this module for its small helpers.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    import jsonschema

SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.yaml"
RESERVED_MODEL_NAMES = ("comparisons", "index")  # report pages and folders that are not models
# Built-in training tasks: the architecture each trains, and the keyword arguments of its training
# function in pipeline.train (required, optional); a test keeps these in step with the functions.
TASK_ARCHITECTURE = {"digits": "mlp", "flipflop": "recurrent"}
TRAINING_KEYS = {
    "digits": ({"epochs", "checkpoint_epochs"}, {"lr", "batch_size", "test_fraction", "split_seed"}),
    "flipflop": ({"steps", "checkpoint_steps"}, {"lr", "batch_size", "n_steps", "n_bits"}),
}


def load_schema() -> dict:
    import yaml

    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _validator_filling_defaults():
    """A Draft 2020-12 validator that writes each property's default into the instance."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": properties_with_defaults})


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "the top level"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"unknown key {', '.join(repr(k) for k in extra)} in {where}{hint}"
    if error.validator == "required":
        return f"{where} is missing a required key: {error.message.split(' is a required')[0]}"
    return f"{where}: {error.message}"


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``config`` with defaults filled in, or raise ConfigError (one line)."""
    config = copy.deepcopy(config)
    validator = _validator_filling_defaults()(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        # among the deepest errors, an unknown key explains a typo better than the required key it hides
        deepest = max(errors, key=lambda e: (len(e.absolute_path), e.validator == "additionalProperties"))
        raise ConfigError(f"config error: {_describe(deepest)}")
    _expand_home(config)
    _check_references(config)
    _check_analyses(config)
    return config


def _check_analyses(config: dict) -> None:
    tca = config["analyses"]["tca"]
    if tca["holdout"] == 0 and tca["replicates"] < 2 and tca["max_rank"] > 1:
        raise ConfigError("config error: analyses.tca.holdout 0 chooses the rank by replicate stability, which needs "
                          "replicates >= 2; raise analyses.tca.replicates or set holdout > 0")


def _expand_home(config: dict) -> None:
    """A leading ``~`` in a path of the config stands for the user's home folder, as in a shell."""
    for key in ("output_dir", "report_dir"):
        config[key] = _expanded(config[key])
    for entry in config["stimuli"].values():
        if "path" in entry:
            entry["path"] = _expanded(entry["path"])
    for model in config["models"].values():
        for key in ("folder", "path"):  # a checkpoint folder; a Hugging Face folder (or package name)
            if key in model:
                model[key] = _expanded(model[key])


def _expanded(path: str) -> str:
    if not path.startswith("~"):
        return path
    try:
        return str(Path(path).expanduser())
    except RuntimeError:  # ~name of a user this machine does not know
        raise ConfigError(f"config error: path {path!r} names an unknown user's home folder; "
                          "write the full path") from None


def _check_references(config: dict) -> None:
    for name, model in config["models"].items():
        if name in RESERVED_MODEL_NAMES:
            raise ConfigError(f"config error: model name {name!r} is reserved for a report page; rename it")
        for stim in model["stimuli"]:
            if stim not in config["stimuli"]:
                raise ConfigError(
                    f"config error: models.{name}.stimuli names {stim!r}, which is not a stimulus set; "
                    f"defined sets: {', '.join(sorted(config['stimuli']))}"
                )
            _check_pairing(name, model, stim, config["stimuli"][stim]["kind"])
        if model["source"] == "train":
            _check_training(name, model)
        if model["source"] == "checkpoints" and not Path(model["folder"]).is_dir():
            raise ConfigError(
                f"config error: models.{name}.folder {model['folder']!r} is not a folder; "
                "point it at the folder your training run writes checkpoints into"
            )
        if model["source"] == "huggingface":
            hf_model_folder(name, model["path"])


def hf_model_folder(name: str, path: str) -> Path:
    """The local folder of Hugging Face model ``name``: ``path`` itself, or the ``model`` folder that the installed
    package named ``path`` ships."""
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        folder = candidate
    else:
        module = path.replace("-", "_")
        spec = importlib.util.find_spec(module) if module.isidentifier() else None
        if spec is None or spec.origin is None:
            raise ConfigError(f"config error: models.{name}.path {path!r} is neither a local model folder nor an "
                              "installed package that ships one; models are loaded offline, so download the model to "
                              "a folder first")
        folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise ConfigError(f"config error: models.{name}.path: {folder} has no config.json; point it at a saved "
                          "Hugging Face model")
    return folder


def _check_pairing(name: str, model: dict, stim: str, kind: str) -> None:
    """A model records only stimulus sets it can read: a Hugging Face model sentences (through its tokenizer), a
    checkpoint series numeric sets, a model the workflow trains the sets of its task."""
    reads = {"huggingface": ({"sentences"}, "a Hugging Face model reads sentence sets (through its tokenizer)"),
             "checkpoints": ({"digits", "flipflop", "arrays"}, "a checkpoint series reads numeric sets (digits, "
                                                               "flipflop, arrays)")}
    if model["source"] == "train":
        reads["train"] = ({model["task"]}, f"a model trained on the {model['task']} task reads {model['task']} sets")
    kinds, rule = reads[model["source"]]
    if kind not in kinds:
        raise ConfigError(f"config error: models.{name}.stimuli names {stim!r}, a set of kind {kind}, but {rule}")


def _check_training(name: str, model: dict) -> None:
    """A trained model's architecture matches its task, and its training keys are the task's."""
    task = model["task"]
    if model["architecture"] != TASK_ARCHITECTURE[task]:
        raise ConfigError(f"config error: models.{name} trains the {task} task, which trains a "
                          f"{TASK_ARCHITECTURE[task]!r} network; set architecture: {TASK_ARCHITECTURE[task]}")
    required, optional = TRAINING_KEYS[task]
    given = set(model["training"])
    unknown, missing = sorted(given - required - optional), sorted(required - given)
    if unknown:
        raise ConfigError(f"config error: models.{name}.training has unknown key(s) {', '.join(map(repr, unknown))} "
                          f"for the {task} task; allowed keys: {', '.join(sorted(required | optional))}")
    if missing:
        raise ConfigError(f"config error: models.{name}.training lacks {', '.join(missing)}, which the {task} task "
                          "needs")


def model_runs(model: dict) -> list[str]:
    """Names of the checkpoint series of one model entry (one per variant and seed when trained)."""
    if model["source"] == "train":
        return [f"{variant}-seed{seed}" for variant in model["variants"] for seed in model["seeds"]]
    return ["main"]


def run_settings(model: dict, run: str) -> tuple[dict, int]:
    """Architecture params and seed of a trained model's run (``variant-seedN``)."""
    variant, _, seed = run.rpartition("-seed")
    if variant not in model["variants"]:
        raise ConfigError(f"config error: run {run!r} names no variant; variants: {', '.join(model['variants'])}")
    return {**model.get("params", {}), **model["variants"][variant]}, int(seed)


def config_hash(obj: Any) -> str:
    """Stable sha256 of a JSON-serialisable value (key order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
