"""Write report pages: per model, per checkpoint, the comparisons between models, and the index.

A model page does not draw its runs' across-checkpoint figures itself: each run's job
(``write_run_report``) draws them into a JSON file the page then assembles, so a new checkpoint
re-draws only its own run. Figures (and matplotlib) are loaded only by the jobs that draw them.
"""

from __future__ import annotations

import datetime
import math
import os
import shutil
from pathlib import Path

import jinja2

from pipeline import __version__, layout
from pipeline.checkpoints import training_order
from pipeline.errors import InputError
from pipeline.jobs import json_dumps, read_json, write_text
from pipeline.report.context import (
    ExperimentContext,
    ModelContext,
    interrupted_extractions,
    load_experiment_context,
    load_model_context,
    step_label,
)


def _fmt(value) -> str:
    """Compact text for a table cell."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,  # every text from users (sentences, labels, names) shows as text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["fmt"] = _fmt
    return env


def _common(title: str, root: str) -> dict:
    return {"title": title, "root": root, "version": __version__, "model_href": None, "model_name": None,
            "generated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "intro": None, "parameters": None}


def _sections(scope: str, ctx: ModelContext | ExperimentContext, page=None) -> tuple[list[dict], list[str]]:
    """Run each section of ``scope``; a section that fails is reported, the page still renders."""
    from pipeline.report.sections import SECTIONS

    single = scope == "model" and ctx.model.get("source") == "huggingface"  # one checkpoint, no series
    where = f" for {page.run}/{page.checkpoint}/{page.stimuli}" if page else ""
    rendered, errors = [], []
    for section in SECTIONS:
        if section.scope != scope or (section.series and single):
            continue
        try:
            data = section.collect(ctx, page)
        except Exception as err:  # one broken section must not hide the rest of the report
            data = None
            errors.append(f"section {section.title!r} could not be built{where}: {type(err).__name__}: {err}")
        rendered.append({"id": section.id, "title": section.title, "data": data, "needs": section.needs})
    return rendered, errors


def _run_report(ctx: ModelContext, run: str, stimuli: str) -> dict:
    """The parts of the model sections drawn from one run's across-checkpoint results, and the sections that failed."""
    from pipeline.report.sections import SECTIONS

    parts, errors = {}, []
    for section in SECTIONS:
        if section.run_part is None:
            continue
        try:
            parts[section.id] = section.run_part(ctx, run, stimuli)
        except Exception as err:  # one broken section must not hide the rest of the report
            parts[section.id] = None
            errors.append(f"section {section.title!r} could not be built for {run}/{stimuli}: "
                          f"{type(err).__name__}: {err}")
    return {"model": ctx.model_name, "run": run, "stimuli": stimuli, "parts": parts, "errors": errors}


def write_run_report(spec: dict, out: Path) -> None:
    """Draw what a model's page shows of one run (``spec["run"]`` on ``spec["stimuli"]``) into the JSON file ``out``.

    The spec's inputs are the run's across-checkpoint summaries; figures are embedded as data URIs.
    """
    for key in ("run", "stimuli"):
        if key not in spec:
            raise ValueError(f"a run report spec needs {key!r}; add the run and its stimulus set to the spec")
    ctx = load_model_context(spec)
    report = _run_report(ctx, spec["run"], spec["stimuli"])
    write_text(out, json_dumps({**report, "errors": ctx.errors + report["errors"]}))  # failed sites too


def write_model_report(spec: dict, out: Path) -> None:
    """Write a model's page ``out`` (``<report_dir>/<model>/index.html``) and its summary for the index.

    The spec's inputs are per-checkpoint results and, per run, either its run report
    (``write_run_report``) or its across-checkpoint summaries, which are then drawn here. Checkpoint
    pages are written by ``write_checkpoint_report``, one job each, so a new checkpoint renders
    only its own page.
    """
    import yaml

    ctx = load_model_context(spec)
    for run, stimuli in sorted({(run, stimuli) for _, run, stimuli in ctx.across} - set(ctx.run_reports)):
        ctx.run_reports[(run, stimuli)] = _run_report(ctx, run, stimuli)
    entry = ctx.model
    sections, section_errors = _sections("model", ctx)
    run_errors = [e for _, report in sorted(ctx.run_reports.items()) for e in report["errors"]]
    # a checkpoint's failed sites show on its page and on this one: listed once
    errors = list(dict.fromkeys(ctx.errors + interrupted_extractions(spec) + run_errors + section_errors
                                + _checkpoint_page_errors(ctx, out.parent)))
    n_checkpoints = len({(c.run, c.checkpoint) for c in ctx.checkpoints})
    page = {
        **_common(f"Model {ctx.model_name}", "../"),
        "sections": sections,
        "errors": errors,
        "intro": {"source": entry["source"], "runs": ", ".join(ctx.runs),
                  "checkpoints": n_checkpoints,
                  "stimulus sets": ", ".join(ctx.stimulus_sets), "sites": ", ".join(entry["sites"])},
        "parameters": yaml.safe_dump({"model": entry, "analyses": ctx.analyses}, sort_keys=False),
    }
    write_text(out, _environment().get_template("page.html").render(**page))
    checkpoints = sorted(({
        "label": f"{c.run}/{c.checkpoint} ({c.stimuli})", "run": c.run, "step": c.step,
        "href": layout.checkpoint_page(ctx.model_name, c.run, c.checkpoint, c.stimuli).as_posix(),
    } for c in ctx.checkpoints), key=lambda c: (c["run"], training_order(c["step"], c["label"])))
    summary = {
        "name": ctx.model_name, "source": entry["source"], "runs": ctx.runs, "stimuli": ctx.stimulus_sets,
        "n_checkpoints": n_checkpoints, "n_errors": len(errors), "errors": errors,
        "checkpoints": checkpoints, "href": f"{ctx.model_name}/index.html",
    }
    write_text(layout.model_summary(out.parent.parent, ctx.model_name), json_dumps(summary, indent=1))


def _checkpoint_page_errors(ctx: ModelContext, model_dir: Path) -> list[str]:
    """The errors of the model's checkpoint pages, as their jobs recorded them beside the pages (none for pages
    not written)."""
    errors = []
    for c in sorted(ctx.checkpoints, key=lambda c: (c.run, c.stimuli, training_order(c.step, c.checkpoint))):
        summary = layout.checkpoint_summary(layout.checkpoint_page(model_dir, c.run, c.checkpoint, c.stimuli))
        if summary.exists():
            errors += read_json(summary)["errors"]
    return errors


def write_checkpoint_report(spec: dict, out: Path) -> None:
    """Write the page of one (run, checkpoint, stimulus set) from its result stores, and its errors beside it
    for the model's page."""
    ctx = load_model_context(spec)
    if len(ctx.checkpoints) != 1:
        raise ValueError(f"a checkpoint page needs the results of exactly one checkpoint, got {len(ctx.checkpoints)}")
    c = ctx.checkpoints[0]
    sections, section_errors = _sections("checkpoint", ctx, c)
    errors = ctx.errors + section_errors
    write_text(layout.checkpoint_summary(out), json_dumps({"errors": errors}))
    html = _environment().get_template("page.html").render(**{
        **_common(f"{ctx.model_name} · {c.run} · {c.checkpoint} · {c.stimuli}", "../../../"),
        "model_href": "../../index.html", "model_name": ctx.model_name,
        "sections": sections, "errors": errors,
        "intro": {"run": c.run, "checkpoint": c.checkpoint, "training step": step_label(c.step, ctx.model["source"]),
                  "stimulus set": c.stimuli},
    })
    write_text(out, html)


def write_comparisons_report(spec: dict, out: Path) -> None:
    """Write the experiment-level page comparing models (``comparisons/index.html``)."""
    import yaml

    ctx = load_experiment_context(spec)
    sections, section_errors = _sections("experiment", ctx)
    errors = ctx.errors + section_errors
    page = {
        **_common("Comparisons between models", "../"),
        "sections": sections,
        "errors": errors,
        "intro": {"stimulus sets": ", ".join(sorted({stimuli for _, stimuli in ctx.summaries}))},
        "parameters": yaml.safe_dump({"analyses": ctx.analyses}, sort_keys=False),
    }
    write_text(out, _environment().get_template("page.html").render(**page))
    summary = {"href": f"{out.parent.name}/{out.name}", "n_errors": len(errors), "errors": errors}
    write_text(layout.comparisons_summary(out.parent.parent), json_dumps(summary))


def write_index(spec: dict, out: Path) -> None:
    """Write the index page linking every model, checkpoint page and analysis.

    The spec names the summaries the model and comparisons jobs wrote beside their pages
    (``model_summaries``, ``comparisons_summary``) and the models left out of the run for want of
    checkpoints (``waiting``: model -> why).
    """
    models = [read_json(summary) for summary in spec["model_summaries"]]
    comparisons = spec.get("comparisons_summary")
    comparisons = read_json(comparisons) if comparisons else None
    pages = [(f"Model {m['name']}", m) for m in models]
    if comparisons:
        pages.append(("Comparisons between models", comparisons))
    # summaries written before they listed their errors only count them
    failed = [{"title": title, "href": p["href"], "n_errors": p["n_errors"], "errors": p.get("errors", [])}
              for title, p in pages if p["n_errors"]]
    page = {**_common("Activation analysis report", ""), "sections": [], "errors": failed, "models": models,
            "comparisons": comparisons, "waiting": spec.get("waiting", {})}
    write_text(out, _environment().get_template("index.html").render(**page))


def write_bundle(report_dir: Path, pages: list[Path], out: Path) -> None:
    """Gather ``pages`` (files below ``report_dir``) into the folder ``out`` at the same relative paths,
    so the links between them still hold there; hard links where the file system allows, else copies.

    The folder is built beside ``out`` and renamed into place, replacing an older bundle.
    """
    report_dir = Path(report_dir).resolve()
    relative = []
    for page in pages:
        page = Path(page).resolve()
        if not page.is_relative_to(report_dir):
            raise InputError(f"report page {page} is not inside the report folder {report_dir}")
        if not page.is_file():
            raise InputError(f"report page {page} is missing; run the workflow to write it")
        relative.append(page.relative_to(report_dir))
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for rel in relative:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(report_dir / rel, work / rel)
        except OSError:  # another file system, or one without hard links
            shutil.copy2(report_dir / rel, work / rel)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(work, out)
