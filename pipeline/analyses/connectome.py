"""Dynamic functional connectome: communities of co-active units and when they are active.

After "Learning dynamic representations of the functional connectome in neurobiological
networks": the affinity of every pair of units (absolute correlation of their activity) is
computed at each time point -- here each training checkpoint -- and stacked into a
(unit x unit x time) tensor, which a non-negative CP model splits into components. A
component's unit factor is a community of co-active units; its time factor says when that
community is active. Self-affinities (the diagonal) carry no information and are masked out
of the fit. Each unit is assigned to the community where its loading (unit factor times the
component weight) is largest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.analyses.factorization import observed_size, rank_ensemble
from pipeline.backend import array_namespace, to_numpy

AFFINITIES = ("abs_correlation", "squared_correlation")


@dataclass
class Communities:
    """A non-negative CP model of an affinity tensor, read as communities.

    Attributes
    ----------
    weights : ndarray, shape (rank,)
    sizes : ndarray, shape (rank,), decreasing
        Norm of each community's part of the model off the diagonal, the entries the fit sees
        (``factorization.observed_size``): a community of one unit lies mostly on the masked diagonal, with a
        weight far above its size.
    unit_factor : ndarray, shape (n_units, rank)
        Mean of the two (unit) factors, columns of unit norm.
    time_factor : ndarray, shape (n_times, rank)
        Unit-norm activity of each community over time (checkpoints).
    loading : ndarray, shape (n_units, rank)
        ``unit_factor * sizes``.
    assignment : ndarray of int, shape (n_units,)
        Community of each unit (argmax of its loading), -1 for units with no loading.
    rel_error : float
        Relative error of the fit over the off-diagonal entries.
    objectives, similarities : ndarray, shape (replicates,)
        Relative error of each replicate and its ``factor_similarity`` to the best one.
    """

    weights: np.ndarray
    sizes: np.ndarray
    unit_factor: np.ndarray
    time_factor: np.ndarray
    loading: np.ndarray
    assignment: np.ndarray
    rel_error: float
    objectives: np.ndarray
    similarities: np.ndarray


def affinity(X, kind: str = "abs_correlation"):
    """Affinity of every pair of units from their activity over samples.

    Parameters
    ----------
    X : array, shape (n_samples, n_units)
    kind : "abs_correlation" (|Pearson r|) or "squared_correlation" (r^2)

    Returns
    -------
    array, shape (n_units, n_units), symmetric, in [0, 1]; rows and columns of constant units
    are 0 (their correlation is undefined).
    """
    if kind not in AFFINITIES:
        raise ValueError(f"kind must be one of {', '.join(AFFINITIES)}, got {kind!r}")
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"X must be (n_samples >= 2, n_units), got shape {tuple(X.shape)}")
    xp = array_namespace(X)
    Xc = X - xp.mean(X, axis=0)
    norms = xp.sqrt(xp.sum(Xc * Xc, axis=0))
    scale = xp.max(xp.abs(X), axis=0)
    live = norms > 1e-6 * xp.where(scale > 0, scale, xp.ones_like(scale)) * X.shape[0] ** 0.5
    Z = xp.where(live, Xc / xp.where(live, norms, xp.ones_like(norms)), xp.zeros_like(Xc))
    r = xp.clip(xp.matmul(Z.T, Z), -1.0, 1.0)
    return xp.abs(r) if kind == "abs_correlation" else r * r


def communities(A, rank: int, replicates: int = 3, n_iter_max: int = 200, tol: float = 1e-6,
                random_state=0) -> Communities:
    """Non-negative CP of a (unit x unit x time) affinity tensor with the diagonal masked out.

    Parameters
    ----------
    A : array, shape (n_units, n_units, n_times), non-negative
    rank : int
        Number of communities.
    replicates : int
        Random starts; the best fit is kept.
    n_iter_max, tol : solver limits (see ``factorization.cp``).
    random_state : int

    Returns
    -------
    Communities (host numpy arrays)
    """
    if A.ndim != 3 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be (n_units, n_units, n_times), got shape {tuple(A.shape)}")
    if A.shape[0] < 2:
        raise ValueError("A needs at least 2 units")
    xp = array_namespace(A)
    if bool(xp.any(A < 0)):
        raise ValueError("A has negative entries; an affinity tensor must be non-negative")
    off = xp.eye(A.shape[0], dtype=A.dtype) == 0
    mask = xp.broadcast_to(off[:, :, None], tuple(A.shape))
    ensemble = rank_ensemble(A, [rank], replicates=replicates, nonneg=True, mask=mask, n_iter_max=n_iter_max,
                             tol=tol, random_state=random_state)
    best = ensemble.results[rank][0]
    weights = np.asarray(to_numpy(best.weights), dtype=np.float64)
    sizes = np.asarray(to_numpy(observed_size(best, mask)), dtype=np.float64)
    f0, f1, ft = (np.asarray(to_numpy(f), dtype=np.float64) for f in best.factors)
    order = np.argsort(-sizes, kind="stable")
    weights, sizes, f0, f1, ft = weights[order], sizes[order], f0[:, order], f1[:, order], ft[:, order]
    unit = (f0 + f1) / 2
    unit = unit / np.where(np.linalg.norm(unit, axis=0) > 0, np.linalg.norm(unit, axis=0), 1.0)
    loading = unit * sizes
    assignment = np.where(loading.max(axis=1) > 0, np.argmax(loading, axis=1), -1)
    return Communities(weights=weights, sizes=sizes, unit_factor=unit, time_factor=ft, loading=loading,
                       assignment=assignment, rel_error=float(best.rel_error), objectives=ensemble.objectives[rank],
                       similarities=ensemble.similarities[rank])
