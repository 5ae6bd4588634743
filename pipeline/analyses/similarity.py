"""Representational similarity: RDMs, RDM comparison, CKA, shape metrics and their significance.

Every function takes arrays of shape (samples x features), i.e. (stimuli x units), from numpy,
CuPy or any array-API namespace, computes in that namespace and returns arrays of the same
namespace; scalar results come back as Python floats.

Definitions (the tests check each against a literal implementation of the formula):

- RDM entries for stimuli i, j with patterns x_i, x_j (rows of X):
  ``correlation`` 1 - pearson(x_i, x_j) (each pattern centred across features);
  ``cosine`` 1 - cos(x_i, x_j); ``sqeuclidean`` ||x_i - x_j||^2; ``euclidean`` ||x_i - x_j||;
  ``crossnobis`` on repeated measurements X[p] (partitions p = 1..P, P >= 2):
  d_ij = 1 / (P (P - 1) d) * sum_{p != q} (x_i^p - x_j^p)^T S^-1 (x_i^q - x_j^q), with S the
  noise covariance (identity when not given) and d the number of features. Noise independent
  across partitions cancels in expectation, so the estimate is unbiased and can be negative.
- RDM comparison uses the upper triangle (i < j) only, N = n (n - 1) / 2 entries.
  ``spearman``: Pearson correlation of average ranks; ``pearson``; ``cosine``;
  ``rho_a``: 12 sum(r1~ r2~) / (N^3 - N) with r~ the centred average ranks;
  ``kendall_tau_a``: (concordant - discordant) / (N (N - 1) / 2), tied pairs count zero.
- HSIC, biased: tr(K H L H) / (n - 1)^2 with H = I - 11^T / n. Unbiased (Song et al. 2012), with
  K~, L~ the kernel matrices with zeroed diagonals:
  [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n - 1)(n - 2)) - 2 / (n - 2) 1^T K~ L~ 1] / (n (n - 3)).
  CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)). The linear kernel is K = Xc Xc^T on
  column-centred data; the RBF kernel is exp(-||x_i - x_j||^2 / (2 sigma^2)) with sigma, when not
  given, the median Euclidean distance between distinct stimuli of that representation.
- Angular shape distance (Williams et al. 2021): arccos(||X^T Y||_* / (||X||_F ||Y||_F)) on
  centred, partially whitened data, see ``procrustes_distance``; ``shape_distance_matrix`` for
  all pairs and ``classical_mds`` to map such a distance matrix into the plane.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

from pipeline.backend import array_namespace, each_on_cores, to_numpy

RDM_METRICS = ("correlation", "euclidean", "sqeuclidean", "cosine", "crossnobis")
COMPARE_METHODS = ("spearman", "pearson", "kendall_tau_a", "rho_a", "cosine")
KERNELS = ("linear", "rbf")


# ----------------------------------------------------------------------------- input checks


def _as_float(xp, X, name: str, ndims: tuple[int, ...], what: str):
    """``X`` as a floating array of xp with one of ``ndims`` dimensions and finite values."""
    X = xp.asarray(X)
    if X.ndim not in ndims:
        raise ValueError(f"{name} must be {what}; got an array of shape {tuple(X.shape)}")
    if X.dtype not in (xp.float32, xp.float64):
        X = xp.astype(X, xp.float64)
    if not bool(xp.all(xp.isfinite(X))):
        raise ValueError(f"{name} contains NaN or infinite values; remove or impute them before the analysis")
    return X


def _check_same_stimuli(nx: int, ny: int, names: str) -> None:
    if nx != ny:
        raise ValueError(f"{names} must have the same number of stimuli (rows); got {nx} and {ny}")


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


def _tiny(xp, X) -> float:
    """Relative threshold below which a norm counts as zero in the dtype of ``X``."""
    return 100.0 * float(xp.finfo(X.dtype).eps)


def _mT(xp, X):
    return xp.matrix_transpose(X)


# ----------------------------------------------------------------------------- RDMs


def rdm(X, metric: str = "correlation", noise=None):
    """Representational dissimilarity matrix.

    Parameters
    ----------
    X : array, shape (n, d) or a stack (k, n, d)
        Patterns of n stimuli over d features. For ``metric="crossnobis"`` repeated measurements
        of shape (P, n, d) with P >= 2 partitions, or a stack (k, P, n, d).
    metric : {"correlation", "euclidean", "sqeuclidean", "cosine", "crossnobis"}
        Dissimilarity, defined in the module docstring.
    noise : array, shape (d, d), optional
        Noise covariance for ``crossnobis`` (identity when None).

    Returns
    -------
    array, shape (n, n) or (k, n, n)
        Symmetric, zero diagonal.
    """
    _check_choice(metric, RDM_METRICS, "metric")
    xp = array_namespace(X, noise)
    if metric == "crossnobis":
        X = _as_float(xp, X, "X", (3, 4), "repeated measurements (partitions, stimuli, features) or a stack of them")
        D = _crossnobis(xp, X if X.ndim == 4 else X[None, ...], noise)
        return D if X.ndim == 4 else D[0, ...]
    X = _as_float(xp, X, "X", (2, 3), "(stimuli, features) or a stack (k, stimuli, features)")
    if X.ndim == 2:
        return _rdm_one(xp, X, metric)
    # one RDM at a time: each (n, n) product stays in cache while it becomes distances; numpy
    # computes one RDM per core
    D = xp.empty((X.shape[0], X.shape[1], X.shape[1]), dtype=X.dtype)
    if xp is np:
        each_on_cores(lambda i: _rdm_one(xp, X[i, ...], metric, out=D[i, ...]), X.shape[0], X.shape[1] ** 2)
    else:
        for i in range(X.shape[0]):
            D[i, ...] = _rdm_one(xp, X[i, ...], metric)
    return D


def _rdm_one(xp, X, metric: str, out=None):
    """RDM (n, n) of one pattern matrix X (n, d) for a metric other than crossnobis.

    ``out`` (numpy only, (n, n)) receives the RDM without an intermediate copy.
    """
    if metric in ("euclidean", "sqeuclidean"):
        D = _squared_distances(xp, X)
        D = xp.astype(xp.sqrt(D) if metric == "euclidean" else D, X.dtype)
        if out is not None:
            out[...] = D
        return D
    if metric == "correlation":
        mean = xp.mean(X, axis=-1, keepdims=True)
        Z = X - mean
        sq = xp.sum(Z * Z, axis=-1)
        total = sq + X.shape[-1] * mean[:, 0] ** 2  # squared norm of each uncentred pattern
    else:
        Z = X
        sq = total = xp.sum(Z * Z, axis=-1)
    if bool(xp.any(sq <= _tiny(xp, X) ** 2 * total)):
        kind = "constant across features" if metric == "correlation" else "all zero"
        raise ValueError(
            f"X has a stimulus pattern that is {kind}; the {metric} distance is undefined for it "
            "(drop that stimulus or use metric='euclidean')"
        )
    Z = Z / xp.sqrt(sq)[:, None]
    if out is None:
        D = xp.matmul(Z, _mT(xp, Z))
        D -= 1.0  # cosine similarities turned into distances in place
        D *= -1.0
    else:
        D = np.subtract(1.0, np.matmul(Z, Z.T, out=out), out=out)
    return _zero_diagonal(xp, D)


def _squared_distances(xp, X):
    """Squared Euclidean distances (n, n), float64, between the rows of X (n, d), zero diagonal.

    Computed as |a|^2 + |b|^2 - 2 a.b of the column-centred rows in float64: in float32 the expansion
    loses every digit of a small distance between two patterns far from the mean.
    """
    Xc = xp.astype(X, xp.float64)
    Xc = Xc - xp.mean(Xc, axis=0, keepdims=True)
    sq = xp.sum(Xc * Xc, axis=-1)
    D = sq[:, None] + sq[None, :] - 2.0 * xp.matmul(Xc, _mT(xp, Xc))
    return _zero_diagonal(xp, xp.clip(D, 0.0, None))


def _zero_diagonal(xp, D):
    """D (..., n, n) with a zero diagonal: assigned in place where the namespace allows it."""
    n = D.shape[-1]
    if _scatters(xp):
        i = xp.arange(n)
        D[..., i, i] = 0.0
        return D
    return D * (1.0 - xp.eye(n, dtype=D.dtype))


def _crossnobis(xp, X, noise):
    """Crossnobis RDMs of a stack of repeated measurements X (k, P, n, d) -> (k, n, n)."""
    k, P, n, d = X.shape
    if P < 2:
        raise ValueError(f"X must hold at least 2 partitions for crossnobis; got {P}")
    if noise is None:
        W = X
    else:
        noise = _as_float(xp, noise, "noise", (2,), "a (features, features) noise covariance")
        if tuple(noise.shape) != (d, d):
            raise ValueError(
                f"noise must have shape ({d}, {d}) to match the {d} features of X; got {tuple(noise.shape)}"
            )
        W = xp.matmul(X, xp.linalg.inv(xp.astype(noise, X.dtype)))
    # sum_{p != q} X^p S^-1 X^q^T = (sum_p X^p) S^-1 (sum_q X^q)^T - sum_p X^p S^-1 X^p^T
    cross = xp.matmul(xp.sum(W, axis=1), _mT(xp, xp.sum(X, axis=1))) - xp.sum(xp.matmul(W, _mT(xp, X)), axis=1)
    cross = (cross + _mT(xp, cross)) / 2.0
    diag = xp.sum(cross * xp.eye(n, dtype=X.dtype), axis=-1)
    D = diag[..., :, None] + diag[..., None, :] - 2.0 * cross
    return D * (1.0 - xp.eye(n, dtype=X.dtype)) / (P * (P - 1) * d)


def label_rdm(labels):
    """Reference RDM of class structure: 0 where two stimuli share a label, 1 otherwise.

    Parameters
    ----------
    labels : sequence or array, shape (n,)

    Returns
    -------
    array, shape (n, n), float64 (numpy for Python sequences).
    """
    if isinstance(labels, (list, tuple)):
        labels = np.asarray(labels)
    xp = array_namespace(labels)
    labels = xp.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional (one label per stimulus); got shape {tuple(labels.shape)}")
    return xp.astype(labels[:, None] != labels[None, :], xp.float64)


def input_rdm(inputs, metric: str = "correlation"):
    """Reference RDM of the stimuli themselves (pixels, embeddings), flattened per stimulus.

    Parameters
    ----------
    inputs : array, shape (n, ...)
    metric : str
        As in ``rdm`` (not crossnobis).

    Returns
    -------
    array, shape (n, n)
    """
    if metric == "crossnobis":
        raise ValueError("metric='crossnobis' needs repeated measurements; use rdm() directly")
    xp = array_namespace(inputs)
    inputs = xp.asarray(inputs)
    return rdm(xp.reshape(inputs, (inputs.shape[0], -1)), metric=metric)


POOLING = ("mean", "last")


def pool_positions(values, mask, how="mean"):
    """One pattern per stimulus from its real (unpadded) positions: their mean, or the last one.

    For token sequences the mean is the mean over the tokens of a sentence; for a recurrent
    network run over a trial it is the time-averaged hidden state, and ``"last"`` is the state the
    trial ends in. Padded positions (mask False) do not enter, whatever values they hold.

    Parameters
    ----------
    values : array, shape (n, positions, d)
    mask : array of bool, shape (n, positions)
        True on real positions; every stimulus needs at least one.
    how : "mean" or "last"

    Returns
    -------
    array, shape (n, d)
    """
    if how not in POOLING:
        raise ValueError(f"how={how!r} is not a pooling; use one of {', '.join(POOLING)}")
    xp = array_namespace(values, mask)
    values = xp.asarray(values)
    mask = xp.asarray(mask)
    if values.ndim != 3 or tuple(mask.shape) != tuple(values.shape[:2]):
        raise ValueError(
            f"values must be (stimuli, positions, features) and mask (stimuli, positions); "
            f"got shapes {tuple(values.shape)} and {tuple(mask.shape)}"
        )
    if values.dtype not in (xp.float32, xp.float64):
        values = xp.astype(values, xp.float64)
    counts = xp.sum(xp.astype(mask, values.dtype), axis=1)
    if bool(xp.any(counts == 0)):
        raise ValueError("mask has a stimulus without any real position; drop that stimulus before pooling")
    if how == "last":
        positions = xp.arange(mask.shape[1])[None, :]
        last = xp.max(xp.where(mask, positions, xp.zeros_like(positions)), axis=1)  # (n,)
        return xp.sum(xp.where(positions[:, :, None] == last[:, None, None], values, xp.zeros_like(values)), axis=1)
    total = xp.sum(xp.where(mask[:, :, None], values, xp.zeros_like(values)), axis=1)  # padding may hold NaN
    return total / counts[:, None]


# ----------------------------------------------------------------------------- comparing RDMs


def _upper_index(xp, n: int):
    """Flat indices (into an n x n matrix) of the strict upper triangle, row by row."""
    rows = xp.arange(n)[:, None]
    cols = xp.arange(n)[None, :]
    return xp.nonzero(xp.reshape(rows < cols, (-1,)))[0]


def _rdm_vectors(xp, D, name: str):
    """Upper-triangle vectors of a stack of RDMs: (k, n, n) -> (k, N)."""
    D = xp.asarray(D)
    if D.ndim not in (2, 3) or D.shape[-1] != D.shape[-2]:
        raise ValueError(f"{name} must be an (n, n) RDM or a stack (k, n, n); got an array of shape {tuple(D.shape)}")
    stack = D if D.ndim == 3 else D[None, ...]
    n = stack.shape[-1]
    if n < 3:
        raise ValueError(f"{name} must compare at least 3 stimuli; got {n}")
    flat = xp.reshape(stack, (stack.shape[0], n * n))
    index = _upper_index(xp, n)
    if xp is np:  # one RDM per core; the indices are in range, and mode="clip" skips numpy's buffered check
        v = np.empty((flat.shape[0], index.size), dtype=flat.dtype)
        each_on_cores(lambda i: np.take(flat[i, :], index, out=v[i, :], mode="clip"), flat.shape[0], index.size)
    else:
        v = xp.take(flat, index, axis=1)
    return _as_float(xp, v, name, (2,), "an (n, n) RDM or a stack (k, n, n)")


def _scatters(xp) -> bool:
    """True for namespaces that assign through integer-array indices (numpy, CuPy)."""
    return getattr(xp, "__name__", "") in ("numpy", "array_api_compat.cupy")


def _sorted_ranks(xp, v):
    """Permutation that sorts a vector v (N,) and the average ranks in sorted order.

    numpy sorts once (``_sort_keys``); other namespaces argsort. Ties share the mean of the
    1-based sorted positions they span.

    Returns
    -------
    order : array (N,) of int
        v[order[p]] is the p-th smallest entry.
    ranks : array (N,) of v's dtype
        Average rank of v[order[p]].
    """
    N = v.shape[0]
    if xp is np:
        order, ties = _sort_keys(v)
        tied = ties.size > 0
        if tied:
            starts_mask = np.ones(N, dtype=bool)
            starts_mask[ties + 1] = False
    else:
        order = xp.argsort(v)
        s = xp.take(v, order)
        starts_mask = xp.concat([xp.ones((1,), dtype=xp.bool), s[1:] != s[:-1]])
        tied = not bool(xp.all(starts_mask))
    if not tied:
        return order, xp.arange(1, N + 1, dtype=v.dtype)
    starts = xp.nonzero(starts_mask)[0]
    ends = xp.concat([starts[1:], xp.asarray([N], dtype=starts.dtype)])
    group = xp.cumulative_sum(xp.astype(starts_mask, xp.int64)) - 1
    return order, xp.take(xp.astype(starts + ends + 1, v.dtype) / 2.0, group)


def _unsort(xp, order, values, out=None):
    """The vector w (N,) with w[order[p]] = values[p]: a scatter where the namespace assigns
    through integer arrays (numpy, CuPy), into ``out`` (N,) when given, else a second argsort that
    inverts the permutation."""
    if not _scatters(xp):
        return xp.take(values, xp.argsort(order))
    out = xp.empty_like(values) if out is None else out
    out[order] = values
    return out


def _sort_keys(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permutation that sorts a 1-D numpy vector, from one sort of integer keys, and its ties.

    A key is the value's order-preserving 64-bit pattern with its low bits replaced by the entry's
    index, so sorting the keys sorts the values and carries the permutation along (several times
    faster than ``argsort``). Only neighbours in the same bucket (equal kept bits) can be tied or
    out of order (distinct values less than about N 2^-52 apart relative to their size): those few
    buckets are re-sorted by value. Few temporaries: each fresh multi-MB array costs page faults.

    Returns
    -------
    order : array (N,) of int
    ties : array of int
        Positions p in sorted order with v[order[p]] == v[order[p + 1]].
    """
    N = v.shape[0]
    shift = np.uint64(max(int(N - 1).bit_length(), 1))
    low = (np.uint64(1) << shift) - np.uint64(1)
    key = np.empty(N, dtype=np.uint64)
    np.add(v, 0.0, out=key.view(np.float64))  # float64 bits; + 0.0 turns -0.0 into 0.0, which it equals
    flip = (key.view(np.int64) >> 63).view(np.uint64)  # all ones for negative values, else 0
    flip >>= np.uint64(1)
    flip |= np.uint64(1 << 63)
    key ^= flip  # negative values: every bit flipped; others: the sign bit set
    key &= ~low
    key |= np.arange(N, dtype=np.uint64)
    key.sort()
    order = np.bitwise_and(key, low, out=flip).view(np.int64)
    key >>= shift  # now each entry's bucket
    same = np.flatnonzero(key[1:] == key[:-1])
    values = v[order[same]], v[order[same + 1]]
    wrong = np.unique(key[same[values[1] < values[0]]])
    if wrong.size:
        lo, hi = np.searchsorted(key, wrong, "left"), np.searchsorted(key, wrong, "right")
        size = hi - lo  # the positions lo..hi-1 of every such bucket, concatenated:
        redo = np.arange(int(np.sum(size))) + np.repeat(lo - np.cumsum(size) + size, size)
        order[redo] = order[redo][np.lexsort((v[order[redo]], key[redo]))]
        values = v[order[same]], v[order[same + 1]]
    return order, same[values[1] == values[0]]


def _unit_vector(xp, v, method: str, name: str, out=None):
    """Transform one RDM vector v (N,) so that the similarity of two RDMs is a dot product.

    ``out`` (numpy only, (N,), may be v itself) receives the result without an intermediate copy.
    """
    N = v.shape[0]
    if method in ("spearman", "rho_a"):
        order, ranks = _sorted_ranks(xp, v)
        ranks -= (N + 1) / 2.0  # average ranks always sum to N (N + 1) / 2
        if method == "rho_a":
            ranks *= math.sqrt(12.0 / (float(N) ** 3 - N))
        else:
            ranks /= _norm(xp, ranks, method, name)
        return _unsort(xp, order, ranks, out)
    if method != "cosine":
        v = v - xp.mean(v)
    norm = _norm(xp, v, method, name)
    return v / norm if out is None else np.divide(v, norm, out=out)


def _norm(xp, v, method: str, name: str) -> float:
    """Euclidean norm of a transformed RDM vector; zero means every entry was equal."""
    norm = float(xp.linalg.vector_norm(v))
    if norm == 0.0:
        raise ValueError(f"{name} holds an RDM whose entries are all equal; {method} similarity is undefined for it")
    return norm


def _unit_vectors(xp, sides, method: str) -> list:
    """``_unit_vector`` of every row of each RDM-vector array v (k, N) in ``sides``, a list of
    (v, name) pairs, written over v (callers pass vectors they own); returns the arrays. numpy
    rows, of all sides together, run on one thread per available core (its sort and element-wise
    loops release the GIL, ``each_on_cores``); each row stays in cache."""
    rows = [(v, i, name) for v, name in sides for i in range(v.shape[0])]

    def one(j: int) -> None:
        v, i, name = rows[j]
        if xp is np:
            _unit_vector(xp, v[i, :], method, name, out=v[i, :])
        else:
            v[i, :] = _unit_vector(xp, v[i, :], method, name)

    if xp is np:
        each_on_cores(one, len(rows), rows[0][0].shape[1] if rows else 0)
    else:
        for j in range(len(rows)):
            one(j)
    return [v for v, _ in sides]


def _tied_pairs(v: np.ndarray) -> float:
    """Number of pairs of equal entries in a 1-D numpy vector."""
    counts = np.unique(v, return_counts=True)[1].astype(np.float64)
    return float(np.sum(counts * (counts - 1) / 2.0))


def _kendall_tau_a(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-a of two 1-D numpy vectors (tau-b of scipy rescaled to the full pair count).

    Against a two-valued vector (a category RDM) it is the Mann-Whitney count: with R1 the sum of
    the other vector's average ranks over the n1 entries of the higher value (n0 of the lower),
    concordant - discordant = 2 R1 - n1 (n1 + 1) - n1 n0.
    """
    from scipy.stats import kendalltau, rankdata

    total = a.size * (a.size - 1) / 2.0
    for x, y in ((a, b), (b, a)):
        levels = np.unique(y)
        if levels.size == 2:
            high = y == levels[1]
            n1 = float(np.count_nonzero(high))
            r1 = float(np.sum(rankdata(x)[high]))
            return (2.0 * r1 - n1 * (n1 + 1.0) - n1 * (y.size - n1)) / total

    untied = (total - _tied_pairs(a)) * (total - _tied_pairs(b))
    if untied == 0.0:
        return 0.0
    return float(kendalltau(a, b).statistic) * math.sqrt(untied) / total


def _similarities(xp, a, b, method: str, names=("A", "B"), paired: bool = False):
    """Similarity of RDM vectors a (k, N) and b (m, N): all pairs (k, m) or row by row (k,)."""
    if method == "kendall_tau_a":
        an, bn = to_numpy(a), to_numpy(b)
        if paired:
            out = np.array([_kendall_tau_a(an[i], bn[i]) for i in range(an.shape[0])])
        else:
            out = np.array([[_kendall_tau_a(x, y) for y in bn] for x in an])
        return xp.asarray(out)
    if b is a:
        ta = tb = _unit_vectors(xp, [(a, names[0])], method)[0]
    else:
        ta, tb = _unit_vectors(xp, [(a, names[0]), (b, names[1])], method)
    # products of unit vectors: rounding can carry them just past +-1 (1 + 1e-7 in float32)
    out = xp.sum(ta * tb, axis=-1) if paired else xp.matmul(ta, _mT(xp, tb))
    return xp.clip(out, -1.0, 1.0)


def kendall_tau_a_ceiling(B) -> float:
    """Largest Kendall tau-a any RDM can reach against the RDM B (n, n): the fraction of pairs of
    its upper-triangle entries that B does not tie (reached by any RDM that orders B's entries as B
    does). Against a label RDM (0 within, 1 between labels) this is 2 p (1 - p) N / (N - 1) for a
    fraction p of between-label entries among N, about 0.2 for 8 balanced labels."""
    xp = array_namespace(B)
    b = to_numpy(_rdm_vectors(xp, _as_float(xp, B, "B", (2,), "an (n, n) RDM"), "B"))[0]
    return 1.0 - _tied_pairs(b) / (b.size * (b.size - 1) / 2.0)


def compare_rdms(A, B, method: str = "spearman"):
    """Similarity of RDMs on their upper triangles (diagonal excluded).

    Parameters
    ----------
    A : array, shape (n, n) or a stack (k, n, n)
    B : array, shape (n, n) or a stack (m, n, n)
    method : {"spearman", "pearson", "kendall_tau_a", "rho_a", "cosine"}
        Defined in the module docstring. All methods but ``kendall_tau_a`` transform each RDM once
        and compare all pairs with one matrix product; Kendall's tau-a runs scipy's O(N log N)
        count on the host for each pair.

    Returns
    -------
    float for two RDMs; array (k, m) for two stacks; (m,) or (k,) when one side is a single RDM.
    """
    _check_choice(method, COMPARE_METHODS, "method")
    xp = array_namespace(A, B)
    a = _rdm_vectors(xp, A, "A")
    b = a if B is A else _rdm_vectors(xp, B, "B")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError("A and B must be RDMs of the same number of stimuli; got different sizes")
    S = _similarities(xp, a, b, method)
    a_single, b_single = xp.asarray(A).ndim == 2, xp.asarray(B).ndim == 2
    if a_single and b_single:
        return float(S[0, 0])
    if a_single:
        return S[0, :]
    if b_single:
        return S[:, 0]
    return S


# ----------------------------------------------------------------------------- CKA


def _center_gram(xp, K, debiased: bool):
    """Centred Gram stack (..., n, n) such that HSIC = sum(Kc * Lc) / normaliser."""
    n = K.shape[-1]
    if debiased:
        offdiag = 1.0 - xp.eye(n, dtype=K.dtype)
        Kt = K * offdiag
        row = xp.sum(Kt, axis=-1) / (n - 2)
        total = xp.sum(row, axis=-1) / (n - 1)
        Kc = Kt - row[..., :, None] - row[..., None, :] + total[..., None, None]
        return Kc * offdiag
    row = xp.mean(K, axis=-1)
    total = xp.mean(row, axis=-1)
    return K - row[..., :, None] - row[..., None, :] + total[..., None, None]


def _hsic_normaliser(n: int, debiased: bool) -> float:
    return float(n * (n - 3)) if debiased else float((n - 1) ** 2)


def _median_distance(xp, sq):
    """Median Euclidean distance between distinct stimuli from squared distances (n, n)."""
    v = xp.sort(xp.sqrt(xp.take(xp.reshape(sq, (-1,)), _upper_index(xp, sq.shape[-1]))))
    m = v.shape[0]
    return float(v[m // 2] if m % 2 else (v[m // 2 - 1] + v[m // 2]) / 2.0)


def _gram(xp, X, kernel: str, sigma, name: str):
    """Kernel matrix (n, n) of column-centred X for ``kernel``."""
    if kernel == "linear":
        Xc = X - xp.mean(X, axis=0, keepdims=True)
        return xp.matmul(Xc, _mT(xp, Xc))
    D2 = _squared_distances(xp, X)
    s = _median_distance(xp, D2) if sigma is None else float(sigma)
    if s <= 0.0:
        raise ValueError(f"{name}: the RBF bandwidth is zero (all stimuli identical); pass a positive sigma")
    return xp.astype(xp.exp(-D2 / (2.0 * s * s)), X.dtype)


def _centred_kernel(xp, X, kernel: str, debiased: bool, sigma, name: str):
    """Centred kernel matrix (n, n) of X, as ``_center_gram`` of ``_gram``.

    The linear Gram of column-centred data already has zero row and column means, so the biased
    linear case skips the centring passes.
    """
    K = _gram(xp, X, kernel, sigma, name)
    return K if kernel == "linear" and not debiased else _center_gram(xp, K, debiased)


def _check_representation(xp, X, name: str, min_n: int = 2, measure: str = "CKA"):
    X = _as_float(xp, X, name, (2,), "a (stimuli, features) matrix")
    if X.shape[0] < min_n:
        why = " for the debiased HSIC estimator" if min_n == 4 else ""
        raise ValueError(f"{name} needs at least {min_n} stimuli (rows){why}; got {X.shape[0]}")
    if not _varies(xp, X):
        raise ValueError(f"{name} is constant across stimuli (every feature has zero variance); "
                         f"{measure} is undefined for it")
    return X


def _varies(xp, X) -> bool:
    """Whether X (n, d) varies across its rows by more than rounding error of its dtype."""
    Xc = X - xp.mean(X, axis=0, keepdims=True)
    return float(xp.sum(Xc * Xc)) > (_tiny(xp, X) ** 2) * float(xp.sum(X * X))


def varies_across_stimuli(X) -> bool:
    """Whether a representation X (n stimuli, d features) is more than constant up to rounding error:
    what CKA and the shape metrics require of each representation."""
    xp = array_namespace(X)
    return _varies(xp, _as_float(xp, X, "X", (2,), "a (stimuli, features) matrix"))



def _check_reps(xp, reps, min_n: int = 2, measure: str = "CKA") -> list:
    """Validated representations (n, d_i) of the same n stimuli, at least one."""
    if len(reps) < 1:
        raise ValueError("reps must hold at least one representation")
    reps = [_check_representation(xp, R, f"reps[{i}]", min_n, measure) for i, R in enumerate(reps)]
    for i, R in enumerate(reps):
        _check_same_stimuli(reps[0].shape[0], R.shape[0], f"reps[0] and reps[{i}]")
    return reps

def _ratio(hxy: float, hxx: float, hyy: float, debiased: bool) -> float:
    """CKA from HSIC terms; the biased one is at most 1 (Cauchy-Schwarz), where rounding could carry it past."""
    if hxx <= 0.0 or hyy <= 0.0:
        raise ValueError(
            "the self-similarity HSIC of X or Y is not positive (too few stimuli for the debiased estimator); "
            "use more stimuli or debiased=False"
        )
    value = hxy / math.sqrt(hxx * hyy)
    return value if debiased else min(value, 1.0)


def _linear_hsic_feature_space(xp, X, Y, debiased: bool):
    """(HSIC(X,Y), HSIC(X,X), HSIC(Y,Y)) of the linear kernel from d x d cross-products."""
    n = X.shape[0]
    Xc = X - xp.mean(X, axis=0, keepdims=True)
    Yc = Y - xp.mean(Y, axis=0, keepdims=True)
    kx, ky = xp.sum(Xc * Xc, axis=-1), xp.sum(Yc * Yc, axis=-1)

    def hsic(A, B, ka, kb):
        tr = float(xp.sum(xp.matmul(_mT(xp, A), B) ** 2))
        if not debiased:
            return tr / (n - 1) ** 2
        # column-centred data: 1^T K 1 = 0, so 1^T K~ 1 = -sum(k) and K~ 1 = -k
        kk = float(xp.sum(ka * kb))
        sa, sb = float(xp.sum(ka)), float(xp.sum(kb))
        return (tr - kk + sa * sb / ((n - 1) * (n - 2)) - 2.0 * kk / (n - 2)) / (n * (n - 3))

    return hsic(Xc, Yc, kx, ky), hsic(Xc, Xc, kx, kx), hsic(Yc, Yc, ky, ky)


def _hsic_terms(xp, X, Y, kernel: str, debiased: bool, sigma):
    """(HSIC(X,Y), HSIC(X,X), HSIC(Y,Y)) in the cheaper of sample space and feature space."""
    n, dx, dy = X.shape[0], X.shape[1], Y.shape[1]
    if kernel == "linear" and n * (dx + dy) >= dx * dy + dx * dx + dy * dy:
        return _linear_hsic_feature_space(xp, X, Y, debiased)
    Kc = _centred_kernel(xp, X, kernel, debiased, sigma, "X")
    Lc = _centred_kernel(xp, Y, kernel, debiased, sigma, "Y")
    norm = _hsic_normaliser(n, debiased)
    return float(xp.sum(Kc * Lc)) / norm, float(xp.sum(Kc * Kc)) / norm, float(xp.sum(Lc * Lc)) / norm


def _cka_args(X, Y, kernel, debiased, sigma):
    _check_choice(kernel, KERNELS, "kernel")
    if sigma is not None and not float(sigma) > 0.0:
        raise ValueError(f"sigma must be a positive bandwidth; got {sigma}")
    xp = array_namespace(X, Y)
    min_n = 4 if debiased else 2
    X = _check_representation(xp, X, "X", min_n)
    Y = _check_representation(xp, Y, "Y", min_n)
    _check_same_stimuli(X.shape[0], Y.shape[0], "X and Y")
    return xp, X, Y


def cka(X, Y, kernel: str = "linear", debiased: bool = False, sigma: float | None = None) -> float:
    """Centred kernel alignment of two representations of the same stimuli.

    Parameters
    ----------
    X : array, shape (n, dx)
    Y : array, shape (n, dy)
    kernel : {"linear", "rbf"}
    debiased : bool
        Use the unbiased HSIC estimator (Song et al. 2012); needs n >= 4 and can be negative.
    sigma : float, optional
        RBF bandwidth; by default the median distance between stimuli of each representation.

    Returns
    -------
    float
        HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)). Linear CKA runs in the n x n Gram form or the
        d x d cross-product form, whichever costs fewer operations.
    """
    xp, X, Y = _cka_args(X, Y, kernel, debiased, sigma)
    return _ratio(*_hsic_terms(xp, X, Y, kernel, debiased, sigma), debiased)


def cka_matrix(reps, kernel: str = "linear", debiased: bool = False, sigma: float | None = None):
    """CKA of all pairs of representations, each Gram (or cross-product) computed once.

    Parameters
    ----------
    reps : sequence of arrays (n, d_i) or an array (r, n, d)
        Representations of the same n stimuli.
    kernel, debiased, sigma
        As in ``cka``.

    Returns
    -------
    array, shape (r, r)
        Symmetric; the diagonal is 1.
    """
    _check_choice(kernel, KERNELS, "kernel")
    if isinstance(reps, (list, tuple)):
        xp = array_namespace(*reps)
    else:
        xp = array_namespace(reps)
        reps = xp.asarray(reps)
        reps = [reps[i, ...] for i in range(reps.shape[0])]
    reps = _check_reps(xp, reps, 4 if debiased else 2)
    n = reps[0].shape[0]
    dims = [R.shape[1] for R in reps]
    r, total_d = len(reps), sum(dims)
    if kernel == "linear" and n * total_d * total_d < (n * n * total_d + r * r * n * n) / 2:
        H = _linear_hsic_matrix_feature_space(xp, reps, debiased)
    elif kernel == "linear":
        H = _linear_hsic_matrix_gram_space(xp, reps, debiased)
    else:
        F = xp.empty((r, n * n), dtype=xp.result_type(*reps))  # filled row by row: one Gram alive at a time
        for i, R in enumerate(reps):
            F[i, :] = xp.reshape(_centred_kernel(xp, R, kernel, debiased, sigma, f"reps[{i}]"), (-1,))
        H = xp.matmul(F, _mT(xp, F)) / _hsic_normaliser(n, debiased)
    d = xp.sum(H * xp.eye(r, dtype=H.dtype), axis=-1)
    if bool(xp.any(d <= 0.0)):
        raise ValueError("a representation in reps has non-positive self-HSIC (too few stimuli for debiased=True)")
    C = H / xp.sqrt(d[:, None] * d[None, :])
    return C if debiased else xp.clip(C, None, 1.0)  # as in _ratio


def cka_chance(reps):
    """Chance level of the linear CKA (biased estimator) for each pair of representations: its mean over every
    reordering of one representation's stimuli, exact, tr(Kc) tr(Lc) / ((n - 1) ||Kc||_F ||Lc||_F) with Kc, Lc the
    centred linear Grams. It is high where the stimuli are few against the patterns' effective dimension
    (independent Gaussian patterns of n = 32, d = 1000 give about 0.97).

    Parameters
    ----------
    reps : sequence of arrays (n, d_i)
        Representations of the same n >= 2 stimuli.

    Returns
    -------
    array, shape (r, r)
    """
    xp = array_namespace(*reps)
    reps = _check_reps(xp, list(reps))
    n = reps[0].shape[0]
    scale = []
    for R in reps:  # tr(Kc) / ||Kc||_F of each representation, from the smaller of Xc Xc^T and Xc^T Xc
        Xc = R - xp.mean(R, axis=0, keepdims=True)
        G = xp.matmul(Xc, _mT(xp, Xc)) if n <= R.shape[1] else xp.matmul(_mT(xp, Xc), Xc)
        scale.append(xp.sum(Xc * Xc) / xp.sqrt(xp.sum(G * G)))
    s = xp.stack(scale)
    return s[:, None] * s[None, :] / (n - 1)


def _linear_hsic_matrix_feature_space(xp, reps, debiased: bool):
    """All-pairs linear HSIC (r, r) from one cross-product of the concatenated centred features."""
    n = reps[0].shape[0]
    centred = [R - xp.mean(R, axis=0, keepdims=True) for R in reps]
    Z = xp.concat(centred, axis=1)
    C = xp.matmul(_mT(xp, Z), Z)
    edges = np.cumsum([0] + [R.shape[1] for R in centred])
    owner = np.zeros((int(edges[-1]), len(reps)))
    for i in range(len(reps)):
        owner[edges[i] : edges[i + 1], i] = 1.0
    B = xp.asarray(owner, dtype=Z.dtype)
    tr = xp.matmul(xp.matmul(_mT(xp, B), C * C), B)
    if not debiased:
        return tr / (n - 1) ** 2
    k = xp.stack([xp.sum(R * R, axis=-1) for R in centred])
    kk = xp.matmul(k, _mT(xp, k))
    s = xp.sum(k, axis=-1)
    return (tr - kk + s[:, None] * s[None, :] / ((n - 1) * (n - 2)) - 2.0 * kk / (n - 2)) / (n * (n - 3))


# entries of the (representations x block) buffer of Gram rows that the blocked all-pairs HSIC
# fills at a time (16 Mi entries: 128 MB in float64)
_GRAM_BLOCK_ENTRIES = 1 << 24


def _linear_hsic_matrix_gram_space(xp, reps, debiased: bool):
    """All-pairs linear HSIC (r, r) from blocks of rows of the centred Grams, never a whole Gram.

    Row block [a, b) of each Gram is kept from column a on (the Grams are symmetric): its leading
    (b - a) square holds every pair inside the block once, the columns right of it the pairs with
    later stimuli, which count twice and so are scaled by sqrt(2) before the block's product.
    For debiased HSIC each block is the centred Gram with zero diagonal of ``_center_gram``, from
    the per-stimulus terms: the rows of a column-centred Gram sum to zero, so the rows of the
    diagonal-free Gram sum to minus its diagonal.
    """
    n, r = reps[0].shape[0], len(reps)
    centred = [R - xp.mean(R, axis=0, keepdims=True) for R in reps]
    if debiased:
        row = [-xp.sum(Xc * Xc, axis=-1) / (n - 2) for Xc in centred]
        total = [float(xp.sum(v)) / (n - 1) for v in row]
    rows = max(1, _GRAM_BLOCK_ENTRIES // (r * n))
    H = xp.zeros((r, r), dtype=xp.result_type(*centred))
    for a in range(0, n, rows):
        b = min(n, a + rows)
        F = xp.empty((r, (b - a) * (n - a)), dtype=H.dtype)
        for i, Xc in enumerate(centred):
            K = xp.matmul(Xc[a:b, ...], _mT(xp, Xc[a:, ...]))  # (b - a, n - a)
            if debiased:
                K -= row[i][a:b, None] + row[i][None, a:] - total[i]
                K[:, : b - a] *= 1.0 - xp.eye(b - a, dtype=K.dtype)
            K[:, b - a :] *= math.sqrt(2.0)
            F[i, :] = xp.reshape(K, (-1,))
        H += xp.matmul(F, _mT(xp, F))
    return H / _hsic_normaliser(n, debiased)


class MinibatchCKA:
    """CKA over stimuli streamed in minibatches (Nguyen et al. 2021).

    Each ``update`` adds the minibatch HSIC(X, Y), HSIC(X, X) and HSIC(Y, Y); ``value`` is
    mean HSIC(X, Y) / sqrt(mean HSIC(X, X) mean HSIC(Y, Y)). With the unbiased estimator (the
    default) the averages estimate the population HSIC, so the value approaches the full-data
    debiased CKA as batches accumulate; the biased estimator carries a batch-size bias.

    Parameters
    ----------
    kernel : {"linear", "rbf"}
    debiased : bool
    sigma : float, optional
        RBF bandwidth, required for ``kernel="rbf"`` so that all batches share one kernel.
    """

    def __init__(self, kernel: str = "linear", debiased: bool = True, sigma: float | None = None):
        self.kernel = kernel
        self.debiased = debiased
        self.sigma = sigma
        self.n_batches_ = 0
        self._sums = [0.0, 0.0, 0.0]

    def update(self, X, Y) -> MinibatchCKA:
        """Add one minibatch: X (b, dx) and Y (b, dy) for the same b stimuli."""
        if self.kernel == "rbf" and self.sigma is None:
            raise ValueError("sigma is required for minibatch RBF CKA so that all batches share one bandwidth")
        xp, X, Y = _cka_args(X, Y, self.kernel, self.debiased, self.sigma)
        terms = _hsic_terms(xp, X, Y, self.kernel, self.debiased, self.sigma)
        self._sums = [s + t for s, t in zip(self._sums, terms, strict=True)]
        self.n_batches_ += 1
        return self

    @property
    def value(self) -> float:
        """CKA from the accumulated HSIC averages."""
        if self.n_batches_ == 0:
            raise ValueError("no minibatch was added; call update(X, Y) first")
        return _ratio(*(s / self.n_batches_ for s in self._sums), self.debiased)


def minibatch_cka(
    batches_x, batches_y, kernel: str = "linear", debiased: bool = True, sigma: float | None = None
) -> float:
    """CKA accumulated over paired minibatches (iterables of (b, dx) and (b, dy) arrays); see ``MinibatchCKA``."""
    acc = MinibatchCKA(kernel=kernel, debiased=debiased, sigma=sigma)
    sentinel = object()
    it_x, it_y = iter(batches_x), iter(batches_y)
    while True:
        X, Y = next(it_x, sentinel), next(it_y, sentinel)
        if X is sentinel or Y is sentinel:
            if X is not Y:
                raise ValueError("batches_x and batches_y must yield the same number of minibatches")
            return acc.value
        acc.update(X, Y)


# ----------------------------------------------------------------------------- shape metrics


def _whitened_factors(xp, X, alpha: float):
    """U, w with the partially whitened centred X equal to U diag(w) V^T (thin SVD of centred X).

    Partial whitening maps Xc to Xc (alpha I + (1 - alpha) (Xc^T Xc)^(-1/2)); with Xc = U S V^T
    this is U diag(alpha s + (1 - alpha)) V^T, the inverse square root taken on the numerical
    range of Xc only (singular values above max(n, d) eps s_max).
    """
    Xc = X - xp.mean(X, axis=0, keepdims=True)
    U, s, _ = xp.linalg.svd(Xc, full_matrices=False)
    keep = s > float(xp.max(s)) * max(X.shape) * float(xp.finfo(X.dtype).eps)
    w = alpha * s + (1.0 - alpha) * xp.astype(keep, X.dtype)
    return U, w


def procrustes_distance(X, Y, alpha: float = 1.0) -> float:
    """Angular Procrustes shape distance (Williams et al. 2021), in radians.

    arccos(||Xw^T Yw||_* / (||Xw||_F ||Yw||_F)) where Xw, Yw are the centred representations after
    partial whitening Xc -> Xc (alpha I + (1 - alpha) (Xc^T Xc)^(-1/2)). alpha=1 is plain centring
    (invariant to rotations and isotropic scaling); alpha=0 whitens fully (a CCA-like metric,
    invariant to any invertible linear map). Unequal widths are zero-padded; zero columns change
    neither norm, so the padding is implicit. Between 0 and 1 the distance depends on the overall
    scale of X and Y (the two terms scale differently): scale them alike before comparing. With
    alpha=0, two representations of rank n - 1 (as many features as stimuli, or more) are at
    distance 0 whatever they hold; a warning says so.

    Parameters
    ----------
    X : array, shape (n, dx)
    Y : array, shape (n, dy)
    alpha : float in [0, 1]

    Returns
    -------
    float in [0, pi/2]
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}")
    xp = array_namespace(X, Y)
    X = _check_representation(xp, X, "X", measure="the shape distance")
    Y = _check_representation(xp, Y, "Y", measure="the shape distance")
    _check_same_stimuli(X.shape[0], Y.shape[0], "X and Y")
    factors = [_whitened_factors(xp, X, alpha), _whitened_factors(xp, Y, alpha)]
    _warn_if_fully_whitened_alike(xp, factors, alpha, X.shape[0])
    return _shape_angle(xp, *factors)


def _warn_if_fully_whitened_alike(xp, factors, alpha: float, n: int) -> None:
    """Warn where full whitening (alpha=0) makes representations indistinguishable: every
    representation of centred rank n - 1 whitens to the same subspace, so their distance is 0."""
    if alpha != 0.0:
        return
    full = sum(int(xp.sum(xp.astype(w > 0.0, xp.int64))) == n - 1 for _, w in factors)
    if full >= 2:
        warnings.warn(
            f"shape distance with alpha=0: {full} representations have rank n - 1 = {n - 1} (at least as many "
            "features as stimuli), so their distances are 0 whatever they hold; use more stimuli than "
            "features or alpha > 0",
            stacklevel=3,
        )


# Below this angle (radians) arccos of a ratio near 1 loses digits (in float32, 16% of an angle of 1e-3, 0.04% of
# 1e-2, 0.007% of 3e-2): the angle comes from the residual of the optimal rotation instead, at the cost of an SVD
# with its vectors.
SMALL_ANGLE = 0.03


def _shape_angle(xp, fx, fy) -> float:
    """Angular distance of two representations from their ``_whitened_factors``.

    With unit-norm Xn = Ux diag(wx) / ||wx|| (n, kx) and Yn likewise, kx >= ky (else swapped), and the SVD
    Xn^T Yn = P diag(s) R^T, the angle is arccos(sum(s)); for small angles it is 2 arcsin(||Xn - Yn R P^T||_F / 2),
    the chord between Xn and Yn after the optimal rotation R P^T (ky, kx), which has orthonormal rows.
    """
    if fx[0].shape[1] < fy[0].shape[1]:
        fx, fy = fy, fx
    Xn, Yn = (U * (w / math.sqrt(float(xp.sum(w * w))))[None, :] for U, w in (fx, fy))
    M = xp.matmul(_mT(xp, Xn), Yn)
    angle = math.acos(min(1.0, max(-1.0, float(xp.sum(xp.linalg.svdvals(M))))))
    if angle < SMALL_ANGLE:
        P, _, Rt = xp.linalg.svd(M, full_matrices=False)
        residual = Xn - xp.matmul(Yn, xp.matmul(_mT(xp, Rt), _mT(xp, P)))
        angle = 2.0 * math.asin(min(1.0, float(xp.linalg.vector_norm(residual)) / 2.0))
    return angle


def shape_distance_matrix(reps, alpha: float = 1.0):
    """Angular shape distances (``procrustes_distance``) of all pairs of representations.

    Each representation is centred, whitened and factorised once.

    Parameters
    ----------
    reps : sequence of arrays (n, d_i)
        Representations of the same n stimuli (widths may differ).
    alpha : float in [0, 1]
        As in ``procrustes_distance``.

    Returns
    -------
    array, shape (r, r)
        Symmetric with a zero diagonal, in radians, in the namespace of ``reps``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}")
    if len(reps) < 1:
        raise ValueError("reps must hold at least one representation")
    xp = array_namespace(*reps)
    reps = _check_reps(xp, reps, measure="the shape distance")
    factors = [_whitened_factors(xp, R, alpha) for R in reps]
    _warn_if_fully_whitened_alike(xp, factors, alpha, reps[0].shape[0])
    D = np.zeros((len(reps), len(reps)))
    for i, j in zip(*np.triu_indices(len(reps), 1)):
        D[i, j] = D[j, i] = _shape_angle(xp, factors[i], factors[j])
    return xp.asarray(D)


def classical_mds(D, n_components: int = 2):
    """Classical (Torgerson) multidimensional scaling of a distance matrix.

    With B = -1/2 J D^2 J (J = I - 11^T / n the centring matrix) and its eigenvalues l_1 >= l_2 >= ...
    with eigenvectors v_k, the coordinates are v_k sqrt(max(l_k, 0)) for k <= n_components. When D
    holds Euclidean distances of points in n_components dimensions, the coordinates reproduce them
    exactly (up to rotation and reflection); otherwise negative eigenvalues measure the misfit.

    Parameters
    ----------
    D : array, shape (n, n)
        Symmetric distances with a zero diagonal.
    n_components : int
        Dimensions of the map, at most n.

    Returns
    -------
    coords : array, shape (n, n_components)
    eigenvalues : array, shape (n,)
        All eigenvalues of B, largest first (their positive share tells how much the map keeps).
    """
    xp = array_namespace(D)
    D = _as_float(xp, D, "D", (2,), "an (n, n) distance matrix")
    n = D.shape[0]
    if D.shape[1] != n:
        raise ValueError(f"D must be square; got shape {tuple(D.shape)}")
    if not 1 <= n_components <= n:
        raise ValueError(f"n_components must lie in [1, {n}] for {n} points; got {n_components}")
    if float(xp.max(xp.abs(D - _mT(xp, D)))) > 1e-8 * max(1.0, float(xp.max(xp.abs(D)))):
        raise ValueError("D must be symmetric; average it with its transpose first")
    B = -0.5 * _center_gram(xp, D * D, debiased=False)
    lam, V = xp.linalg.eigh(B)
    lam, V = xp.flip(lam, axis=0), xp.flip(V, axis=1)
    coords = V[:, :n_components] * xp.sqrt(xp.clip(lam[:n_components], 0.0, None))[None, :]
    return coords, lam


def _pad_features(xp, A, d: int, axes: int):
    """Zero-pad the last ``axes`` axes of A to size d."""
    for axis in range(A.ndim - axes, A.ndim):
        extra = d - A.shape[axis]
        if extra:
            shape = list(A.shape)
            shape[axis] = extra
            A = xp.concat([A, xp.zeros(tuple(shape), dtype=A.dtype)], axis=axis)
    return A


def _gaussian_moments(xp, R, name: str):
    """Stimulus-centred means (n, d) and square roots of per-stimulus covariances (n, d, d)."""
    R = _as_float(xp, R, name, (3,), "repeated responses (repeats, stimuli, features)")
    if R.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 repeats per stimulus; got {R.shape[0]}")
    mu = xp.mean(R, axis=0)
    dev = xp.permute_dims(R - mu[None, ...], (1, 0, 2))  # (n, repeats, d)
    cov = xp.matmul(_mT(xp, dev), dev) / (R.shape[0] - 1)
    lam, V = xp.linalg.eigh(cov)
    root = xp.matmul(V * xp.sqrt(xp.clip(lam, 0.0, None))[:, None, :], _mT(xp, V))
    return mu - xp.mean(mu, axis=0, keepdims=True), root


def _polar(xp, M):
    """Orthogonal polar factor(s) W V^T of M = W S V^T and the nuclear norm(s) sum(S)."""
    W, s, Vt = xp.linalg.svd(M, full_matrices=False)
    return xp.matmul(W, Vt), xp.sum(s, axis=-1)


def stochastic_shape_distance(X, Y, alpha: float = 1.0, max_iter: int = 1000, tol: float = 1e-12) -> float:
    """Gaussian stochastic shape distance (Duong et al. 2023) from repeated noisy responses.

    Each stimulus i is summarised by the mean m_i and covariance S_i of its repeats (covariance
    with ddof=1; means centred across stimuli). With P_i = S_i(X)^(1/2), R_i = S_i(Y)^(1/2) and
    representations zero-padded to equal width d, the distance is

        d^2 = min_{Q in O(d)} 1/n sum_i [(2 - alpha) ||m_i(X) - Q m_i(Y)||^2
                                         + alpha B^2(S_i(X), Q S_i(Y) Q^T)],

    B^2(A, C) = tr A + tr C - 2 tr((A^1/2 C A^1/2)^1/2) the squared Bures distance; alpha=1 gives
    the mean squared 2-Wasserstein distance between the stimulus Gaussians, alpha=0 the Procrustes
    distance of the means, alpha=2 covariances only. Because tr((A^1/2 C A^1/2)^1/2) equals
    ||P_i Q R_i||_* = max_{U_i in O(d)} tr(U_i^T P_i Q R_i), the minimum maximises
    F(Q, U) = (2 - alpha) tr(Q^T sum_i m_i(X) m_i(Y)^T) + alpha sum_i tr(U_i^T P_i Q R_i).
    Alternating optimisation: U_i <- polar(P_i Q R_i) (which also evaluates F(Q)), then
    Q <- polar((2 - alpha) sum_i m_i(X) m_i(Y)^T + alpha sum_i P_i U_i R_i). Each step solves its
    sub-problem exactly over the full orthogonal group (reflections included), so F never
    decreases; iteration stops when F rises by less than ``tol * |F|`` (a RuntimeWarning is
    issued if ``max_iter`` is reached). Q starts at the Procrustes solution for the means. The
    problem is not convex: the result is a local optimum, an upper bound on the exact distance.

    Parameters
    ----------
    X : array, shape (repeats_x, n, dx)
    Y : array, shape (repeats_y, n, dy)
    alpha : float in [0, 2]
    max_iter : int
    tol : float

    Returns
    -------
    float
    """
    if not 0.0 <= alpha <= 2.0:
        raise ValueError(f"alpha must lie in [0, 2]; got {alpha}")
    xp = array_namespace(X, Y)
    mx, Px = _gaussian_moments(xp, X, "X")
    my, Ry = _gaussian_moments(xp, Y, "Y")
    _check_same_stimuli(mx.shape[0], my.shape[0], "X and Y")
    n, d = mx.shape[0], max(mx.shape[1], my.shape[1])
    mx, my = _pad_features(xp, mx, d, 1), _pad_features(xp, my, d, 1)
    Px, Ry = _pad_features(xp, Px, d, 2), _pad_features(xp, Ry, d, 2)
    cross = xp.matmul(_mT(xp, mx), my)
    Q = _polar(xp, cross)[0]
    F = -math.inf
    for _ in range(max_iter):
        U, nuclear = _polar(xp, xp.matmul(xp.matmul(Px, Q[None, ...]), Ry))
        F_new = (2.0 - alpha) * float(xp.sum(Q * cross)) + alpha * float(xp.sum(nuclear))
        converged = F_new - F <= tol * abs(F_new)
        F = max(F, F_new)
        if converged:
            break
        Q = _polar(xp, (2.0 - alpha) * cross + alpha * xp.sum(xp.matmul(xp.matmul(Px, U), Ry), axis=0))[0]
    else:
        warnings.warn(
            f"stochastic_shape_distance did not converge in {max_iter} iterations", RuntimeWarning, stacklevel=2
        )
    const = (2.0 - alpha) * float(xp.sum(mx * mx) + xp.sum(my * my)) + alpha * float(xp.sum(Px * Px) + xp.sum(Ry * Ry))
    return math.sqrt(max(0.0, (const - 2.0 * F) / n))


# ----------------------------------------------------------------------------- significance


class PermutationResult(NamedTuple):
    """Observed statistic, one-sided p-value (greater) and the null distribution (numpy)."""

    statistic: float
    pvalue: float
    null: np.ndarray


def _seeded(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


def permutation_test(
    A, B, method: str = "spearman", n_permutations: int = 1000, seed=None, batch: int = 100
) -> PermutationResult:
    """Test RDM similarity against stimulus-label permutations.

    The stimuli of A are relabelled by a random permutation (rows and columns together) and
    compared with B; p = (1 + #{null >= observed}) / (1 + n_permutations).

    Parameters
    ----------
    A, B : arrays, shape (n, n)
    method : str
        As in ``compare_rdms``.
    n_permutations : int
    seed : int or numpy Generator, optional
    batch : int
        Permutations compared at once (memory batch x n (n - 1) / 2).

    Returns
    -------
    PermutationResult
    """
    _check_choice(method, COMPARE_METHODS, "method")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be at least 1; got {n_permutations}")
    xp = array_namespace(A, B)
    A = _as_float(xp, A, "A", (2,), "an (n, n) RDM")
    B = _as_float(xp, B, "B", (2,), "an (n, n) RDM")
    _check_same_stimuli(A.shape[0], B.shape[0], "A and B")
    a, b = _rdm_vectors(xp, A, "A"), _rdm_vectors(xp, B, "B")
    n = A.shape[0]
    idx = _upper_index(xp, n)
    rows, cols = idx // n, idx % n
    if method == "kendall_tau_a":
        observed = float(_similarities(xp, a, b, method)[0, 0])
        flat, tb = xp.reshape(A, (-1,)), b
    else:
        # Relabelling stimuli only reorders the entries of A's vector, and ranks, centring and scaling
        # commute with reordering: transform once, then permute the transformed entries.
        ta, tb = _unit_vectors(xp, [(a, "A"), (b, "B")], method)
        observed = float(xp.matmul(ta, _mT(xp, tb))[0, 0])
        position = np.zeros((n, n), dtype=np.int64)
        position[np.triu_indices(n, 1)] = np.arange(n * (n - 1) // 2)
        position = position + position.T
        flat = xp.take(ta[0, ...], xp.asarray(position.reshape(-1)))
    rng = _seeded(seed)
    null = []
    for start in range(0, n_permutations, batch):
        count = min(batch, n_permutations - start)
        perms = xp.asarray(rng.permuted(np.tile(np.arange(n), (count, 1)), axis=1))
        where = xp.take(perms, rows, axis=1) * n + xp.take(perms, cols, axis=1)
        vecs = xp.reshape(xp.take(flat, xp.reshape(where, (-1,))), (count, -1))
        if method == "kendall_tau_a":
            null.append(to_numpy(_similarities(xp, vecs, b, method))[:, 0])
        else:
            null.append(to_numpy(xp.matmul(vecs, _mT(xp, tb)))[:, 0])
    null = np.concatenate(null)
    pvalue = (1.0 + float(np.sum(null >= observed))) / (1.0 + n_permutations)
    return PermutationResult(observed, pvalue, null)


class BootstrapResult(NamedTuple):
    """Percentile interval (NaN when too few resamples are defined) and how many resamples it is taken over."""

    low: float
    high: float
    n_used: int


def bootstrap_ci(
    A, B, method: str = "spearman", n_bootstrap: int = 1000, ci: float = 0.95, seed=None
) -> BootstrapResult:
    """Percentile bootstrap interval of an RDM similarity, resampling stimuli.

    Each resample draws n stimuli with replacement and compares the sub-RDMs on the pairs of
    distinct draws (pairs of a stimulus with its own copy are left out: their entry is the
    diagonal, not a dissimilarity). A resample in which either sub-RDM has all its entries equal
    (always so when it draws fewer than 3 distinct stimuli) orders no pair of entries, so it says
    nothing about the similarity (Spearman and Pearson are 0/0 there, tau-a and rho-a a mere 0): it
    is left out, whatever the method, and the interval is taken over the other resamples. When fewer
    than half of the resamples are left, they are a minority selected for drawing enough distinct
    stimuli, not a sample of resampling the stimuli: the interval is then NaN.

    Parameters
    ----------
    A, B : arrays, shape (n, n)
    method : str
        As in ``compare_rdms``.
    n_bootstrap : int
    ci : float in (0, 1)
    seed : int or numpy Generator, optional

    Returns
    -------
    BootstrapResult
        (low, high, n_used): the interval and the number of resamples it is taken over.
    """
    _check_choice(method, COMPARE_METHODS, "method")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1; got {n_bootstrap}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie in (0, 1); got {ci}")
    xp = array_namespace(A, B)
    A = _as_float(xp, A, "A", (2,), "an (n, n) RDM")
    B = _as_float(xp, B, "B", (2,), "an (n, n) RDM")
    _check_same_stimuli(A.shape[0], B.shape[0], "A and B")
    n = A.shape[0]
    fa, fb = xp.reshape(A, (-1,)), xp.reshape(B, (-1,))
    iu, ju = np.triu_indices(n, 1)
    rng = _seeded(seed)
    values = []
    for _ in range(n_bootstrap):
        draw = rng.integers(0, n, size=n)
        i, j = draw[iu], draw[ju]
        where = xp.asarray((np.minimum(i, j) * n + np.maximum(i, j))[i != j])  # upper triangle, as compared
        va, vb = xp.take(fa, where)[None, :], xp.take(fb, where)[None, :]
        if va.shape[1] > 0 and not (_constant(xp, va) or _constant(xp, vb)):
            values.append(float(_similarities(xp, va, vb, method)[0, 0]))
    if 2 * len(values) < n_bootstrap:
        return BootstrapResult(math.nan, math.nan, len(values))
    low, high = np.quantile(values, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return BootstrapResult(float(low), float(high), len(values))


def _constant(xp, v) -> bool:
    """Whether every entry of a non-empty array is the same."""
    return bool(xp.max(v) == xp.min(v))


def split_half_noise_ceiling(
    repeats, metric: str = "correlation", method: str = "spearman", n_splits: int = 20, seed=None
) -> float:
    """Split-half reliability of an RDM, Spearman-Brown corrected to the full data.

    For each random split of the repeats into halves (sizes floor(r/2) and ceil(r/2)), the RDMs
    of the two half-means are compared with ``method``; with rho the mean over splits, the
    ceiling is 2 rho / (1 + rho).

    Parameters
    ----------
    repeats : array, shape (r, n, d), r >= 2
    metric : str
        RDM metric (not crossnobis).
    method : str
        As in ``compare_rdms``.
    n_splits : int
    seed : int or numpy Generator, optional

    Returns
    -------
    float
    """
    _check_choice(method, COMPARE_METHODS, "method")
    if metric == "crossnobis":
        raise ValueError("metric='crossnobis' is already cross-validated; choose another metric for the split halves")
    xp = array_namespace(repeats)
    repeats = _as_float(xp, repeats, "repeats", (3,), "repeated responses (repeats, stimuli, features)")
    r = repeats.shape[0]
    if r < 2:
        raise ValueError(f"repeats needs at least 2 repeats to split; got {r}")
    rng = _seeded(seed)
    halves = []
    for _ in range(n_splits):
        order = rng.permutation(r)
        for part in (order[: r // 2], order[r // 2 :]):
            halves.append(xp.mean(xp.take(repeats, xp.asarray(part), axis=0), axis=0))
    vecs = _rdm_vectors(xp, rdm(xp.stack(halves), metric=metric), "repeats")
    rho = float(xp.mean(_similarities(xp, vecs[0::2, :], vecs[1::2, :], method, ("repeats", "repeats"), paired=True)))
    if rho <= -1.0:
        raise ValueError("the split halves are perfectly anti-correlated; the Spearman-Brown correction is undefined")
    return 2.0 * rho / (1.0 + rho)
