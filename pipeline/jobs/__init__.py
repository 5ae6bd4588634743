"""Entry points of the workflow's jobs: read inputs, call the package, write outputs.

Each job receives a *spec*: the slice of the validated config it depends on (so that a change
to one model's config re-runs only that model's jobs). Specs are built here, by the ``*_spec``
functions that ``rules/common.smk`` calls. This module holds the recording and statistics jobs;
``pipeline.jobs.similarity`` and ``pipeline.jobs.factorization`` hold those analyses' jobs, kept
apart so that each job imports only what it runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from pipeline import layout
from pipeline.checkpoints import training_order
from pipeline.config import run_settings
from pipeline.errors import StoreError
from pipeline.results import read
from pipeline.software import package_versions
from pipeline.stimuli import is_sequence
from pipeline.store import json_safe, writer_lock
from pipeline.tasks import model_params

log = logging.getLogger(__name__)

# Names of the three TCA modes for stimulus kinds whose position axis is a time course worth its own mode.
SEQUENCE_MODES = {"flipflop": ("unit", "time step", "trial"), "sentences": ("unit", "token position", "sentence"),
                  "arrays": ("unit", "time step", "trial")}


@contextlib.contextmanager
def warnings_named(what: str):
    """Log each distinct warning raised inside as one line that names ``what`` (an analysis of one site), which a bare
    Python warning from deep in the analysis would not."""
    with warnings.catch_warnings(record=True) as caught:
        try:
            yield
        finally:  # also those raised before the analysis failed
            for message in dict.fromkeys(str(w.message) for w in caught):
                log.warning("%s: %s", what, message)


# ---------------------------------------------------------------- specs


def train_spec(config: dict, model: str, run: str) -> dict:
    entry = config["models"][model]
    params, seed = run_settings(entry, run)
    return {"model_name": model, "run": run, "task": entry["task"], "params": params, "seed": seed,
            "training": entry["training"]}


# what extraction reads of a model's entry; the rest (other seeds, training settings, the folder
# and glob) stays out of the spec, so that editing it re-records nothing
EXTRACT_MODEL_KEYS = ("source", "path", "architecture", "task", "sites")


def extract_spec(config: dict, model: str, run: str, stimuli: str) -> dict:
    entry = config["models"][model]
    recorded = {key: entry[key] for key in EXTRACT_MODEL_KEYS if key in entry}
    if entry["source"] == "train":  # the architecture's params for this run, as it was trained
        recorded["params"] = model_params(entry["task"], run_settings(entry, run)[0], entry["training"])
    elif entry["source"] == "checkpoints":
        recorded["params"] = entry.get("params", {})
    stimulus_set = config["stimuli"][stimuli]
    if stimulus_set["kind"] == "arrays":  # the flag a config may leave out (see stimuli.sequence_hint), as jobs read it
        stimulus_set = {**stimulus_set, "sequence": is_sequence(stimulus_set)}
    return {"model_name": model, "model": recorded, "run": run, "stimuli_name": stimuli, "stimuli": stimulus_set,
            "device": config["device"], "dtype": config["dtype"], "batch_size": config["batch_size"]}


def stats_spec(config: dict) -> dict:
    return dict(config["analyses"]["stats"])


def similarity_spec(config: dict) -> dict:
    """Settings of the similarity jobs (per checkpoint, across checkpoints, across models)."""
    return {**config["analyses"]["similarity"], "device": config["device"]}


def _for_jobs(settings: dict) -> dict:
    """An analysis' settings without ``models`` (which only picks targets, so editing it re-runs nothing)."""
    return {k: v for k, v in settings.items() if k != "models"}


def tca_spec(config: dict, across: bool = False) -> dict:
    """Settings of the tensor component analysis jobs, per checkpoint or (``across``) across checkpoints, whose
    tensors have no positions to leave out."""
    settings = _for_jobs(config["analyses"]["tca"])
    if across:
        settings.pop("min_position_coverage")
    return {**settings, "device": config["device"], "dtype": config["dtype"]}


def connectome_spec(config: dict) -> dict:
    """Settings of the dynamic functional connectome job."""
    return {**_for_jobs(config["analyses"]["connectome"]), "device": config["device"], "dtype": config["dtype"]}


def _selected(settings: dict, model: str) -> bool:
    return settings.get("models") is None or model in settings["models"]


def tca_plan(config: dict, model: str, stimuli: str) -> str | None:
    """How TCA runs on a model's stimulus set: "checkpoint" (a unit x position x stimulus tensor per
    checkpoint, for sequence stimuli), "across" (a unit x stimulus x checkpoint tensor per run, for
    a trained or watched series on other stimuli) or None."""
    if not _selected(config["analyses"]["tca"], model):
        return None
    if is_sequence(config["stimuli"][stimuli]):
        return "checkpoint"
    return "across" if config["models"][model]["source"] != "huggingface" else None


def connectome_enabled(config: dict, model: str) -> bool:
    """The connectome needs a checkpoint series (a trained or watched model) and the model selected."""
    return config["models"][model]["source"] != "huggingface" and _selected(config["analyses"]["connectome"], model)


# ---------------------------------------------------------------- jobs


def json_dumps(data, **options) -> str:
    """Strict JSON text of ``data`` (through ``json_safe``): readable by jq, JavaScript and other strict parsers."""
    return json.dumps(json_safe(data), allow_nan=False, **options)


def provenance_order(provenance) -> tuple:
    """Sort key of a checkpoint's result by its provenance (``step``, ``checkpoint_name``): training order."""
    return training_order(provenance.get("step"), provenance.get("checkpoint_name"))


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically: a temporary file beside ``path``, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_json(path) -> dict:
    """A summary or report file written by ``write_json``; a damaged or missing one is named with the fix."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{path} is missing; run the workflow again to make it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"{path} is damaged ({err}); delete it and run the workflow again to make it anew") from None


def write_json(path: Path, data: dict) -> None:
    """Write a job's summary as strict JSON, atomically, with the ``software`` that made it (package versions,
    source fingerprint); non-finite numbers become null."""
    write_text(path, json_dumps({**data, "software": package_versions()}, indent=1, sort_keys=True))


def run_train(spec: dict, out: Path) -> None:
    """Train one run of a built-in model into the checkpoint folder ``out``."""
    from pipeline.train import train

    work = out.with_name(out.name + ".partial")
    with writer_lock(out):
        if work.exists():
            shutil.rmtree(work)
        train(spec["task"], work, params=spec["params"], seed=spec["seed"], **spec["training"])
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)


def run_extract(spec: dict, out: Path, checkpoint: Path | None) -> None:
    from pipeline.extract import extract

    extract(spec, out, checkpoint)


def run_stats(spec: dict, store: Path, out: Path) -> None:
    """Activation statistics of every site of a store: result store ``out`` and summary JSON beside it."""
    from pipeline.analyses.stats import blocks_of, site_stats
    from pipeline.results import Result, dims, read, write_result
    from pipeline.store import open_group

    started = time.perf_counter()
    group = open_group(store)
    attrs = group.attrs.asdict()
    mask = read(group, "mask")
    ids = read(group, "stimulus")
    tokens = read(group, "token") if "token" in group else None
    per_unit = {}
    summaries = {}
    for site in attrs["sites"]:
        values = group[site]  # Zarr array, read block by block
        rows = max(1, values.chunks[0])
        try:
            stats = site_stats(lambda v=values, r=rows: blocks_of(v, mask, r), **spec)
        except ValueError as err:
            summaries[site] = {"status": "failed", "error": str(err)}
            continue
        summaries[site] = {"status": "ok", **stats.summary()}
        for top in summaries[site]["top_massive"]:
            top["stimulus_id"] = str(ids[top["stimulus"]])
            if tokens is not None:
                top["token"] = str(tokens[top["stimulus"], top["position"]])
        unit = dims(group, site)[2]
        for name in ("mean", "variance", "zero_fraction", "nan_count", "inf_count", "massive_count"):
            # ':' not '/': in Zarr v3 a '/' in a variable name nests it in a group the top level never shows
            per_unit[f"{site}:{name}"] = ((unit,), getattr(stats, name))
    coords = {"stimulus": ids, **{name: ("stimulus", read(group, name)) for name in ("label", "text") if name in group}}
    write_result(out, Result(per_unit, coords, {"analysis": "stats", "store": str(store), **scalar_params(spec)}))
    write_json(layout.summary_path(out), {
        "analysis": "stats",
        "params": spec,
        "provenance": store_provenance(attrs),
        "sites": summaries,
        "runtime_seconds": round(time.perf_counter() - started, 3),
    })


def scalar_params(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}


def analysed_stimuli(group) -> tuple[np.ndarray, str]:
    """Indices of the stimuli of an activation store that analyses draw from: the test split where the
    set has one (held-out inputs), else all; with a phrase saying which."""
    return analysed_rows(read(group, "split") if "split" in group else None, group["stimulus"].shape[0])


def analysed_rows(split: np.ndarray | None, n: int) -> tuple[np.ndarray, str]:
    """``analysed_stimuli`` of ``n`` stimuli with the ``split`` labels (n,) of their set, if it has any."""
    index = np.arange(n)
    if split is not None and (split == "test").any():
        return index[split == "test"], "the test split"
    return index, "all stimuli"


def store_provenance(attrs: dict) -> dict:
    """What a result summary copies of its activation store's attributes (``sites``: in forward order)."""
    keep = ("model_id", "model_class", "architecture", "architecture_params", "checkpoint", "checkpoint_sha256",
            "checkpoint_name", "step", "checkpoint_metadata", "run", "stimulus_set", "stimulus_kind",
            "stimulus_hash", "sites", "dtype", "device", "packages", "config_hash", "created_at", "extraction_seconds")
    return {k: attrs[k] for k in keep if k in attrs}


def forward_order(provenance: list[dict]) -> list[str]:
    """The recorded sites of several results in the order the forward pass reaches them (each store's ``sites``),
    first seen first: what across-checkpoint summaries keep as ``site_order`` for the report."""
    return list(dict.fromkeys(site for p in provenance for site in p.get("sites", [])))


def run_stats_across(results: list[Path], out: Path) -> None:
    """Statistics of a run across its checkpoints, ordered by training step.

    ``results`` are the per-checkpoint result stores of ``run_stats`` (summaries beside them).
    Besides each summary scalar over training, records the drift of the per-unit means,
    ||mu_t - mu_(t-1)|| / ||mu_(t-1)||, between consecutive checkpoints.
    """
    from pipeline.results import ResultGroup

    entries = []
    for path in results:
        summary = read_json(layout.summary_path(Path(path)))
        entries.append((summary, ResultGroup(path)))
    entries.sort(key=lambda e: provenance_order(e[0]["provenance"]))
    sites = list(entries[0][0]["sites"]) if entries else []
    series = {}
    for site in sites:
        rows = [summary["sites"].get(site, {"status": "missing"}) for summary, _ in entries]
        series[site] = {key: [row.get(key) for row in rows] for key in ACROSS_KEYS}
        means = [_unit_means(group, site) for _, group in entries]
        series[site]["mean_drift"] = [None] + [
            float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-12)) if a is not None and b is not None else None
            for a, b in zip(means[:-1], means[1:])
        ]
    provenance = [summary["provenance"] for summary, _ in entries]
    first = provenance[0] if provenance else {}
    write_json(out, {
        "analysis": "stats",
        "model": first.get("model_id"),
        "run": first.get("run"),
        "stimulus_set": first.get("stimulus_set"),
        "checkpoints": [p.get("checkpoint_name") for p in provenance],
        "steps": [p.get("step") for p in provenance],
        "metadata": [p.get("checkpoint_metadata", {}) for p in provenance],
        "sites": series,
        "site_order": forward_order(provenance),
    })


ACROSS_KEYS = ("status", "zero_fraction", "n_dead", "n_constant", "massive_count", "nan_count", "inf_count",
               "median_abs", "max_abs", "mean_variance")


def _unit_means(group, site: str) -> np.ndarray | None:
    """Per-unit means (units,) of ``site`` in a stats result store, None when it has none."""
    name = f"{site}:mean"
    return np.nan_to_num(group[name]) if name in group else None
