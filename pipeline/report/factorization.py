"""Report sections of tensor component analysis and of the dynamic functional connectome.

Each ``collect_*`` function reads result stores (one Zarr group per site) and returns the data
its template shows, or None when the page has no such results; ``sections.SECTIONS`` lists them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.report import figures
from pipeline.report.context import CheckpointResults, ModelContext, finite
from pipeline.store import strings

MAX_LEGEND = 12  # more distinct labels than this are coloured without a legend


def _group(path: Path, site: str) -> xr.Dataset:
    return xr.open_zarr(path, group=site, consolidated=False, zarr_format=3).load()


def _across_store(data: dict) -> Path:
    """Result store written beside an across-checkpoint summary (``x.across.json`` -> ``x.across.zarr``)."""
    summary = Path(data["summary_file"])
    return summary.with_name(summary.name.removesuffix(".json") + ".zarr")


def _label_colours(labels: np.ndarray):
    """One colour per distinct label: (colour per item, list of (label, colour))."""
    cmap = figures.plt.get_cmap("tab10" if len(set(labels)) <= 10 else "tab20")
    distinct = sorted(set(labels))
    lookup = {label: cmap(i % cmap.N) for i, label in enumerate(distinct)}
    return [lookup[label] for label in labels], list(lookup.items())


def factor_figure(group: xr.Dataset, modes: list[str], mode_labels: list[str]):
    """One row per component, one column per mode: bars for units, lines over positions and checkpoints
    (against training step), and dots per stimulus coloured by its label (stimuli sorted by label)."""
    rank = group.sizes["component"]
    fig, axes = figures.plt.subplots(rank, len(modes), figsize=(3.3 * len(modes), 1.25 * rank + 0.6), squeeze=False)
    labels = strings(group["label"].values) if "label" in group else None
    if labels is not None:
        by_label = np.argsort(labels, kind="stable")
        colours, legend = _label_colours(labels[by_label])
    for col, (mode, title) in enumerate(zip(modes, mode_labels)):
        values = group[f"{mode}_factor"].values
        for r in range(rank):
            ax = axes[r, col]
            if mode == "unit":
                ax.vlines(np.arange(values.shape[0]), 0, values[:, r], color="#4c72b0", lw=2)
            elif mode == "checkpoint":
                ax.plot(group["step"].values, values[:, r], marker="o", ms=3, color="#c44e52")
            elif mode == "stimulus" and labels is not None:
                ax.scatter(np.arange(values.shape[0]), values[by_label, r], c=colours, s=7)
            else:
                x = group[mode].values
                ax.plot(x if x.dtype.kind in "iuf" else np.arange(x.size), values[:, r], color="#55a868")
            ax.axhline(0, color="#999", lw=0.5)
            ax.tick_params(labelsize=6)
            ax.locator_params(nbins=3)
            if col == 0:
                ax.set_ylabel(f"#{r + 1} (w={group['weight'].values[r]:.3g})", fontsize=7)
            if r == 0:
                ax.set_title(title, fontsize=9)
            if r == rank - 1:
                sorted_note = " (sorted by label)" if mode == "stimulus" and labels is not None else " index"
                ax.set_xlabel("training step" if mode == "checkpoint" else title + sorted_note, fontsize=7)
            else:
                ax.set_xticklabels([])
    if labels is not None and "stimulus" in modes and len(legend) <= MAX_LEGEND:
        handles = [figures.plt.Line2D([], [], ls="", marker="o", ms=4, color=c) for _, c in legend]
        fig.legend(handles, [str(label) for label, _ in legend], loc="lower center", ncol=len(legend), fontsize=7,
                   frameon=False, bbox_to_anchor=(0.5, 0.89))
    fig.subplots_adjust(hspace=0.15, wspace=0.25)
    return fig


def diagnostics_figure(group: xr.Dataset):
    """Objective, replicate similarity and held-out error against rank; the chosen rank marked."""
    ranks = group["rank"].values
    panels = [("objective", "relative error (train)"), ("similarity", "similarity to best replicate")]
    if "cv_test_error" in group:
        panels.append(("cv_test_error", "held-out relative error"))
    fig, axes = figures.small_multiples(len(panels), ncols=3, panel_size=(3.0, 2.2))
    for ax, (name, title) in zip(axes, panels):
        values = group[name].values
        for j in range(values.shape[1]):
            ax.scatter(ranks, values[:, j], s=10, color="#4c72b0", alpha=0.7)
        ax.plot(ranks, values.min(axis=1) if name != "similarity" else values.mean(axis=1), color="#4c72b0")
        if name == "cv_test_error":
            ax.plot(ranks, group["cv_train_error"].values.min(axis=1), color="#999", ls="--", label="train")
            ax.legend(fontsize=6, frameon=False)
        ax.axvline(group.attrs["rank"], color="#c44e52", lw=1)
        ax.set_xticks(ranks)
        ax.set_xlabel("rank", fontsize=8)
        ax.set_title(title, fontsize=9)
    return fig


def _failed(summary: dict) -> list[dict]:
    return [{"site": site, "error": r.get("error")} for site, r in summary["sites"].items() if r.get("status") != "ok"]


def _site_blocks(path: Path, summary: dict, modes: list[str], mode_labels: list[str]) -> list[dict]:
    blocks = []
    for site, result in summary["sites"].items():
        if result.get("status") != "ok":
            continue
        group = _group(path, site)
        blocks.append({"site": site, "result": result,
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
            "mode_labels": summary["mode_labels"]}


def _over_training(ctx: ModelContext) -> dict | None:
    """Suggested rank and relative error of per-checkpoint TCA against training step, per (run, site)."""
    lines = {}
    for c in ctx.checkpoints:
        for site, result in c.summaries.get("tca", {}).get("sites", {}).items():
            if result.get("status") == "ok":
                lines.setdefault((c.run, c.stimuli, site), []).append((c.step, result["rank"], result["rel_error"]))
    if not any(len(points) > 1 for points in lines.values()):
        return None
    fig, axes = figures.small_multiples(2, ncols=2)
    for (run, _stimuli, site), points in sorted(lines.items()):
        points.sort()
        steps = [p[0] for p in points]
        axes[0].plot(steps, [p[1] for p in points], marker="o", ms=3, label=f"{run} {site}")
        axes[1].plot(steps, finite(p[2] for p in points), marker="o", ms=3)
    axes[0].set_title("suggested rank", fontsize=9)
    axes[1].set_title("relative error at that rank", fontsize=9)
    for ax in axes:
        ax.set_xlabel("training step")
    axes[0].legend(fontsize=6)
    return {"figure": figures.to_data_uri(fig)}


def collect_tca_across(ctx: ModelContext, _page=None) -> dict | None:
    """Across-checkpoint TCA per run and site, and how per-checkpoint TCA changes over training."""
    runs = []
    for (analysis, run, stimuli), data in sorted(ctx.across.items()):
        if analysis != "tca-across":
            continue
        blocks = _site_blocks(_across_store(data), data, data["modes"], data["modes"])
        if blocks or _failed(data):
            runs.append({"run": run, "stimuli": stimuli, "blocks": blocks, "failed": _failed(data),
                         "n_checkpoints": len(data["steps"])})
    overview = _over_training(ctx)
    if not runs and overview is None:
        return None
    params = next((d["params"] for (a, _, _), d in ctx.across.items() if a == "tca-across"), None)
    return {"runs": runs, "overview": overview, "params": params}


def connectome_figure(group: xr.Dataset):
    """Affinity at the first and last checkpoint with units sorted by community, and community time courses."""
    community = group["community"].values
    order = np.lexsort((-group["loading"].values.max(axis=1), community))
    edges = np.flatnonzero(np.diff(community[order])) + 0.5
    A = group["affinity"].values
    steps = group["step"].values
    fig, axes = figures.plt.subplots(1, 3, figsize=(11, 3.3))
    for ax, k, name in ((axes[0], 0, "first"), (axes[1], A.shape[2] - 1, "last")):
        image = ax.imshow(A[np.ix_(order, order, [k])][:, :, 0], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        for e in edges:
            ax.axhline(e, color="#9ecbff", lw=0.6)
            ax.axvline(e, color="#9ecbff", lw=0.6)
        ax.set_title(f"affinity, {name} checkpoint (step {steps[k]})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[1], fraction=0.046)
    course = group["checkpoint_factor"].values * group["weight"].values
    sizes = np.bincount(community[community >= 0], minlength=course.shape[1])
    for r in range(course.shape[1]):
        axes[2].plot(steps, course[:, r], marker="o", ms=3, label=f"community {r + 1} ({sizes[r]} units)")
    axes[2].set_xlabel("training step")
    axes[2].set_title("community activity over training", fontsize=9)
    axes[2].legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return fig


def collect_connectome(ctx: ModelContext, _page=None) -> dict | None:
    """Communities of co-active units per run and site, and when in training each is active."""
    runs = []
    for (analysis, run, stimuli), data in sorted(ctx.across.items()):
        if analysis != "connectome":
            continue
        blocks = []
        for site, result in data["sites"].items():
            if result.get("status") != "ok":
                continue
            group = _group(_across_store(data), site)
            blocks.append({"site": site, "result": result, "figure": figures.to_data_uri(connectome_figure(group))})
        if blocks or _failed(data):
            runs.append({"run": run, "stimuli": stimuli, "blocks": blocks, "failed": _failed(data)})
    if not runs:
        return None
    params = next(d["params"] for (a, _, _), d in ctx.across.items() if a == "connectome")
    return {"runs": runs, "params": params}
