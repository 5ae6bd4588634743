"""The sections of report pages, declared in one list.

A section names its page (``scope``: the model page or a checkpoint page), a title, and a
``collect`` function that turns the page's results into the data its template
``templates/sections/<id>.html`` shows (None when there is nothing to show). A new analysis adds
its section by appending to SECTIONS and adding a template; the framework renders them in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline import layout
from pipeline.report import figures
from pipeline.report.context import CheckpointResults, ModelContext, finite

STATS_COLUMNS = ("n_units", "zero_fraction", "n_dead", "n_constant", "nan_count", "inf_count", "median_abs",
                 "max_abs", "massive_count")


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    scope: str  # "model" or "checkpoint"
    collect: Callable


def _training(ctx: ModelContext, _page=None) -> dict | None:
    """Checkpoint metadata (accuracy, loss) over training steps, one line per run."""
    metrics = sorted({k for c in ctx.checkpoints for k, v in c.provenance.get("checkpoint_metadata", {}).items()
                      if isinstance(v, (int, float)) and k not in ("step", "epoch", "seed")})
    if not metrics:
        return None
    fig, axes = figures.small_multiples(len(metrics), ncols=3)
    for ax, metric in zip(axes, metrics):
        for run in ctx.runs:
            series = ctx.series(run, ctx.stimulus_sets[0])
            ax.plot([c.step for c in series], finite(c.provenance["checkpoint_metadata"].get(metric) for c in series),
                    marker="o", ms=3, label=run)
        ax.set_xlabel("training step")
        ax.set_title(metric, fontsize=9)
    axes[0].legend(fontsize=7)
    return {"figure": figures.to_data_uri(fig), "metrics": metrics}


ACROSS_PLOTS = (("zero_fraction", "fraction of zero activations"), ("n_dead", "dead units"),
                ("massive_count", "massive activations"), ("mean_drift", "drift of unit means"),
                ("median_abs", "median |activation|"), ("nan_count", "NaN values"))


def _stats_across(ctx: ModelContext, _page=None) -> dict | None:
    """Each statistic over training, one panel per statistic, one line per (run, site)."""
    blocks = []
    for (analysis, run, stimuli), data in sorted(ctx.across.items()):
        if analysis != "stats" or len(data["steps"]) < 2:
            continue
        fig, axes = figures.small_multiples(len(ACROSS_PLOTS), ncols=3)
        for ax, (key, label) in zip(axes, ACROSS_PLOTS):
            for site, series in data["sites"].items():
                ax.plot(data["steps"], finite(series[key]), marker=".", ms=3, label=site)
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("training step")
        axes[0].legend(fontsize=6)
        blocks.append({"run": run, "stimuli": stimuli, "figure": figures.to_data_uri(fig)})
    return {"blocks": blocks} if blocks else None


def _checkpoint_list(ctx: ModelContext, _page=None) -> dict | None:
    rows = []
    for c in sorted(ctx.checkpoints, key=lambda c: (c.run, c.stimuli, c.step, c.checkpoint)):
        flags = [f for s in c.summaries.get("stats", {}).get("sites", {}).values() for f in s.get("flags", [])]
        href = layout.checkpoint_page("", c.run, c.checkpoint, c.stimuli).as_posix()
        rows.append({"run": c.run, "checkpoint": c.checkpoint, "stimuli": c.stimuli, "step": c.step,
                     "href": href, "n_flags": len(flags),
                     "metadata": {k: v for k, v in c.provenance.get("checkpoint_metadata", {}).items()
                                  if isinstance(v, (int, float, str)) and k not in ("params",)}})
    return {"rows": rows} if rows else None


def _stats(_ctx: ModelContext, page: CheckpointResults) -> dict | None:
    """Per-site table of activation statistics, a sparsity chart and the largest massive activations."""
    summary = page.summaries.get("stats")
    if summary is None:
        return None
    sites = summary["sites"]
    ok = {name: s for name, s in sites.items() if s.get("status") == "ok"}
    chart = figures.bar_chart(list(ok), [s["zero_fraction"] for s in ok.values()],
                              "fraction of zero activations per site", "fraction") if ok else None
    massive = [{**m, "site": name} for name, s in ok.items() for m in s["top_massive"]]
    massive.sort(key=lambda m: -abs(m["value"]))
    texts = {row["id"]: row.get("text", "") for row in page.stimulus_table(limit=10**6)} if massive else {}
    for m in massive:
        m["text"] = texts.get(m.get("stimulus_id"), "")
    return {"sites": sites, "columns": STATS_COLUMNS, "params": summary["params"],
            "chart": figures.to_data_uri(chart) if chart else None, "massive": massive[:30],
            "runtime": summary.get("runtime_seconds")}


def _stimuli(_ctx: ModelContext, page: CheckpointResults) -> dict | None:
    rows = page.stimulus_table()
    return {"rows": rows, "has_text": any("text" in r for r in rows), "set": page.stimuli} if rows else None


def _provenance(_ctx: ModelContext, page: CheckpointResults) -> dict | None:
    prov = dict(page.provenance)
    packages = prov.pop("packages", {})
    metadata = prov.pop("checkpoint_metadata", {})
    return {"items": prov, "packages": packages, "metadata": metadata}


def fmt(value) -> str:
    """Compact text for a table cell."""
    if isinstance(value, float):
        return "-" if np.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


SECTIONS = [
    Section("training", "Training", "model", _training),
    Section("stats-across", "Activation statistics across training", "model", _stats_across),
    Section("checkpoints", "Checkpoints", "model", _checkpoint_list),
    Section("stats", "Activation statistics", "checkpoint", _stats),
    Section("stimuli", "Stimuli", "checkpoint", _stimuli),
    Section("provenance", "Provenance", "checkpoint", _provenance),
]
