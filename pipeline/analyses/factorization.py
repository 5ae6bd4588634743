"""Tensor component analysis (Williams et al. 2018): CP and Tucker decompositions, rank diagnostics.

CP models a tensor ``X`` of shape (I_0, ..., I_{N-1}) as a sum of ``rank`` outer products,
``X ~ sum_r w_r a_r^(0) o ... o a_r^(N-1)``. Unconstrained fits use alternating least squares
(ALS), non-negative fits use hierarchical ALS (HALS). A ``mask`` (1 = observed) restricts the
objective to observed entries; each factor row then solves its own weighted least-squares
problem (ALS) or its own column-wise non-negative update (HALS), so missing entries are never
imputed.

The solvers are written against the array namespace of ``X`` (numpy, CuPy or any array-API
namespace) and return arrays of that namespace. They fit several replicates of one rank in a
single batch: factors are stored as (I_n, B, R) so that one matrix product streams the tensor
once for all B replicates. The matricized-tensor times Khatri-Rao product (MTTKRP) is
computed with a two-sided split of the modes, which streams the tensor twice per iteration
whatever its order and never builds the Khatri-Rao product of all other modes; the normal
equations use the identity Gram(Khatri-Rao) = Hadamard product of the factor Grams.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.backend import array_namespace, to_numpy


@dataclass
class CPResult:
    """A fitted CP model.

    Attributes
    ----------
    weights : array, shape (rank,)
        Component weights (non-negative; the product of the factor column norms).
    factors : list of arrays, shape (I_n, rank)
        One factor matrix per mode, columns of unit norm (zero columns stay zero).
    rel_error : float
        ``||X - X_hat||_F / ||X||_F`` over the observed entries (the last entry of ``loss_history``).
    n_iter : int
        Number of iterations run.
    loss_history : list of float
        Relative error after each iteration: from the normal-equation terms without forming the
        residual, or from the residual once those have too few digits left (relative errors
        below 0.03 in float32, 1.5e-6 in float64).
    """

    weights: Any
    factors: list
    rel_error: float
    n_iter: int
    loss_history: list

    @property
    def rank(self) -> int:
        return int(self.weights.shape[0])


@dataclass
class TuckerResult:
    """A fitted Tucker model: ``X ~ core x_0 factors[0] x_1 ... x_{N-1} factors[N-1]``.

    Attributes
    ----------
    core : array, shape ranks
    factors : list of arrays, shape (I_n, ranks[n])
    rel_error : float
        ``||X - X_hat||_F / ||X||_F``, computed from the residual.
    n_iter : int
    loss_history : list of float
        As in ``CPResult``.
    """

    core: Any
    factors: list
    rel_error: float
    n_iter: int
    loss_history: list


@dataclass
class RankEnsemble:
    """CP fits over ranks x replicates (see ``rank_ensemble``).

    Attributes
    ----------
    ranks : list of int
    results : dict rank -> list of CPResult, sorted by ``rel_error`` (best first)
    objectives : dict rank -> ndarray, shape (replicates,), the sorted relative errors
    similarities : dict rank -> ndarray, shape (replicates,), ``factor_similarity`` of each
        replicate to the best one (the first entry, the best model itself, is 1); with a mask, each
        component weighs by its ``observed_size``, not by its weight, which also counts its factors at
        the masked entries
    """

    ranks: list
    results: dict
    objectives: dict
    similarities: dict


@dataclass
class CrossValidation:
    """Held-out error of CP fits (see ``cross_validated_error``).

    Attributes
    ----------
    ranks : list of int
    train_error : dict rank -> ndarray, shape (replicates,), relative error on the fitted entries
    test_error : dict rank -> ndarray, shape (replicates,), relative error on the held-out entries
    holdout : ndarray of bool, shape X.shape, True where an entry was held out
    """

    ranks: list
    train_error: dict
    test_error: dict
    holdout: np.ndarray


# ----------------------------------------------------------------------------- helpers


def _astype(x, dtype, xp):
    return xp.astype(x, dtype) if hasattr(xp, "astype") else x.astype(dtype)


def _khatri_rao(mats, xp):
    """Row-wise Kronecker product of (I_k, B, R) arrays -> (prod I_k, B, R), last index fastest.

    Each step tiles the rows so far along the new mode and multiplies by that factor flattened:
    contiguous passes of length I_k B R instead of a broadcast whose inner loop is only B R long.
    """
    out = mats[0]
    for m in mats[1:]:
        rows, B, R = m.shape
        tiled = xp.tile(xp.reshape(out, (-1, B * R)), (1, rows))  # (P, rows B R)
        tiled *= xp.reshape(m, (1, rows * B * R))
        out = xp.reshape(tiled, (-1, B, R))
    return out


def _gram(U, xp):
    """(I, B, R) -> (B, R, R) Gram matrices U_b^T U_b."""
    return xp.matmul(xp.permute_dims(U, (1, 2, 0)), xp.permute_dims(U, (1, 0, 2)))


def _column_norms(U, xp):
    """(I, B, R) -> (B, R) column norms with zeros replaced by one (safe to divide by)."""
    norms = xp.sqrt(xp.sum(U * U, axis=0))
    return xp.where(norms > 0, norms, xp.ones_like(norms))


def _contract_partial(Y, factors, keep, xp, leading=False):
    """Contract a partial tensor Y with ``factors[j]`` (d_j, B, R) over every mode j != keep
    (column-wise, shared B and R). Y is (d_0, ..., d_{k-1}, B, R), or (B, R, d_0, ..., d_{k-1})
    when ``leading``; returns (d_keep, B, R).

    Each contraction moves its mode last and is one batched matrix-vector product per column.
    """
    if not leading:
        Y = xp.permute_dims(Y, (Y.ndim - 2, Y.ndim - 1) + tuple(range(Y.ndim - 2)))
    B, R = Y.shape[0], Y.shape[1]
    for j in reversed(range(len(factors))):
        if j == keep:
            continue
        # mode j last; modes after j are contracted already, except keep
        order = tuple(k for k in range(Y.ndim) if k != 2 + j) + (2 + j,)
        Yj = xp.permute_dims(Y, order)
        rest = tuple(Yj.shape[2:-1])
        Yj = xp.reshape(Yj, (B, R, -1, factors[j].shape[0]))
        Y = xp.reshape(xp.matmul(Yj, xp.permute_dims(factors[j], (1, 2, 0))[..., None]), (B, R) + rest)
    return xp.permute_dims(Y, (2, 0, 1))


def _unfold(X, mode, xp):
    """Mode-n unfolding (I_n, prod of the other dims), the other dims in increasing order."""
    return xp.reshape(xp.moveaxis(X, mode, 0), (X.shape[mode], -1))


def _as_float(X, xp):
    if X.dtype in (xp.float32, xp.float64):
        return X
    return _astype(X, xp.float64, xp)


def _host_float(a) -> np.ndarray:
    return np.asarray(to_numpy(a), dtype=np.float64)


class _Data:
    """A validated tensor with the unfoldings the solvers reuse across fits."""

    def __init__(self, X, mask=None, takes_mask=True):
        xp = array_namespace(X, mask)
        X = xp.asarray(X)  # lists, xarray and dask arrays become numpy arrays
        if X.ndim < 2:
            raise ValueError(f"X must have at least 2 dimensions, got shape {tuple(X.shape)}")
        if xp.isdtype(X.dtype, "complex floating"):
            raise ValueError(f"X is complex ({X.dtype}); factorize its real part, imaginary part or modulus")
        X = _as_float(X, xp)
        self.xp, self.dtype, self.shape = xp, X.dtype, tuple(int(d) for d in X.shape)
        if mask is None:
            self.W = None  # NaN shows in the norm below
        else:
            mask = xp.asarray(mask)
            if tuple(mask.shape) != self.shape:
                raise ValueError(f"mask has shape {tuple(mask.shape)} but X has shape {self.shape}; pass a mask like X")
            if xp.isdtype(mask.dtype, "real floating") and bool(xp.any(xp.isnan(mask))):
                raise ValueError("mask has NaN; use 1 (or True) for observed entries and 0 (or False) for missing ones")
            observed = mask if xp.isdtype(mask.dtype, "bool") else mask != 0
            if not bool(xp.any(observed)):
                raise ValueError("mask marks no entry as observed; at least one entry of X must be observed")
            if bool(xp.any(xp.isnan(X) & observed)):
                raise ValueError("X has NaN at entries the mask marks observed; set mask to 0 there")
            X = xp.where(observed, X, xp.zeros_like(X))
            self.W = _astype(observed, self.dtype, xp)
        # squared norms of the lines along the last mode and of the slices along it, as two
        # matrix-vector products of the squared entries (far faster than numpy's axis sums);
        # the total is summed in float64
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, in one line
            squares = xp.reshape(X * X, (-1, self.shape[-1]))
            lines = xp.matmul(squares, xp.ones(self.shape[-1], dtype=X.dtype))
            last = xp.matmul(xp.ones(squares.shape[0], dtype=X.dtype), squares)
        del squares
        lines = xp.reshape(_astype(lines, xp.float64, xp), self.shape[:-1])
        self.norm2 = float(xp.sum(lines))
        if not math.isfinite(self.norm2):
            if bool(xp.any(xp.isnan(X))):
                fix = ("pass mask=~isnan(X) (1 = observed) to treat them as missing" if takes_mask
                       else "remove or impute the missing entries")
                raise ValueError(f"X contains NaN; {fix}")
            if bool(xp.any(xp.isinf(X))):
                raise ValueError("X contains inf; remove or mask the non-finite entries")
            hint = " or pass it as float64" if X.dtype == xp.float32 else ""
            raise ValueError(f"the squared entries of X overflow {X.dtype}; rescale X{hint}")
        if self.norm2 == 0:
            if bool(xp.any(X != 0)):
                raise ValueError(f"the squared entries of X underflow {X.dtype}; rescale X or pass it as float64")
            raise ValueError("X is zero on every observed entry; nothing to factorize")
        for n in range(X.ndim):
            axes = tuple(k for k in range(X.ndim - 1) if k != n)
            slices = last if n == X.ndim - 1 else xp.sum(lines, axis=axes)
            if bool(xp.any(slices == 0)):
                where = "" if mask is None else " (counting observed entries only)"
                warnings.warn(f"X has all-zero slices along mode {n}{where}; their factor rows will be zero",
                              stacklevel=3)
        self.X = X
        if self.W is None:
            # split the modes where the two sides' sizes are most even: two tensor passes per sweep
            sizes = [math.prod(self.shape[:m]) * 1.0 for m in range(1, X.ndim)]
            self.split = 1 + int(np.argmin([max(s, math.prod(self.shape) / s) for s in sizes]))
            self.X2 = xp.reshape(X, (math.prod(self.shape[: self.split]), -1))
        else:
            self.Xn = [_unfold(X, n, xp) for n in range(X.ndim)]
            self.Wn = [_unfold(self.W, n, xp) for n in range(X.ndim)]
            self.observed = [xp.sum(W, axis=1) for W in self.Wn]  # observed entries of each row of each mode (I_n,)


def _check_rank(rank, shape) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if rank > min(shape):
        warnings.warn(
            f"rank {rank} exceeds the smallest dimension of X {tuple(shape)}; the model is not unique", stacklevel=3
        )
    return int(rank)


def _check_iter(n_iter_max, tol):
    if isinstance(n_iter_max, bool) or not isinstance(n_iter_max, (int, np.integer)) or n_iter_max < 1:
        raise ValueError(f"n_iter_max must be a positive integer, got {n_iter_max!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")


# ----------------------------------------------------------------------------- initialization


def _leading_vectors(M, k, xp):
    """The k leading left singular vectors of M (I, P) from the eigenvectors of M M^T; (I, min(k, I))."""
    _, vecs = xp.linalg.eigh(xp.matmul(M, M.T))
    k = min(k, M.shape[0])
    return xp.flip(vecs[:, vecs.shape[1] - k :], axis=1)


def _init_factors(data, rank, n_rep, init, nonneg, rng):
    """Initial factors, one (I_n, n_rep, rank) array per mode, scaled so ||X_hat|| = ||X||."""
    xp, shape = data.xp, data.shape
    draw = rng.random if nonneg else rng.standard_normal
    if isinstance(init, str) and init == "random":
        U = [xp.asarray(draw((d, n_rep, rank)), dtype=data.dtype) for d in shape]
    elif isinstance(init, str) and init == "svd":
        U = []
        for n, d in enumerate(shape):
            Xn = data.Xn[n] if data.W is not None else _unfold(data.X, n, xp)
            V = _leading_vectors(Xn, rank, xp)
            if nonneg:
                V = xp.abs(V)
            if V.shape[1] < rank:
                fill = xp.asarray(draw((d, rank - V.shape[1])), dtype=data.dtype)
                V = (getattr(xp, "concat", None) or xp.concatenate)([V, fill], axis=1)
            U.append(xp.broadcast_to(V[:, None, :], (d, n_rep, rank)) * 1)
    elif not isinstance(init, str) and hasattr(init, "__len__") and len(init) == len(shape):
        U = []
        for n, f in enumerate(init):
            f = xp.asarray(f, dtype=data.dtype)
            if tuple(f.shape) != (shape[n], rank):
                raise ValueError(f"init[{n}] has shape {tuple(f.shape)}, expected {(shape[n], rank)}")
            if nonneg and bool(xp.any(f < 0)):
                raise ValueError(f"init[{n}] has negative entries; nonneg=True needs a non-negative start")
            U.append(xp.broadcast_to(f[:, None, :], (shape[n], n_rep, rank)) * 1)
    else:
        listed = hasattr(init, "__len__") and not isinstance(init, str)
        got = f"{type(init).__name__} of length {len(init)}" if listed else repr(init)
        raise ValueError(f"init must be 'svd', 'random' or a list of {len(shape)} factor matrices (one per mode of X), "
                         f"got {got}")
    full = _gram(U[0], xp)
    for u in U[1:]:
        full = full * _gram(u, xp)
    model_norm = xp.sqrt(xp.sum(full, axis=(1, 2)))
    scale = math.sqrt(data.norm2) / xp.where(model_norm > 0, model_norm, xp.ones_like(model_norm))
    U[0] = U[0] * scale[None, :, None]
    return U


# ----------------------------------------------------------------------------- factor updates


def _ridge(G, xp):
    """A tiny diagonal load (relative to the trace) that keeps singular normal equations solvable."""
    R = G.shape[-1]
    eye = xp.eye(R, dtype=G.dtype)
    trace = xp.sum(G * eye, axis=(-2, -1))
    info = xp.finfo(G.dtype)
    return G + (trace * info.eps / R + info.smallest_normal)[..., None, None] * eye


def _update_als(M, V, xp):
    """Least-squares factor: A = M V^-1 per replicate. M (I, B, R), V (B, R, R) -> (I, B, R)."""
    return xp.permute_dims(_solve_gram(V, xp.permute_dims(M, (1, 2, 0)), xp), (2, 0, 1))


def _update_als_rows(M, G, few, xp):
    """Row-wise weighted least squares. M (I, B, R), G (I, B, R, R) per-row Grams -> (I, B, R).

    Rows observed at fewer than R entries (``few``, (I,) bool) have singular Grams, where a solve puts rounding
    noise, magnified, into the directions no observed entry informs: they take the least-norm solution.
    """
    solved = _solve_gram(G, M[..., None], xp)[..., 0]
    if bool(xp.any(few)):
        solved = xp.where(few[:, None, None], _least_norm(_ridge(G, xp), M[..., None], xp)[..., 0], solved)
    return solved


def _solve_gram(G, rhs, xp):
    """G^-1 rhs for a stack of small symmetric positive (semi)definite Gram products G (..., R, R), rhs (..., R, K).

    G is loaded by a tiny ridge. It is nearly singular when the rank exceeds what the data hold (or, masked, what a
    slice's few observed entries hold); a solve stays accurate there, where multiplying by an explicit inverse made
    the error grow between sweeps. Where G is still singular to working precision (the solve fails or returns
    non-finite values), the answer is the least-norm solution.
    """
    G = _ridge(G, xp)
    try:
        solved = xp.linalg.solve(G, rhs)
        singular = not bool(xp.all(xp.isfinite(solved)))  # CuPy returns non-finite values, numpy raises
    except np.linalg.LinAlgError:
        singular = True
    return _least_norm(G, rhs, xp) if singular else solved


def _least_norm(G, rhs, xp):
    """Least-norm solution of G x = rhs for a stack of small symmetric Grams G (..., R, R), rhs (..., R, K)."""
    return xp.matmul(xp.linalg.pinv(G, rtol=G.shape[-1] * float(xp.finfo(G.dtype).eps)), rhs)


def _update_hals(A, M, V, xp):
    """One HALS sweep over the columns of A (I, B, R) with V (B, R, R)."""
    tiny = xp.finfo(A.dtype).smallest_normal
    for r in range(A.shape[2]):
        grad = M[:, :, r] - xp.sum(A * V[None, :, :, r], axis=2)
        den = xp.maximum(V[:, r, r], tiny)
        A[:, :, r] = xp.maximum(A[:, :, r] + grad / den[None, :], 0.0)
    return A


def _update_hals_rows(A, M, G, xp):
    """One masked HALS sweep: per-row Grams G (I, B, R, R).

    A row entry whose Gram diagonal is zero (no observed entry informs it, e.g. an unobserved
    slice) is set to zero, as the least-squares update does, rather than kept from the start.
    """
    tiny = xp.finfo(A.dtype).smallest_normal
    for r in range(A.shape[2]):
        grad = M[:, :, r] - xp.sum(G[:, :, r, :] * A, axis=2)
        den = xp.maximum(G[:, :, r, r], tiny)
        step = xp.maximum(A[:, :, r] + grad / den, 0.0)
        A[:, :, r] = xp.where(G[:, :, r, r] > 0, step, xp.zeros_like(step))
    return A


# ----------------------------------------------------------------------------- batched CP solver


def _sweep_dense(data, U, grams, nonneg):
    """One ALS/HALS sweep over all modes of an unmasked tensor; returns squared error terms (B,).

    The tensor, seen as the matrix X2 (prod of the first ``split`` dims, prod of the rest), is
    streamed twice, each time as the row-major left operand of a matrix product: ``X2 @ K`` for
    the leading modes and ``K^T @ X2`` for the trailing ones (never ``X2^T @ K``, which BLAS
    runs several times slower for skinny K).
    """
    xp, N, m = data.xp, len(U), data.split
    B, R = U[0].shape[1], U[0].shape[2]
    inner = model2 = None
    for n in range(N):
        if n == 0:
            K = _khatri_rao(U[m:], xp)
            Y = xp.matmul(data.X2, xp.reshape(K, (K.shape[0], B * R)))
            Y = xp.reshape(Y, tuple(data.shape[:m]) + (B, R))
        elif n == m:
            K = _khatri_rao(U[:m], xp)
            Z = xp.matmul(xp.reshape(K, (K.shape[0], B * R)).T, data.X2)
            Z = xp.reshape(Z, (B, R) + tuple(data.shape[m:]))
        if n < m:
            M = _contract_partial(Y, U[:m], n, xp)
        else:
            M = _contract_partial(Z, U[m:], n - m, xp, leading=True)
        V = None
        for k in range(N):
            if k != n:
                V = grams[k] if V is None else V * grams[k]
        U[n] = _update_hals(U[n], M, V, xp) if nonneg else _update_als(M, V, xp)
        grams[n] = _gram(U[n], xp)
        if n == N - 1:
            inner = xp.sum(M * U[n], axis=(0, 2))
            model2 = xp.sum(V * grams[n], axis=(1, 2))
        if nonneg:
            _move_scale(U, grams, n, xp)
    return inner, model2


def _sweep_masked(data, U, grams, nonneg):
    """One ALS/HALS sweep with per-row weighted normal equations; returns squared error terms (B,)."""
    xp, N = data.xp, len(U)
    B, R = U[0].shape[1], U[0].shape[2]
    inner = model2 = None
    for n in range(N):
        K = _khatri_rao([U[k] for k in range(N) if k != n], xp)
        P = K.shape[0]
        M = xp.reshape(xp.matmul(data.Xn[n], xp.reshape(K, (P, B * R))), (-1, B, R))
        pairs = xp.reshape(K[:, :, :, None] * K[:, :, None, :], (P, B * R * R))
        G = xp.reshape(xp.matmul(data.Wn[n], pairs), (-1, B, R, R))
        U[n] = _update_hals_rows(U[n], M, G, xp) if nonneg else _update_als_rows(M, G, data.observed[n] < R, xp)
        grams[n] = _gram(U[n], xp)
        if n == N - 1:
            inner = xp.sum(M * U[n], axis=(0, 2))
            model2 = xp.sum(xp.sum(G * U[n][:, :, None, :], axis=3) * U[n], axis=(0, 2))
        if nonneg:
            _move_scale(U, grams, n, xp)
    return inner, model2


def _move_scale(U, grams, n, xp):
    """Normalize the columns of U[n] and push their norms into the next mode (model unchanged).

    HALS updates a factor from its current value, so it runs on balanced scales; an ALS update
    does not depend on the factor it replaces, and the scales stay put without this step.
    """
    nxt = (n + 1) % len(U)
    norms = _column_norms(U[n], xp)
    U[n] = U[n] / norms[None, :, :]
    U[nxt] = U[nxt] * norms[None, :, :]
    grams[n] = grams[n] / (norms[:, :, None] * norms[:, None, :])
    grams[nxt] = grams[nxt] * (norms[:, :, None] * norms[:, None, :])


# The error the sweeps track loses about log10(1 / (rel_error^2 eps)) digits to cancellation; below
# this many eps in rel_error^2 (rel_error 0.03 in float32, 1.5e-6 in float64) each sweep's error
# is computed from the residual instead (one more pass over the tensor), so that convergence is
# judged on an error that still has digits.
_RECOMPUTE_BELOW_EPS = 1e4

# An error computed from the residual is exact to a few eps: a smaller change between sweeps is noise.
_NOISE_EPS = 4


def _error_floor(data) -> float:
    """Squared relative error below which the tracked error is recomputed from the residual."""
    return _RECOMPUTE_BELOW_EPS * float(data.xp.finfo(data.dtype).eps)


def _converged(history: list[float], tol: float, eps: float) -> bool:
    """Whether the relative error changed between the last two sweeps by less than ``tol`` relative,
    or by no more than its own rounding noise (never with ``tol`` 0)."""
    if tol == 0 or len(history) < 2:
        return False
    change = abs(history[-2] - history[-1])
    return change < tol * history[-2] or change <= _NOISE_EPS * eps


def _finish(data, U, b, errors):
    """CPResult of replicate b: unit-norm factor columns, weights = product of column norms; ``errors``
    is its loss history."""
    xp = data.xp
    factors, weights = [], None
    for u in U:
        f = u[:, b, :]
        norms = xp.sqrt(xp.sum(f * f, axis=0))
        weights = norms if weights is None else weights * norms
        factors.append(f / xp.where(norms > 0, norms, xp.ones_like(norms))[None, :])
    return CPResult(weights=weights, factors=factors, rel_error=errors[-1], n_iter=len(errors), loss_history=errors)


def _residual_error(data, full) -> float:
    """``||X - full||_F / ||X||_F`` over the observed entries, from the residual itself.

    The error the sweeps track, ||X||^2 - 2 <X, X_hat> + ||X_hat||^2, cancels to noise for errors
    below about sqrt(eps) (3e-4 in float32); the residual has no such floor.
    """
    xp = data.xp
    residual = data.X - full
    if data.W is not None:
        residual = residual * data.W
    residual = xp.reshape(residual, (-1, data.shape[-1]))
    lines = xp.vecdot(residual, residual)  # squared norm of each line along the last mode
    return math.sqrt(float(xp.sum(_astype(lines, xp.float64, xp))) / data.norm2)


def _fit_batch(data, U, nonneg, n_iter_max, tol):
    """Fit B replicates jointly from initial factors U (list of (I_n, B, R)); list of CPResult."""
    xp = data.xp
    B = U[0].shape[1]
    history = [[] for _ in range(B)]
    done = [None] * B
    active = list(range(B))
    grams = [_gram(u, xp) for u in U]
    sweep = _sweep_dense if data.W is None else _sweep_masked
    floor, eps = _error_floor(data), float(xp.finfo(data.dtype).eps)
    for it in range(n_iter_max):
        inner, model2 = sweep(data, U, grams, nonneg)
        err2 = data.norm2 - 2 * _host_float(inner) + _host_float(model2)
        rel = np.sqrt(np.maximum(err2, 0.0) / data.norm2)
        for j in np.flatnonzero(rel**2 < floor):
            rel[j] = _residual_error(data, _full([u[:, j, :] for u in U], xp))
        keep = []
        for j, b in enumerate(active):
            history[b].append(float(rel[j]))
            h = history[b]
            if _converged(h, tol, eps) or it == n_iter_max - 1:
                done[b] = _finish(data, U, j, h)
            else:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(active):
            idx = xp.asarray(keep)
            U = [xp.take(u, idx, axis=1) for u in U]
            grams = [xp.take(g, idx, axis=0) for g in grams]
            active = [active[j] for j in keep]
    return done


# ----------------------------------------------------------------------------- public CP API


def cp(X, rank, nonneg=False, mask=None, n_iter_max=500, tol=1e-8, init="svd", random_state=None) -> CPResult:
    """CP (PARAFAC) decomposition by ALS, or by HALS when ``nonneg``.

    Parameters
    ----------
    X : array, shape (I_0, ..., I_{N-1}), N >= 2
    rank : int
        Number of components R.
    nonneg : bool
        Constrain all factors to be non-negative (HALS). X may still hold negative entries; the
        model then fits them as well as non-negative factors can.
    mask : array, shape X.shape, optional
        1 (or True) where X is observed; the fit ignores the other entries (NaN allowed there).
    n_iter_max : int
        Maximum number of sweeps over the modes.
    tol : float
        Stop when the relative change of the relative error between sweeps is below ``tol``, or
        the change is within that error's rounding noise (0 runs exactly ``n_iter_max`` sweeps).
    init : {"svd", "random"} or list of arrays of shape (I_n, R)
        Leading singular vectors of each unfolding (absolute values when ``nonneg``), random
        factors, or explicit starting factors.
    random_state : int or numpy Generator, optional
        Seed for random initial factors (and for padding the SVD start when R > I_n).

    Returns
    -------
    CPResult
        weights (R,), factors [(I_n, R)] with unit-norm columns, rel_error, n_iter, loss_history.
    """
    data = _Data(X, mask)
    rank = _check_rank(rank, data.shape)
    _check_iter(n_iter_max, tol)
    U = _init_factors(data, rank, 1, init, nonneg, np.random.default_rng(random_state))
    return _fit_batch(data, U, nonneg, n_iter_max, tol)[0]


def reconstruct(result):
    """Full tensor of a CP model: ``sum_r w_r a_r^(0) o ... o a_r^(N-1)``; shape (I_0, ..., I_{N-1})."""
    xp = array_namespace(result.weights, *result.factors)
    return _full([result.factors[0] * result.weights[None, :], *result.factors[1:]], xp)


def _full(factors, xp):
    """``sum_r a_r^(0) o ... o a_r^(N-1)`` of factor matrices (I_n, R); shape (I_0, ..., I_{N-1})."""
    K = _khatri_rao([f[:, None, :] for f in factors[1:]], xp)[:, 0, :]
    return xp.reshape(xp.matmul(factors[0], K.T), tuple(f.shape[0] for f in factors))


def _unit_columns(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Host matrix (I, R) with its nonzero columns scaled to unit norm, and the column norms (R,)."""
    norms = np.linalg.norm(f, axis=0)
    return f / np.where(norms > 0, norms, 1.0), norms


def observed_size(model: CPResult, mask=None):
    """Size of each component (R,) on the entries that were fitted: the norm of the component's
    tensor w_r f_0[:, r] o f_1[:, r] o ... over the entries where ``mask`` is 1 (all without a mask).

    Where padding is masked out, a component can take a large weight on the few observed entries of a
    rarely observed position; its size here, not its weight, says how much of the data it describes.
    """
    xp = array_namespace(model.weights, *model.factors)
    squares = [f * f for f in model.factors]
    if mask is None:
        per_mode = [xp.sum(s, axis=0) for s in squares]
        total = per_mode[0]
        for p in per_mode[1:]:
            total = total * p
    else:
        M = _unfold(xp.astype(mask, squares[0].dtype), 0, xp)  # (I_0, prod of the other dims)
        rest = xp.reshape(_khatri_rao([s[:, None, :] for s in squares[1:]], xp), (M.shape[1], -1))
        total = xp.sum(squares[0] * xp.matmul(M, rest), axis=0)
    return xp.abs(model.weights) * xp.sqrt(total)


def factor_similarity(a, b):
    """Similarity of two CP models after the best matching of their components.

    For components r of ``a`` and s of ``b`` the score is (Williams et al. 2018)
    ``(1 - |w_r - w'_s| / max(|w_r|, |w'_s|)) * max(0, sign(w_r w'_s) prod_n cos(a_r^(n), b_s^(n)))``;
    the matching that maximizes the summed score is found by the Hungarian algorithm, and the
    similarity is the mean score over the components of the larger model (unmatched components
    count as 0). Flipping the signs of two factors of a component leaves it, and the score,
    unchanged; flipping one negates the component, which then scores 0 against the original.

    Parameters
    ----------
    a, b : CPResult-like
        Objects with ``weights`` (R,) and ``factors`` [(I_n, R)] (any array namespace).

    Returns
    -------
    score : float in [0, 1]
    permutation : ndarray of int, shape (rank of a,)
        ``permutation[r]`` is the component of ``b`` matched to component r of ``a`` (-1 if none).
    """
    fa, fb = [_host_float(f) for f in a.factors], [_host_float(f) for f in b.factors]
    if len(fa) != len(fb) or any(x.shape[0] != y.shape[0] for x, y in zip(fa, fb, strict=True)):
        raise ValueError("a and b must have factors for the same tensor shape")
    wa, wb = _host_float(a.weights), _host_float(b.weights)
    score = np.outer(np.where(wa < 0, -1.0, 1.0), np.where(wb < 0, -1.0, 1.0))
    for x, y in zip(fa, fb, strict=True):
        (x, nx), (y, ny) = _unit_columns(x), _unit_columns(y)
        cosine = x.T @ y
        cosine[(nx == 0)[:, None] & (ny == 0)[None, :]] = 1.0  # two zero columns are the same column
        score *= cosine
    score = np.maximum(score, 0.0)
    wa, wb = np.abs(wa), np.abs(wb)
    top = np.maximum(wa[:, None], wb[None, :])
    score *= 1.0 - np.abs(wa[:, None] - wb[None, :]) / np.where(top > 0, top, 1.0)
    rows, cols = linear_sum_assignment(score, maximize=True)
    perm = np.full(wa.size, -1, dtype=np.int64)
    perm[rows] = cols
    return float(np.clip(score[rows, cols].sum() / max(wa.size, wb.size), 0.0, 1.0)), perm


# Two components whose congruence is this negative or more cancel each other: a diverging
# ("degenerate") pair whose weights grow without bound as the fit goes on (Kruskal, Harshman and
# Lundy 1989); -0.85 is a usual cut-off.
DEGENERATE_CONGRUENCE = -0.85


def congruence(result) -> np.ndarray:
    """Congruence of every pair of components of a CP model: ``prod_n cos(a_r^(n), a_s^(n))``, signs kept.

    Parameters
    ----------
    result : CPResult-like with ``factors`` [(I_n, R)]

    Returns
    -------
    ndarray, shape (R, R), ones on the diagonal (for nonzero columns)
    """
    C = None
    for f in result.factors:
        f, _ = _unit_columns(_host_float(f))
        C = f.T @ f if C is None else C * (f.T @ f)
    return C


def degenerate_pairs(result, threshold=DEGENERATE_CONGRUENCE) -> list[tuple[int, int, float]]:
    """Pairs of components (r, s, congruence), r < s, whose congruence is at most ``threshold``: they cancel
    each other, and their weights and factors say nothing on their own."""
    C = congruence(result)
    return [(r, s, float(C[r, s])) for r in range(C.shape[0]) for s in range(r + 1, C.shape[0])
            if C[r, s] <= threshold]


# ----------------------------------------------------------------------------- rank diagnostics


def _check_ranks(ranks, shape):
    ranks = [ranks] if np.ndim(ranks) == 0 else list(ranks)
    if not ranks:
        raise ValueError("ranks is empty; pass at least one rank")
    return [_check_rank(r, shape) for r in ranks]


def _check_replicates(replicates):
    if isinstance(replicates, bool) or not isinstance(replicates, (int, np.integer)) or replicates < 1:
        raise ValueError(f"replicates must be a positive integer, got {replicates!r}")
    return int(replicates)


def rank_ensemble(
    X, ranks, replicates=5, nonneg=False, mask=None, n_iter_max=500, tol=1e-6, random_state=None
) -> RankEnsemble:
    """Fit CP models for each rank from ``replicates`` random starts (Williams et al. 2018).

    The replicates of one rank are fitted jointly in one batch. Per rank the result holds the
    relative errors (objective) and the similarity of each replicate to the best-fitting one;
    a rank whose replicates all reach the same error and similarity near 1 is well determined.

    Parameters
    ----------
    X : array, shape (I_0, ..., I_{N-1})
    ranks : int or iterable of int
    replicates : int
    nonneg, mask, n_iter_max : as in ``cp``
    tol : float
        As in ``cp``, but looser by default: an ensemble fits many models.
    random_state : int or numpy Generator, optional

    Returns
    -------
    RankEnsemble
    """
    data = _Data(X, mask)
    ranks = _check_ranks(ranks, data.shape)
    replicates = _check_replicates(replicates)
    _check_iter(n_iter_max, tol)
    rng = np.random.default_rng(random_state)
    results, objectives, similarities = {}, {}, {}
    for rank in ranks:
        U = _init_factors(data, rank, replicates, "random", nonneg, rng)
        fits = sorted(_fit_batch(data, U, nonneg, n_iter_max, tol), key=lambda r: r.rel_error)
        results[rank] = fits
        objectives[rank] = np.array([f.rel_error for f in fits])
        sized = [f if data.W is None else replace(f, weights=observed_size(f, data.W)) for f in fits]
        similarities[rank] = np.array([factor_similarity(sized[0], f)[0] for f in sized])
    return RankEnsemble(ranks=ranks, results=results, objectives=objectives, similarities=similarities)


def cross_validated_error(
    X, ranks, replicates=3, holdout=0.1, nonneg=False, mask=None, n_iter_max=500, tol=1e-6, random_state=None
) -> CrossValidation:
    """Held-out reconstruction error of CP models for each rank.

    A random ``holdout`` fraction of the observed entries is hidden (one hold-out set shared by
    all ranks and replicates, so ranks are compared on the same entries); each model is fitted
    on the rest with a mask and scored as ``||X - X_hat||_F / ||X||_F`` on the hidden entries.

    Parameters
    ----------
    X : array, shape (I_0, ..., I_{N-1})
    ranks : int or iterable of int
    replicates : int
        Random starts per rank.
    holdout : float in (0, 1)
        Fraction of observed entries held out.
    nonneg, mask, n_iter_max, tol, random_state : as in ``rank_ensemble``

    Returns
    -------
    CrossValidation
    """
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout!r}")
    xp = array_namespace(X, mask)
    data = _Data(X, mask)
    ranks = _check_ranks(ranks, data.shape)
    replicates = _check_replicates(replicates)
    _check_iter(n_iter_max, tol)
    rng = np.random.default_rng(random_state)
    observed = np.ones(data.shape, dtype=bool) if data.W is None else to_numpy(data.W) > 0
    held = observed & (rng.random(data.shape) < holdout)
    if not held.any() or held.sum() == observed.sum():
        raise ValueError(f"holdout={holdout} leaves no entry to fit or none to test; choose a fraction in (0, 1)")
    held_x = xp.asarray(held.astype(np.float64), dtype=data.dtype)
    train = _Data(data.X, xp.asarray(observed & ~held))
    test_norm = math.sqrt(float(xp.sum((data.X * held_x) ** 2)))
    if test_norm == 0:
        raise ValueError(f"every held-out entry of X is zero (holdout={holdout}); hold out a larger fraction "
                         "or pass another random_state")
    train_err, test_err = {}, {}
    for rank in ranks:
        U = _init_factors(train, rank, replicates, "random", nonneg, rng)
        fits = _fit_batch(train, U, nonneg, n_iter_max, tol)
        train_err[rank] = np.array([f.rel_error for f in fits])
        test_err[rank] = np.array(
            [math.sqrt(float(xp.sum(((data.X - reconstruct(f)) * held_x) ** 2))) / test_norm for f in fits]
        )
    return CrossValidation(ranks=ranks, train_error=train_err, test_error=test_err, holdout=held)


STABLE_SIMILARITY = 0.9  # replicates matching the best fit this well (mean similarity) reproduce it
# A replicate whose relative error exceeds the best one's by more than this fraction of it (or of this value, for
# near-exact fits) is a failed start, stuck in a clearly worse optimum.
NEAR_BEST = 0.05


def replicate_similarity(similarities, objectives, error_tol=NEAR_BEST) -> float | None:
    """Mean similarity to the best replicate of the other replicates that fit about as well.

    A replicate counts when its relative error is within ``error_tol * max(best, error_tol)`` of the best one's. A
    start stuck in a clearly worse optimum is a failed start: it says nothing about whether the best fit is unique
    (the cross-validated choice of rank ignores such starts too).

    Parameters
    ----------
    similarities, objectives : arrays, shape (replicates,)
        One rank's ``similarities`` and ``objectives`` of a RankEnsemble, best replicate first.
    error_tol : float

    Returns
    -------
    float, or None where no other replicate fits that well (or there is only one)
    """
    similarities, objectives = np.asarray(similarities), np.asarray(objectives)
    near = objectives[1:] - objectives[0] <= error_tol * max(float(objectives[0]), error_tol)
    return float(similarities[1:][near].mean()) if near.any() else None


def suggest_rank(ensemble=None, cv=None, error_tol=NEAR_BEST, similarity_threshold=STABLE_SIMILARITY) -> int:
    """Suggest a CP rank from cross-validation or from replicate stability.

    Rule: with ``cv``, each rank is scored by the held-out error of its replicate with the
    lowest training error (failed starts stuck in poor local optima do not count against a
    rank); the suggestion is the smallest rank whose score is within ``error_tol`` (relative) of
    the best score over all ranks -- further components only fit noise. Without ``cv``, the
    suggestion is the largest rank of ``ensemble`` whose ``replicate_similarity`` (mean similarity to
    the best replicate of the replicates that fit about as well) is at least
    ``similarity_threshold``: beyond the true rank, fits stop being reproducible.

    Parameters
    ----------
    ensemble : RankEnsemble, optional
    cv : CrossValidation, optional
    error_tol : float
        With ``cv``, how far (relative) above the best held-out score a rank may score; with ``ensemble``, the
        ``error_tol`` of ``replicate_similarity``.
    similarity_threshold : float

    Returns
    -------
    int
    """
    if cv is not None:
        score = {r: float(cv.test_error[r][np.argmin(cv.train_error[r])]) for r in cv.ranks}
        best = min(score.values())
        return min(r for r in cv.ranks if score[r] <= best * (1 + error_tol))
    if ensemble is None:
        raise ValueError("pass ensemble (from rank_ensemble) or cv (from cross_validated_error)")
    if any(len(ensemble.similarities[r]) < 2 for r in ensemble.ranks):
        raise ValueError("replicate stability needs at least 2 replicates per rank; refit with replicates >= 2")
    similarity = {r: replicate_similarity(ensemble.similarities[r], ensemble.objectives[r], error_tol)
                  for r in ensemble.ranks}
    stable = [r for r, value in similarity.items() if value is not None and value >= similarity_threshold]
    if not stable:
        raise ValueError(f"no rank reaches mean similarity {similarity_threshold}; lower similarity_threshold or fit "
                         "more replicates")
    return max(stable)


# ----------------------------------------------------------------------------- Tucker


# HALS sweeps per factor and non-negative Tucker iteration: one sweep leaves the factors far from
# their optimum for the current core, and the core steps then chase a poor fit.
_TUCKER_FACTOR_SWEEPS = 5


def _nndsvd_factor(M, k, rng, xp):
    """NNDSVD start (Boutsidis and Gallopoulos 2008) for the left factor of M (I, P), k <= I: (I, k).

    Each leading singular pair (u, v) is replaced by the non-negative part, (u+, v+) or (u-, v-),
    with the larger product of norms; the factor keeps that part of u with unit norm. Columns that
    come out zero are drawn at random.
    """
    U = _leading_vectors(M, k, xp)
    W = xp.matmul(M.T, U)  # (P, k): singular value times right vector
    norm = xp.linalg.vector_norm
    up, un = xp.maximum(U, 0.0), xp.maximum(-U, 0.0)
    wp, wn = xp.maximum(W, 0.0), xp.maximum(-W, 0.0)
    positive = norm(up, axis=0) * norm(wp, axis=0) >= norm(un, axis=0) * norm(wn, axis=0)
    C = xp.where(positive[None, :], up, un)
    norms = norm(C, axis=0)
    if bool(xp.any(norms == 0)):
        C = xp.where((norms == 0)[None, :], xp.asarray(rng.random(tuple(C.shape)), dtype=C.dtype), C)
        norms = norm(C, axis=0)
    return C / norms[None, :]


def _mode_dot(X, M, mode, xp):
    """Mode-n product X x_n M with M (J, I_n): replaces axis ``mode`` of length I_n by J."""
    return xp.moveaxis(xp.tensordot(X, M, axes=([mode], [1])), -1, mode)


def _multi_dot(X, mats, xp, skip=None):
    for n, M in enumerate(mats):
        if n != skip:
            X = _mode_dot(X, M, n, xp)
    return X


def tucker(X, ranks, nonneg=False, n_iter_max=100, tol=1e-8, random_state=None) -> TuckerResult:
    """Tucker decomposition: HOOI (orthonormal factors) or a non-negative fit.

    Parameters
    ----------
    X : array, shape (I_0, ..., I_{N-1})
    ranks : sequence of int, length N, with 1 <= ranks[n] <= I_n
    nonneg : bool
        Non-negative core and factors, started from NNDSVD factors (Boutsidis and Gallopoulos
        2008): per iteration, a few HALS sweeps for each factor (unit-norm columns, their scale
        moved into the core), then projected-gradient steps (step 1 / Lipschitz constant) for
        the core. The loss never increases.
    n_iter_max, tol : as in ``cp``
    random_state : int or numpy Generator, optional
        Seed for filling NNDSVD columns that come out all zero (rare).

    Returns
    -------
    TuckerResult
        core (ranks), factors [(I_n, ranks[n])], rel_error, n_iter, loss_history.
    """
    data = _Data(X, takes_mask=False)
    xp, shape, X = data.xp, data.shape, data.X
    ranks = [ranks] * len(shape) if isinstance(ranks, (int, np.integer)) else list(ranks)
    if len(ranks) != len(shape) or any(
        isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 1 <= r <= d
        for r, d in zip(ranks, shape, strict=True)
    ):
        raise ValueError(f"ranks must hold one integer 1 <= ranks[n] <= I_n per mode of {shape}, got {ranks!r}")
    _check_iter(n_iter_max, tol)
    if nonneg and bool(xp.any(X < 0)):
        raise ValueError("X has negative entries; nonneg=True needs a non-negative tensor")
    if nonneg:
        rng = np.random.default_rng(random_state)
        U = [_nndsvd_factor(_unfold(X, n, xp), r, rng, xp) for n, r in enumerate(ranks)]
        core = _multi_dot(X, [u.T for u in U], xp)
    else:
        U = [_leading_vectors(_unfold(X, n, xp), r, xp) for n, r in enumerate(ranks)]
    history, floor, eps = [], _error_floor(data), float(xp.finfo(data.dtype).eps)
    for _ in range(n_iter_max):
        if nonneg:
            for n in range(len(shape)):
                grams = [u.T @ u for u in U]
                GG = _multi_dot(core, grams, xp, skip=n)
                num = _unfold(_multi_dot(X, [u.T for u in U], xp, skip=n), n, xp) @ _unfold(core, n, xp).T
                V = _unfold(GG, n, xp) @ _unfold(core, n, xp).T
                A = U[n][:, None, :]
                for _ in range(_TUCKER_FACTOR_SWEEPS):
                    A = _update_hals(A, num[:, None, :], V[None, :, :], xp)
                norms = _column_norms(A, xp)[0, :]
                U[n] = A[:, 0, :] / norms[None, :]
                core = core * xp.reshape(norms, tuple(-1 if k == n else 1 for k in range(len(shape))))
            proj = _multi_dot(X, [u.T for u in U], xp)
            grams = [u.T @ u for u in U]
            lipschitz = math.prod(float(xp.max(xp.linalg.eigh(g)[0])) for g in grams)
            for _ in range(10):  # projected gradient on the core, step 1/L: monotone
                core = xp.maximum(core - (_multi_dot(core, grams, xp) - proj) / lipschitz, 0.0)
            model = _multi_dot(core, grams, xp)
            fit2 = data.norm2 - 2 * float(xp.sum(proj * core)) + float(xp.sum(model * core))
        else:
            for n in range(len(shape)):
                Y = _multi_dot(X, [u.T for u in U], xp, skip=n)
                U[n] = _leading_vectors(_unfold(Y, n, xp), ranks[n], xp)
            core = _multi_dot(X, [u.T for u in U], xp)
            fit2 = data.norm2 - float(xp.sum(core * core))
        rel = math.sqrt(max(fit2, 0.0) / data.norm2)
        residual = rel**2 < floor  # the last entry already comes from the residual
        history.append(_residual_error(data, _multi_dot(core, U, xp)) if residual else rel)
        if _converged(history, tol, eps):
            break
    error = history[-1] if residual else _residual_error(data, _multi_dot(core, U, xp))
    return TuckerResult(core=core, factors=U, rel_error=error, n_iter=len(history), loss_history=history)
