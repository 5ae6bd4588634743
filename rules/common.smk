# Config validation, checkpoint discovery and target lists shared by every rule.

import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from pipeline import jobs, layout
from pipeline.checkpoints import discover_checkpoints, glob_hint, name_checkpoints
from pipeline.config import SCHEMA_PATH, ConfigError, model_runs, validate_config
from pipeline.errors import CheckpointError, StimulusError
from pipeline.jobs.similarity import check_enough_stimuli
from pipeline.stimuli import load_stimuli, sequence_hint

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


def check_output_folders():
    """The output and report folders can be written (the nearest folder that exists, for one not made yet)."""
    for key in ("output_dir", "report_dir"):
        folder = Path(config[key]).absolute()
        existing = next(f for f in (folder, *folder.parents) if f.exists())
        if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
            raise WorkflowError(f"config error: {key} {config[key]} cannot be written ({existing} is read-only or not a "
                                f"writable folder); set {key} to a folder you can write")


def check_named_files():
    """The stimulus files the config names (sentences, arrays) exist and read as stimulus sets, and its
    checkpoint series are usable (one clear line each, before any job runs); config validation already
    checked the checkpoint folders."""
    for name, entry in config["stimuli"].items():
        path = entry.get("path", "builtin")
        if path != "builtin" and not Path(path).is_file():
            raise WorkflowError(f"stimulus set {name!r}: file {path} does not exist; fix its 'path'")
        if path != "builtin":
            try:  # a user's stimulus file is read now, so that its errors show before any job runs
                stimuli = load_stimuli(name, entry)
                if any(name in model["stimuli"] for model in config["models"].values()):
                    split = stimuli.coords.get("split")
                    rows, drawn_from = jobs.analysed_rows(None if split is None else split[1], len(stimuli))
                    check_enough_stimuli(config["analyses"]["similarity"], name, entry["kind"], len(rows), drawn_from)
            except StimulusError as err:
                raise WorkflowError(str(err)) from None
            hint = sequence_hint(stimuli, entry)
            if hint:
                print(f"warning: {hint}", file=sys.stderr)
    for model, entry in config["models"].items():
        if entry["source"] == "checkpoints" and model not in WAITING:
            model_checkpoints(model, None)


def waiting_models():
    """Checkpoint series whose folder holds no matching file yet (a training run that has not saved one):
    model -> why. They are left out of this run, with a warning, and join it once a checkpoint arrives."""
    waiting = {}
    for model, entry in config["models"].items():
        if entry["source"] == "checkpoints" and not discover_checkpoints(entry["folder"], entry["glob"]):
            waiting[model] = f"no file in {entry['folder']} matches {entry['glob']!r} yet{glob_hint(entry['folder'])}"
    for model, why in waiting.items():
        print(f"warning: model {model!r} is left out of this run: {why} (fix 'glob' if it should match)",
              file=sys.stderr)
    if waiting and len(waiting) == len(config["models"]):  # a warning, not an error: --unlock still works
        print("warning: no model has checkpoints to record yet, so there is nothing to do", file=sys.stderr)
    return waiting


def model_checkpoints(model, run):
    """Checkpoint name -> file of one run; re-read on every invocation so new files become targets."""
    entry = config["models"][model]
    if entry["source"] == "huggingface":
        return {layout.PRETRAINED: None}
    if entry["source"] == "train":
        folder = checkpoints.train.get(model=model, run=run).output[0]
        files = discover_checkpoints(folder, "*.safetensors")
    else:
        folder = entry["folder"]
        files = discover_checkpoints(folder, entry["glob"])  # the config check made sure the folder exists
        if not files:
            raise WorkflowError(
                f"model {model!r}: no file in {entry['folder']} matches {entry['glob']!r}; "
                "fix 'glob' or add checkpoints to the folder"
            )
    try:
        return {name: str(path) for name, path in name_checkpoints(folder, files).items()}
    except CheckpointError as err:
        raise WorkflowError(f"model {model!r}: {err}") from None


WAITING = waiting_models()
MODELS = [model for model in config["models"] if model not in WAITING]  # the models this run records
if workflow.is_main_process:  # not again in each cluster job, which would read every stimulus file anew
    check_output_folders()
    check_named_files()


def analysis_results(analysis, model, run, stimuli):
    """Result stores of one analysis for every checkpoint of a run, in training order."""
    return [
        str(layout.analysis_result(OUT, analysis, model, run, ckpt, stimuli))
        for ckpt in model_checkpoints(model, run)
    ]


def checkpoint_analyses(model, stimuli):
    """Analyses that run on each checkpoint of a model on one stimulus set."""
    analyses = ["stats", "similarity"]
    if jobs.tca_plan(config, model, stimuli) == "checkpoint":
        analyses.append("tca")
    return analyses


def across_analyses(model, stimuli):
    """Analyses that run across the checkpoints of each run of a model on one stimulus set."""
    analyses = ["stats", "similarity"]
    if jobs.tca_plan(config, model, stimuli) == "across":
        analyses.append("tca-across")
    if jobs.connectome_enabled(config, model):
        analyses.append("connectome")
    return analyses


# across-checkpoint analyses that write a result store beside their summary
ACROSS_STORES = ("tca-across", "connectome")


def run_across_results(model, run, stimuli):
    """Across-checkpoint summaries of one run: what its run report draws."""
    return [str(layout.across_checkpoints(OUT, analysis, model, run, stimuli))
            for analysis in across_analyses(model, stimuli)]


def final_similarity_results(stimuli):
    """Similarity results of the final checkpoint of every (model, run) recorded on one stimulus set."""
    files = []
    for model in MODELS:
        entry = config["models"][model]
        if stimuli in entry["stimuli"]:
            for run in model_runs(entry):
                final = list(model_checkpoints(model, run))[-1]
                files.append(str(layout.analysis_result(OUT, "similarity", model, run, final, stimuli)))
    return files


def comparison_results():
    """Model comparisons of every stimulus set that some model records."""
    recorded = dict.fromkeys(s for model in MODELS for s in config["models"][model]["stimuli"])
    return [str(layout.comparison_result(OUT, "similarity", stimuli)) for stimuli in recorded]


def run_stores(model, run, stimuli):
    """Activation stores of every checkpoint of a run, in training order."""
    return [str(layout.activation_store(OUT, model, run, ckpt, stimuli)) for ckpt in model_checkpoints(model, run)]


for _analysis in ("tca", "connectome"):
    for _name in config["analyses"][_analysis].get("models") or []:
        if _name not in config["models"]:
            raise WorkflowError(
                f"config error: analyses.{_analysis}.models names {_name!r}, which is not a model; "
                f"defined models: {', '.join(sorted(config['models']))}"
            )


def trained_folders(model):
    """Checkpoint folders of a trained model's runs, named up front so that all runs train in parallel."""
    entry = config["models"][model]
    if entry["source"] != "train":
        return []
    return [str(layout.checkpoint_folder(OUT, model, run)) for run in model_runs(entry)]


def trained_run_folders():
    """Checkpoint folders of every trained run; ``all`` names them so that a run added to the config
    (a new seed or variant) is trained even though nothing downstream exists yet to ask for it."""
    return [folder for model in config["models"] for folder in trained_folders(model)]


def model_results(model):
    """Everything one model's page reads: per-checkpoint results and each run's report (its across-checkpoint
    view; a Hugging Face model has one checkpoint, so none)."""
    entry = config["models"][model]
    files = []
    for run in model_runs(entry):
        for stimuli in entry["stimuli"]:
            for analysis in checkpoint_analyses(model, stimuli):
                files += analysis_results(analysis, model, run, stimuli)
            if entry["source"] != "huggingface":
                files.append(str(layout.run_report(OUT, model, run, stimuli)))
    return files


def checkpoint_results(wildcards):
    """Result stores of one (model, run, checkpoint, stimulus set): what its report page shows."""
    model, run, checkpoint, stimuli = wildcards.model, wildcards.run, wildcards.checkpoint, wildcards.stimuli
    return [
        str(layout.analysis_result(OUT, analysis, model, run, checkpoint, stimuli))
        for analysis in checkpoint_analyses(model, stimuli)
    ]


def checkpoint_pages(model):
    """Every checkpoint page of one model."""
    entry = config["models"][model]
    folder = layout.model_page(REPORT_DIR, model).parent
    return [
        str(layout.checkpoint_page(folder, run, checkpoint, stimuli))
        for run in model_runs(entry)
        for stimuli in entry["stimuli"]
        for checkpoint in model_checkpoints(model, run)
    ]


def report_pages():
    """Every page of the report except the index: checkpoint pages, model pages, the comparisons page."""
    pages = [str(layout.comparisons_report(REPORT_DIR))]
    for model in MODELS:
        pages.append(str(layout.model_page(REPORT_DIR, model)))
        pages.extend(checkpoint_pages(model))
    return pages


def every_output():
    """Every file and folder the workflow makes for the models of this run. ``all`` asks for each, so that one that
    was deleted (or removed with a failed job) is made again by the next run even where what is made from it is up
    to date: Snakemake remakes a missing file only when it is asked for."""
    files = []
    if MODELS:
        files += [layout.report_index(REPORT_DIR), layout.report_bundle(OUT), layout.comparisons_report(REPORT_DIR)]
        files += [f for result in comparison_results() for f in (result, layout.summary_path(Path(result)))]
    for model in MODELS:
        entry = config["models"][model]
        files += [layout.model_page(REPORT_DIR, model), layout.model_summary(REPORT_DIR, model)]
        for result in model_results(model):  # result stores with their summaries, and run reports
            files += [result, layout.summary_path(Path(result))] if result.endswith(".zarr") else [result]
        for page in checkpoint_pages(model):
            files += [page, layout.checkpoint_summary(Path(page))]
        for run in model_runs(entry):
            for stimuli in entry["stimuli"]:
                files += run_stores(model, run, stimuli)
                if entry["source"] == "huggingface":
                    continue
                for analysis in across_analyses(model, stimuli):
                    files.append(layout.across_checkpoints(OUT, analysis, model, run, stimuli))
                    if analysis in ACROSS_STORES:
                        files.append(layout.across_result(OUT, analysis, model, run, stimuli))
    return [str(f) for f in files]


def report_spec(model, results):
    """What a report job reads: the model's config, the analyses' parameters and its result files."""
    return {
        "model_name": model,
        "model": config["models"][model],
        "analyses": config["analyses"],
        "output_dir": OUT,
        "inputs": list(results),
    }


# Longest argument text kept on a command line; longer argument lists (a run with hundreds of
# checkpoints) go through a file, since Linux refuses a command of more than 128 KiB.
ARGUMENTS_LIMIT = 64 * 1024


def shell_args(words):
    """Shell words for ``words``: quoted in place when short, else '@file' naming a file that holds
    them one per line (the command line tool reads such files); the file is named by its content."""
    quoted = " ".join(shlex.quote(w) for w in words)
    if len(quoted) < ARGUMENTS_LIMIT:
        return quoted
    text = "".join(w + "\n" for w in words)
    path = Path(OUT) / ".arguments" / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        work = path.with_name(path.name + f".{os.getpid()}")
        work.write_text(text)
        work.replace(path)
    return shlex.quote(f"@{path}")


def spec_arg(spec):
    """A spec as one shell word: its JSON, or '@file' holding it (see shell_args)."""
    return shell_args([json.dumps(spec, sort_keys=True)])
