"""Tests for pipeline.analyses.similarity against literal formulas, peer libraries and planted structure."""

import itertools
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.stats

from pipeline.analyses import similarity as S

TOL = 1e-10


def rng(seed=0):
    return np.random.default_rng(seed)


def related_pair(n=24, dx=6, dy=9, noise=0.5, seed=0):
    """Two representations of the same stimuli that share a linear code."""
    g = rng(seed)
    X = g.standard_normal((n, dx))
    Y = X @ g.standard_normal((dx, dy)) + noise * g.standard_normal((n, dy))
    return X, Y


def random_orthogonal(d, seed=0):
    q, r = np.linalg.qr(rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# ----------------------------------------------------------------------------- literal references


def ref_rdm(X, metric):
    n = X.shape[0]
    D = np.zeros((n, n))
    for i, j in itertools.product(range(n), repeat=2):
        a, b = X[i], X[j]
        if metric == "correlation":
            D[i, j] = 1 - np.corrcoef(a, b)[0, 1]
        elif metric == "cosine":
            D[i, j] = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        elif metric == "euclidean":
            D[i, j] = np.linalg.norm(a - b)
        else:
            D[i, j] = np.sum((a - b) ** 2)
    np.fill_diagonal(D, 0.0)
    return D


def ref_crossnobis(X, noise):
    P, n, d = X.shape
    prec = np.linalg.inv(noise)
    D = np.zeros((n, n))
    for i, j in itertools.product(range(n), repeat=2):
        total = sum((X[p, i] - X[p, j]) @ prec @ (X[q, i] - X[q, j]) for p in range(P) for q in range(P) if p != q)
        D[i, j] = total / (P * (P - 1) * d)
    return D


def upper(D):
    return D[np.triu_indices(D.shape[0], 1)]


def ref_tau_a(a, b):
    N = a.size
    s = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i in range(N) for j in range(i + 1, N))
    return s / (N * (N - 1) / 2)


def ref_compare(A, B, method):
    return ref_compare_vectors(upper(A), upper(B), method)


def ref_compare_vectors(a, b, method):
    if method == "spearman":
        return scipy.stats.spearmanr(a, b).statistic
    if method == "pearson":
        return np.corrcoef(a, b)[0, 1]
    if method == "cosine":
        return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    if method == "rho_a":
        N = a.size
        ra, rb = scipy.stats.rankdata(a), scipy.stats.rankdata(b)
        return 12 * np.sum((ra - ra.mean()) * (rb - rb.mean())) / (N**3 - N)
    return ref_tau_a(a, b)


def centring(n):
    return np.eye(n) - np.ones((n, n)) / n


def ref_hsic_biased(K, L):
    n = K.shape[0]
    H = centring(n)
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def ref_hsic_unbiased(K, L):
    n = K.shape[0]
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return (
        np.trace(Kt @ Lt)
        + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * one @ Kt @ Lt @ one
    ) / (n * (n - 3))


def ref_kernel(X, kernel):
    Xc = X - X.mean(0)
    if kernel == "linear":
        return Xc @ Xc.T
    sq = scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(X, "sqeuclidean"))
    sigma = np.median(scipy.spatial.distance.pdist(X))
    return np.exp(-sq / (2 * sigma**2))


def ref_cka(X, Y, kernel="linear", debiased=False):
    hsic = ref_hsic_unbiased if debiased else ref_hsic_biased
    K, L = ref_kernel(X, kernel), ref_kernel(Y, kernel)
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def ref_shape(X, Y, alpha=1.0):
    def whiten(A):
        Ac = A - A.mean(0)
        lam, V = np.linalg.eigh(Ac.T @ Ac)
        return Ac @ (V @ np.diag(alpha + (1 - alpha) / np.sqrt(lam)) @ V.T)

    Xw, Yw = whiten(X), whiten(Y)
    d = max(Xw.shape[1], Yw.shape[1])
    Xw = np.pad(Xw, ((0, 0), (0, d - Xw.shape[1])))
    Yw = np.pad(Yw, ((0, 0), (0, d - Yw.shape[1])))
    nuclear = np.linalg.svd(Xw.T @ Yw, compute_uv=False).sum()
    return np.arccos(nuclear / (np.linalg.norm(Xw) * np.linalg.norm(Yw)))


# ----------------------------------------------------------------------------- RDMs


@pytest.mark.parametrize("metric", ["correlation", "cosine", "euclidean", "sqeuclidean"])
def test_rdm_matches_definition(metric):
    X = rng(1).standard_normal((12, 7)) + 0.5
    np.testing.assert_allclose(S.rdm(X, metric), ref_rdm(X, metric), atol=TOL, rtol=0)


def test_float32_euclidean_distances_keep_small_distances():
    # two tight clusters far apart: within-cluster distances (~0.03) are tiny next to the norms (~140)
    g = rng(3)
    centres = 5.0 * g.standard_normal((2, 768))
    X = (np.repeat(centres, 10, axis=0) + 1e-3 * g.standard_normal((20, 768))).astype(np.float32)
    reference = scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(X.astype(np.float64)))
    within = np.kron(np.eye(2), np.ones((10, 10))).astype(bool) & ~np.eye(20, dtype=bool)
    for metric, power in [("euclidean", 1), ("sqeuclidean", 2)]:
        D = S.rdm(X, metric)
        assert D.dtype == np.float32
        np.testing.assert_allclose(D[within], reference[within] ** power, rtol=1e-4)
    K = S._gram(np, X, "rbf", 0.05, "X")  # bandwidth of the within-cluster distances
    np.testing.assert_allclose(K[within], np.exp(-reference[within] ** 2 / (2 * 0.05**2)), rtol=1e-4)


def test_rdm_stack_equals_each_item():
    X = rng(2).standard_normal((4, 10, 6))
    for metric in ["correlation", "euclidean"]:
        D = S.rdm(X, metric)
        assert D.shape == (4, 10, 10)
        for k in range(4):
            np.testing.assert_allclose(D[k], ref_rdm(X[k], metric), atol=TOL, rtol=0)


def test_crossnobis_matches_definition_identity_and_noise():
    g = rng(3)
    X = g.standard_normal((3, 7, 5))
    noise = np.cov(g.standard_normal((40, 5)).T)
    np.testing.assert_allclose(S.rdm(X, "crossnobis"), ref_crossnobis(X, np.eye(5)), atol=TOL, rtol=0)
    np.testing.assert_allclose(S.rdm(X, "crossnobis", noise=noise), ref_crossnobis(X, noise), atol=TOL, rtol=0)
    stack = S.rdm(np.stack([X, 2 * X]), "crossnobis")
    np.testing.assert_allclose(stack[1], 4 * ref_crossnobis(X, np.eye(5)), atol=TOL, rtol=0)


def test_crossnobis_is_unbiased_for_pure_noise():
    """Independent noise across partitions: mean crossnobis distance near 0, where euclidean is not."""
    X = rng(4).standard_normal((8, 30, 50))
    D = S.rdm(X, "crossnobis")
    assert abs(upper(D).mean()) < 0.02
    assert upper(S.rdm(X.mean(0), "sqeuclidean")).mean() / 50 > 0.2


def test_rdm_matches_rsatoolbox():
    rt = pytest.importorskip("rsatoolbox")
    g = rng(5)
    X = g.standard_normal((9, 6))
    ds = rt.data.Dataset(X)
    corr = rt.rdm.calc_rdm(ds, method="correlation").get_matrices()[0]
    np.testing.assert_allclose(S.rdm(X, "correlation"), corr, atol=TOL, rtol=0)
    eucl = rt.rdm.calc_rdm(ds, method="euclidean").get_matrices()[0]  # mean squared difference
    np.testing.assert_allclose(S.rdm(X, "sqeuclidean") / 6, eucl, atol=TOL, rtol=0)
    P, n, d = 3, 6, 5
    R = g.standard_normal((P, n, d))
    noise = np.cov(g.standard_normal((40, d)).T)
    desc = {"conds": np.tile(np.arange(n), P), "fold": np.repeat(np.arange(P), n)}
    dsr = rt.data.Dataset(R.reshape(P * n, d), obs_descriptors=desc)
    cn = rt.rdm.calc_rdm(dsr, method="crossnobis", descriptor="conds", cv_descriptor="fold", noise=np.linalg.inv(noise))
    np.testing.assert_allclose(S.rdm(R, "crossnobis", noise=noise), cn.get_matrices()[0], atol=TOL, rtol=0)


def test_label_and_input_rdms():
    L = S.label_rdm(["a", "b", "a", "c"])
    expected = np.array([[0, 1, 0, 1], [1, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 0]], dtype=float)
    np.testing.assert_array_equal(L, expected)
    images = rng(6).standard_normal((5, 3, 4))
    np.testing.assert_allclose(S.input_rdm(images), ref_rdm(images.reshape(5, 12), "correlation"), atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- comparing RDMs


def rdm_pair(seed=0, n=10):
    g = rng(seed)
    X = g.standard_normal((n, 8))
    A = S.rdm(X)
    B = S.rdm(X + 0.7 * g.standard_normal((n, 8)), "euclidean")
    return A, B


@pytest.mark.parametrize("method", S.COMPARE_METHODS)
def test_compare_matches_definition(method):
    A, B = rdm_pair(7)
    assert isinstance(S.compare_rdms(A, B, method), float)
    assert S.compare_rdms(A, B, method) == pytest.approx(ref_compare(A, B, method), abs=TOL)
    labels = S.label_rdm(np.repeat(np.arange(3), 4))  # a model with many ties
    X = rng(8).standard_normal((12, 5))
    assert S.compare_rdms(labels, S.rdm(X), method) == pytest.approx(ref_compare(labels, S.rdm(X), method), abs=TOL)


def test_kendall_tau_a_against_a_category_rdm_matches_definition():
    g = rng(8)
    A = np.round(S.rdm(g.standard_normal((14, 3))), 1)  # rounded: ties within A too
    L = S.label_rdm(g.integers(0, 3, 14))
    assert S.compare_rdms(A, L, "kendall_tau_a") == pytest.approx(ref_tau_a(upper(A), upper(L)), abs=1e-12)
    assert S.compare_rdms(L, A, "kendall_tau_a") == pytest.approx(ref_tau_a(upper(L), upper(A)), abs=1e-12)
    result = S.permutation_test(A, L, "kendall_tau_a", n_permutations=20, seed=0)
    perms = np.random.default_rng(0).permuted(np.tile(np.arange(14), (20, 1)), axis=1)
    null = [ref_tau_a(upper(A[np.ix_(p, p)]), upper(L)) for p in perms]
    np.testing.assert_allclose(result.null, null, atol=1e-12)


def test_kendall_tau_a_ceiling_is_reached_by_an_rdm_ordered_like_the_reference():
    g = rng(10)
    L = S.label_rdm(g.integers(0, 4, 16))
    ceiling = S.kendall_tau_a_ceiling(L)
    assert ceiling == pytest.approx(ref_tau_a(upper(L), upper(L)), abs=1e-12)
    ordered = L + 1e-3 * S.rdm(g.standard_normal((16, 5)))  # breaks L's ties, keeps its order
    assert S.compare_rdms(ordered, L, "kendall_tau_a") == pytest.approx(ceiling, abs=1e-12)
    others = [S.compare_rdms(S.rdm(g.standard_normal((16, 5))), L, "kendall_tau_a") for _ in range(20)]
    assert max(others) < ceiling < 1.0


@pytest.mark.parametrize("method", S.COMPARE_METHODS)
def test_similarity_of_an_rdm_to_itself_is_one_and_never_more(method):
    g = rng(40)
    for n in range(5, 40, 3):  # float32 rounding carried some of these to 1 + 1e-7
        D = S.rdm(g.standard_normal((n, 7)).astype(np.float32))
        similarity = S.compare_rdms(D, D, method)
        assert similarity <= 1.0 and similarity == pytest.approx(1.0, abs=1e-6)


def test_biased_cka_of_a_representation_with_itself_is_one_and_never_more():
    g = np.random.default_rng(0)
    for _ in range(10):  # float32 rounding carried several of these to 1 + 1e-7
        X = g.standard_normal((int(g.integers(5, 60)), int(g.integers(2, 30)))).astype(np.float32)
        matrix = S.cka_matrix([X, X[:, ::-1].copy()])  # the same representation, its features reversed
        assert np.all(matrix <= 1.0) and np.allclose(matrix, 1.0, atol=1e-6)
        for kernel in ("linear", "rbf"):
            value = S.cka(X, X, kernel=kernel)
            assert value <= 1.0 and value == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("method", S.COMPARE_METHODS)
def test_compare_all_pairs_equals_loop(method):
    g = rng(9)
    As = S.rdm(g.standard_normal((4, 9, 5)))
    Bs = np.concatenate([S.rdm(g.standard_normal((2, 9, 5)), "euclidean"), S.label_rdm(np.arange(9) % 3)[None]])
    M = S.compare_rdms(As, Bs, method)
    assert M.shape == (4, 3)
    loop = np.array([[ref_compare(a, b, method) for b in Bs] for a in As])
    np.testing.assert_allclose(M, loop, atol=TOL, rtol=0)
    np.testing.assert_allclose(S.compare_rdms(As[0], Bs, method), loop[0], atol=TOL, rtol=0)


def test_compare_matches_rsatoolbox():
    rt = pytest.importorskip("rsatoolbox")
    g = rng(10)
    As = S.rdm(g.standard_normal((3, 11, 6)))
    Bs = np.concatenate([S.rdm(g.standard_normal((2, 11, 6)), "euclidean"), S.label_rdm(np.arange(11) % 4)[None]])
    ra = rt.rdm.RDMs(np.stack([upper(a) for a in As]))
    rb = rt.rdm.RDMs(np.stack([upper(b) for b in Bs]))
    names = {"spearman": "spearman", "rho_a": "rho-a", "kendall_tau_a": "tau-a", "pearson": "corr", "cosine": "cosine"}
    for ours, theirs in names.items():
        np.testing.assert_allclose(S.compare_rdms(As, Bs, ours), rt.rdm.compare(ra, rb, method=theirs), atol=TOL)


# ----------------------------------------------------------------------------- CKA


def rank_cases():
    """Vectors that stress ranking: ties, signed zeros, infinities, and distinct values closer
    than the bits the one-sort keys keep (buckets that must be re-sorted by value)."""
    g = rng(40)
    close = 1.0 + 1e-9 * g.standard_normal(5000)
    ints = g.integers(-4, 5, 3000).astype(float)
    ints[::7] = -0.0
    return {
        "continuous": g.standard_normal(4000),
        "close": close,
        "close with ties and negatives": np.concatenate([close, close[::-1], -close]),
        "ties and signed zeros": ints,
        "ulp steps": 1.0 + np.arange(50)[::-1] * np.spacing(1.0),
        "infinities": np.array([np.inf, 1.0, -np.inf, 1.0, 0.0]),
        "two": np.array([3.0, -3.0]),
    }


def average_ranks(xp, v):
    return S._unsort(xp, *S._sorted_ranks(xp, v))


@pytest.mark.parametrize("case", list(rank_cases()))
def test_average_ranks_match_rankdata(case):
    v = rank_cases()[case]
    expected = scipy.stats.rankdata(v)
    np.testing.assert_array_equal(average_ranks(np, v), expected)
    np.testing.assert_array_equal(average_ranks(np, v.astype(np.float32)), scipy.stats.rankdata(v.astype(np.float32)))
    xs = pytest.importorskip("array_api_strict")
    np.testing.assert_array_equal(np.asarray(average_ranks(xs, xs.asarray(v))), expected)


def test_sort_keys_order_and_ties():
    v = rank_cases()["close with ties and negatives"]
    order, ties = S._sort_keys(v)
    np.testing.assert_array_equal(v[order], np.sort(v))
    np.testing.assert_array_equal(np.sort(order), np.arange(v.size))
    s = np.sort(v)
    np.testing.assert_array_equal(ties, np.flatnonzero(s[1:] == s[:-1]))


def test_spearman_of_close_values_matches_scipy():
    g = rng(41)
    A = 1.0 + 1e-9 * S.rdm(g.standard_normal((60, 5)), "euclidean")  # entries within a few ulp-buckets
    B = S.rdm(g.standard_normal((60, 5)))
    for method in ("spearman", "rho_a"):
        assert S.compare_rdms(A, B, method) == pytest.approx(ref_compare(A, B, method), abs=TOL)


def test_rdm_diagonal_is_exactly_zero():
    xs = pytest.importorskip("array_api_strict")
    X = rng(42).standard_normal((3, 30, 7))
    for metric in ["correlation", "cosine", "euclidean", "sqeuclidean"]:
        assert np.all(np.diagonal(S.rdm(X, metric), axis1=1, axis2=2) == 0.0)
        assert np.all(np.diagonal(np.asarray(S.rdm(xs.asarray(X), metric)), axis1=1, axis2=2) == 0.0)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", [(20, 5, 7), (12, 30, 25)])  # feature-space and Gram-space linear forms
def test_cka_matches_definition(kernel, debiased, shape):
    n, dx, dy = shape
    X, Y = related_pair(n, dx, dy, seed=11)
    value = S.cka(X, Y, kernel=kernel, debiased=debiased)
    assert isinstance(value, float)
    assert value == pytest.approx(ref_cka(X, Y, kernel, debiased), abs=TOL)


def test_cka_rbf_explicit_sigma():
    X, Y = related_pair(15, 4, 6, seed=12)
    H = centring(15)

    def k(A, s):
        return np.exp(-scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(A, "sqeuclidean")) / (2 * s * s))

    K, L = H @ k(X, 2.0) @ H, H @ k(Y, 2.0) @ H
    assert S.cka(X, Y, kernel="rbf", sigma=2.0) == pytest.approx(
        np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L)), abs=TOL
    )


def test_debiased_cka_near_zero_for_independent_data():
    """n=32, p=1000: biased CKA about 0.97 for unrelated data, debiased about 0 (sd about 0.05 per draw)."""
    biased, debiased = [], []
    for seed in range(10):
        g = rng(100 + seed)
        X, Y = g.standard_normal((32, 1000)), g.standard_normal((32, 1000))
        biased.append(S.cka(X, Y))
        debiased.append(S.cka(X, Y, debiased=True))
    assert min(biased) > 0.95
    assert abs(np.mean(debiased)) < 0.05
    assert np.median(np.abs(debiased)) < 0.05


def test_cka_invariances():
    X, Y = related_pair(25, 8, 10, seed=13)
    Q = random_orthogonal(10, 14)
    for debiased in (False, True):
        base = S.cka(X, Y, debiased=debiased)
        assert S.cka(X, 3.7 * Y @ Q, debiased=debiased) == pytest.approx(base, abs=TOL)
        assert S.cka(X + 5.0, Y, debiased=debiased) == pytest.approx(base, abs=TOL)
    assert S.cka(X, 3.7 * Y @ Q, kernel="rbf") == pytest.approx(S.cka(X, Y, kernel="rbf"), abs=TOL)
    W = rng(15).standard_normal((10, 10))  # a general linear map changes linear CKA
    assert abs(S.cka(X, Y @ W) - S.cka(X, Y)) > 1e-3


@pytest.mark.parametrize("kernel,debiased", [("linear", False), ("linear", True), ("rbf", False), ("rbf", True)])
def test_cka_matrix_equals_pairwise(kernel, debiased):
    g = rng(16)
    X = g.standard_normal((14, 4))
    reps = [X, X @ g.standard_normal((4, 9)) + g.standard_normal((14, 9)), g.standard_normal((14, 3)), X[:, :2]]
    M = S.cka_matrix(reps, kernel=kernel, debiased=debiased)
    loop = np.array([[ref_cka(a, b, kernel, debiased) for b in reps] for a in reps])
    np.testing.assert_allclose(M, loop, atol=TOL, rtol=0)
    wide = [g.standard_normal((10, 40)) for _ in range(3)]  # Gram-space branch for linear
    loop = np.array([[ref_cka(a, b, kernel, debiased) for b in wide] for a in wide])
    np.testing.assert_allclose(S.cka_matrix(np.stack(wide), kernel=kernel, debiased=debiased), loop, atol=TOL, rtol=0)


def test_minibatch_cka():
    g = rng(17)
    n = 6000
    X = g.standard_normal((n, 10))
    Y = np.tanh(X @ g.standard_normal((10, 12))) + 0.8 * g.standard_normal((n, 12))
    full = S.cka(X, Y, debiased=True)
    # one batch holding everything is the full-data estimate
    assert S.minibatch_cka([X], [Y]) == pytest.approx(full, abs=TOL)
    # the accumulator averages numerator and denominators separately
    bx, by = np.split(X[:60], 3), np.split(Y[:60], 3)
    kx = [ref_kernel(b, "linear") for b in bx]
    ky = [ref_kernel(b, "linear") for b in by]
    num = np.mean([ref_hsic_unbiased(a, b) for a, b in zip(kx, ky, strict=True)])
    den = np.sqrt(np.mean([ref_hsic_unbiased(k, k) for k in kx]) * np.mean([ref_hsic_unbiased(k, k) for k in ky]))
    assert S.minibatch_cka(bx, by) == pytest.approx(num / den, abs=TOL)
    # many small batches approach the full-data value; the biased estimator does not
    errors = {b: abs(S.minibatch_cka(np.split(X, n // b), np.split(Y, n // b)) - full) for b in (50, 500)}
    assert errors[500] < 0.01 and errors[50] < 0.02
    biased = S.minibatch_cka(np.split(X, n // 50), np.split(Y, n // 50), debiased=False)
    assert abs(biased - S.cka(X, Y)) > 3 * errors[50]
    acc = S.MinibatchCKA()
    for a, b in zip(np.split(X, 12), np.split(Y, 12), strict=True):
        acc.update(a, b)
    assert acc.n_batches_ == 12 and abs(acc.value - full) < 0.01


# ----------------------------------------------------------------------------- shape metrics


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
def test_procrustes_matches_definition(alpha):
    X, Y = related_pair(30, 5, 8, seed=18)
    value = S.procrustes_distance(X, Y, alpha=alpha)
    assert isinstance(value, float)
    assert value == pytest.approx(ref_shape(X, Y, alpha), abs=TOL)


def test_full_whitening_of_wide_representations_warns():
    g = rng(9)
    X, Y = g.standard_normal((10, 50)), g.standard_normal((10, 50))  # unrelated, rank n - 1 each
    with pytest.warns(UserWarning, match="alpha=0"):
        assert S.procrustes_distance(X, Y, alpha=0.0) == pytest.approx(0.0, abs=1e-6)
    with pytest.warns(UserWarning, match="alpha=0"):
        S.shape_distance_matrix([X, Y, X[:, :3]], alpha=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        S.procrustes_distance(X[:, :3], Y, alpha=0.0)  # one of them narrower: a real distance
        S.procrustes_distance(X, Y, alpha=0.5)


def test_procrustes_invariances_and_metric():
    X, Y = related_pair(30, 6, 6, seed=19)
    Q = random_orthogonal(6, 20)
    base = S.procrustes_distance(X, Y)
    assert S.procrustes_distance(X, 2.5 * Y @ Q + 1.0) == pytest.approx(base, abs=TOL)
    assert S.procrustes_distance(X, 2.5 * X @ Q) == pytest.approx(0.0, abs=1e-7)
    W = rng(21).standard_normal((6, 6))  # alpha=0 is invariant to any invertible linear map
    assert S.procrustes_distance(X, Y @ W, alpha=0.0) == pytest.approx(S.procrustes_distance(X, Y, alpha=0.0), abs=1e-9)
    assert abs(S.procrustes_distance(X, Y @ W) - base) > 1e-3
    g = rng(22)
    for _ in range(20):
        base_rep = g.standard_normal((15, 4))
        A, B, C = (base_rep @ g.standard_normal((4, w)) + g.standard_normal((15, w)) for w in (3, 5, 7))
        dab, dbc, dac = S.procrustes_distance(A, B), S.procrustes_distance(B, C), S.procrustes_distance(A, C)
        assert dac <= dab + dbc + 1e-12
        assert dab == pytest.approx(S.procrustes_distance(B, A), abs=TOL)


@pytest.mark.parametrize("dtype, rel, floor", [(np.float32, 1e-3, 1e-6), (np.float64, 1e-9, 1e-14)])
def test_procrustes_keeps_its_digits_at_small_angles(dtype, rel, floor):
    # X and Y: k orthonormal centred columns each, Y turned by theta away from X's span: the distance is theta
    g = rng(24)
    n, k = 200, 20
    Z = g.standard_normal((n, 2 * k))
    basis = np.linalg.qr(Z - Z.mean(axis=0))[0]
    X, away = basis[:, :k], basis[:, k:]
    for theta in (1e-4, 1e-2, 0.029, 0.031, 0.5):  # either side of the switch to the chord
        Y = (np.cos(theta) * X + np.sin(theta) * away) @ random_orthogonal(k, 25)
        assert S.procrustes_distance(X.astype(dtype), Y.astype(dtype)) == pytest.approx(theta, rel=rel)
        D = S.shape_distance_matrix([X.astype(dtype), Y[:, :k - 1].astype(dtype), Y.astype(dtype)])
        assert D[0, 2] == pytest.approx(theta, rel=rel)
    W = g.standard_normal((n, 50)).astype(dtype)
    assert S.procrustes_distance(W, W @ random_orthogonal(50, 26).astype(dtype)) < 1e-3 * rel
    # unequal widths at small angles, either one first: against the chord of scipy's optimal rotation (float64); the
    # input's own rounding (floor) bounds what can be resolved
    Xc = g.standard_normal((n, 6)) * np.linspace(1, 3, 6)
    Xc -= Xc.mean(axis=0)
    for eps in (1e-5, 1e-3, 2e-2):
        Yc = np.hstack([Xc @ random_orthogonal(6, 27), eps * (away[:, :3] - away[:, :3].mean(axis=0))])
        Xn, Yn = Xc / np.linalg.norm(Xc), Yc / np.linalg.norm(Yc)
        Xpad = np.hstack([Xn, np.zeros((n, 3))])
        rotation, _ = scipy.linalg.orthogonal_procrustes(Xpad, Yn)
        want = 2 * np.arcsin(np.linalg.norm(Xpad @ rotation - Yn) / 2)
        for a, b in ((Xc, Yc), (Yc, Xc)):
            assert S.procrustes_distance(a.astype(dtype), b.astype(dtype)) == pytest.approx(want, rel=rel, abs=floor)


def test_shape_metric_differs_from_arccos_cka():
    X, Y = related_pair(40, 6, 6, noise=1.0, seed=23)
    assert abs(S.procrustes_distance(X, Y) - math.acos(S.cka(X, Y))) > 0.05


def gaussian_repeats(means, roots, repeats, seed):
    """Exact Gaussian samples whose per-stimulus mean and covariance (ddof=1) are means and roots^2."""
    g = rng(seed)
    n, d = means.shape
    Z = g.standard_normal((repeats, n, d))
    Z -= Z.mean(0)
    out = np.empty_like(Z)
    for i in range(n):
        c = np.cov(Z[:, i].T)
        w = np.linalg.cholesky(c)
        out[:, i] = Z[:, i] @ np.linalg.inv(w).T @ roots[i].T
    return out + means[None]


def bures2(A, B):
    ra = scipy.linalg.sqrtm(A)
    return np.trace(A) + np.trace(B) - 2 * np.trace(scipy.linalg.sqrtm(ra @ B @ ra)).real


def test_stochastic_shape_alpha0_is_procrustes_of_means():
    g = rng(24)
    X, Y = g.standard_normal((6, 10, 3)), g.standard_normal((5, 10, 4))
    mx, my = X.mean(0), Y.mean(0)
    mx, my = np.pad(mx - mx.mean(0), ((0, 0), (0, 1))), my - my.mean(0)  # zero-pad X to the width of Y
    nuclear = np.linalg.svd(mx.T @ my, compute_uv=False).sum()
    expected = np.sqrt(2 * (np.sum(mx**2) + np.sum(my**2) - 2 * nuclear) / 10)
    assert S.stochastic_shape_distance(X, Y, alpha=0.0) == pytest.approx(expected, abs=TOL)


def test_stochastic_shape_planted_rotation_and_brute_force():
    g = rng(25)
    n, d = 6, 2
    means = g.standard_normal((n, d)) * 2
    roots = [np.linalg.cholesky(np.cov(g.standard_normal((d, 8))) + 0.1 * np.eye(d)) for _ in range(n)]
    roots = [scipy.linalg.sqrtm(r @ r.T).real for r in roots]
    X = gaussian_repeats(means, roots, 10, 26)
    Q = random_orthogonal(d, 27)
    assert S.stochastic_shape_distance(X, X @ Q.T + 3.0) == pytest.approx(0.0, abs=1e-6)
    Y = g.standard_normal((12, n, d)) * np.array([1.0, 0.3]) + g.standard_normal((n, d))
    mx, my = X.mean(0) - X.mean((0, 1)), Y.mean(0) - Y.mean((0, 1))
    cx = [np.cov(X[:, i].T) for i in range(n)]
    cy = [np.cov(Y[:, i].T) for i in range(n)]
    best = np.inf
    for theta in np.linspace(0, 2 * np.pi, 1441):
        c, s = np.cos(theta), np.sin(theta)
        for R in (np.array([[c, -s], [s, c]]), np.array([[c, s], [s, -c]])):
            total = sum(np.sum((mx[i] - R @ my[i]) ** 2) + bures2(cx[i], R @ cy[i] @ R.T) for i in range(n))
            best = min(best, np.sqrt(max(total, 0) / n))
    value = S.stochastic_shape_distance(X, Y)
    assert value <= best + 1e-9
    assert value >= best - 1e-4


def test_stochastic_shape_one_dimension_exact():
    g = rng(28)
    X, Y = g.standard_normal((7, 5, 1)) * 2 + 1, g.standard_normal((9, 5, 1)) * 0.5
    mx, my = X.mean(0)[:, 0], Y.mean(0)[:, 0]
    mx, my = mx - mx.mean(), my - my.mean()
    sx, sy = X.std(0, ddof=1)[:, 0], Y.std(0, ddof=1)[:, 0]
    expected = min(np.sqrt(np.mean((mx - q * my) ** 2 + (sx - sy) ** 2)) for q in (1.0, -1.0))
    assert S.stochastic_shape_distance(X, Y) == pytest.approx(expected, abs=TOL)


# ----------------------------------------------------------------------------- significance


def test_permutation_test_null_is_permutations():
    g = rng(29)
    A, B = S.rdm(g.standard_normal((4, 3))), S.rdm(g.standard_normal((4, 3)))
    exact = {round(ref_compare(A[np.ix_(p, p)], B, "pearson"), 9) for p in itertools.permutations(range(4))}
    res = S.permutation_test(A, B, "pearson", n_permutations=200, seed=0)
    assert res.statistic == pytest.approx(ref_compare(A, B, "pearson"), abs=TOL)
    assert {round(v, 9) for v in res.null} <= exact
    assert len({round(v, 9) for v in res.null}) > 5
    assert res.pvalue == pytest.approx((1 + np.sum(res.null >= res.statistic)) / 201, abs=0)


def test_permutation_test_planted_and_null():
    g = rng(30)
    X = g.standard_normal((20, 6))
    A, B = S.rdm(X), S.rdm(X + 0.3 * g.standard_normal((20, 6)))
    assert S.permutation_test(A, B, n_permutations=199, seed=1).pvalue == pytest.approx(1 / 200)
    pvalues = [
        S.permutation_test(
            S.rdm(g.standard_normal((12, 5))), S.rdm(g.standard_normal((12, 5))), n_permutations=99, seed=s
        ).pvalue
        for s in range(30)
    ]
    assert 0.3 < np.mean(pvalues) < 0.7
    tau = S.permutation_test(A, B, "kendall_tau_a", n_permutations=49, seed=2)
    assert tau.pvalue == pytest.approx(1 / 50) and tau.statistic == pytest.approx(
        ref_compare(A, B, "kendall_tau_a"), abs=TOL
    )


def test_bootstrap_ci():
    g = rng(31)
    X = g.standard_normal((40, 6))
    A, B = S.rdm(X), S.rdm(X + 0.8 * g.standard_normal((40, 6)))
    low, high, used = S.bootstrap_ci(A, B, "pearson", n_bootstrap=300, seed=0)
    observed = S.compare_rdms(A, B, "pearson")
    assert low < observed < high and high - low < 0.5 and used == 300
    assert S.bootstrap_ci(A, A, "spearman", n_bootstrap=50, seed=0) == pytest.approx((1.0, 1.0, 50), abs=TOL)
    small_low, small_high, _ = S.bootstrap_ci(A[:12, :12], B[:12, :12], "pearson", n_bootstrap=300, seed=0)
    assert small_high - small_low > high - low


def ref_bootstrap_values(A, B, method, n_bootstrap, seed):
    """Similarities of the resamples (the draws of bootstrap_ci) whose sub-RDMs on the pairs of distinct draws both
    vary; resamples where one of them is constant are left out."""
    g = np.random.default_rng(seed)
    values = []
    for _ in range(n_bootstrap):
        draw = g.integers(0, A.shape[0], size=A.shape[0])
        pairs = [(i, j) for i, j in itertools.combinations(draw, 2) if i != j]
        a, b = np.array([A[p] for p in pairs]), np.array([B[p] for p in pairs])
        if len(set(a)) > 1 and len(set(b)) > 1:
            values.append(ref_compare_vectors(a, b, method))
    return values


@pytest.mark.parametrize("method", ["spearman", "kendall_tau_a"])
def test_bootstrap_ci_leaves_out_resamples_with_a_constant_rdm(method):
    g = rng(56)
    A = S.rdm(g.standard_normal((5, 3)))
    B = S.label_rdm([0, 0, 1, 1, 2]) if method == "kendall_tau_a" else S.rdm(g.standard_normal((5, 3)))
    values = ref_bootstrap_values(A, B, method, 200, seed=0)
    assert 100 <= len(values) < 200  # some resamples draw too few distinct stimuli (or labels) to order
    low, high, used = S.bootstrap_ci(A, B, method, n_bootstrap=200, seed=0)
    assert used == len(values)
    assert (low, high) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])), abs=TOL)


def test_bootstrap_ci_is_nan_when_most_resamples_are_undefined():
    g = rng(57)
    A, B = S.rdm(g.standard_normal((3, 2))), S.rdm(g.standard_normal((3, 2)))
    values = ref_bootstrap_values(A, B, "spearman", 200, seed=0)
    assert 0 < len(values) < 100  # all 3 stimuli drawn in about 2 resamples of 9
    low, high, used = S.bootstrap_ci(A, B, "spearman", n_bootstrap=200, seed=0)
    assert math.isnan(low) and math.isnan(high) and used == len(values)


def test_split_half_noise_ceiling():
    g = rng(32)
    signal = g.standard_normal((15, 8))
    two = signal + g.standard_normal((2, 15, 8))
    rho = ref_compare(ref_rdm(two[0], "correlation"), ref_rdm(two[1], "correlation"), "spearman")
    assert S.split_half_noise_ceiling(two, n_splits=3, seed=0) == pytest.approx(2 * rho / (1 + rho), abs=TOL)
    clean = S.split_half_noise_ceiling(signal + 0.1 * g.standard_normal((8, 15, 8)), seed=0)
    noisy = S.split_half_noise_ceiling(signal + 2.0 * g.standard_normal((8, 15, 8)), seed=0)
    assert clean > 0.95 and noisy < clean


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs():
    g = rng(33)
    X, Y = g.standard_normal((10, 4)), g.standard_normal((10, 5))
    with pytest.raises(ValueError, match="n >= 4|at least 4"):
        S.cka(X[:3], Y[:3], debiased=True)
    with pytest.raises(ValueError, match="same number of stimuli"):
        S.cka(X, Y[:9])
    with pytest.raises(ValueError, match="same number of stimuli"):
        S.procrustes_distance(X, Y[:9])
    with pytest.raises(ValueError, match="same number of stimuli"):
        S.compare_rdms(S.rdm(X), S.rdm(Y[:9]))
    with pytest.raises(ValueError, match="^X .*constant.*; CKA is undefined"):
        S.cka(np.ones((10, 4)), Y)
    with pytest.raises(ValueError, match="^X .*constant.*; the shape distance is undefined"):
        S.procrustes_distance(np.ones((10, 4)), Y)
    with pytest.raises(ValueError, match="constant.*; the shape distance is undefined"):
        S.shape_distance_matrix([X, np.ones((10, 4))])
    with pytest.raises(ValueError, match="constant"):
        S.rdm(np.vstack([X[:9], np.full((1, 4), 2.0)]), "correlation")
    with_const_column = np.hstack([X, np.ones((10, 1))])
    assert S.cka(with_const_column, Y) == pytest.approx(S.cka(X, Y), abs=TOL)
    assert np.all(np.isfinite(S.rdm(with_const_column, "correlation")))
    bad = X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="^X contains NaN"):
        S.rdm(bad)
    with pytest.raises(ValueError, match="^Y contains NaN"):
        S.cka(X, bad)
    with pytest.raises(ValueError, match="^B contains NaN"):
        S.compare_rdms(S.rdm(X), np.full((10, 10), np.nan))
    with pytest.raises(ValueError, match="metric"):
        S.rdm(X, "manhattan")
    with pytest.raises(ValueError, match="partitions"):
        S.rdm(X[None], "crossnobis")
    with pytest.raises(ValueError, match="all equal"):
        S.compare_rdms(np.ones((5, 5)) - np.eye(5), S.rdm(X[:5]))
    with pytest.raises(ValueError, match="same number of minibatches"):
        S.minibatch_cka([X, X], [Y])


# ----------------------------------------------------------------------------- portability


def test_array_api_strict_matches_numpy():
    xs = pytest.importorskip("array_api_strict")
    X, Y = related_pair(16, 5, 7, seed=34)
    R = rng(35).standard_normal((3, 16, 5))
    sx, sy, sr = xs.asarray(X), xs.asarray(Y), xs.asarray(R)
    for metric in ["correlation", "cosine", "euclidean", "sqeuclidean"]:
        out = S.rdm(sx, metric)
        assert type(out).__module__.startswith("array_api_strict")
        np.testing.assert_allclose(np.asarray(out), S.rdm(X, metric), atol=1e-12, rtol=0)
    np.testing.assert_allclose(np.asarray(S.rdm(sr, "crossnobis")), S.rdm(R, "crossnobis"), atol=1e-12, rtol=0)
    A, B = S.rdm(X), S.rdm(Y, "euclidean")
    for method in S.COMPARE_METHODS:
        assert S.compare_rdms(xs.asarray(A), xs.asarray(B), method) == pytest.approx(
            S.compare_rdms(A, B, method), abs=1e-12
        )
    for kernel, debiased in itertools.product(["linear", "rbf"], [False, True]):
        assert S.cka(sx, sy, kernel=kernel, debiased=debiased) == pytest.approx(
            S.cka(X, Y, kernel=kernel, debiased=debiased), abs=1e-12
        )
    np.testing.assert_allclose(
        np.asarray(S.cka_matrix([sx, sy, sx[:, :2]])), S.cka_matrix([X, Y, X[:, :2]]), atol=1e-12
    )
    np.testing.assert_allclose(np.asarray(S.cka_chance([sx, sy[:, :1]])), S.cka_chance([X, Y[:, :1]]), atol=1e-12)
    wide = rng(37).standard_normal((3, 10, 40))  # Gram-space branch
    strict_wide = S.cka_matrix(xs.asarray(wide), debiased=True)
    np.testing.assert_allclose(np.asarray(strict_wide), S.cka_matrix(wide, debiased=True), atol=1e-12)
    for alpha in (1.0, 0.3):
        assert S.procrustes_distance(sx, sy, alpha) == pytest.approx(S.procrustes_distance(X, Y, alpha), abs=1e-12)
    assert S.stochastic_shape_distance(sr, sr[:, :, ::-1]) == pytest.approx(
        S.stochastic_shape_distance(R, R[:, :, ::-1]), abs=1e-9
    )


@pytest.mark.gpu
def test_gpu_matches_numpy():
    cp = pytest.importorskip("cupy")
    X, Y = related_pair(40, 6, 9, seed=36)
    gx, gy = cp.asarray(X), cp.asarray(Y)
    D = S.rdm(gx)
    assert isinstance(D, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(D), S.rdm(X), atol=1e-10)
    A, B = S.rdm(X), S.rdm(Y, "euclidean")
    for method in S.COMPARE_METHODS:
        assert S.compare_rdms(cp.asarray(A), cp.asarray(B), method) == pytest.approx(
            S.compare_rdms(A, B, method), abs=1e-10
        )
    assert S.cka(gx, gy, debiased=True) == pytest.approx(S.cka(X, Y, debiased=True), abs=1e-10)
    assert S.procrustes_distance(gx, gy) == pytest.approx(S.procrustes_distance(X, Y), abs=1e-10)


@pytest.mark.parametrize("debiased", [False, True])
def test_blocked_gram_space_cka_matrix(monkeypatch, debiased):
    """Blocks of one to three Gram rows give the pairwise CKA of the literal formula."""
    g = rng(55)
    reps = [g.standard_normal((11, 30)) for _ in range(3)]
    loop = np.array([[ref_cka(a, b, "linear", debiased) for b in reps] for a in reps])
    for entries in (1, 50, 99):  # 1, 1 and 3 rows per block of 3 representations x 11 stimuli
        monkeypatch.setattr(S, "_GRAM_BLOCK_ENTRIES", entries)
        np.testing.assert_allclose(S.cka_matrix(reps, debiased=debiased), loop, atol=TOL, rtol=0)


def test_large_stacks_on_threads_match_the_definitions():
    """RDMs and comparisons big enough for ``each_on_cores`` to use threads."""
    X = rng(56).standard_normal((3, 400, 20))  # 400^2 entries per RDM, above PARALLEL_MIN_ENTRIES
    D = S.rdm(X)
    for i in range(3):
        np.testing.assert_allclose(D[i], S.rdm(X[i]), atol=1e-12, rtol=0)
        np.testing.assert_allclose(D[i], 1.0 - np.corrcoef(X[i]), atol=1e-12, rtol=0)
    for method in ("spearman", "rho_a", "pearson"):
        M = S.compare_rdms(D, D[::-1].copy(), method)
        expected = [[ref_compare(D[i], D[2 - j], method) for j in range(3)] for i in range(3)]
        np.testing.assert_allclose(M, expected, atol=TOL, rtol=0)


def test_cka_chance_is_the_mean_cka_over_every_reordering_of_the_stimuli():
    X, Y = rng(40).standard_normal((6, 3)), rng(41).standard_normal((6, 9))  # Y: more units than stimuli
    Y[:, 0] += 5 * X[:, 0]
    mean = np.mean([S.cka(X, Y[list(order)]) for order in itertools.permutations(range(6))])
    chance = S.cka_chance([X, Y])
    assert chance[0, 1] == pytest.approx(mean, rel=1e-12) and chance[1, 0] == chance[0, 1]
    assert chance[1, 1] == pytest.approx(np.mean([S.cka(Y, Y[list(o)]) for o in itertools.permutations(range(6))]),
                                         rel=1e-12)


def test_cka_chance_is_high_for_few_stimuli_of_many_units():
    wide = [rng(42 + i).standard_normal((32, 1000)) for i in range(2)]
    assert S.cka_chance(wide)[0, 1] == pytest.approx(S.cka(*wide), abs=0.01)  # independent: CKA is chance
    assert S.cka_chance(wide)[0, 1] > 0.95
    tall = [rng(44 + i).standard_normal((1000, 5)) for i in range(2)]
    assert S.cka_chance(tall)[0, 1] < 0.01
