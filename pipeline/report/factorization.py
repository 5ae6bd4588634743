"""Report sections of tensor component analysis and of the dynamic functional connectome.

Each ``collect_*`` function reads result stores (one Zarr group per site) and returns the data
its template shows, or None when the page has no such results; each ``*_run`` function draws one
run's share of a model section; ``sections.SECTIONS`` lists them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from pipeline.analyses.factorization import NEAR_BEST, STABLE_SIMILARITY, replicate_similarity
from pipeline.jobs import forward_order
from pipeline.report import figures
from pipeline.report.context import (
    CheckpointResults,
    ModelContext,
    by_site,
    finite,
    recorded_order,
    site_order,
)
from pipeline.results import ResultGroup

MAX_LEGEND = 12  # more distinct labels than this are coloured without a legend


def _across_store(data: dict) -> Path:
    """Result store written beside an across-checkpoint summary (``x.across.json`` -> ``x.across.zarr``)."""
    summary = Path(data["summary_file"])
    return summary.with_name(summary.name.removesuffix(".json") + ".zarr")


def factor_figure(group: ResultGroup, modes: list[str], mode_labels: list[str]):
    """One panel per mode with one row per component, labelled #1, #2, ... in the stored order (largest first by
    size on the fitted entries): bars for units, lines over positions and checkpoints (against training step),
    and dots per stimulus coloured by its label (stimuli sorted by label).

    Each row is scaled to its largest magnitude (a CP factor's scale is carried by its weight) around
    a grey zero line, every other row shaded; stacking the rows in one panel per mode draws several times faster than a
    panel per (component, mode).
    """
    rank = group["weight"].shape[0]
    labels = group["label"] if "label" in group else None
    if labels is not None:
        by_label = np.array(sorted(range(len(labels)), key=lambda i: figures.label_key(labels[i])), dtype=int)
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
        ax.set_yticks(rows, [f"#{r + 1}" for r in range(rank)] if col == 0 else [], fontsize=7)
        ax.set_title(title, fontsize=9)
        if mode != "checkpoint":  # training_axis labelled it
            ax.tick_params(axis="x", labelsize=6)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))  # indices: no tick between two
            sorted_note = " (sorted by label)" if mode == "stimulus" and labels is not None else " index"
            ax.set_xlabel(title + sorted_note, fontsize=7)
    if show_legend:
        handles = [Line2D([], [], ls="", marker="o", ms=4, color=c) for _, c in legend]
        fig.legend(handles, [str(label) for label, _ in legend], loc="upper center", ncol=len(legend), fontsize=7,
                   frameon=False, bbox_to_anchor=(0.5, 1.0), borderaxespad=0.1)
    return fig


DIAGNOSTIC_PANELS = (("objective", "relative error (train)"), ("similarity", "similarity to best replicate"),
                     ("cv_test_error", "held-out relative error"))


def diagnostics_figure(group: ResultGroup):
    """Objective, replicate similarity and held-out error against rank, with a legend beside the panels: the
    replicates, the lowest error over replicates, the held-out error the rank rule reads, the replicates' mean
    similarity to the best one with the stability threshold, the training error of the held-out fits, and the chosen
    rank."""
    ranks = group["rank"]
    rank = int(group.attrs["rank"])
    panels = [(name, title) for name, title in DIAGNOSTIC_PANELS if name in group]
    names = {"replicates": "replicates (random starts)", "lowest": "lowest error over replicates",
             "scored": "held-out error of the start\nwith the lowest train error",
             "similarity": "mean similarity to the best replicate\n(of the starts that fit about as well)",
             "threshold": f"stability threshold ({STABLE_SIMILARITY})", "train": "train error (held-out fits)",
             "rank": f"chosen rank ({rank})"}
    labels = list(names.values())
    fig, axes = figures.small_multiples(len(panels), ncols=3, panel_size=(2.4, 1.5),
                                        right=figures.legend_room(labels))
    for ax, (name, title) in zip(axes, panels):
        values = group[name]
        ax.scatter(np.repeat(ranks, values.shape[1]), values.ravel(), s=10, color="#4c72b0", alpha=0.7,
                   label=names["replicates"])
        if name == "cv_test_error":  # the score the rank rule reads
            best = np.argmin(group["cv_train_error"], axis=1)
            ax.plot(ranks, values[np.arange(len(ranks)), best], color="#dd8452", label=names["scored"])
            ax.plot(ranks, group["cv_train_error"].min(axis=1), color="#999", ls="--", label=names["train"])
        elif name == "similarity":
            if values.shape[1] > 1:
                mean = [replicate_similarity(v, e) for v, e in zip(values, group["objective"], strict=True)]
                ax.plot(ranks, [np.nan if m is None else m for m in mean], color="#55a868", label=names["similarity"])
            ax.axhline(STABLE_SIMILARITY, color="black", ls=":", lw=0.8, label=names["threshold"])
        else:
            ax.plot(ranks, values.min(axis=1), color="#4c72b0", label=names["lowest"])
        ax.axvline(rank, color="#c44e52", lw=1, label=names["rank"])
        ax.set_xticks(ranks)
        ax.set_xlabel("rank", fontsize=8)
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)  # an offset or x1e-6 would sit on the title
        ax.set_title(title, fontsize=9)
    shown = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    figures.side_legend(fig, [shown[label] for label in labels if label in shown],
                        [label for label in labels if label in shown])
    return fig


def _failed(summary: dict) -> list[dict]:
    sites = by_site(summary["sites"], recorded_order(summary))
    return [{"site": site, "error": r.get("error")} for site, r in sites.items() if r.get("status") != "ok"]


# A component whose weight exceeds its size on the fitted entries this many times lies mostly (three quarters of its
# squared norm, or more) on masked entries, where no data constrain its factors.
MASKED_WEIGHT_RATIO = 2.0


def rank_cautions(result: dict, params: dict) -> list[str]:
    """What to keep in mind reading a site's TCA at its chosen rank: a rank at the top of the range searched
    (``params["max_rank"]``, or the tensor's smallest dimension), components that the other random starts do not
    reproduce (with how many of them ran out of sweeps), or that none of them fits as well, and degenerate pairs."""
    cautions = []
    ranks, rank, replicates = result["ranks"], result["rank"], params["replicates"]
    if rank == max(ranks) and len(ranks) > 1:
        if max(ranks) >= params["max_rank"]:
            cautions.append(f"the chosen rank is the largest rank tried ({rank}); the data may hold more components "
                            "(raise analyses.tca.max_rank)")
        else:
            cautions.append(f"the chosen rank is the largest fitted ({rank}): the data may hold more components "
                            "(the tensor's smallest dimension allows no more)")
    similarity = result["similarity"][ranks.index(rank)] if rank in ranks else None
    if similarity is not None and similarity < STABLE_SIMILARITY:
        sweeps = result["sweeps"][ranks.index(rank)] if "sweeps" in result else None  # not in earlier summaries
        limit = "" if sweeps is None else _sweeps_text(sweeps, params)
        cautions.append(f"at this rank the other random starts match the best fit with mean similarity "
                        f"{similarity:.2f} (below {STABLE_SIMILARITY}): these components may not be unique, or the "
                        f"fits stopped before converging{limit}; raise analyses.tca.n_iter_max and lower tol to "
                        "tell the two apart")
    elif similarity is None and replicates > 1 and rank in ranks:
        cautions.append(f"at this rank none of the other {replicates - 1} random starts fits within {NEAR_BEST:.0%} of "
                        "the best one's error: whether its components are unique is unknown (raise "
                        "analyses.tca.replicates)")
    for r, s, c in result.get("degenerate_pairs", []):
        cautions.append(f"components #{r + 1} and #{s + 1} cancel each other (congruence {c:.2f}): a degenerate "
                        "pair whose weights and factors mean nothing on their own; a lower rank or a non-negative "
                        "fit avoids it")
    return cautions


def _sweeps_text(sweeps: list[int], params: dict) -> str:
    """How the starts of one rank stopped: how many ran all ``n_iter_max`` sweeps, and the rule that stopped the
    others."""
    limit, full = params["n_iter_max"], sum(n >= params["n_iter_max"] for n in sweeps)
    rule = f"once the error changed between sweeps by less than {params['tol']:g} of itself"
    if full == len(sweeps):
        return f" (all {full} starts ran all {limit} sweeps)"
    if full == 0:
        return f" (every start stopped before its {limit} sweeps, {rule})"
    return f" ({full} of {len(sweeps)} starts ran all {limit} sweeps; the others stopped {rule})"


def masked_caution(weights: list[float], sizes: list[float]) -> str | None:
    """A caution naming the components (in figure order) that lie mostly on masked entries, or None."""
    mostly = [k for k, (w, size) in enumerate(zip(weights, sizes, strict=True)) if w > MASKED_WEIGHT_RATIO * size]
    if not mostly:
        return None
    listed = ", ".join(f"#{k + 1} (w {weights[k]:.3g}, size {sizes[k]:.3g})" for k in mostly)
    one = len(mostly) == 1
    return (f"{'component' if one else 'components'} {listed} {'lies' if one else 'lie'} mostly on the masked (padded) "
            "entries, where no data constrain their factors: their weight is more than twice their size on the fitted "
            "entries; read their factors with care, or raise analyses.tca.min_position_coverage")


def _site_blocks(path: Path, summary: dict, modes: list[str], mode_labels: list[str]) -> list[dict]:
    blocks = []
    for site, result in by_site(summary["sites"], recorded_order(summary)).items():
        if result.get("status") != "ok":
            continue
        group = ResultGroup(path, site)
        cautions = rank_cautions(result, summary["params"])
        sizes = group["size"].tolist() if "size" in group else None  # results written before sizes were stored
        masked = None if sizes is None else masked_caution(group["weight"].tolist(), sizes)
        cautions += [masked] if masked else []
        blocks.append({"site": site, "result": result, "cautions": cautions, "weights": group["weight"].tolist(),
                       "sizes": sizes,
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
            "mode_labels": summary["mode_labels"], "stable": STABLE_SIMILARITY, "near_best": NEAR_BEST,
            "rare_positions": summary.get("rare_positions_left_out", 0)}


def _over_training(ctx: ModelContext) -> dict | None:
    """Suggested rank and relative error of per-checkpoint TCA against training step, per (run, site), the
    largest rank tried drawn, and how many fits chose it."""
    lines, max_rank, at_max, n_fits = {}, 0, 0, 0
    for c in ctx.checkpoints:
        summary = c.summaries.get("tca", {})
        for site, result in summary.get("sites", {}).items():
            if result.get("status") == "ok":
                lines.setdefault((c.run, c.stimuli, site), {})[c.checkpoint] = (result["rank"], result["rel_error"])
                max_rank = max(max_rank, summary["params"]["max_rank"])
                at_max += result["rank"] >= summary["params"]["max_rank"]
                n_fits += 1
    if not any(len(points) > 1 for points in lines.values()):
        return None
    series = {(run, stimuli): ctx.series(run, stimuli) for run, stimuli, _ in lines}
    rooms = [figures.name_room([c.step for c in s], [c.checkpoint for c in s]) for s in series.values()]
    in_order = len(series) > 1 and max(rooms) > 0  # runs without steps among several: numbered in order
    room = 0.0 if in_order else max(rooms)
    forward = forward_order([c.provenance for c in ctx.checkpoints])
    order = {site: k for k, site in enumerate(site_order({site for _, _, site in lines}, forward))}
    keys = sorted(lines, key=lambda key: (key[0], key[1], order[key[2]]))
    labels = [f"{run} {site}" for run, _, site in keys] + ["largest rank tried"]
    fig, axes = figures.small_multiples(2, ncols=2, bottom=0.45 + room, right=figures.legend_room(labels))
    for run, stimuli, site in keys:
        points = lines[(run, stimuli, site)]
        run_series = series[(run, stimuli)]  # every checkpoint of the run: a site's gaps keep their places
        for k, ax in enumerate(axes):
            x = figures.training_axis(ax, [c.step for c in run_series], [c.checkpoint for c in run_series],
                                      in_order=in_order)
            done = [(xi, points[c.checkpoint][k]) for c, xi in zip(run_series, x) if c.checkpoint in points]
            ax.plot([d[0] for d in done], finite(d[1] for d in done), marker="o", ms=3, label=f"{run} {site}")
    axes[0].axhline(max_rank, color="black", ls=":", lw=0.8, label=labels[-1])
    axes[0].set_ylim(0.5, max_rank + 0.5)
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_title("suggested rank", fontsize=9)
    axes[1].set_title("relative error at that rank", fontsize=9)
    figures.side_legend(fig, *axes[0].get_legend_handles_labels())
    return {"figure": figures.to_data_uri(fig), "max_rank": max_rank, "at_max": at_max, "n_fits": n_fits}


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
            "stable": STABLE_SIMILARITY, "near_best": NEAR_BEST}


def connectome_figure(group: ResultGroup):
    """Affinity at the first and last checkpoint with units sorted by community, and community time courses
    (a one-unit community dashed: it has no within-community affinity, the diagonal being masked)."""
    community = group["community"]
    order = np.lexsort((-group["loading"].max(axis=1), community))
    edges = np.flatnonzero(np.diff(community[order])) + 0.5
    A = group["affinity"]
    steps, names = group["step"].tolist(), group["checkpoint"].tolist()
    labels = figures.checkpoint_labels(steps, names)[0]
    scale = "size" if "size" in group else "weight"  # stores written before sizes were stored
    course = group["checkpoint_factor"] * group[scale]
    sizes = np.bincount(community[community >= 0], minlength=course.shape[1])
    legend = [f"community {r + 1} ({n} unit{'s' if n != 1 else ''})" for r, n in enumerate(sizes)]
    bottom = 0.6 + figures.name_room(steps, names)
    fig = figures.figure(10.5 + figures.legend_room(legend), 2.85 + bottom)
    figures.place(fig, left=0.35, bottom=bottom, top=0.3, right=figures.legend_room(legend), ncols=3,
                  wgap=1.3)  # room for the colour bar with its label, and the activity axis label
    axes = fig.subplots(1, 3)
    for ax, k, name in ((axes[0], 0, "first"), (axes[1], A.shape[2] - 1, "last")):
        image = ax.imshow(A[np.ix_(order, order, [k])][:, :, 0], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        for e in edges:
            ax.axhline(e, color="#9ecbff", lw=0.6)
            ax.axvline(e, color="#9ecbff", lw=0.6)
        ax.set_title(f"affinity, {name} checkpoint ({labels[k]})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("units, sorted by community", fontsize=8)
        ax.set_ylabel("units, sorted by community", fontsize=8)
    colorbar = fig.colorbar(image, cax=axes[1].inset_axes([1.04, 0.0, 0.05, 1.0]))
    colorbar.set_label("affinity", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    x = figures.training_axis(axes[2], steps, names, fontsize=8)
    for r in range(course.shape[1]):
        axes[2].plot(x, course[:, r], marker="o", ms=3, ls="--" if sizes[r] == 1 else "-", label=legend[r])
    axes[2].set_title("community activity over training", fontsize=9)
    axes[2].set_ylabel(f"{scale} × checkpoint factor (a.u.)", fontsize=8)
    axes[2].tick_params(labelsize=7)
    figures.side_legend(fig, *axes[2].get_legend_handles_labels())
    return fig


def connectome_run(ctx: ModelContext, run: str, stimuli: str) -> dict | None:
    """One run's communities of co-active units per site, and when in training each is active."""
    data = ctx.across.get(("connectome", run, stimuli))
    if data is None:
        return None
    blocks = []
    for site, result in by_site(data["sites"], recorded_order(data)).items():
        if result.get("status") != "ok":
            continue
        group = ResultGroup(_across_store(data), site)
        single = [r + 1 for r, n in enumerate(result["community_sizes"]) if n == 1]
        blocks.append({"site": site, "result": result, "single": single,
                       "figure": figures.to_data_uri(connectome_figure(group))})
    if not blocks and not _failed(data):
        return None
    return {"run": run, "stimuli": stimuli, "blocks": blocks, "failed": _failed(data), "params": data["params"]}


def collect_connectome(ctx: ModelContext, _page=None) -> dict | None:
    """Communities of co-active units per run and site, and when in training each is active."""
    runs = ctx.run_parts("connectome")
    if not runs:
        return None
    return {"runs": runs, "params": runs[0]["params"], "near_best": NEAR_BEST, "stable": STABLE_SIMILARITY}
