"""The sections of report pages, declared in one list.

A section names its page (``scope``: the model page, a checkpoint page or the page comparing
models), a title, and a ``collect`` function that turns the page's results into the data its
template ``templates/sections/<id>.html`` shows (None when there is nothing to show). A new
analysis adds its section by appending to SECTIONS and adding a template; the framework renders
them in order.

A model section drawn from each run's across-checkpoint results also names ``run_part(ctx, run,
stimuli)``: that run's share of the section (JSON data, figures as data URIs, None when the run
has nothing for it). The run's own job draws it (``report-run``), so a new checkpoint re-draws only
its run; ``collect`` then finds the shares of all runs in ``ctx.run_parts(section.id)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline import layout
from pipeline.checkpoints import training_order
from pipeline.report import figures
from pipeline.report.context import CheckpointResults, ExperimentContext, ModelContext, finite
from pipeline.report.factorization import (
    collect_connectome,
    collect_tca,
    collect_tca_across,
    connectome_run,
    tca_across_run,
)
from pipeline.results import ResultGroup

STATS_COLUMNS = ("n_units", "zero_fraction", "n_dead", "n_constant", "nan_count", "inf_count", "median_abs",
                 "max_abs", "massive_count")


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    scope: str  # "model", "checkpoint" or "experiment" (the page comparing models)
    collect: Callable
    run_part: Callable | None = None  # model sections only: one run's share, drawn by the run's job
    needs: str = ""  # what it needs to have results, said where it has none
    series: bool = False  # about a checkpoint series: left out of the page of a Hugging Face model


def _training(ctx: ModelContext, _page=None) -> dict | None:
    """Checkpoint metadata (accuracy, loss) over training steps, one line per run."""
    values: dict[str, set] = {}
    for c in ctx.checkpoints:
        for key, value in c.provenance.get("checkpoint_metadata", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "epoch", "seed"):
                values.setdefault(key, set()).add(value)
    metrics = sorted(key for key, seen in values.items() if len(seen) > 1)  # settings stay constant; metrics move
    if not metrics:
        return None
    runs = [ctx.series(run, ctx.stimulus_sets[0]) for run in ctx.runs]
    rooms = [figures.name_room([c.step for c in s], [c.checkpoint for c in s]) for s in runs]
    in_order = len(runs) > 1 and max(rooms) > 0  # runs without steps among several: numbered in order
    room = 0.0 if in_order else max(rooms)
    fig, axes = figures.small_multiples(len(metrics), ncols=3, bottom=0.45 + room, hgap=0.65 + room)
    for ax, metric in zip(axes, metrics):
        for run, series in zip(ctx.runs, runs):
            x = figures.training_axis(ax, [c.step for c in series], [c.checkpoint for c in series], in_order=in_order)
            ax.plot(x, finite(c.provenance["checkpoint_metadata"].get(metric) for c in series),
                    marker="o", ms=3, label=run)
        ax.set_title(metric, fontsize=9)
    axes[0].legend(fontsize=7)
    return {"figure": figures.to_data_uri(fig), "metrics": metrics}


ACROSS_PLOTS = (("zero_fraction", "fraction of zero activations"), ("n_dead", "dead units"),
                ("massive_count", "massive activations"), ("mean_drift", "drift of unit means"),
                ("median_abs", "median nonzero |activation|"), ("nan_count", "NaN values"))
COUNTS = {"n_dead", "massive_count", "nan_count"}  # whole numbers: integer ticks
FRACTION_TOP = 0.05  # fractions are drawn up to at least this, so that float noise near 0 does not look like change


def _stats_across_run(ctx: ModelContext, run: str, stimuli: str) -> dict | None:
    """One run's statistics over training: one panel per statistic, one line per site."""
    data = ctx.across.get(("stats", run, stimuli))
    if data is None or len(data["steps"]) < 2:
        return None
    room = figures.name_room(data["steps"], data["checkpoints"])
    fig, axes = figures.small_multiples(len(ACROSS_PLOTS), ncols=3, bottom=0.45 + room, hgap=0.65 + room)
    for ax, (key, label) in zip(axes, ACROSS_PLOTS):
        x = figures.training_axis(ax, data["steps"], data["checkpoints"])
        for site, series in data["sites"].items():
            ax.plot(x, finite(series[key]), marker=".", ms=3, label=site)
        if key == "zero_fraction":
            ax.set_ylim(-0.05 * FRACTION_TOP, max(FRACTION_TOP, ax.get_ylim()[1]))
        if key in COUNTS:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            top = max(1.0, ax.get_ylim()[1])
            ax.set_ylim(-0.05 * top, top)  # a line at 0 stays visible above the axis
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=6)
    return {"run": run, "stimuli": stimuli, "figure": figures.to_data_uri(fig)}


def _stats_across(ctx: ModelContext, _page=None) -> dict | None:
    """Each statistic over training, one figure per run."""
    blocks = ctx.run_parts("stats-across")
    return {"blocks": blocks} if blocks else None


def _checkpoint_list(ctx: ModelContext, _page=None) -> dict | None:
    rows = []
    for c in sorted(ctx.checkpoints, key=lambda c: (c.run, c.stimuli, training_order(c.step, c.checkpoint))):
        flags = [f for s in c.summaries.get("stats", {}).get("sites", {}).values() for f in s.get("flags", [])]
        href = layout.checkpoint_page("", c.run, c.checkpoint, c.stimuli).as_posix()
        rows.append({"run": c.run, "checkpoint": c.checkpoint, "stimuli": c.stimuli, "step": c.step,
                     "href": href, "n_flags": len(flags),
                     "metadata": {k: v for k, v in c.provenance.get("checkpoint_metadata", {}).items()
                                  if (v is None or isinstance(v, (int, float, str))) and k != "params"}})
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
    if chart is not None:
        chart.axes[0].set_ylim(0.0, max(FRACTION_TOP, chart.axes[0].get_ylim()[1]))
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
    return {"rows": rows, "total": page.n_stimuli, "has_text": any("text" in r for r in rows),
            "set": page.stimuli} if rows else None


def _provenance(_ctx: ModelContext, page: CheckpointResults) -> dict | None:
    prov = dict(page.provenance)
    packages = prov.pop("packages", {})
    metadata = {k: "-" if v is None else v for k, v in prov.pop("checkpoint_metadata", {}).items()}  # null: NaN metric
    return {"items": prov, "packages": packages, "metadata": metadata}


SHAPE_MAX = math.pi / 2  # the angular shape distance lies in [0, pi/2]: one colour scale for every figure
SIMILARITY_MATRICES = (("cka", "linear CKA", "viridis", 0.0, 1.0),
                       ("rsa", "RSA (RDM similarity)", "viridis", None, 1.0),
                       ("shape", "angular shape distance (rad)", "magma_r", 0.0, SHAPE_MAX))


def stars(pvalue) -> str:
    """Significance marks of a p-value: * < 0.05, ** < 0.01, *** < 0.001."""
    if pvalue is None or not np.isfinite(pvalue):
        return ""
    return "***" if pvalue < 0.001 else "**" if pvalue < 0.01 else "*" if pvalue < 0.05 else ""


def _similarity(_ctx: ModelContext, page: CheckpointResults) -> dict | None:
    """Site x site CKA, RSA and shape-distance heatmaps, and each RDM against the label and input RDMs."""
    summary = page.summaries.get("similarity")
    if summary is None:
        return None
    result = ResultGroup(page.result_stores["similarity"])
    sites = result["site"].tolist()
    figure = None
    if len(sites) > 1:  # one site compared with itself says nothing
        fig, axes = figures.heatmap_grid(3, 3, max(2.2, 0.13 * len(sites)), sites)
        for k, (ax, (name, title, cmap, vmin, vmax)) in enumerate(zip(axes, SIMILARITY_MATRICES)):
            figures.heatmap(ax, result[name], sites, title, cmap=cmap, vmin=vmin, vmax=vmax, row_labels=k == 0)
        figure = figures.to_data_uri(fig)
    rows = []
    for site, tests in summary["tests"].items():
        for ref, t in tests.items():
            rows.append({"site": site, "reference": ref, "method": _test_method(summary, t), "error": t.get("error"),
                         "statistic": t.get("statistic"),
                         "pvalue": t.get("pvalue"), "ci_low": t.get("ci_low"), "ci_high": t.get("ci_high"),
                         "n_bootstrap_used": t.get("n_bootstrap_used"), "ceiling": t.get("ceiling"),
                         "stars": stars(t.get("pvalue"))})
    chart = _reference_chart(summary)
    return {"figure": figure, "n_sites": len(sites), "rows": rows,
            "chart": figures.to_data_uri(chart) if chart else None, "params": summary["params"],
            "references": summary["references"], "n_stimuli": summary["n_stimuli"],
            "n_stimuli_total": summary["n_stimuli_total"], "runtime": summary.get("runtime_seconds"),
            "skipped": {s: v.get("error") or v.get("rdm_error") for s, v in summary["sites"].items()
                        if v.get("status") != "ok" or v.get("rdm_error")}}


METHOD_NAMES = {"spearman": "Spearman", "pearson": "Pearson", "kendall_tau_a": "Kendall tau-a", "rho_a": "rho-a",
                "cosine": "cosine"}


def _test_method(summary: dict, test: dict) -> str:
    """How a site's RDM was compared with a reference, by name (results written before tests named it:
    compare_method)."""
    method = test.get("method", summary["params"]["compare_method"])
    return METHOD_NAMES.get(method, method)


def _reference_chart(summary: dict) -> Figure | None:
    """Bars of each site's similarity to each reference RDM, its bootstrap interval as a line from low to high
    (a percentile interval need not hold the estimate), stars above."""
    sites = [s for s, tests in summary["tests"].items() if any("statistic" in t for t in tests.values())]
    refs = [r for r, v in summary["references"].items() if v.get("status") == "ok"]
    if not sites or not refs:
        return None
    below = figures.SIN60 * figures.text_inches(sites, 7) + 0.2
    left = max(0.7, figures.text_inches(sites[:1], 7) / 2 + 0.1)
    fig = figures.figure(max(5.0, 0.5 * len(sites) * len(refs) + 1.5), 2.2 + below)
    ax = fig.add_subplot()
    width = 0.8 / len(refs)
    for k, ref in enumerate(refs):
        tests = [summary["tests"][s].get(ref, {}) for s in sites]
        x = np.arange(len(sites)) + (k - (len(refs) - 1) / 2) * width
        value = np.array(finite(t.get("statistic") for t in tests))
        low = np.array(finite(t.get("ci_low") for t in tests))
        high = np.array(finite(t.get("ci_high") for t in tests))
        method = next((_test_method(summary, t) for t in tests if t), summary["params"]["compare_method"])
        ax.bar(x, value, width, label=f"{ref} RDM ({method})")
        ax.vlines(x, low, high, colors="black", lw=1)
        for xi, top, t in zip(x, np.fmax(value, high), tests):
            if np.isfinite(top):
                ax.text(xi, top, stars(t.get("pvalue")), ha="center", va="bottom", fontsize=8)
        ceiling = np.array(finite(t.get("ceiling") for t in tests))
        if np.isfinite(ceiling).any():
            ax.hlines(ceiling, x - width / 2, x + width / 2, colors="black", linestyles="dashed", lw=0.8,
                      label=f"largest {method} possible against the {ref} RDM")
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xticks(range(len(sites)), sites, rotation=60, ha="right", fontsize=7)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.08 * (high - low))  # room for the stars above the tallest interval
    ax.set_ylabel("RDM similarity")
    # the legend sits above the bars in two columns: the figure is made wide enough for them
    labels = ax.get_legend_handles_labels()[1]
    fig.set_size_inches(max(fig.get_figwidth(), left + 0.3 + 2 * (figures.text_inches(labels, 7) + 0.5)),
                        fig.get_figheight())
    figures.place(fig, left=left, bottom=below, top=0.6)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.02), ncol=2, frameon=False)
    return fig


def _similarity_across_run(ctx: ModelContext, run: str, stimuli: str) -> dict | None:
    """One run's checkpoint x checkpoint CKA (top row) and shape distance (bottom row), one column per site."""
    data = ctx.across.get(("similarity", run, stimuli))
    sites = {s: v for s, v in data["sites"].items() if len(v["steps"]) >= 2} if data else {}
    if not sites:
        return None
    ticks = {site: figures.checkpoint_labels(v["steps"], v["checkpoints"])[0] for site, v in sites.items()}
    fig, axes = figures.heatmap_grid(2 * len(sites), len(sites), 2.4, [t for site in sites for t in ticks[site]])
    for col, (site, v) in enumerate(sites.items()):
        figures.heatmap(axes[col], v["cka"], ticks[site], f"{site}: CKA", vmin=0.0, vmax=1.0,
                        row_labels=col == 0)
        figures.heatmap(axes[len(sites) + col], v["shape"], ticks[site], f"{site}: shape distance (rad)",
                        cmap="magma_r", vmin=0.0, vmax=SHAPE_MAX, row_labels=col == 0)
    return {"run": run, "stimuli": stimuli, "figure": figures.to_data_uri(fig),
            "final": [{"site": s, "cka": v["cka"][-1], "checkpoints": ticks[s]} for s, v in sites.items()]}


def _similarity_across(ctx: ModelContext, _page=None) -> dict | None:
    """Checkpoint x checkpoint CKA and shape distance per site (representational drift over training), per run."""
    blocks = ctx.run_parts("similarity-across")
    return {"blocks": blocks} if blocks else None


def _similarity_models(ctx: ExperimentContext, _page=None) -> dict | None:
    """Model x model CKA and shape distance per site at the final checkpoints, per stimulus set."""
    blocks = []
    for (analysis, stimuli), summary in sorted(ctx.summaries.items()):
        if analysis != "similarity":
            continue
        comparisons = summary["comparisons"]
        figure = None
        if comparisons:
            entries = [e for c in comparisons.values() for e in c["entries"]]
            ncols = min(4, 2 * len(comparisons))
            size = max(2.4, 0.13 * max(len(c["entries"]) for c in comparisons.values()))
            fig, axes = figures.heatmap_grid(2 * len(comparisons), ncols, size, entries)
            for k, (site, c) in enumerate(comparisons.items()):
                figures.heatmap(axes[2 * k], c["cka"], c["entries"], f"{site}: CKA", vmin=0.0, vmax=1.0,
                                row_labels=2 * k % ncols == 0)
                figures.heatmap(axes[2 * k + 1], c["shape"], c["entries"], f"{site}: shape distance (rad)",
                                cmap="magma_r", vmin=0.0, vmax=SHAPE_MAX, row_labels=False)
            figure = figures.to_data_uri(fig)
        blocks.append({"stimuli": stimuli, "entries": summary["entries"], "figure": figure,
                       "n_sites": len(comparisons)})
    return {"blocks": blocks} if blocks else None


def _similarity_mds(ctx: ExperimentContext, _page=None) -> dict | None:
    """2-D classical MDS of all final-checkpoint representations under the angular shape distance."""
    blocks = []
    for (analysis, stimuli), summary in sorted(ctx.summaries.items()):
        if analysis != "similarity" or summary["mds"]["n_points"] < 3:
            continue
        result = ResultGroup(ctx.result_stores[(analysis, stimuli)])
        coords = result["mds"]
        entries = result["point_entry"]
        sites = result["point_site"]
        fig = figures.figure(6.5, 5.0)
        figures.place(fig, left=0.8, bottom=0.5)
        ax = fig.add_subplot()
        for entry in dict.fromkeys(entries):
            ax.scatter(*coords[entries == entry].T, label=entry, s=25)
        for (x, y), site in zip(coords, sites):
            ax.annotate(site, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_aspect("equal", adjustable="datalim")  # distances on the map read the same in both directions
        ax.margins(x=0.15, y=0.08)  # room for the site names beside the outermost points
        ax.set_xlabel("MDS 1")
        ax.set_ylabel("MDS 2")
        ax.set_title(f"{stimuli}: representations under the angular shape distance", fontsize=10)
        ax.legend(fontsize=7)
        blocks.append({"stimuli": stimuli, "figure": figures.to_data_uri(fig), "n_points": summary["mds"]["n_points"],
                       "explained": summary["mds"]["explained"]})
    return {"blocks": blocks} if blocks else None


SECTIONS = [
    Section("training", "Training", "model", _training,
            needs="numeric metrics (accuracy, loss) in the checkpoints' metadata that change over training",
            series=True),
    Section("stats-across", "Activation statistics across training", "model", _stats_across, _stats_across_run,
            needs="the activation statistics of a run with two or more checkpoints", series=True),
    Section("checkpoints", "Checkpoints", "model", _checkpoint_list, needs="the results of recorded checkpoints"),
    Section("stats", "Activation statistics", "checkpoint", _stats,
            needs="the activation statistics of this checkpoint"),
    Section("stimuli", "Stimuli", "checkpoint", _stimuli, needs="the activation statistics of this checkpoint"),
    Section("provenance", "Provenance", "checkpoint", _provenance),
    Section("similarity-across", "Representational drift across training", "model", _similarity_across,
            _similarity_across_run, needs="the similarity analysis of a run with two or more checkpoints",
            series=True),
    Section("similarity", "Representational similarity", "checkpoint", _similarity,
            needs="the similarity analysis of this checkpoint"),
    Section("similarity-models", "Representational similarity between models", "experiment", _similarity_models,
            needs="the final checkpoints of two or more runs or models on one stimulus set"),
    Section("similarity-mds", "Map of representations (MDS)", "experiment", _similarity_mds,
            needs="three or more representations of one stimulus set"),
    Section("tca-across", "Tensor components across training", "model", collect_tca_across, tca_across_run,
            needs="a checkpoint series recorded on stimuli without a time or token axis (such as digits), "
                  "for the sites and models chosen in analyses.tca", series=True),
    Section("connectome", "Functional connectome over training", "model", collect_connectome, connectome_run,
            needs="a checkpoint series (a trained or watched model), for the sites and models chosen in "
                  "analyses.connectome", series=True),
    Section("tca", "Tensor component analysis", "checkpoint", collect_tca,
            needs="stimuli with a time or token axis (sentences, flip-flop trials), for the sites and models "
                  "chosen in analyses.tca"),
]
