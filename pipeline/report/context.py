"""What a report page is built from: the result files a rule hands the report, grouped."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import layout
from pipeline.checkpoints import training_order
from pipeline.jobs import forward_order, read_json
from pipeline.results import ResultGroup


@dataclass
class CheckpointResults:
    """The results of one (run, checkpoint, stimulus set): analysis name -> summary dict."""

    run: str
    checkpoint: str
    stimuli: str
    step: int
    provenance: dict
    summaries: dict[str, dict] = field(default_factory=dict)
    result_stores: dict[str, Path] = field(default_factory=dict)

    def stimulus_table(self, limit: int = 400) -> list[dict]:
        """id, label and text of the recorded stimuli (first ``limit``), from the statistics result store."""
        return self._stimulus_rows[:limit]

    @property
    def n_stimuli(self) -> int:
        """Number of recorded stimuli (0 without a statistics result)."""
        return len(self._stimulus_rows)

    @functools.cached_property
    def _stimulus_rows(self) -> list[dict]:
        path = self.result_stores.get("stats")
        if path is None or not path.exists():
            return []
        group = ResultGroup(path)
        columns = {name: group[name] for name in ("label", "text") if name in group}
        return [{"id": str(i), **{k: str(v[n]) for k, v in columns.items()}} for n, i in enumerate(group["stimulus"])]


@dataclass
class ModelContext:
    """Everything one model's pages show."""

    model_name: str
    model: dict
    analyses: dict
    checkpoints: list[CheckpointResults]
    across: dict[tuple[str, str, str], dict]  # (analysis, run, stimuli) -> across-checkpoint summary
    errors: list[str] = field(default_factory=list)
    # (run, stimuli) -> what the run's report job drew from its across-checkpoint results (``report-run``)
    run_reports: dict[tuple[str, str], dict] = field(default_factory=dict)

    @property
    def runs(self) -> list[str]:
        return sorted({c.run for c in self.checkpoints})

    @property
    def stimulus_sets(self) -> list[str]:
        return sorted({c.stimuli for c in self.checkpoints})

    def series(self, run: str, stimuli: str) -> list[CheckpointResults]:
        return sorted((c for c in self.checkpoints if c.run == run and c.stimuli == stimuli),
                      key=lambda c: training_order(c.step, c.checkpoint))

    def run_parts(self, section_id: str) -> list[dict]:
        """A section's parts from every run's report, in (run, stimulus set) order; runs without one are left out."""
        return [part for _, report in sorted(self.run_reports.items())
                if (part := report["parts"].get(section_id)) is not None]


# Across-checkpoint analyses whose sites fail on their own. The statistics across checkpoints repeat
# each checkpoint's statuses, and the similarity across checkpoints leaves out sites it cannot compare.
ACROSS_FAILURES = ("tca-across", "connectome")


def load_model_context(spec: dict) -> ModelContext:
    """Group the rule's input files (result stores, across-checkpoint JSON, run reports) by checkpoint and run,
    and list the failures their summaries record."""
    by_key: dict[tuple[str, str, str], CheckpointResults] = {}
    across: dict[tuple[str, str, str], dict] = {}
    run_reports: dict[tuple[str, str], dict] = {}
    errors: list[str] = []
    for name in spec["inputs"]:
        path = Path(name)
        if layout.is_run_report(path):
            data = read_json(path)
            run_reports[(data["run"], data["stimuli"])] = data
            continue
        if path.name.endswith(".across.json"):
            data = read_json(path)
            data["summary_file"] = str(path)  # locates a result store written beside it, if any
            across[(data["analysis"], data["run"], data["stimulus_set"])] = data
            continue
        summary_file = layout.summary_path(path)
        if not summary_file.exists():
            errors.append(f"result {path} has no summary {summary_file.name}; re-run its analysis")
            continue
        summary = read_json(summary_file)
        prov = summary["provenance"]
        key = (prov["run"], prov["checkpoint_name"], prov["stimulus_set"])
        item = by_key.setdefault(key, CheckpointResults(*key, step=int(prov.get("step", -1)), provenance=prov))
        item.summaries[summary["analysis"]] = summary
        item.result_stores[summary["analysis"]] = path
    for item in by_key.values():
        for analysis, summary in item.summaries.items():
            errors += result_errors(analysis, f"{item.run}/{item.checkpoint}/{item.stimuli}", summary)
    for (analysis, run, stimuli), data in sorted(across.items()):
        if analysis in ACROSS_FAILURES:
            errors += result_errors(analysis, f"{run}/{stimuli}", data)
    return ModelContext(spec["model_name"], spec["model"], spec.get("analyses", {}), list(by_key.values()), across,
                        errors, run_reports)


def result_errors(analysis: str, where: str, summary: dict) -> list[str]:
    """One error per failure a result summary records (pages show these beside the results): a failed site,
    a site without an RDM and a failed test against a reference RDM."""
    errors = []
    for site, result in summary.get("sites", {}).items():
        if result.get("status") != "ok":
            errors.append(f"{analysis} failed for {where} site {site}: {result.get('error')}")
        if result.get("rdm_error"):
            errors.append(f"{analysis} has no RDM for {where} site {site}: {result['rdm_error']}")
    for site, tests in summary.get("tests", {}).items():
        for ref, test in tests.items():
            if "error" in test:
                errors.append(f"{analysis} against the {ref} RDM failed for {where} site {site}: {test['error']}")
    return errors


def interrupted_extractions(spec: dict) -> list[str]:
    """One error per activation store of this model that an interrupted extraction left unfinished."""
    folder = Path(spec["output_dir"]) / "activations" / spec["model_name"]
    partials = sorted(folder.glob("*/*/*.zarr.partial")) if folder.is_dir() else []
    return [f"incomplete activation store {p} (an extraction was interrupted; re-run to finish)" for p in partials]


def _site_key(site: str) -> tuple:
    """Sort key of a site name: numbers in it compared as numbers, and a module after its submodules."""
    parts = tuple((0, tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", part)))
                  for part in str(site).split("."))
    return (*parts, (1,))


def site_order(sites, forward=()) -> list[str]:
    """``sites`` in the order a forward pass reaches them: as extraction recorded it (``forward``, see
    ``recorded_order``), then those it does not list as far as their names tell: numbered layers in number order
    ("layers.2" before "layers.10"), a module after its submodules ("encoder.layer.0.intermediate" before
    "encoder.layer.0", whose output is computed from it). Summaries list their sites alphabetically."""
    rank = {site: k for k, site in enumerate(forward)}
    return sorted(sites, key=lambda site: (rank.get(site, len(rank)), _site_key(site)))


def by_site(mapping: dict, forward=()) -> dict:
    """``mapping`` (site -> value) in ``site_order``."""
    return {site: mapping[site] for site in site_order(mapping, forward)}


def recorded_order(summary: dict) -> list[str]:
    """The sites of a result summary in forward order, as extraction recorded them: its store's ``sites`` (one
    checkpoint), its ``site_order`` (across checkpoints) or its entries' stores' (across models); empty for results
    written before the order was kept."""
    if "site_order" in summary:
        return summary["site_order"]
    provenance = summary.get("provenance", {})
    return forward_order(provenance.get("entries", [provenance]))


def step_label(step, source: str) -> str:
    """A checkpoint's training step as text; a step below 0 means none is known (a pretrained model, or a
    checkpoint that records none)."""
    if step is not None and int(step) >= 0:
        return str(int(step))
    return "n/a (pretrained)" if source == "huggingface" else "n/a (not recorded)"


def finite(values) -> list[float]:
    """Values for plotting: None becomes NaN."""
    return [np.nan if v is None else float(v) for v in values]


@dataclass
class ExperimentContext:
    """Everything the comparisons page shows: experiment-level results keyed by (analysis, stimulus set)."""

    analyses: dict
    summaries: dict[tuple[str, str], dict] = field(default_factory=dict)
    result_stores: dict[tuple[str, str], Path] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def load_experiment_context(spec: dict) -> ExperimentContext:
    """Read the summaries of the experiment-level result stores the rule hands the page."""
    ctx = ExperimentContext(spec.get("analyses", {}))
    for name in spec["inputs"]:
        path = Path(name)
        summary_file = layout.summary_path(path)
        if not summary_file.exists():
            ctx.errors.append(f"result {path} has no summary {summary_file.name}; re-run its analysis")
            continue
        summary = read_json(summary_file)
        key = (summary["analysis"], summary["stimulus_set"])
        ctx.summaries[key] = summary
        ctx.result_stores[key] = path
    return ctx
