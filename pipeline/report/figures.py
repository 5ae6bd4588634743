"""Figures embedded in report pages as PNG data URIs, so pages open offline."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def bar_chart(labels: list[str], values: list[float], title: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(labels) + 1.5), 3.0))
    ax.bar(range(len(values)), values, color="#4c72b0")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return fig
