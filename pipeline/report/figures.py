"""Figures embedded in report pages as PNG data URIs, so pages open offline."""

from __future__ import annotations

import base64
import io

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patheffects  # noqa: E402


def to_data_uri(fig) -> str:
    """Render a matplotlib figure to a ``data:image/png;base64,...`` URI and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def small_multiples(n_panels: int, ncols: int = 4, panel_size=(3.2, 2.3)):
    """A grid of axes for ``n_panels`` panels (extra axes hidden). Returns (fig, flat list of axes)."""
    ncols = max(1, min(ncols, n_panels))
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False,
                             layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def bar_chart(labels: list[str], values: list[float], title: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(labels) + 1.5), 3.0), layout="constrained")
    ax.bar(range(len(values)), values, color="#4c72b0")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return fig


def heatmap(ax, matrix, labels: list[str], title: str, cmap: str = "viridis", vmin=None, vmax=None,
            col_labels: list[str] | None = None):
    """Draw a labelled matrix (rows x columns) on ``ax`` with a colour bar; values written in cells when small.

    NaN cells are left blank.
    """
    matrix = np.asarray(matrix, dtype=float)
    col_labels = labels if col_labels is None else col_labels
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=60, ha="right", fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if max(matrix.shape, default=0) <= 8:
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="black",
                        path_effects=[patheffects.withStroke(linewidth=1.5, foreground="white")])
    return image
