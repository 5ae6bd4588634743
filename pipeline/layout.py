"""Where every file of an experiment lives, relative to ``output_dir`` and ``report_dir``.

Rules, the command line and the report all take paths from here, so the layout is defined once.
"""

from __future__ import annotations

from pathlib import Path

# Wildcard values: names from the config and checkpoint file stems.
NAME_PATTERN = r"[A-Za-z0-9_-]+"
RUN_PATTERN = r"[A-Za-z0-9_.-]+"
CHECKPOINT_PATTERN = r"[A-Za-z0-9_.-]+"

PRETRAINED = "pretrained"  # checkpoint name of a model that has no series (a Hugging Face model)


def checkpoint_folder(output_dir: str, model: str, run: str) -> Path:
    """Folder a trained model's run writes its checkpoints into."""
    return Path(output_dir) / "checkpoints" / model / run


def activation_store(output_dir: str, model: str, run: str, checkpoint: str, stimuli: str) -> Path:
    """Zarr store of one (model, run, checkpoint, stimulus set)."""
    return Path(output_dir) / "activations" / model / run / checkpoint / f"{stimuli}.zarr"


def analysis_result(output_dir: str, analysis: str, model: str, run: str, checkpoint: str, stimuli: str) -> Path:
    """Result store of one analysis of one activation store (summary JSON sits beside it)."""
    return Path(output_dir) / "analyses" / analysis / model / run / checkpoint / f"{stimuli}.zarr"


def summary_path(result: Path) -> Path:
    """Summary JSON beside a result store (``x.zarr`` -> ``x.json``)."""
    return result.parent / (result.name.removesuffix(".zarr") + ".json")


def across_checkpoints(output_dir: str, analysis: str, model: str, run: str, stimuli: str) -> Path:
    """Summary of one analysis across the checkpoints of a run."""
    return Path(output_dir) / "analyses" / analysis / model / run / f"{stimuli}.across.json"


def across_result(output_dir: str, analysis: str, model: str, run: str, stimuli: str) -> Path:
    """Result store of an analysis across the checkpoints of a run; its summary is ``across_checkpoints``."""
    return Path(output_dir) / "analyses" / analysis / model / run / f"{stimuli}.across.zarr"


def comparison_result(output_dir: str, analysis: str, stimuli: str) -> Path:
    """Result store of one analysis comparing models on one stimulus set (summary JSON beside it)."""
    return Path(output_dir) / "comparisons" / analysis / f"{stimuli}.zarr"


def log_file(output_dir: str, *parts: str) -> Path:
    """Log of one job, e.g. ``log_file(out, "extract", model, run, checkpoint, stimuli)``."""
    return Path(output_dir, "logs", *parts[:-1], parts[-1] + ".log")


def benchmark_file(output_dir: str, *parts: str) -> Path:
    """Snakemake benchmark table of one job (run time and peak memory)."""
    return Path(output_dir, "benchmarks", *parts[:-1], parts[-1] + ".tsv")


def model_page(report_dir: str, model: str) -> Path:
    """A model's report page; its checkpoint pages sit in the same folder."""
    return Path(report_dir) / model / "index.html"


def model_summary(report_dir: str, model: str) -> Path:
    """What the index shows of a model (runs, checkpoints, errors), written beside its page."""
    return Path(report_dir) / model / "report.json"


def checkpoint_page(model_dir, run: str, checkpoint: str, stimuli: str) -> Path:
    """Report page of one (run, checkpoint, stimulus set), inside its model's report folder."""
    return Path(model_dir) / run / stimuli / f"{checkpoint}.html"


def checkpoint_summary(page: Path) -> Path:
    """The errors of a checkpoint page, written beside it for its model's page."""
    return Path(page).with_suffix(".json")


def run_report(output_dir: str, model: str, run: str, stimuli: str) -> Path:
    """What a model's page shows of one run's across-checkpoint results (figures included), drawn by its own job."""
    return Path(output_dir) / "report-runs" / model / run / f"{stimuli}.report.json"


def is_run_report(path: Path) -> bool:
    return path.name.endswith(".report.json") and path.parent.parent.parent.name == "report-runs"


def comparisons_report(report_dir: str) -> Path:
    """Report page comparing models (experiment level)."""
    return Path(report_dir) / "comparisons" / "index.html"


def comparisons_summary(report_dir: str) -> Path:
    """What the index shows of the comparisons page (its errors), written beside it."""
    return Path(report_dir) / "comparisons" / "report.json"


def report_index(report_dir: str) -> Path:
    return Path(report_dir) / "index.html"


def report_bundle(output_dir: str) -> Path:
    """The report pages gathered into one folder (same paths below it), which ``snakemake --report`` packs."""
    return Path(output_dir) / "report-bundle"
