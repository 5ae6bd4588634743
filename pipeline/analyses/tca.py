"""Tensor component analysis of recorded activations (Williams et al. 2018).

Turns activations into tensors such as (unit x time x trial) or (unit x stimulus x checkpoint),
keeps the units of highest variance to bound the cost, fits CP models over a range of ranks
(replicates from random starts and a held-out cross-validation), and returns the model at the
suggested rank in a canonical form (components by decreasing size on the fitted entries, signs
fixed) for display.
The CP solvers and diagnostics themselves live in ``pipeline.analyses.factorization``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.analyses.factorization import (
    CPResult,
    CrossValidation,
    RankEnsemble,
    cross_validated_error,
    observed_size,
    rank_ensemble,
    suggest_rank,
)
from pipeline.backend import array_namespace


@dataclass
class TCAFit:
    """Rank diagnostics and the chosen CP model of one tensor.

    Attributes
    ----------
    ensemble : RankEnsemble
        Objective and replicate similarity for each rank.
    cv : CrossValidation or None
        Held-out error for each rank (None when ``holdout`` was 0).
    rank : int
        Suggested rank (cross-validation when available, else replicate stability).
    model : CPResult
        Best replicate at ``rank`` in canonical form (``canonical`` with the fit's mask).
    nonneg : bool
        Whether the fits were non-negative.
    sizes : array, shape (rank,)
        ``observed_size`` of each component of ``model`` (decreasing).
    """

    ensemble: RankEnsemble
    cv: CrossValidation | None
    rank: int
    model: CPResult
    nonneg: bool
    sizes: object


def unit_variance(X, mask=None):
    """Variance of each unit over the observed samples.

    Parameters
    ----------
    X : array, shape (..., n_units)
    mask : array of bool, shape X.shape[:-1], optional
        True where a sample is observed (padding is False).

    Returns
    -------
    array, shape (n_units,)
    """
    xp = array_namespace(X, mask)
    flat = xp.reshape(X, (-1, X.shape[-1]))
    if mask is None:
        weight = xp.ones((flat.shape[0], 1), dtype=flat.dtype)
    else:
        if tuple(mask.shape) != tuple(X.shape[:-1]):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected X.shape[:-1] = {tuple(X.shape[:-1])}")
        weight = xp.reshape(xp.astype(mask, flat.dtype), (-1, 1))
    count = xp.sum(weight)
    if float(count) < 1:
        raise ValueError("mask marks no sample as observed; at least one sample is needed")
    flat = xp.where(weight > 0, flat, xp.zeros_like(flat))  # padding may hold NaN or junk
    mean = xp.sum(flat * weight, axis=0) / count
    return xp.sum(((flat - mean) * weight) ** 2, axis=0) / count


def pooled_variance(parts) -> np.ndarray:
    """Variance of each unit over the rows of several arrays together, taking one array at a time (the pairwise
    update of Chan, Golub and LeVeque), so that only one is in memory: ``unit_variance`` of their concatenation.

    Parameters
    ----------
    parts : iterable of arrays, shape (n_samples_i, n_units); empty ones are skipped

    Returns
    -------
    ndarray, shape (n_units,), float64
    """
    count, mean, m2 = 0, 0.0, 0.0
    for part in parts:
        part = np.asarray(part, dtype=np.float64)
        if part.ndim != 2:
            raise ValueError(f"each part must be (samples, units), got shape {part.shape}")
        if part.shape[0] == 0:
            continue
        n, part_mean = part.shape[0], part.mean(axis=0)
        delta, total = part_mean - mean, count + n
        m2 = m2 + ((part - part_mean) ** 2).sum(axis=0) + delta**2 * (count * n / total)
        mean = mean + delta * (n / total)
        count = total
    if count == 0:
        raise ValueError("no samples: at least one is needed")
    return m2 / count


def top_units(variance, k: int) -> np.ndarray:
    """Indices (ascending) of the ``k`` units of largest variance; all units when there are fewer.

    Parameters
    ----------
    variance : array, shape (n_units,)
    k : int

    Returns
    -------
    ndarray of int, shape (min(k, n_units),)
    """
    if k < 1:
        raise ValueError(f"k must be a positive number of units, got {k!r}")
    v = np.nan_to_num(np.asarray(variance, dtype=np.float64), nan=-np.inf)
    order = np.argsort(-v, kind="stable")[:k]
    return np.sort(order)


def spread_indices(n: int, k: int) -> np.ndarray:
    """``k`` indices spread evenly over ``range(n)`` (all of them when k >= n); shape (min(k, n),)."""
    if n < 1 or k < 1:
        raise ValueError(f"need n >= 1 and k >= 1, got n={n}, k={k}")
    if k >= n:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def scale_units(T, mask=None):
    """Divide each unit (axis 0) by its largest |value| over observed entries, so units weigh alike.

    Parameters
    ----------
    T : array, shape (n_units, ...)
    mask : array of bool, shape T.shape, optional

    Returns
    -------
    scaled : array, shape T.shape
    scale : array, shape (n_units,), the divisors (1 for all-zero units)
    """
    xp = array_namespace(T, mask)
    observed = xp.abs(T) if mask is None else xp.where(mask, xp.abs(T), xp.zeros_like(T))
    scale = xp.max(xp.reshape(observed, (T.shape[0], -1)), axis=1)
    scale = xp.where(scale > 0, scale, xp.ones_like(scale))
    return T / xp.reshape(scale, (-1,) + (1,) * (T.ndim - 1)), scale


def canonical(model: CPResult, absorb: int = 1, mask=None) -> CPResult:
    """Components sorted by decreasing ``observed_size`` (their weight where nothing is masked and the
    factor columns have unit norm), signs fixed: in every mode but ``absorb``, each column is flipped so
    that its entries sum to >= 0, and mode ``absorb`` takes the flips (the model is unchanged).

    With the default, units and trials (or checkpoints) read positive and the time course (or
    stimulus) factor carries the sign of a mixed-sign component.
    """
    xp = array_namespace(model.weights, *model.factors)
    absorb = absorb % len(model.factors)
    order = np.argsort(-np.asarray([float(s) for s in observed_size(model, mask)]), kind="stable")
    idx = xp.asarray(order)
    factors = [xp.take(f, idx, axis=1) for f in model.factors]
    sign = xp.ones(factors[0].shape[1], dtype=factors[0].dtype)
    for n in range(len(factors)):
        if n != absorb:
            flip = xp.where(xp.sum(factors[n], axis=0) < 0, -xp.ones_like(sign), xp.ones_like(sign))
            factors[n] = factors[n] * flip
            sign = sign * flip
    factors[absorb] = factors[absorb] * sign
    return CPResult(weights=xp.take(model.weights, idx, axis=0), factors=factors, rel_error=model.rel_error,
                    n_iter=model.n_iter, loss_history=model.loss_history)


def fit_tca(T, max_rank: int, replicates: int = 3, nonneg="auto", mask=None, n_iter_max: int = 100,
            tol: float = 1e-5, holdout: float = 0.1, random_state=0) -> TCAFit:
    """CP fits of ranks 1..max_rank with rank diagnostics, and the model at the suggested rank.

    Parameters
    ----------
    T : array, shape (I_0, ..., I_{N-1})
    max_rank : int
        Largest rank tried (capped at the smallest dimension of ``T``).
    replicates : int
        Random starts per rank.
    nonneg : "auto", True or False
        Non-negative CP; "auto" chooses it when no observed entry is negative.
    mask : array of bool, shape T.shape, optional
        True where T is observed.
    n_iter_max, tol : solver limits (see ``factorization.cp``).
    holdout : float in [0, 1)
        Fraction of entries held out for cross-validation; 0 skips it and suggests the rank
        from replicate stability instead.
    random_state : int

    Returns
    -------
    TCAFit
    """
    if not (nonneg == "auto" or isinstance(nonneg, bool)):
        raise ValueError(f"nonneg must be 'auto', True or False, got {nonneg!r}")
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout!r}")
    ranks = list(range(1, min(int(max_rank), min(T.shape)) + 1))
    if holdout == 0 and replicates < 2 and len(ranks) > 1:
        raise ValueError("choosing the rank by replicate stability (holdout 0) needs replicates >= 2")
    xp = array_namespace(T, mask)
    negative = T < 0 if mask is None else (T < 0) & mask
    has_negative = bool(xp.any(negative))
    if nonneg == "auto":
        nonneg = not has_negative
    elif nonneg and has_negative:
        raise ValueError("nonneg=True needs non-negative activations but this tensor has negative values; "
                         "set nonneg to 'auto' or false")
    rng = np.random.default_rng(random_state)
    ensemble = rank_ensemble(T, ranks, replicates=replicates, nonneg=nonneg, mask=mask, n_iter_max=n_iter_max,
                             tol=tol, random_state=rng)
    cv = None
    if holdout > 0:
        cv = cross_validated_error(T, ranks, replicates=replicates, holdout=holdout, nonneg=nonneg, mask=mask,
                                   n_iter_max=n_iter_max, tol=tol, random_state=rng)
        rank = suggest_rank(cv=cv)
    elif len(ranks) == 1:
        rank = 1
    else:
        try:
            rank = suggest_rank(ensemble=ensemble)
        except ValueError:  # no rank is reproducible: keep the simplest model
            rank = 1
    model = canonical(ensemble.results[rank][0], mask=mask)
    return TCAFit(ensemble=ensemble, cv=cv, rank=rank, model=model, nonneg=nonneg, sizes=observed_size(model, mask))
