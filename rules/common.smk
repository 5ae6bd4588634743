# Config validation, checkpoint discovery and target lists shared by every rule.

import json
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from pipeline import jobs, layout
from pipeline.checkpoints import checkpoint_name, discover_checkpoints
from pipeline.config import SCHEMA_PATH, ConfigError, model_runs, validate_config

min_version("8.20")

try:
    config.update(validate_config(config))  # one-line messages naming the key
except ConfigError as err:
    raise WorkflowError(str(err)) from None
validate(config, str(SCHEMA_PATH))  # the schema itself, with defaults filled in

OUT = config["output_dir"]
REPORT_DIR = config["report_dir"]
GPU = 1 if config["device"] == "gpu" else 0
PIPELINE = f"{shlex.quote(sys.executable)} -m pipeline"  # the interpreter running this workflow


wildcard_constraints:
    model=layout.NAME_PATTERN,
    run=layout.RUN_PATTERN,
    checkpoint=layout.CHECKPOINT_PATTERN,
    stimuli=layout.NAME_PATTERN,


def model_checkpoints(model, run):
    """Checkpoint name -> file of one run; re-read on every invocation so new files become targets."""
    entry = config["models"][model]
    if entry["source"] == "huggingface":
        return {layout.PRETRAINED: None}
    if entry["source"] == "train":
        folder = checkpoints.train.get(model=model, run=run).output[0]
        files = discover_checkpoints(folder, "*.safetensors")
    else:
        files = discover_checkpoints(entry["folder"], entry["glob"])
        if not files:
            raise WorkflowError(
                f"model {model!r}: no file in {entry['folder']} matches {entry['glob']!r}; "
                "fix 'glob' or add checkpoints to the folder"
            )
    return {checkpoint_name(f): str(f) for f in files}


def stats_results(model, run, stimuli):
    return [
        str(layout.analysis_result(OUT, "stats", model, run, ckpt, stimuli))
        for ckpt in model_checkpoints(model, run)
    ]


def trained_folders(wildcards):
    """Checkpoint folders of a trained model's runs, named up front so that all runs train in parallel."""
    entry = config["models"][wildcards.model]
    if entry["source"] != "train":
        return []
    return [str(layout.checkpoint_folder(OUT, wildcards.model, run)) for run in model_runs(entry)]


def model_results(wildcards):
    """Everything one model's report reads: per-checkpoint results and across-checkpoint summaries."""
    entry = config["models"][wildcards.model]
    files = []
    for run in model_runs(entry):
        for stimuli in entry["stimuli"]:
            files += stats_results(wildcards.model, run, stimuli)
            files.append(str(layout.across_checkpoints(OUT, "stats", wildcards.model, run, stimuli)))
    return files


def spec_arg(spec):
    """A spec as one shell-quoted JSON argument."""
    return json.dumps(spec, sort_keys=True)
