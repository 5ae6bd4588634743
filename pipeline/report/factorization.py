"""Report sections of tensor component analysis and of the dynamic functional connectome.

Each ``collect_*`` function reads result stores (one Zarr group per site) and returns the data
its template shows, or None when the page has no such results; each ``*_run`` function draws one
run's share of a model section; ``sections.SECTIONS`` lists them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D

from pipeline.analyses.factorization import STABLE_SIMILARITY, replicate_similarity
from pipeline.report import figures
from pipeline.report.context import CheckpointResults, ModelContext, finite
from pipeline.results import ResultGroup

MAX_LEGEND = 12  # more distinct labels than this are coloured without a legend


def _across_store(data: dict) -> Path:
    """Result store written beside an across-checkpoint summary (``x.across.json`` -> ``x.across.zarr``)."""
    summary = Path(data["summary_file"])
    return summary.with_name(summary.name.removesuffix(".json") + ".zarr")


def factor_figure(group: ResultGroup, modes: list[str], mode_labels: list[str]):
    """One panel per mode with one row per component: bars for units, lines over positions and checkpoints
    (against training step), and dots per stimulus coloured by its label (stimuli sorted by label).

    Each row is scaled to its largest magnitude (a CP factor's scale is carried by its weight) around
    a grey zero line, every other row shaded; stacking the rows in one panel per mode draws several times faster than a
    panel per (component, mode).
    """
    weights = group["weight"]
    rank = weights.shape[0]
    labels = group["label"] if "label" in group else None
    if labels is not None:
        by_label = np.argsort(labels, kind="stable")
        colours, legend = figures.label_colours(labels[by_label])
    show_legend = labels is not None and "stimulus" in modes and len(legend) <= MAX_LEGEND
    top = 0.55 if show_legend else 0.3  # inches above the panels: titles and the legend
    steps, names = (group["step"].tolist(), group["checkpoint"].tolist()) if "checkpoint" in modes else ([], [])
    bottom = 0.45 + figures.name_room(steps, names)
    fig = figures.figure(3.3 * len(modes), 0.75 * rank + 0.05 + bottom + top)
    figures.place(fig, left=1.05, bottom=bottom, right=0.1, top=top, ncols=len(modes), wgap=0.2)
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    rows = -np.arange(rank)  # component 1 on top
    for col, (ax, mode, title) in enumerate(zip(axes, modes, mode_labels)):
        values = group[f"{mode}_factor"]  # (items, component)
        scale = np.abs(values).max(axis=0)
        scaled = 0.45 * values / np.where(scale > 0, scale, 1.0) + rows
        n = values.shape[0]
        for row in rows:
            ax.axhline(row, color="#999", lw=0.5)
            if row % 2:  # shade every other row so each trace reads against its own zero line
                ax.axhspan(row - 0.5, row + 0.5, color="#f0f0f0", zorder=0, lw=0)
        if mode == "unit":
            ax.vlines(np.tile(np.arange(n), rank), np.repeat(rows, n), scaled.T.ravel(), color="#4c72b0", lw=2)
        elif mode == "stimulus" and labels is not None:
            ax.scatter(np.tile(np.arange(n), rank), scaled[by_label].T.ravel(), c=colours * rank, s=7)
        else:
            if mode == "checkpoint":
                x = figures.training_axis(ax, steps, names, fontsize=7)
                style = {"marker": "o", "ms": 3, "color": "#c44e52"}
            else:
                x, style = group[mode], {"color": "#55a868"}
                x = x if x.dtype.kind in "iuf" else np.arange(x.size)
            for r in range(rank):
                ax.plot(x, scaled[:, r], **style)
        ax.set_ylim(rows[-1] - 0.5, 0.5)
        ax.set_yticks(rows, [f"#{r + 1} (w={w:.3g})" for r, w in enumerate(weights)] if col == 0 else [],
                      fontsize=7)
        ax.set_title(title, fontsize=9)
        if mode != "checkpoint":  # training_axis labelled it
            ax.tick_params(axis="x", labelsize=6)
            ax.locator_params(axis="x", nbins=5)
            sorted_note = " (sorted by label)" if mode == "stimulus" and labels is not None else " index"
            ax.set_xlabel(title + sorted_note, fontsize=7)
    if show_legend:
        handles = [Line2D([], [], ls="", marker="o", ms=4, color=c) for _, c in legend]
        fig.legend(handles, [str(label) for label, _ in legend], loc="upper center", ncol=len(legend), fontsize=7,
                   frameon=False, bbox_to_anchor=(0.5, 1.0), borderaxespad=0.1)
    return fig


def diagnostics_figure(group: ResultGroup):
    """Objective, replicate similarity and held-out error against rank; the chosen rank marked."""
    ranks = group["rank"]
    panels = [("objective", "relative error (train)"), ("similarity", "similarity to best replicate")]
    if "cv_test_error" in group:
        panels.append(("cv_test_error", "held-out relative error"))
    fig, axes = figures.small_multiples(len(panels), ncols=3, panel_size=(2.4, 1.5))
    for ax, (name, title) in zip(axes, panels):
        values = group[name]
        ax.scatter(np.repeat(ranks, values.shape[1]), values.ravel(), s=10, color="#4c72b0", alpha=0.7)
        if name != "similarity":
            ax.plot(ranks, values.min(axis=1), color="#4c72b0")
        elif values.shape[1] > 1:
            ax.plot(ranks, [replicate_similarity(v) for v in values], color="#4c72b0")
        if name == "cv_test_error":
            ax.plot(ranks, group["cv_train_error"].min(axis=1), color="#999", ls="--", label="train")
            ax.legend(fontsize=6, frameon=False)
        ax.axvline(group.attrs["rank"], color="#c44e52", lw=1)
        ax.set_xticks(ranks)
        ax.set_xlabel("rank", fontsize=8)
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)  # an offset or x1e-6 would sit on the title
        ax.set_title(title, fontsize=9)
    return fig


def _failed(summary: dict) -> list[dict]:
    return [{"site": site, "error": r.get("error")} for site, r in summary["sites"].items() if r.get("status") != "ok"]


def rank_cautions(result: dict, max_rank: int) -> list[str]:
    """What to keep in mind reading a site's TCA at its chosen rank: a rank at the top of the range
    searched (``max_rank``, or the tensor's smallest dimension), and components that the random starts
    do not reproduce."""
    cautions = []
    ranks, rank = result["ranks"], result["rank"]
    if rank == max(ranks) and len(ranks) > 1:
        more = "raise max_rank" if max(ranks) >= max_rank else "the tensor's smallest dimension allows no more"
        cautions.append(f"the chosen rank is the largest fitted ({rank}): the data may hold more components ({more})")
    similarity = result["similarity"][ranks.index(rank)] if rank in ranks else None
    if similarity is not None and similarity < STABLE_SIMILARITY:
        cautions.append(f"at this rank the other random starts match the best fit with mean similarity "
                        f"{similarity:.2f} (below {STABLE_SIMILARITY}): these components are not unique, "
                        "read them with care")
    return cautions


def _site_blocks(path: Path, summary: dict, modes: list[str], mode_labels: list[str]) -> list[dict]:
    blocks = []
    for site, result in summary["sites"].items():
        if result.get("status") != "ok":
            continue
        group = ResultGroup(path, site)
        cautions = rank_cautions(result, summary["params"]["max_rank"])
        blocks.append({"site": site, "result": result, "cautions": cautions,
                       "factors": figures.to_data_uri(factor_figure(group, modes, mode_labels)),
                       "diagnostics": figures.to_data_uri(diagnostics_figure(group))})
    return blocks


def collect_tca(_ctx: ModelContext, page: CheckpointResults) -> dict | None:
    """Per site of one checkpoint: factors of the suggested-rank model and the rank diagnostics."""
    summary = page.summaries.get("tca")
    if summary is None:
        return None
    blocks = _site_blocks(page.result_stores["tca"], summary, summary["modes"], summary["mode_labels"])
    if not blocks and not _failed(summary):
        return None
    return {"blocks": blocks, "failed": _failed(summary), "params": summary["params"],
            "mode_labels": summary["mode_labels"], "stable": STABLE_SIMILARITY}


def _over_training(ctx: ModelContext) -> dict | None:
    """Suggested rank and relative error of per-checkpoint TCA against training step, per (run, site)."""
    lines = {}
    for c in ctx.checkpoints:
        for site, result in c.summaries.get("tca", {}).get("sites", {}).items():
            if result.get("status") == "ok":
                lines.setdefault((c.run, c.stimuli, site), {})[c.checkpoint] = (result["rank"], result["rel_error"])
    if not any(len(points) > 1 for points in lines.values()):
        return None
    series = {(run, stimuli): ctx.series(run, stimuli) for run, stimuli, _ in lines}
    rooms = [figures.name_room([c.step for c in s], [c.checkpoint for c in s]) for s in series.values()]
    in_order = len(series) > 1 and max(rooms) > 0  # runs without steps among several: numbered in order
    room = 0.0 if in_order else max(rooms)
    fig, axes = figures.small_multiples(2, ncols=2, bottom=0.45 + room)
    for (run, stimuli, site), points in sorted(lines.items()):
        run_series = series[(run, stimuli)]  # every checkpoint of the run: a site's gaps keep their places
        for k, ax in enumerate(axes):
            x = figures.training_axis(ax, [c.step for c in run_series], [c.checkpoint for c in run_series],
                                      in_order=in_order)
            done = [(xi, points[c.checkpoint][k]) for c, xi in zip(run_series, x) if c.checkpoint in points]
            ax.plot([d[0] for d in done], finite(d[1] for d in done), marker="o", ms=3, label=f"{run} {site}")
    axes[0].set_title("suggested rank", fontsize=9)
    axes[1].set_title("relative error at that rank", fontsize=9)
    axes[0].legend(fontsize=6)
    return {"figure": figures.to_data_uri(fig)}


def tca_across_run(ctx: ModelContext, run: str, stimuli: str) -> dict | None:
    """One run's across-checkpoint TCA: factors and rank diagnostics per site, failed sites."""
    data = ctx.across.get(("tca-across", run, stimuli))
    if data is None:
        return None
    blocks = _site_blocks(_across_store(data), data, data["modes"], data["modes"])
    if not blocks and not _failed(data):
        return None
    return {"run": run, "stimuli": stimuli, "blocks": blocks, "failed": _failed(data),
            "n_checkpoints": len(data["steps"]), "params": data["params"]}


def collect_tca_across(ctx: ModelContext, _page=None) -> dict | None:
    """Across-checkpoint TCA per run and site, and how per-checkpoint TCA changes over training."""
    runs = ctx.run_parts("tca-across")
    overview = _over_training(ctx)
    if not runs and overview is None:
        return None
    return {"runs": runs, "overview": overview, "params": runs[0]["params"] if runs else None,
            "stable": STABLE_SIMILARITY}


def connectome_figure(group: ResultGroup):
    """Affinity at the first and last checkpoint with units sorted by community, and community time courses."""
    community = group["community"]
    order = np.lexsort((-group["loading"].max(axis=1), community))
    edges = np.flatnonzero(np.diff(community[order])) + 0.5
    A = group["affinity"]
    steps, names = group["step"].tolist(), group["checkpoint"].tolist()
    labels = figures.checkpoint_labels(steps, names)[0]
    bottom = 0.45 + figures.name_room(steps, names)
    fig = figures.figure(11, 2.85 + bottom)
    figures.place(fig, left=0.2, bottom=bottom, top=0.3, ncols=3, wgap=0.95)  # room for the colour bar's ticks
    axes = fig.subplots(1, 3)
    for ax, k, name in ((axes[0], 0, "first"), (axes[1], A.shape[2] - 1, "last")):
        image = ax.imshow(A[np.ix_(order, order, [k])][:, :, 0], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        for e in edges:
            ax.axhline(e, color="#9ecbff", lw=0.6)
            ax.axvline(e, color="#9ecbff", lw=0.6)
        ax.set_title(f"affinity, {name} checkpoint ({labels[k]})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[1], fraction=0.046)
    course = group["checkpoint_factor"] * group["weight"]
    sizes = np.bincount(community[community >= 0], minlength=course.shape[1])
    x = figures.training_axis(axes[2], steps, names)
    for r in range(course.shape[1]):
        units = f"{sizes[r]} unit" + ("s" if sizes[r] != 1 else "")
        axes[2].plot(x, course[:, r], marker="o", ms=3, label=f"community {r + 1} ({units})")
    axes[2].set_title("community activity over training", fontsize=9)
    axes[2].legend(fontsize=6, frameon=False)
    return fig


def connectome_run(ctx: ModelContext, run: str, stimuli: str) -> dict | None:
    """One run's communities of co-active units per site, and when in training each is active."""
    data = ctx.across.get(("connectome", run, stimuli))
    if data is None:
        return None
    blocks = []
    for site, result in data["sites"].items():
        if result.get("status") != "ok":
            continue
        group = ResultGroup(_across_store(data), site)
        blocks.append({"site": site, "result": result, "figure": figures.to_data_uri(connectome_figure(group))})
    if not blocks and not _failed(data):
        return None
    return {"run": run, "stimuli": stimuli, "blocks": blocks, "failed": _failed(data), "params": data["params"]}


def collect_connectome(ctx: ModelContext, _page=None) -> dict | None:
    """Communities of co-active units per run and site, and when in training each is active."""
    runs = ctx.run_parts("connectome")
    return {"runs": runs, "params": runs[0]["params"]} if runs else None
