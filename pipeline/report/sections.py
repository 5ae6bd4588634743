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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from pipeline import layout
from pipeline.checkpoints import training_order
from pipeline.config import TRAINING_KEYS
from pipeline.report import figures
from pipeline.report.context import (
    CheckpointResults,
    ExperimentContext,
    ModelContext,
    by_site,
    finite,
    recorded_order,
    site_order,
    step_label,
)
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
    fig, axes = figures.small_multiples(len(metrics), ncols=3, bottom=0.45 + room, hgap=0.65 + room,
                                        right=figures.legend_room(ctx.runs))
    for ax, metric in zip(axes, metrics):
        for run, series in zip(ctx.runs, runs):
            x = figures.training_axis(ax, [c.step for c in series], [c.checkpoint for c in series], in_order=in_order)
            ax.plot(x, finite(c.provenance["checkpoint_metadata"].get(metric) for c in series),
                    marker="o", ms=3, label=run)
        ax.set_title(metric, fontsize=9)
    figures.side_legend(fig, *axes[0].get_legend_handles_labels(), title="run")
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
    sites = by_site(data["sites"], recorded_order(data))
    fig, axes = figures.small_multiples(len(ACROSS_PLOTS), ncols=3, bottom=0.45 + room, hgap=0.65 + room,
                                        right=figures.legend_room(sites))
    for ax, (key, label) in zip(axes, ACROSS_PLOTS):
        x = figures.training_axis(ax, data["steps"], data["checkpoints"])
        for site, series in sites.items():
            ax.plot(x, finite(series[key]), marker=".", ms=3, label=site)
        if key == "zero_fraction":
            ax.set_ylim(-0.05 * FRACTION_TOP, max(FRACTION_TOP, ax.get_ylim()[1]))
        if key in COUNTS:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            top = max(1.0, ax.get_ylim()[1])
            ax.set_ylim(-0.05 * top, top)  # a line at 0 stays visible above the axis
        ax.set_title(label, fontsize=9)
    figures.side_legend(fig, *axes[0].get_legend_handles_labels(), title="site")
    return {"run": run, "stimuli": stimuli, "figure": figures.to_data_uri(fig)}


def _stats_across(ctx: ModelContext, _page=None) -> dict | None:
    """Each statistic over training, one figure per run."""
    blocks = ctx.run_parts("stats-across")
    return {"blocks": blocks} if blocks else None


def _checkpoint_list(ctx: ModelContext, _page=None) -> dict | None:
    """One row per checkpoint: its step, the sites its activation statistics flag and why, its metadata."""
    rows, seen = [], {}
    for c in sorted(ctx.checkpoints, key=lambda c: (c.run, c.stimuli, training_order(c.step, c.checkpoint))):
        twin = None  # an earlier checkpoint of the run with the same weights, or the same recorded step: a copy?
        for key in (("weights", c.provenance.get("checkpoint_sha256")), ("step", c.step if c.step >= 0 else None)):
            if key[1] is not None:  # a step below 0: none recorded
                twin = twin or seen.get((c.run, c.stimuli, *key))
                seen.setdefault((c.run, c.stimuli, *key), c.checkpoint)
        stats = c.summaries.get("stats", {})
        sites = by_site(stats.get("sites", {}), recorded_order(stats))
        flagged = {site: "; ".join(s["flags"]) for site, s in sites.items() if s.get("flags")}
        href = layout.checkpoint_page("", c.run, c.checkpoint, c.stimuli).as_posix()
        rows.append({"run": c.run, "checkpoint": c.checkpoint, "stimuli": c.stimuli,
                     "step": step_label(c.step, ctx.model["source"]), "href": href, "flagged": flagged, "twin": twin,
                     "metadata": {k: v for k, v in c.provenance.get("checkpoint_metadata", {}).items()
                                  if (v is None or isinstance(v, (int, float, str))) and k != "params"}})
    return {"rows": rows} if rows else None


def _stats(_ctx: ModelContext, page: CheckpointResults) -> dict | None:
    """Per-site table of activation statistics, a sparsity chart and the largest massive activations."""
    summary = page.summaries.get("stats")
    if summary is None:
        return None
    sites = by_site(summary["sites"], recorded_order(summary))
    ok = {name: s for name, s in sites.items() if s.get("status") == "ok"}
    chart = figures.bar_chart(list(ok), [s["zero_fraction"] for s in ok.values()],
                              "fraction of zero activations per site", "fraction") if ok else None
    if chart is not None:
        chart.axes[0].set_ylim(0.0, max(FRACTION_TOP, chart.axes[0].get_ylim()[1]))
    massive, more = _massive_units(page, ok)
    return {"sites": sites, "columns": STATS_COLUMNS, "params": summary["params"],
            "chart": figures.to_data_uri(chart) if chart else None, "massive": massive, "more_units": more,
            "units_per_site": MASSIVE_UNITS,
            "runtime": summary.get("runtime_seconds")}


MASSIVE_UNITS = 5  # units listed per site in the table of massive activations, most massive values first


def _massive_units(page: CheckpointResults, sites: dict) -> tuple[list[dict], dict[str, int]]:
    """One row per (site, unit) with massive activations: how many, the largest of them among the values the
    analysis lists (its ``top_massive``, largest first per site) and where those occur. Returns the rows and,
    per site, how many more units have massive activations than are listed."""
    rows, more = [], {}
    with_massive = {site: s for site, s in sites.items() if s["massive_count"]}
    if not with_massive:
        return rows, more
    group = ResultGroup(page.result_stores["stats"])
    texts = {row["id"]: row.get("text", "") for row in page.stimulus_table(limit=10**6)}
    for site, s in with_massive.items():
        counts = group[f"{site}:massive_count"]
        units = np.flatnonzero(counts)
        units = units[np.argsort(-counts[units], kind="stable")]
        more[site] = max(0, units.size - MASSIVE_UNITS)
        for unit in units[:MASSIVE_UNITS].tolist():
            listed = [m for m in s["top_massive"] if m["unit"] == unit]
            largest = max(listed, key=lambda m: abs(m["value"]), default=None)
            places = Counter((m["position"], m.get("token", "")) for m in listed).most_common(3)
            rows.append({"site": site, "unit": unit, "count": int(counts[unit]), "n_rows": s["n_rows"],
                         "n_listed": len(s["top_massive"]),
                         "largest": largest, "where": [{"position": p, "token": t, "n": n} for (p, t), n in places],
                         "elsewhere": len(listed) - sum(n for _, n in places),
                         "text": texts.get(largest["stimulus_id"], "") if largest else ""})
    return rows, {site: n for site, n in more.items() if n}


def _stimuli(_ctx: ModelContext, page: CheckpointResults) -> dict | None:
    rows = page.stimulus_table()
    return {"rows": rows, "total": page.n_stimuli, "has_label": any("label" in r for r in rows),
            "has_text": any("text" in r for r in rows), "set": page.stimuli} if rows else None


def _provenance(ctx: ModelContext, page: CheckpointResults) -> dict | None:
    prov = dict(page.provenance)
    packages = prov.pop("packages", {})
    metadata = prov.pop("checkpoint_metadata", {})  # null: a NaN metric, shown as "-"
    if "step" in prov:
        prov["step"] = step_label(prov["step"], ctx.model["source"])
    return {"items": prov, "packages": packages, "metadata": metadata}


SHAPE_MAX = math.pi / 2  # the angular shape distance lies in [0, pi/2]: one colour scale for every figure
METHOD_NAMES = {"spearman": "Spearman", "pearson": "Pearson", "kendall_tau_a": "Kendall tau-a", "rho_a": "rho-a",
                "cosine": "cosine"}


def similarity_panels(method: str) -> list[tuple]:
    """(matrix, title, colour map, vmin, vmax, colour bar label) of the CKA, RSA and shape-distance heatmaps.

    Each has a fixed scale, the same on every page: CKA from 0 to 1, RSA (a correlation of RDMs, which
    can be negative) from -1 to 1 on a diverging map, the shape distance from 0 to pi/2."""
    name = METHOD_NAMES.get(method, method)
    return [("cka", "linear CKA", "viridis", 0.0, 1.0, "CKA"),
            ("rsa", f"RSA ({name})", "RdBu_r", -1.0, 1.0, f"{name} correlation of RDMs"),
            ("shape", "angular shape distance", "magma_r", 0.0, SHAPE_MAX, "radians")]


def similarity_figure(blocks: list[tuple[str, dict, list[str]]], method: str) -> Figure:
    """One row of CKA, RSA and shape-distance heatmaps per block ``(title prefix, matrices, labels)``, where
    ``matrices`` maps "cka", "rsa" and "shape" to square matrices over ``labels``; RSA by ``method``."""
    panels = similarity_panels(method)
    labels = [label for _, _, names in blocks for label in names]
    size = max(2.3, 0.13 * max(len(names) for _, _, names in blocks))
    fig, axes = figures.heatmap_grid(len(panels) * len(blocks), len(panels), size, labels)
    for row, (prefix, matrices, names) in enumerate(blocks):
        for k, (name, title, cmap, vmin, vmax, label) in enumerate(panels):
            figures.heatmap(axes[row * len(panels) + k], matrices[name], names, prefix + title, cmap=cmap,
                            vmin=vmin, vmax=vmax, row_labels=k == 0, colorbar_label=label)
    return fig


STARS = ((0.001, "***"), (0.01, "**"), (0.05, "*"))


def stars(pvalue) -> str:
    """Significance marks of a p-value: * < 0.05, ** < 0.01, *** < 0.001."""
    if pvalue is None or not np.isfinite(pvalue):
        return ""
    return next((mark for level, mark in STARS if pvalue < level), "")


def star_legend(n_permutations: int) -> str:
    """What the marks mean, for the levels a permutation test of ``n_permutations`` can reach (its smallest
    p is 1/(n_permutations + 1))."""
    floor = 1.0 / (n_permutations + 1)
    levels = [f"{mark} p < {level:g}" for level, mark in reversed(STARS) if level > floor]
    return ", ".join(levels) if levels else f"with {n_permutations} permutations no p falls below 0.05"


def p_label(pvalue, n_permutations: int) -> str:
    """A permutation p-value as text: "≤ 1/(n + 1)" at the smallest value the test can give, else 4 significant
    digits."""
    if pvalue is None:
        return "-"
    if pvalue <= (1.0 + 1e-9) / (n_permutations + 1):
        return f"≤ 1/{n_permutations + 1}"
    return f"{pvalue:.4g}"


def _similarity(_ctx: ModelContext, page: CheckpointResults) -> dict | None:
    """Site x site CKA, RSA and shape-distance heatmaps, and each RDM against the label and input RDMs."""
    summary = page.summaries.get("similarity")
    if summary is None:
        return None
    result = ResultGroup(page.result_stores["similarity"])
    stored = result["site"].tolist()
    forward = recorded_order(summary)
    sites = site_order(stored, forward)
    figure, chance = None, None
    if len(sites) > 1:  # one site compared with itself says nothing
        index = np.ix_(*[[stored.index(s) for s in sites]] * 2)
        matrices = {name: result[name][index] for name in ("cka", "rsa", "shape")}
        figure = figures.to_data_uri(similarity_figure([("", matrices, sites)], summary["params"]["compare_method"]))
        if "cka_chance" in result:
            chance = _chance_range([result["cka_chance"][index]])
    n_permutations = summary["params"]["n_permutations"]
    rows = []
    for site, tests in by_site(summary["tests"], forward).items():
        for ref, t in tests.items():
            rows.append({"site": site, "reference": ref, "method": _test_method(summary, t), "error": t.get("error"),
                         "statistic": t.get("statistic"), "p": p_label(t.get("pvalue"), n_permutations),
                         "ci_low": t.get("ci_low"), "ci_high": t.get("ci_high"),
                         "n_bootstrap_used": t.get("n_bootstrap_used"), "ceiling": t.get("ceiling"),
                         "stars": stars(t.get("pvalue"))})
    chart = _reference_chart(summary)
    return {"figure": figure, "cka_chance": chance, "n_sites": len(sites), "rows": rows,
            "chart": figures.to_data_uri(chart) if chart else None, "params": summary["params"],
            "references": summary["references"], "n_stimuli": summary["n_stimuli"],
            "representation": summary["representation"], "stimuli_from": summary.get("stimuli_from"),
            "n_stimuli_total": summary["n_stimuli_total"], "runtime": summary.get("runtime_seconds"),
            "label_ceiling": _label_ceiling(summary), "star_legend": star_legend(n_permutations),
            "skipped": {s: v.get("error") or v.get("rdm_error") for s, v in by_site(summary["sites"], forward).items()
                        if v.get("status") != "ok" or v.get("rdm_error")}}


# Above this chance level a biased CKA mostly measures how few the stimuli are against the patterns' dimensions.
HIGH_CKA_CHANCE = 0.2


def _chance_range(matrices: list) -> dict | None:
    """Lowest and highest chance level of the CKA between two different members (sites, checkpoints, models) of
    each (r, r) matrix (``cka_chance`` of a similarity result); None without one (results of the debiased CKA)."""
    pairs = np.concatenate([np.asarray(M, dtype=float)[~np.eye(len(M), dtype=bool)] for M in matrices if M is not None]
                           + [np.zeros(0)])
    if pairs.size == 0:
        return None
    return {"low": float(pairs.min()), "high": float(pairs.max()), "high_chance": bool(pairs.max() > HIGH_CKA_CHANCE)}


def _label_ceiling(summary: dict) -> str | None:
    """The largest tau-a any RDM can reach against the label RDM, as text (one value: every site is compared on
    the same stimuli); None without a label test."""
    values = sorted({round(t["ceiling"], 3) for tests in summary["tests"].values()
                     if (t := tests.get("label", {})).get("ceiling") is not None})
    if not values:
        return None
    return f"{values[0]:.3g}" if len(values) == 1 else f"{values[0]:.3g} to {values[-1]:.3g}"


def _test_method(summary: dict, test: dict) -> str:
    """How a site's RDM was compared with a reference, by name (results written before tests named it:
    compare_method)."""
    method = test.get("method", summary["params"]["compare_method"])
    return METHOD_NAMES.get(method, method)


def _reference_chart(summary: dict) -> Figure | None:
    """Bars of each site's similarity to each reference RDM, its bootstrap interval as a line from low to high
    (a percentile interval need not hold the estimate), stars above."""
    sites = [s for s, tests in by_site(summary["tests"], recorded_order(summary)).items()
             if any("statistic" in t for t in tests.values())]
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
    ordered = by_site(data["sites"], recorded_order(data)) if data else {}
    sites = {s: v for s, v in ordered.items() if len(v["steps"]) >= 2}
    if not sites:
        return None
    labelled = {site: figures.checkpoint_labels(v["steps"], v["checkpoints"]) for site, v in sites.items()}
    ticks = {site: names for site, (names, _) in labelled.items()}
    axis = "checkpoint" if any(by_name for _, by_name in labelled.values()) else "training step"
    fig, axes = figures.heatmap_grid(2 * len(sites), len(sites), 2.4, [t for site in sites for t in ticks[site]],
                                     axis_titles=True)
    for col, (site, v) in enumerate(sites.items()):
        figures.heatmap(axes[col], v["cka"], ticks[site], f"{site}: CKA", vmin=0.0, vmax=1.0,
                        row_labels=col == 0, colorbar_label="CKA")
        figures.heatmap(axes[len(sites) + col], v["shape"], ticks[site], f"{site}: shape distance",
                        cmap="magma_r", vmin=0.0, vmax=SHAPE_MAX, row_labels=col == 0, colorbar_label="radians")
        for ax in (axes[col], axes[len(sites) + col]):
            ax.set_xlabel(axis, fontsize=7)
            if col == 0:
                ax.set_ylabel(axis, fontsize=7)
    return {"run": run, "stimuli": stimuli, "figure": figures.to_data_uri(fig),
            "cka_chance": _chance_range([v.get("cka_chance") for v in sites.values()]),
            "final": [{"site": s, "cka": v["cka"][-1], "checkpoints": ticks[s]} for s, v in sites.items()]}


def _similarity_across(ctx: ModelContext, _page=None) -> dict | None:
    """Checkpoint x checkpoint CKA and shape distance per site (representational drift over training), per run."""
    blocks = ctx.run_parts("similarity-across")
    return {"blocks": blocks} if blocks else None


TRAINING_SETTINGS = {key for keys in TRAINING_KEYS.values() for group in keys for key in group}


def _test_metrics(summary: dict) -> tuple[list[str], list[dict]]:
    """The test metrics (``test_*`` numbers other than training settings: accuracy, loss, MSE) in the metadata
    of each compared checkpoint: (metric names, one row per entry with its label, checkpoint and metrics)."""
    rows = []
    for entry, prov in zip(summary["entries"], summary["provenance"]["entries"]):
        metadata = prov.get("checkpoint_metadata") or {}
        rows.append({"label": entry["label"], "checkpoint": entry["checkpoint"],
                     "metrics": {k: v for k, v in metadata.items()
                                 if k.startswith("test_") and k not in TRAINING_SETTINGS
                                 and (v is None or isinstance(v, (int, float)))}})
    names = sorted({name for row in rows for name in row["metrics"]})
    return names, rows


def _similarity_models(ctx: ExperimentContext, _page=None) -> dict | None:
    """Model x model CKA, RSA and shape distance per site at the final checkpoints, per stimulus set, with the
    test metrics of those checkpoints."""
    blocks = []
    for (analysis, stimuli), summary in sorted(ctx.summaries.items()):
        if analysis != "similarity":
            continue
        comparisons = by_site(summary["comparisons"], recorded_order(summary))
        figure = None
        if comparisons:
            fig = similarity_figure([(f"{site}: ", c, c["entries"]) for site, c in comparisons.items()],
                                    summary["params"]["compare_method"])
            figure = figures.to_data_uri(fig)
        metrics, rows = _test_metrics(summary)
        blocks.append({"stimuli": stimuli, "rows": rows, "metrics": metrics, "figure": figure,
                       "cka_chance": _chance_range([c.get("cka_chance") for c in comparisons.values()]),
                       "n_sites": len(comparisons), "params": summary["params"],
                       "n_stimuli": summary.get("n_stimuli"), "n_stimuli_total": summary.get("n_stimuli_total"),
                       "stimuli_from": summary.get("stimuli_from")})
    return {"blocks": blocks} if blocks else None


MDS_MARKERS = "osD^vPX*ph<>"


def mds_figure(coords: np.ndarray, entries: np.ndarray, sites: np.ndarray, title: str, forward=()) -> Figure:
    """Map of representations ``coords`` (points, 2): one marker per entry (run; shapes repeat unfilled past the
    twelfth), one colour per site running along ``site_order`` with the ``forward`` order (dark: first), named in a
    legend beside the map."""
    names = list(dict.fromkeys(entries.tolist()))
    ordered = site_order(set(sites.tolist()), forward)
    colours = {site: tuple(c) for site, c in zip(ordered, colormaps["viridis"](np.linspace(0.0, 0.92, len(ordered))))}
    markers = {name: MDS_MARKERS[k % len(MDS_MARKERS)] for k, name in enumerate(names)}
    hollow = {name: (k // len(MDS_MARKERS)) % 2 == 1 for k, name in enumerate(names)}  # past the shapes: unfilled
    handles = [Line2D([], [], ls="")] + [Line2D([], [], ls="", marker=markers[n], color="#555", ms=5,
                                                markerfacecolor="none" if hollow[n] else "#555") for n in names]
    handles += [Line2D([], [], ls="")] + [Line2D([], [], ls="", marker="o", color=colours[s], ms=5) for s in ordered]
    labels = ["run", *names, "site", *ordered]
    fig = figures.figure(5.2 + figures.legend_room(labels, 7), max(5.0, 0.18 * len(labels) + 0.6))
    figures.place(fig, left=0.8, bottom=0.5, right=figures.legend_room(labels, 7))
    ax = fig.add_subplot()
    for name in names:
        for site in ordered:
            points = coords[(entries == name) & (sites == site)]
            style = ({"facecolors": "none", "edgecolors": colours[site], "linewidths": 1.0} if hollow[name] else
                     {"color": colours[site], "edgecolors": "black", "linewidths": 0.3})
            ax.scatter(*points.T, marker=markers[name], s=30, **style)
    ax.set_aspect("equal", adjustable="datalim")  # distances on the map read the same in both directions
    ax.margins(0.08)
    ax.set_xlabel("MDS 1")
    ax.set_ylabel("MDS 2")
    ax.set_title(title, fontsize=10)
    legend = figures.side_legend(fig, handles, labels, fontsize=7)
    for heading in (0, len(names) + 1):  # "run" and "site"
        legend.get_texts()[heading].set_fontweight("bold")
    return fig


def _similarity_mds(ctx: ExperimentContext, _page=None) -> dict | None:
    """2-D classical MDS of all final-checkpoint representations under the angular shape distance."""
    blocks = []
    for (analysis, stimuli), summary in sorted(ctx.summaries.items()):
        if analysis != "similarity" or summary["mds"]["n_points"] < 3:
            continue
        result = ResultGroup(ctx.result_stores[(analysis, stimuli)])
        fig = mds_figure(result["mds"], result["point_entry"], result["point_site"],
                         f"{stimuli}: representations under the angular shape distance", recorded_order(summary))
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
            needs="a series of two or more checkpoints recorded on stimuli without a time or token axis (such as "
                  "digits), for the sites and models chosen in analyses.tca", series=True),
    Section("connectome", "Functional connectome over training", "model", collect_connectome, connectome_run,
            needs="a series of two or more checkpoints (a trained or watched model), for the sites and models "
                  "chosen in analyses.connectome", series=True),
    Section("tca", "Tensor component analysis", "checkpoint", collect_tca,
            needs="stimuli with a time or token axis (sentences, flip-flop trials, array sets with sequence: "
                  "true), for the sites and models chosen in analyses.tca"),
]
