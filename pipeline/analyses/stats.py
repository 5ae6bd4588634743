"""Activation statistics of one recording site: sparsity, dead units, massive activations, moments.

Works on a stream of blocks so that sites larger than memory are summarised in bounded memory.
Each block is ``(values, mask)`` with values (stimuli, positions, units) and mask (stimuli,
positions), True where the position is real (not padding). NaN and Inf are counted, never
dropped silently: moments and zero fractions use the finite values only and the counts are reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

# log10 |a| histogram used for the median magnitude: 0.005 decades per bin (about 1.2% relative error)
_LOG_LO, _LOG_HI, _BINS = -12.0, 12.0, 4800


@dataclass
class SiteStats:
    """Statistics of one site. Per-unit arrays have shape (units,)."""

    n_rows: int  # recorded (stimulus, position) pairs, padding excluded
    mean: np.ndarray
    variance: np.ndarray
    zero_fraction: np.ndarray  # per unit: fraction of its finite values with |a| <= zero_threshold (NaN: none)
    nan_count: np.ndarray
    inf_count: np.ndarray
    massive_count: np.ndarray
    median_abs: float  # median of the nonzero finite |a| (0 when all are zero, NaN when none is finite)
    max_abs: float  # largest finite |a| (NaN when none is finite)
    massive_threshold: float
    top_massive: list[dict]  # largest massive activations: value, stimulus (index), position, unit
    zero_threshold: float

    @property
    def dead_units(self) -> np.ndarray:
        """Indices of units whose every finite recorded value is zero (NaN rows aside)."""
        return np.flatnonzero(self.zero_fraction >= 1.0)

    @property
    def constant_units(self) -> np.ndarray:
        """Indices of units whose finite values never vary at all (a dead unit is one only when its values
        are exactly equal, not merely all within the zero threshold)."""
        return np.flatnonzero(self.variance <= 0.0)

    def summary(self) -> dict:
        """Scalars and short lists for reports (JSON-serialisable)."""
        flags = []
        if self.nan_count.sum():
            flags.append(f"{int(self.nan_count.sum())} NaN values")
        if self.inf_count.sum():
            flags.append(f"{int(self.inf_count.sum())} Inf values")
        if len(self.dead_units):
            flags.append(f"{len(self.dead_units)} dead units")
        if self.massive_count.sum():
            flags.append(f"{int(self.massive_count.sum())} massive activations")
        return {
            "n_rows": self.n_rows,
            "n_units": len(self.mean),
            "zero_fraction": _mean_of_finite(self.zero_fraction),
            "zero_threshold": self.zero_threshold,
            "n_dead": len(self.dead_units),
            "dead_units": self.dead_units[:50].tolist(),
            "n_constant": len(self.constant_units),
            "nan_count": int(self.nan_count.sum()),
            "inf_count": int(self.inf_count.sum()),
            "median_abs": self.median_abs,
            "max_abs": self.max_abs,
            "mean_of_means": _mean_of_finite(self.mean),
            "mean_variance": _mean_of_finite(self.variance),
            "massive_threshold": self.massive_threshold,
            "massive_count": int(self.massive_count.sum()),
            "massive_units": np.flatnonzero(self.massive_count)[:50].tolist(),
            "top_massive": self.top_massive,
            "flags": flags,
        }


def _mean_of_finite(per_unit: np.ndarray) -> float:
    """Mean over the units with a finite value; NaN when there are none (written as null)."""
    finite = per_unit[np.isfinite(per_unit)]
    return float(finite.mean()) if finite.size else math.nan


def _valid_rows(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(k, units) rows of a (stimuli, positions, units) block where mask is True."""
    return values[mask.astype(bool)]


def site_stats(blocks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], *, zero_threshold: float = 1e-6,
               massive_ratio: float = 100.0, massive_min: float = 1.0, max_massive: int = 20) -> SiteStats:
    """Statistics of one site from ``blocks``, a callable returning a fresh block iterator.

    Two passes: the first gathers moments, zero counts, NaN/Inf counts and a histogram of
    log10 |a| (median of the nonzero magnitudes to about 1.2%); the second counts activations above
    ``max(massive_ratio * median nonzero |a|, massive_min)`` per unit and lists the largest with their
    (stimulus, position, unit). A massive activation is one far above the site's typical scale
    (Sun et al. 2024, "Massive activations in large language models").
    """
    n_rows = 0
    count = mean = m2 = zeros = nans = infs = None
    hist = np.zeros(_BINS + 2, np.int64)  # [exact zeros or below range, bins..., above range]
    max_abs = 0.0
    for values, mask in blocks():
        rows = _valid_rows(np.asarray(values, np.float64), np.asarray(mask))
        if count is None:
            units = rows.shape[1]
            count, mean, m2 = np.zeros(units), np.zeros(units), np.zeros(units)
            zeros, nans, infs = (np.zeros(units, np.int64) for _ in range(3))
        if rows.shape[0] == 0:
            continue
        n_rows += rows.shape[0]
        finite = np.isfinite(rows)
        nans += np.isnan(rows).sum(0)
        infs += np.isinf(rows).sum(0)
        absval = np.abs(np.where(finite, rows, 0.0))
        zeros += ((absval <= zero_threshold) & finite).sum(0)
        max_abs = max(max_abs, float(absval.max()))
        # Chan et al. parallel update of per-unit mean and sum of squared deviations (finite values only)
        k = finite.sum(0)
        block_sum = np.where(finite, rows, 0.0).sum(0)
        block_mean = np.divide(block_sum, k, out=np.zeros_like(block_sum), where=k > 0)
        block_m2 = (np.where(finite, rows - block_mean, 0.0) ** 2).sum(0)
        total = count + k
        delta = block_mean - mean
        safe_total = np.maximum(total, 1)
        mean = mean + delta * k / safe_total
        m2 = m2 + block_m2 + delta**2 * count * k / safe_total
        count = total
        logs = np.log10(absval[finite & (absval > 0)])
        idx = np.clip(((logs - _LOG_LO) / (_LOG_HI - _LOG_LO) * _BINS).astype(np.int64) + 1, 1, _BINS)
        hist += np.bincount(idx, minlength=_BINS + 2)
        hist[0] += int((finite & (absval == 0)).sum())
    if count is None:
        raise ValueError("site has no recorded values; the store holds no stimuli")
    any_finite = bool(count.sum())
    median_abs = _histogram_median(hist) if any_finite else math.nan
    threshold = max(massive_ratio * median_abs, massive_min) if any_finite else massive_min
    massive = np.zeros_like(zeros)
    top: list[tuple[float, int, int, int]] = []
    offset = 0
    for values, mask in blocks():
        values = np.asarray(values, np.float64)
        absval = np.abs(np.where(np.isfinite(values), values, 0.0)) * np.asarray(mask, bool)[:, :, None]
        hits = absval > threshold
        massive += hits.sum((0, 1))
        if hits.any():
            s, p, u = np.nonzero(hits)
            order = np.argsort(-absval[s, p, u])[:max_massive]
            top.extend((float(values[s[i], p[i], u[i]]), int(s[i]) + offset, int(p[i]), int(u[i])) for i in order)
            top = sorted(top, key=lambda t: -abs(t[0]))[:max_massive]
        offset += values.shape[0]
    variance = np.divide(m2, count, out=np.full_like(m2, np.nan), where=count > 0)
    return SiteStats(
        n_rows=n_rows, mean=np.where(count > 0, mean, np.nan), variance=variance,
        zero_fraction=np.divide(zeros, count, out=np.full(count.shape, np.nan), where=count > 0),
        nan_count=nans, inf_count=infs, massive_count=massive,
        median_abs=median_abs, max_abs=max_abs if any_finite else math.nan, massive_threshold=threshold,
        top_massive=[{"value": v, "stimulus": s, "position": p, "unit": u} for v, s, p, u in top],
        zero_threshold=zero_threshold,
    )


def _histogram_median(hist: np.ndarray) -> float:
    """Median of the nonzero |a| from the log10 histogram; exact zeros (``hist[0]``) are left out, so a
    sparse (ReLU) site is measured by the scale of its active values."""
    counts = hist[1:]
    total = counts.sum()
    if total == 0:
        return 0.0
    b = min(int(np.searchsorted(np.cumsum(counts), (total + 1) / 2)) + 1, _BINS)
    centre = _LOG_LO + (b - 0.5) * (_LOG_HI - _LOG_LO) / _BINS
    return float(10.0**centre)


def blocks_of(array, mask, rows_per_block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Blocks of ``rows_per_block`` stimuli from array-likes (numpy, zarr, dask) of shapes
    (stimuli, positions, units) and (stimuli, positions)."""
    for start in range(0, array.shape[0], rows_per_block):
        yield np.asarray(array[start:start + rows_per_block]), np.asarray(mask[start:start + rows_per_block])
