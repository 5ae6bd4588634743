"""Figures embedded in report pages as PNG data URIs, so pages open offline.

Report jobs spend most of their time drawing, so figures here are drawn the cheap way: on
matplotlib's Agg canvas without pyplot (nothing global to close); panels placed by margins given
in inches (a layout engine measures every tick label, which costs as much as drawing the figure
again) with room for long labels estimated from their length; one draw per figure (``savefig``
draws twice); and light PNG compression.
"""

from __future__ import annotations

import base64
import io
import re

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

# Labels come from users (stimulus categories, model and run names): show them as written, never
# as TeX ('$x$' stays '$x$', and an unbalanced '$\frac$' cannot break a figure).
matplotlib.rcParams["text.parse_math"] = False

DPI = 90
PNG_OPTIONS = {"compress_level": 1}  # zlib level 1: several times faster to write than the default 6
CHAR_WIDTH = 0.6  # average character width of the default font, in font sizes
SIN60 = 0.87  # rotated tick labels stand at 60 degrees
MAX_ANNOTATED = 36  # heatmaps of at most this many cells have their values written in (each text costs a draw)


def figure(width: float, height: float) -> Figure:
    """A new figure of ``width`` x ``height`` inches (no layout engine: place its panels with ``place``)."""
    return Figure(figsize=(width, height), dpi=DPI)


def text_inches(labels, fontsize: float) -> float:
    """Rough length in inches of the longest line of ``labels`` written at ``fontsize`` points."""
    return CHAR_WIDTH * fontsize / 72 * max((len(line) for label in labels for line in str(label).splitlines()),
                                            default=0)


def place(fig: Figure, left: float, bottom: float, right: float = 0.15, top: float = 0.35, nrows: int = 1,
          ncols: int = 1, wgap: float = 0.0, hgap: float = 0.0) -> None:
    """Place the grid of panels of ``fig`` by its margins and the gaps between panels, all in inches."""
    width, height = fig.get_size_inches()
    panel_w = max(0.1, (width - left - right - (ncols - 1) * wgap) / ncols)
    panel_h = max(0.1, (height - top - bottom - (nrows - 1) * hgap) / nrows)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=wgap / panel_w, hspace=hgap / panel_h)


def to_data_uri(fig: Figure) -> str:
    """Render a figure to a ``data:image/png;base64,...`` URI.

    One draw on an Agg canvas (which runs the layout engine once) and the pixels straight to PNG:
    ``savefig`` would draw a figure that has a layout engine twice.
    """
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    buffer = io.BytesIO()
    Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).save(
        buffer, format="png", **PNG_OPTIONS)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def small_multiples(n_panels: int, ncols: int = 4, panel_size=(2.6, 1.7), left: float = 0.55,
                    bottom: float = 0.45, wgap: float = 0.55, hgap: float = 0.65, top: float = 0.3,
                    right: float = 0.15):
    """A grid of axes for ``n_panels`` panels of ``panel_size`` inches each (extra axes hidden).

    Margins and gaps are in inches; the defaults leave room for a title above each panel, an axis
    label below and numeric tick labels. Returns (fig, flat list of axes).
    """
    ncols = max(1, min(ncols, n_panels))
    nrows = -(-n_panels // ncols)
    fig = figure(panel_size[0] * ncols + left + right + wgap * (ncols - 1),
                 panel_size[1] * nrows + bottom + top + hgap * (nrows - 1))
    place(fig, left, bottom, right, top, nrows, ncols, wgap, hgap)
    flat = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in flat:
        ax.tick_params(labelsize=7)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def checkpoint_labels(steps, names) -> tuple[list[str], bool]:
    """How checkpoints are named on a training axis, and whether by name: their steps where every
    checkpoint has one (two at one step share its place), else their names (a checkpoint saved
    without a step or a number in its name)."""
    steps = [-1 if s is None else int(s) for s in steps]
    if min(steps, default=0) >= 0:
        return [str(s) for s in steps], False
    return [str(n) for n in names], True


def name_room(steps, names) -> float:
    """Inches that ``training_axis`` needs below an axis for checkpoint names (0 where it shows steps)."""
    return SIN60 * text_inches([str(n) for n in names], 6) if checkpoint_labels(steps, names)[1] else 0.0


def training_axis(ax, steps, names, fontsize: float = 10, in_order: bool = False) -> np.ndarray:
    """Put checkpoints on the x axis of ``ax``: at their training steps where every checkpoint has one,
    else at 0, 1, ... in training order, labelled with their names (rotated: leave ``name_room`` below
    the axis). Returns the x positions (n,).

    Several runs drawn on one axis, some without steps, pass ``in_order``: each run is then placed at
    0, 1, ... in its own training order and the axis is numbered, since their names differ.
    """
    if in_order:
        ax.set_xlabel("checkpoint number, in training order", fontsize=fontsize)
        return np.arange(len(names), dtype=float)
    labels, by_name = checkpoint_labels(steps, names)
    if not by_name:
        ax.set_xlabel("training step", fontsize=fontsize)
        return np.asarray([int(s) for s in steps], dtype=float)
    x = np.arange(len(labels), dtype=float)
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=6)
    ax.set_xlabel("checkpoint (no step recorded)", fontsize=fontsize)
    return x


def bar_chart(labels: list[str], values: list[float | None], title: str, ylabel: str) -> Figure:
    """Bars of ``values`` (None or NaN leaves a gap) over rotated ``labels``."""
    fig = figure(max(4.0, 0.35 * len(labels) + 1.5), 2.2 + SIN60 * text_inches(labels, 7))
    place(fig, left=max(0.7, text_inches(labels[:1], 7) / 2 + 0.1), bottom=SIN60 * text_inches(labels, 7) + 0.2)
    ax = fig.add_subplot()
    ax.bar(range(len(values)), np.asarray(values, dtype=float), color="#4c72b0")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return fig


def heatmap_grid(n_panels: int, ncols: int, panel: float, labels: list[str], axis_titles: bool = False):
    """A grid of square heatmap panels of ``panel`` inches, with room for the labels and labelled colour bars
    (and for a title on each axis with ``axis_titles``).

    Row labels are written on the first column only (``heatmap(..., row_labels=...)``). Returns (fig, axes).
    """
    title_room = 0.2 if axis_titles else 0.0
    below = SIN60 * text_inches(labels, 6) + 0.15 + title_room
    left = max(text_inches(labels, 6) + 0.2, text_inches(labels[:1], 6) / 2 + 0.1) + title_room
    return small_multiples(n_panels, ncols, panel_size=(panel * 1.15, panel), left=left, bottom=below,
                           wgap=0.75, hgap=below + 0.3, top=0.3, right=0.75)


def legend_room(labels, fontsize: float = 6) -> float:
    """Inches a legend of ``labels`` at ``fontsize`` takes beside the panels (``side_legend``)."""
    return text_inches(labels, fontsize) + 0.7


def side_legend(fig: Figure, handles, labels, fontsize: float = 6, title: str | None = None):
    """A legend in the figure's right margin, beside the panels (leave ``legend_room(labels)`` there)."""
    return fig.legend(handles, labels, loc="upper right", fontsize=fontsize, frameon=False, borderaxespad=0.5,
                      title=title, title_fontsize=fontsize + 1, alignment="left")


def label_key(label) -> tuple:
    """Sort key of a stimulus label: whole numbers (digit classes stored as text) by value, before other text;
    equal values ("1", "01") by their text."""
    text = str(label)
    return (0, int(text), text) if re.fullmatch(r"-?[0-9]+", text) else (1, 0, text)


def label_colours(labels) -> tuple[list, list[tuple[str, tuple]]]:
    """One colour per distinct label: (colour per item, list of (label, colour) in ``label_key`` order)."""
    distinct = sorted(set(labels), key=label_key)
    cmap = colormaps["tab10" if len(distinct) <= 10 else "tab20"]
    lookup = {label: cmap(i % cmap.N) for i, label in enumerate(distinct)}
    return [lookup[label] for label in labels], list(lookup.items())


def heatmap(ax, matrix, labels: list[str], title: str, cmap: str = "viridis", vmin=None, vmax=None,
            row_labels: bool = True, colorbar_label: str = ""):
    """Draw a labelled square matrix on ``ax`` with a colour bar (labelled ``colorbar_label``); values
    written in cells when few.

    NaN (or None) cells are left blank. ``row_labels=False`` leaves the rows unlabelled (a panel beside one
    that names them). Cell values are written in black or white, whichever stands out from the cell.
    """
    matrix = np.asarray(matrix, dtype=float)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                      aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=6)
    if row_labels:
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
    else:
        ax.set_yticks(range(len(labels)))
        ax.tick_params(labelleft=False)
    ax.set_title(title, fontsize=9)
    colorbar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.ax.tick_params(labelsize=6)
    colorbar.set_label(colorbar_label, fontsize=7)
    if matrix.size <= MAX_ANNOTATED:
        rgba = image.to_rgba(np.nan_to_num(matrix))
        light = rgba[..., :3] @ np.array([0.299, 0.587, 0.114]) > 0.5
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if light[i, j] else "white")
    return image
