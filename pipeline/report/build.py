"""Write report pages: one folder per model (its index and one page per checkpoint) and the index."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

import jinja2
import yaml

from pipeline import __version__, layout
from pipeline.report.context import ModelContext, load_model_context
from pipeline.report.sections import SECTIONS, fmt

SUMMARY_FILE = "report.json"  # written into each model folder; read by the index


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,  # every text from users (sentences, labels, names) shows as text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["fmt"] = fmt
    return env


def _common(title: str, root: str) -> dict:
    return {"title": title, "root": root, "version": __version__, "model_href": None, "model_name": None,
            "generated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "intro": None, "parameters": None}


def _sections(scope: str, ctx: ModelContext, page=None) -> tuple[list[dict], list[str]]:
    """Run each section of ``scope``; a section that fails is reported, the page still renders."""
    rendered, errors = [], []
    for section in SECTIONS:
        if section.scope != scope:
            continue
        try:
            data = section.collect(ctx, page)
        except Exception as err:  # one broken section must not hide the rest of the report
            data = None
            errors.append(f"section {section.title!r} could not be built: {type(err).__name__}: {err}")
        rendered.append({"id": section.id, "title": section.title, "data": data})
    return rendered, errors


def write_model_report(spec: dict, out: Path) -> None:
    """Write ``out/index.html`` (the model page) and ``out/<run>/<checkpoint>.html`` pages."""
    ctx = load_model_context(spec)
    env = _environment()
    work = out.with_name(out.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    entry = ctx.model
    sections, section_errors = _sections("model", ctx)
    page = {
        **_common(f"Model {ctx.model_name}", "../"),
        "sections": sections,
        "errors": ctx.errors + section_errors,
        "intro": {"source": entry["source"], "runs": ", ".join(ctx.runs),
                  "checkpoints": len({(c.run, c.checkpoint) for c in ctx.checkpoints}),
                  "stimulus sets": ", ".join(ctx.stimulus_sets), "sites": ", ".join(entry["sites"])},
        "parameters": yaml.safe_dump({"model": entry, "analyses": ctx.analyses}, sort_keys=False),
    }
    (work / "index.html").write_text(env.get_template("page.html").render(**page), encoding="utf-8")
    n_errors = len(page["errors"])
    checkpoints = []
    for c in ctx.checkpoints:
        sections, section_errors = _sections("checkpoint", ctx, c)
        failed = [f"{name}: {s.get('error')}" for summary in c.summaries.values()
                  for name, s in summary.get("sites", {}).items() if s.get("status") == "failed"]
        target = layout.checkpoint_page(work, c.run, c.checkpoint, c.stimuli)
        target.parent.mkdir(parents=True, exist_ok=True)
        html = env.get_template("page.html").render(**{
            **_common(f"{ctx.model_name} · {c.run} · {c.checkpoint} · {c.stimuli}", "../../"),
            "model_href": "../index.html", "model_name": ctx.model_name,
            "sections": sections, "errors": failed + section_errors,
            "intro": {"run": c.run, "checkpoint": c.checkpoint, "training step": c.step, "stimulus set": c.stimuli},
        })
        target.write_text(html, encoding="utf-8")
        n_errors += len(failed) + len(section_errors)
        checkpoints.append({"label": f"{c.run}/{c.checkpoint} ({c.stimuli})",
                            "href": f"{ctx.model_name}/{c.run}/{target.name}", "step": c.step, "run": c.run})
    checkpoints.sort(key=lambda c: (c["run"], c["step"], c["label"]))
    (work / SUMMARY_FILE).write_text(json.dumps({
        "name": ctx.model_name, "source": entry["source"], "runs": ctx.runs, "stimuli": ctx.stimulus_sets,
        "n_checkpoints": len({(c.run, c.checkpoint) for c in ctx.checkpoints}), "n_errors": n_errors,
        "checkpoints": checkpoints, "href": f"{ctx.model_name}/index.html",
    }, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)


def write_index(spec: dict, out: Path) -> None:
    """Write the index page linking every model, checkpoint page and analysis."""
    models = [json.loads((Path(folder) / SUMMARY_FILE).read_text()) for folder in spec["model_reports"]]
    page = {**_common("Activation analysis report", ""), "sections": [], "errors": [], "models": models}
    html = _environment().get_template("index.html").render(**page)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out)
