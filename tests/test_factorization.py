"""Tests for pipeline.analyses.factorization (CP, Tucker, rank diagnostics)."""

import dataclasses
import warnings

import array_api_strict as xps
import numpy as np
import pytest
import tensorly as tl
from tensorly.decomposition import parafac
from tensorly.decomposition import tucker as tl_tucker

from pipeline.analyses.factorization import (
    CPResult,
    _ridge,
    _update_als,
    _update_als_rows,
    congruence,
    cp,
    cross_validated_error,
    degenerate_pairs,
    factor_similarity,
    observed_size,
    rank_ensemble,
    reconstruct,
    replicate_similarity,
    suggest_rank,
    tucker,
)
from pipeline.backend import gpu_available

SHAPE = (24, 18, 14)


def planted(rank, nonneg=False, noise=0.01, seed=0, shape=SHAPE):
    """A noisy rank-``rank`` tensor and its true model (unit-norm factor columns, weights)."""
    rng = np.random.default_rng(seed)
    draw = rng.random if nonneg else rng.standard_normal
    factors = [draw((d, rank)) for d in shape]
    norms = [np.linalg.norm(f, axis=0) for f in factors]
    truth = CPResult(np.prod(norms, axis=0), [f / n for f, n in zip(factors, norms, strict=True)], 0.0, 0, [])
    X = np.einsum("ir,jr,kr->ijk", *factors)
    X += noise * np.linalg.norm(X) / np.sqrt(X.size) * rng.standard_normal(shape)
    return X, truth


def direct_error(X, result, mask=None):
    """||X - X_hat||_F / ||X||_F over observed entries, straight from the definition."""
    w = np.ones(X.shape) if mask is None else mask.astype(float)
    X = np.where(w > 0, X, 0.0)
    return np.linalg.norm((X - reconstruct(result)) * w) / np.linalg.norm(X)


# ----------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("missing", [0.0, 0.2])
def test_recovers_planted_factors(nonneg, missing):
    X, truth = planted(3, nonneg=nonneg)
    mask = None
    if missing:
        mask = np.random.default_rng(1).random(X.shape) >= missing
        X = np.where(mask, X, np.nan)
    fit = cp(X, 3, nonneg=nonneg, mask=mask, tol=1e-10)
    score, perm = factor_similarity(fit, truth)
    assert score >= 0.95
    assert sorted(perm) == [0, 1, 2]
    assert fit.rel_error == pytest.approx(direct_error(X, fit, mask), rel=1e-6)
    assert fit.rel_error < 0.02  # noise is 1% of the signal
    assert fit.n_iter == len(fit.loss_history)
    for f in fit.factors:
        np.testing.assert_allclose(np.linalg.norm(f, axis=0), 1.0, rtol=1e-10)
        if nonneg:
            assert f.min() >= 0


def test_hals_loss_never_increases():
    X, _ = planted(4, nonneg=True, noise=0.2)
    fit = cp(X, 4, nonneg=True, init="random", random_state=0, n_iter_max=60, tol=0)
    assert fit.n_iter == 60
    assert np.all(np.diff(fit.loss_history) <= 1e-12)


def test_full_mask_equals_unmasked():
    X, _ = planted(3, noise=0.3)
    a = cp(X, 3, n_iter_max=25, tol=0)
    b = cp(X, 3, mask=np.ones(X.shape, dtype=bool), n_iter_max=25, tol=0)
    assert b.rel_error == pytest.approx(a.rel_error, rel=1e-9)
    np.testing.assert_allclose(reconstruct(b), reconstruct(a), atol=1e-9 * np.abs(X).max())


def test_masked_entries_are_ignored():
    X, _ = planted(3)
    mask = np.random.default_rng(2).random(X.shape) >= 0.3
    garbage = np.where(mask, X, 1e6)
    a = cp(np.where(mask, X, np.nan), 3, mask=mask, n_iter_max=20, tol=0)
    b = cp(garbage, 3, mask=mask.astype(np.float64), n_iter_max=20, tol=0)
    np.testing.assert_allclose(reconstruct(a), reconstruct(b), atol=1e-8 * np.abs(X).max())


# ----------------------------------------------------------------------------- TensorLy agreement


def test_als_matches_tensorly_parafac():
    rng = np.random.default_rng(3)
    X, _ = planted(3, noise=0.3, seed=4)
    init = [rng.standard_normal((d, 3)) for d in X.shape]
    ours = cp(X, 3, init=init, n_iter_max=30, tol=0)
    ref = parafac(X, 3, init=tl.cp_tensor.CPTensor((np.ones(3), [f.copy() for f in init])), n_iter_max=30, tol=0)
    ref_full = tl.cp_to_tensor(ref)
    ref_err = np.linalg.norm(X - ref_full) / np.linalg.norm(X)
    assert ours.n_iter == 30
    assert direct_error(X, ours) == pytest.approx(ref_err, rel=1e-6)
    assert ours.rel_error == pytest.approx(ref_err, rel=1e-6)
    np.testing.assert_allclose(reconstruct(ours), ref_full, atol=1e-6 * np.abs(ref_full).max())


def test_tucker_matches_tensorly():
    X, _ = planted(4, noise=0.3, seed=5)
    ours = tucker(X, (3, 3, 2), n_iter_max=100, tol=1e-12)
    core, factors = tl_tucker(X, (3, 3, 2), n_iter_max=100, tol=1e-12)
    ref_err = np.linalg.norm(X - tl.tucker_to_tensor((core, factors))) / np.linalg.norm(X)
    assert ours.rel_error == pytest.approx(ref_err, rel=1e-6)
    full = tl.tucker_to_tensor((ours.core, ours.factors))
    assert np.linalg.norm(X - full) / np.linalg.norm(X) == pytest.approx(ours.rel_error, rel=1e-6)
    for f in ours.factors:
        np.testing.assert_allclose(f.T @ f, np.eye(f.shape[1]), atol=1e-10)


@pytest.mark.parametrize("seed", [6, 7, 8, 9])
def test_nonneg_tucker_fits_planted_tensor(seed):
    rng = np.random.default_rng(seed)
    core = rng.random((2, 3, 2))
    factors = [rng.random((d, r)) for d, r in zip(SHAPE, core.shape, strict=True)]
    X = tl.tucker_to_tensor((core, factors))
    fit = tucker(X, core.shape, nonneg=True, n_iter_max=400, tol=0, random_state=0)
    assert fit.core.min() >= 0 and min(f.min() for f in fit.factors) >= 0
    assert np.all(np.diff(fit.loss_history) <= 1e-9)
    # exact non-negative Tucker data: TensorLy's non_negative_tucker_hals (400 iterations) reaches
    # 6e-4 to 4e-3 on these four, this fit 3e-4 to 5e-3
    assert fit.rel_error < 0.01
    full = tl.tucker_to_tensor((fit.core, fit.factors))
    assert np.linalg.norm(X - full) / np.linalg.norm(X) == pytest.approx(fit.rel_error, rel=1e-6)


# ----------------------------------------------------------------------------- array-API portability


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_strict_namespace_matches_numpy(nonneg, masked):
    X, _ = planted(3, nonneg=nonneg, noise=0.1)
    mask = np.random.default_rng(7).random(X.shape) >= 0.2 if masked else None
    a = cp(X, 3, nonneg=nonneg, mask=mask, n_iter_max=15, tol=0)
    b = cp(xps.asarray(X), 3, nonneg=nonneg, mask=None if mask is None else xps.asarray(mask), n_iter_max=15, tol=0)
    assert isinstance(b.weights, type(xps.asarray(1.0)))
    assert all(isinstance(f, type(b.weights)) for f in b.factors)
    assert b.rel_error == pytest.approx(a.rel_error, rel=1e-10)
    np.testing.assert_allclose(np.asarray(b.weights), a.weights, rtol=1e-8)
    for fa, fb in zip(a.factors, b.factors, strict=True):
        np.testing.assert_allclose(np.asarray(fb), fa, atol=1e-8)


@pytest.mark.parametrize("nonneg", [False, True])
def test_strict_namespace_tucker_and_float32(nonneg):
    X, _ = planted(2, nonneg=nonneg, noise=0.1)
    X = np.abs(X) if nonneg else X
    a = tucker(X, 2, nonneg=nonneg, n_iter_max=10)
    b = tucker(xps.asarray(X), 2, nonneg=nonneg, n_iter_max=10)
    assert b.rel_error == pytest.approx(a.rel_error, rel=1e-10)
    c = cp(xps.asarray(X.astype(np.float32)), 2, n_iter_max=10, tol=0)
    assert c.weights.dtype == xps.float32 and c.factors[0].dtype == xps.float32
    assert c.rel_error == pytest.approx(cp(X, 2, n_iter_max=10, tol=0).rel_error, rel=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
def test_cupy_matches_numpy():
    import cupy

    X, _ = planted(3, nonneg=True, noise=0.1)
    mask = np.random.default_rng(8).random(X.shape) >= 0.2
    for kwargs in ({}, {"nonneg": True}, {"mask": mask}, {"mask": mask, "nonneg": True}):
        a = cp(X, 3, n_iter_max=20, tol=0, **kwargs)
        gpu_kwargs = {k: cupy.asarray(v) if k == "mask" else v for k, v in kwargs.items()}
        b = cp(cupy.asarray(X), 3, n_iter_max=20, tol=0, **gpu_kwargs)
        assert isinstance(b.weights, cupy.ndarray)
        assert b.rel_error == pytest.approx(a.rel_error, rel=1e-8)
        np.testing.assert_allclose(reconstruct(b).get(), reconstruct(a), atol=1e-8 * np.abs(X).max())


# ----------------------------------------------------------------------------- similarity and rank diagnostics


def test_factor_similarity_definition():
    rng = np.random.default_rng(9)
    a = CPResult(np.array([3.0, 1.0]), [np.linalg.qr(rng.standard_normal((d, 2)))[0] for d in (5, 4, 3)], 0, 0, [])
    # b: a's components swapped, with an even number of sign flips per component
    b = CPResult(
        a.weights[::-1].copy(),
        [f[:, ::-1] * s for f, s in zip(a.factors, ([1, -1], [1, -1], [1, 1]), strict=True)],
        0,
        0,
        [],
    )
    score, perm = factor_similarity(a, b)
    assert score == pytest.approx(1.0)
    assert list(perm) == [1, 0]
    # change one weight and one factor column: score from the definition by hand
    c_factors = [f.copy() for f in a.factors]
    c_factors[0][:, 0] = (a.factors[0][:, 0] + a.factors[0][:, 1]) / np.sqrt(2)
    c = CPResult(np.array([2.0, 1.0]), c_factors, 0, 0, [])
    expected_0 = (1 - 1 / 3) * abs(a.factors[0][:, 0] @ c_factors[0][:, 0])
    expected_1 = abs(a.factors[0][:, 1] @ c_factors[0][:, 1])
    score, perm = factor_similarity(a, c)
    assert list(perm) == [0, 1]
    assert score == pytest.approx((expected_0 + expected_1) / 2)
    # one factor of a component negated negates the component: a different model, which scores 0 against it
    d = CPResult(a.weights, [a.factors[0] * [1, -1], *a.factors[1:]], 0, 0, [])
    assert factor_similarity(a, d)[0] == pytest.approx(0.5)
    assert factor_similarity(a, CPResult(a.weights * [1, -1], d.factors, 0, 0, []))[0] == pytest.approx(1.0)


def test_congruence_is_the_product_of_the_cosines():
    rng = np.random.default_rng(21)
    model = CPResult(np.ones(3), [rng.standard_normal((d, 3)) for d in (6, 5, 4)], 0, 0, [])
    cos = [(f / np.linalg.norm(f, axis=0)).T @ (f / np.linalg.norm(f, axis=0)) for f in model.factors]
    np.testing.assert_allclose(congruence(model), cos[0] * cos[1] * cos[2], atol=1e-12)
    assert degenerate_pairs(model) == []


def test_rank_two_fit_of_a_border_rank_two_tensor_is_a_degenerate_pair():
    """a o b o c' + a o b' o c + a' o b o c has rank 3 but is a limit of rank-2 tensors (de Silva and Lim 2008):
    a rank-2 fit has two components that cancel, with congruence near -1 (Kruskal, Harshman and Lundy 1989)."""
    rng = np.random.default_rng(0)
    (a, a2), (b, b2), (c, c2) = [np.linalg.qr(rng.standard_normal((d, 2)))[0].T for d in (6, 5, 4)]
    X = (np.einsum("i,j,k->ijk", a, b, c2) + np.einsum("i,j,k->ijk", a, b2, c)
         + np.einsum("i,j,k->ijk", a2, b, c))
    fit = cp(X, 2, n_iter_max=3000, tol=0, init="random", random_state=0)
    pairs = degenerate_pairs(fit)
    assert len(pairs) == 1 and pairs[0][:2] == (0, 1) and pairs[0][2] < -0.9
    assert np.all(fit.weights > 3 * np.linalg.norm(X))  # the cancelling weights outgrow the data


def test_factor_similarity_of_unrelated_models_is_low():
    rng = np.random.default_rng(10)
    make = lambda: CPResult(np.ones(3), [np.linalg.qr(rng.standard_normal((40, 3)))[0] for _ in range(3)], 0, 0, [])  # noqa: E731
    score, _ = factor_similarity(make(), make())
    assert 0 <= score < 0.1


def test_rank_ensemble_and_cross_validation_find_planted_rank():
    X, truth = planted(3, noise=0.05, seed=11, shape=(16, 14, 12))
    ranks = [1, 2, 3, 4, 5]
    ens = rank_ensemble(X, ranks, replicates=4, random_state=0, tol=1e-7)
    assert ens.ranks == ranks
    for r in ranks:
        assert len(ens.results[r]) == 4
        assert np.all(np.diff(ens.objectives[r]) >= 0)
        assert ens.similarities[r][0] == pytest.approx(1.0)
        assert np.all((ens.similarities[r] >= 0) & (ens.similarities[r] <= 1 + 1e-12))
        for fit, obj in zip(ens.results[r], ens.objectives[r], strict=True):
            assert obj == pytest.approx(direct_error(X, fit), rel=1e-6)
    assert ens.objectives[3][0] < 0.06 < ens.objectives[2][0]
    assert factor_similarity(ens.results[3][0], truth)[0] >= 0.95
    assert np.mean(ens.similarities[3]) > 0.95
    cv = cross_validated_error(X, ranks, replicates=3, holdout=0.1, random_state=1)
    assert cv.holdout.shape == X.shape and 0.05 < cv.holdout.mean() < 0.15
    assert min(cv.test_error[3]) < 0.5 * min(cv.test_error[2])
    assert suggest_rank(cv=cv) == 3
    assert suggest_rank(ensemble=ens) >= 3


def test_unobserved_slice_gets_zero_rows_in_masked_hals():
    X, _ = planted(2, nonneg=True, noise=0.0, shape=(10, 9, 8))
    mask = np.ones(X.shape, dtype=bool)
    mask[3] = False
    with pytest.warns(UserWarning, match="observed entries only"):
        fit = cp(X, 2, mask=mask, nonneg=True, init="random", random_state=0, tol=1e-12, n_iter_max=2000)
        als = cp(X, 2, mask=mask, tol=1e-12, n_iter_max=2000)
    np.testing.assert_allclose(fit.factors[0][3], 0.0, atol=1e-12)
    np.testing.assert_allclose(als.factors[0][3], 0.0, atol=1e-12)
    # rows that no entry informs would otherwise keep their random start and inflate the weights
    assert factor_similarity(fit, als)[0] >= 0.999
    with pytest.warns(UserWarning, match="observed entries only"):
        ens = rank_ensemble(X, [2], replicates=4, nonneg=True, mask=mask, random_state=0, tol=1e-12,
                            n_iter_max=2000)
    assert np.all(ens.similarities[2] >= 0.99)


def test_float32_error_is_computed_from_the_residual():
    X, _ = planted(3, noise=1e-4, shape=(40, 30, 20))
    fit = cp(X.astype(np.float32), 3)
    exact = direct_error(X, fit)  # float64 residual against the float64 data
    assert 5e-5 < exact < 2e-4
    assert fit.rel_error == pytest.approx(exact, rel=0.05)
    tk = tucker(X.astype(np.float32), 3)
    full = tl.tucker_to_tensor((np.asarray(tk.core, np.float64), [np.asarray(f, np.float64) for f in tk.factors]))
    assert tk.rel_error == pytest.approx(np.linalg.norm(X - full) / np.linalg.norm(X), rel=0.05)


@pytest.mark.filterwarnings("ignore:rank .* exceeds the smallest dimension")
@pytest.mark.parametrize(("dtype", "floor"), [(np.float64, 1e-8), (np.float32, 1e-3)])
def test_als_with_surplus_rank_on_exact_data_stays_exact(dtype, floor):
    # an exact rank-3 tensor fitted with more components than it holds: the normal equations are
    # (nearly) singular, and ALS must still not lose the exact fit
    X, _ = planted(3, noise=0.0, seed=1, shape=(30, 20, 10))
    for rank in (8, 12, 20, 40):
        fit = cp(X.astype(dtype), rank, init="random", random_state=0)
        assert np.all(np.isfinite(fit.weights)), rank
        assert fit.rel_error < floor, rank
        assert direct_error(X, fit) < floor, rank


def test_float32_hals_does_not_stop_where_its_tracked_error_runs_out_of_digits():
    # below about 3e-4 the float32 normal-equation error repeats itself from sweep to sweep;
    # convergence must be judged on the residual there, not stop at the first repeat (it stopped
    # at 9.5e-4 on this tensor)
    X, truth = planted(3, nonneg=True, noise=0.0, shape=(30, 20, 10))
    fit = cp(X.astype(np.float32), 3, nonneg=True)
    assert direct_error(X, fit) < 1e-4
    assert fit.rel_error == pytest.approx(direct_error(X, fit), abs=1e-6)  # float32 residual: a few eps
    assert factor_similarity(fit, truth)[0] > 0.999


@pytest.mark.parametrize("nonneg", [False, True])
def test_float32_tucker_does_not_stop_early_on_an_exact_tensor(nonneg):
    rng = np.random.default_rng(0)
    core, factors = rng.random((3, 3, 3)), [rng.random((d, 3)) for d in (30, 20, 10)]
    X = np.einsum("abc,ia,jb,kc->ijk", core, *factors)
    single, double = tucker(X.astype(np.float32), 3, nonneg=nonneg, n_iter_max=300), tucker(X, 3, nonneg=nonneg,
                                                                                              n_iter_max=300)
    assert single.rel_error < max(1.1 * double.rel_error, 1e-5)
    if not nonneg:  # an exact fit stops once the error no longer changes beyond rounding
        assert single.n_iter < 10 and double.n_iter < 10


def test_factor_similarity_with_a_zero_component():
    X, _ = planted(2)
    fit = cp(X, 2, n_iter_max=20)
    dead = CPResult(np.array([fit.weights[0], 0.0]), [np.stack([f[:, 0], np.zeros(f.shape[0])], axis=1)
                                                      for f in fit.factors], 0.0, 0, [])
    assert factor_similarity(dead, dead)[0] == pytest.approx(1.0)


def test_masked_replicates_are_compared_by_their_size_on_the_observed_entries():
    X, _ = planted(2, noise=0.05, shape=(12, 10, 8))
    mask = np.ones(X.shape, bool)
    mask[:, 7:, :4] = False  # the last positions of half the stimuli are padding
    ens = rank_ensemble(X, [3], replicates=4, mask=mask, random_state=0, n_iter_max=40)
    sized = [dataclasses.replace(f, weights=observed_size(f, mask)) for f in ens.results[3]]
    want = [factor_similarity(sized[0], f)[0] for f in sized]
    np.testing.assert_allclose(ens.similarities[3], want, rtol=1e-12)
    assert not np.allclose(observed_size(ens.results[3][0], mask), ens.results[3][0].weights)  # sizes differ here


def test_replicate_similarity_leaves_out_failed_starts():
    assert replicate_similarity([1.0, 0.98, 0.4], [0.100, 0.103, 0.46]) == pytest.approx(0.98)
    assert replicate_similarity([1.0, 0.98, 0.4], [0.100, 0.2, 0.46]) is None  # no other start fits as well
    assert replicate_similarity([1.0, 0.3], [1e-9, 1e-7]) == pytest.approx(0.3)  # both exact: neither failed
    assert replicate_similarity([1.0], [0.1]) is None


def test_suggest_rank_by_stability_is_not_swayed_by_one_failed_start():
    # rank 3 planted; at rank 3 one of five random starts stops in a worse optimum (a stationary point: relative
    # error 0.31 against 0.10), whose factors match the best fit's with similarity 0.42
    rng = np.random.default_rng(0)
    X = np.einsum("ir,jr,kr->ijk", *[rng.standard_normal((n, 3)) for n in (12, 15, 18)])
    X += 0.1 * np.linalg.norm(X) / np.sqrt(X.size) * rng.standard_normal(X.shape)
    ens = rank_ensemble(X, range(1, 7), replicates=5, random_state=0)
    assert ens.objectives[3][-1] > 3 * ens.objectives[3][0] and ens.similarities[3][-1] < 0.5
    assert np.mean(ens.similarities[3][1:]) < 0.9  # the mean over all starts would call rank 3 unstable
    assert replicate_similarity(ens.similarities[3], ens.objectives[3]) > 0.99
    assert suggest_rank(ensemble=ens) == 3


def test_masked_als_takes_the_least_norm_update_for_a_slice_with_too_few_observed_entries():
    # mode-1 slice 0 has one observed entry: the normal equations of its row are singular at rank 3
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 6, 5))
    mask = np.ones(X.shape, bool)
    mask[:, 0, :] = False
    mask[0, 0, 0] = True
    for seed in range(12):
        fit = cp(X, 3, mask=mask, init="random", random_state=seed, n_iter_max=50)
        assert np.isfinite(fit.rel_error) and fit.rel_error == pytest.approx(direct_error(X, fit, mask), rel=1e-6)


def test_masked_row_update_is_least_norm_for_rows_observed_at_fewer_entries_than_the_rank():
    # rows of 2 observed entries at rank 3: singular Grams, loaded by the ridge, on which a solve returns finite values
    # far from the least-norm solution (its null-space part is rounding noise divided by the ridge)
    rng = np.random.default_rng(3)
    K = rng.standard_normal((200, 2, 3))  # (row, observed entry, rank): the Khatri-Rao rows each row sees
    G = np.einsum("ipr,ips->irs", K, K)[:, None]  # (I, B=1, R, R)
    M = np.einsum("ipr,ip->ir", K, rng.standard_normal((200, 2)))[:, None]  # (I, B, R)
    want = np.einsum("irs,is->ir", np.linalg.pinv(G[:, 0]), M[:, 0])
    few = np.ones(200, bool)
    np.testing.assert_allclose(_update_als_rows(M, G, few, np)[:, 0], want, rtol=1e-6, atol=1e-8)
    full = rng.standard_normal((200, 5, 3))  # rows of 5 observed entries: regular, solved as before
    G2 = np.einsum("ipr,ips->irs", full, full)[:, None]
    regular = np.linalg.solve(G2[:, 0], M[:, 0, :, None])[..., 0]
    np.testing.assert_allclose(_update_als_rows(M, G2, ~few, np)[:, 0], regular, rtol=1e-8)


def test_suggest_rank_by_stability_ignores_the_best_replicate_itself():
    X, _ = planted(2, noise=0.05)
    single = rank_ensemble(X, [1, 2], replicates=1, random_state=0, n_iter_max=20)
    with pytest.raises(ValueError, match="replicates >= 2"):
        suggest_rank(ensemble=single)


# ----------------------------------------------------------------------------- bad input


def test_nan_without_mask():
    X, _ = planted(2)
    X[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="mask"):
        cp(X, 2)


def test_nan_at_observed_entry():
    X, _ = planted(2)
    X[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="mask"):
        cp(X, 2, mask=np.ones(X.shape))


def test_fully_masked():
    X, _ = planted(2)
    with pytest.raises(ValueError, match="mask"):
        cp(X, 2, mask=np.zeros(X.shape, dtype=bool))


def test_mask_shape():
    X, _ = planted(2)
    with pytest.raises(ValueError, match="mask"):
        cp(X, 2, mask=np.ones((2, 2)))


@pytest.mark.parametrize("rank", [0, -1, 1.5, True])
def test_bad_rank(rank):
    X, _ = planted(2)
    with pytest.raises(ValueError, match="rank"):
        cp(X, rank)


def test_rank_above_smallest_dimension_warns():
    X, _ = planted(2, shape=(6, 5, 3))
    with pytest.warns(UserWarning, match="smallest dimension"):
        fit = cp(X, 4, n_iter_max=20)
    assert np.isfinite(fit.rel_error)


@pytest.mark.parametrize("kwargs", [{}, {"nonneg": True}, {"masked": True}, {"masked": True, "nonneg": True}])
def test_all_zero_slice(kwargs):
    X, _ = planted(2, nonneg=True)
    X[3] = 0.0
    X[:, 4, :] = 0.0
    X[:, :, 5] = 0.0
    mask = np.random.default_rng(12).random(X.shape) > 0.2 if kwargs.get("masked") else None
    with pytest.warns(UserWarning, match="all-zero"):
        fit = cp(X, 2, nonneg=kwargs.get("nonneg", False), mask=mask, n_iter_max=50)
    assert np.isfinite(fit.rel_error) and np.all(np.isfinite(fit.weights))
    assert all(np.all(np.isfinite(f)) for f in fit.factors)
    np.testing.assert_allclose(fit.factors[0][3], 0.0, atol=1e-12)
    np.testing.assert_allclose(fit.factors[1][4], 0.0, atol=1e-12)
    np.testing.assert_allclose(fit.factors[2][5], 0.0, atol=1e-12)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_all_zero_slice_names_its_mode(mode):
    X, _ = planted(2)
    np.moveaxis(X, mode, 0)[2] = 0.0
    with pytest.warns(UserWarning, match=f"along mode {mode}") as record:
        cp(X, 2, n_iter_max=5)
    assert sum("all-zero" in str(w.message) for w in record) == 1


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_inf_and_float32_overflow():
    X, _ = planted(2)
    X[1, 1, 1] = -np.inf
    with pytest.raises(ValueError, match="inf"):
        cp(X, 2)
    X32 = planted(2)[0].astype(np.float32)
    X32[0, 0, 0] = 1e30  # finite in float32, its square is not
    with pytest.raises(ValueError, match="float64"):
        cp(X32, 2)
    assert np.isfinite(cp(X32.astype(np.float64), 2, n_iter_max=5).rel_error)


def test_all_zero_tensor():
    with pytest.raises(ValueError, match="zero"):
        cp(np.zeros((4, 3, 2)), 1)


def test_bad_init_and_options():
    X, _ = planted(2)
    with pytest.raises(ValueError, match="init"):
        cp(X, 2, init="nmf")
    with pytest.raises(ValueError, match="init"):
        cp(X, 2, init=[np.ones((3, 2))] * 3)
    with pytest.raises(ValueError, match=r"list of 3 factor matrices .*, got list of length 2$"):
        cp(X, 2, init=[np.ones((24, 2)), np.ones((18, 2))])
    with pytest.raises(ValueError, match="complex"):
        cp(X + 1j, 2)
    with pytest.raises(ValueError, match="mask has NaN"):
        cp(X, 2, mask=np.where(X > 0, 1.0, np.nan))
    with pytest.raises(ValueError, match="n_iter_max"):
        cp(X, 2, n_iter_max=0)
    with pytest.raises(ValueError, match="ranks"):
        tucker(X, (2, 2))
    with pytest.raises(ValueError, match="holdout"):
        cross_validated_error(X, [1], holdout=1.0)
    with pytest.raises(ValueError, match="n_iter_max"):
        cross_validated_error(X, [1], n_iter_max=0)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        rank_ensemble(X, 3.0)


def test_array_likes_are_taken_as_numpy_arrays():
    xarray = pytest.importorskip("xarray")
    X, _ = planted(2)
    reference = cp(X, 2)
    for like in (X.tolist(), xarray.DataArray(X, dims=("unit", "position", "stimulus"))):
        assert cp(like, 2).rel_error == pytest.approx(reference.rel_error, rel=1e-12)
    assert cp(X, 2, mask=np.ones(X.shape).tolist()).rel_error == pytest.approx(reference.rel_error, rel=1e-9)
    assert tucker(X.tolist(), 2).rel_error == pytest.approx(tucker(X, 2).rel_error, rel=1e-12)


def test_tucker_nan_message_does_not_offer_a_mask():
    X, _ = planted(2)
    X[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="impute") as err:
        tucker(X, 2)
    assert "mask" not in str(err.value)


def test_cross_validation_with_only_zeros_held_out():
    dense, _ = planted(1, shape=(6, 5, 4))
    held = cross_validated_error(dense, [1], random_state=0, n_iter_max=2).holdout  # depends on shape and seed
    X = np.where(held, 0.0, dense)  # non-zero only where nothing is held out
    with pytest.raises(ValueError, match="held-out entry"):
        cross_validated_error(X, [1], random_state=0)


def test_float32_squares_that_underflow():
    X, _ = planted(2)
    with pytest.raises(ValueError, match="underflow"):
        cp((X * 1e-24).astype(np.float32), 2)


def test_no_warning_on_clean_input():
    X, _ = planted(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cp(X, 2, n_iter_max=5)


def test_als_update_is_least_norm_where_the_normal_equations_stay_singular():
    # a ridge of half an ulp is lost on the unit diagonal, so this Gram product stays exactly singular
    V = np.zeros((1, 4, 4))
    V[0, :2, :2] = 1.0
    M = np.random.default_rng(0).standard_normal((5, 1, 4))
    A = _update_als(M, V, np)
    assert np.all(np.isfinite(A))
    np.testing.assert_allclose(A[:, 0, :], M[:, 0, :] @ np.linalg.pinv(_ridge(V, np)[0], rtol=4 * np.finfo(float).eps))
