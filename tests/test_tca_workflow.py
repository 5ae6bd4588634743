"""Tensor component analysis and connectome jobs on small synthetic activation stores with planted structure."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr

from pipeline import jobs, layout
from pipeline.analyses.connectome import affinity
from pipeline.analyses.factorization import CPResult, factor_similarity, observed_size
from pipeline.analyses.tca import fit_tca
from pipeline.jobs import factorization as factorization_jobs
from pipeline.store import StoreWriter

TCA_SPEC = {"sites": ["rnn", "hidden.*"], "max_rank": 4, "replicates": 2, "n_iter_max": 150, "tol": 1e-6,
            "nonneg": "auto", "normalize": False, "max_units": 64, "max_stimuli": 200, "min_position_coverage": 0.0,
            "holdout": 0.1, "seed": 0, "device": "cpu", "dtype": "float64"}
CONNECTOME_SPEC = {"sites": ["hidden.*"], "affinity": "abs_correlation", "rank": 3, "replicates": 3,
                   "n_iter_max": 300, "tol": 1e-7, "max_units": 64, "max_stimuli": 500, "seed": 0,
                   "device": "cpu", "dtype": "float64"}


def write_store(path, sites, coords, step=0, kind="flipflop"):
    """An activation store: sites name -> (stimulus, position, unit); coords as StoreWriter takes them."""
    n, n_pos = next(iter(sites.values())).shape[:2]
    coords = {"stimulus": (("stimulus",), np.array([f"s{i:03d}" for i in range(n)])), **coords}
    coords.setdefault("mask", (("stimulus", "position"), np.ones((n, n_pos), bool)))
    attrs = {"fingerprint": str(path), "model_id": "toy", "run": "base-seed0", "checkpoint_name": f"step-{step:04d}",
             "step": step, "stimulus_set": "toy-set", "stimulus_kind": kind}
    writer = StoreWriter(path, {s: v.shape[1:] for s, v in sites.items()}, coords, attrs, dtype="float64")
    writer.write(sites)
    return writer.finish()


def planted(factors):
    """CPResult of explicit factor matrices (I_n, R): unit-norm columns, weights the products of the norms."""
    norms = [np.linalg.norm(f, axis=0) for f in factors]
    return CPResult(weights=np.prod(norms, axis=0), factors=[f / n for f, n in zip(factors, norms)],
                    rel_error=0.0, n_iter=0, loss_history=[])


def stored_model(group, modes):
    return CPResult(weights=group["weight"].values, factors=[group[f"{m}_factor"].values for m in modes],
                    rel_error=0.0, n_iter=0, loss_history=[])


def open_group(path, site):
    return xr.open_zarr(path, group=site, consolidated=False, zarr_format=3).load()


def test_tca_recovers_planted_unit_time_trial_factors(tmp_path):
    rng = np.random.default_rng(1)
    n_units, n_steps, n_trials = 20, 30, 48
    t = np.arange(n_steps)
    units = rng.random((n_units, 3)) + 0.1
    times = np.stack([np.exp(-0.5 * ((t - c) / 4.0) ** 2) for c in (5, 15, 25)], axis=1)
    labels = np.array(["+-+", "--+", "++-"])[np.arange(n_trials) % 3]
    trials = np.where(labels[:, None] == np.array(["+-+", "--+", "++-"])[None, :], 1.0, 0.2)
    trials = trials * (1 + 0.1 * rng.random((n_trials, 3)))
    T = np.einsum("ur,tr,kr->utk", units, times, trials)
    X = np.transpose(T, (2, 1, 0)) + 0.002 * rng.random((n_trials, n_steps, n_units))  # (trial, time, unit)
    store = write_store(tmp_path / "a.zarr", {"rnn": X}, {"label": (("stimulus",), labels)})
    out = tmp_path / "tca" / "a.zarr"
    factorization_jobs.run_tca(TCA_SPEC, store, out)

    summary = json.loads(layout.summary_path(out).read_text())
    assert {"analysis", "params", "provenance"} <= set(summary)
    assert summary["analysis"] == "tca" and summary["provenance"]["checkpoint_name"] == "step-0000"
    assert summary["mode_labels"] == ["unit", "time step", "trial"]
    site = summary["sites"]["rnn"]
    assert site["status"] == "ok" and site["nonneg"] is True and site["rank"] == 3
    assert site["ranks"] == [1, 2, 3, 4] and len(site["cv_test_error"]) == 4
    assert len(site["sweeps"]) == 4 and all(len(r) == 2 and all(1 <= n <= 150 for n in r) for r in site["sweeps"])
    group = open_group(out, "rnn")
    assert list(group["label"].values) == list(labels)
    assert group["objective"].shape == (4, 2) and group["similarity"].shape == (4, 2)
    score, _ = factor_similarity(stored_model(group, ("unit", "position", "stimulus")), planted([units, times, trials]))
    assert score >= 0.9


def test_tca_ignores_padding_and_keeps_high_variance_units(tmp_path):
    rng = np.random.default_rng(2)
    n_stim, n_pos, loud, quiet = 40, 16, 16, 8
    lengths = rng.integers(5, 13, n_stim)  # the last 4 positions are padding everywhere
    mask = np.arange(n_pos)[None, :] < lengths[:, None]
    A, B, C = rng.random((loud, 2)) + 0.2, rng.random((n_pos, 2)) + 0.2, rng.random((n_stim, 2)) + 0.2
    X = np.zeros((n_stim, n_pos, loud + quiet))
    X[:, :, :loud] = np.einsum("ur,pr,sr->spu", A, B, C) + 0.005 * rng.random((n_stim, n_pos, loud))
    X[:, :, loud:] = 0.01 * rng.random((n_stim, n_pos, quiet))
    results = []
    for name, junk in (("a", 50.0), ("b", -300.0)):
        padded = np.where(mask[:, :, None], X, junk * rng.standard_normal(X.shape))
        store = write_store(tmp_path / f"{name}.zarr", {"hidden.0": padded},
                            {"mask": (("stimulus", "position"), mask)}, kind="sentences")
        out = tmp_path / "tca" / f"{name}.zarr"
        factorization_jobs.run_tca({**TCA_SPEC, "normalize": True, "max_units": loud}, store, out)
        results.append(open_group(out, "hidden.0"))
    first, second = results
    assert list(first["unit"].values) == list(range(loud))  # the quiet units are dropped
    assert first.sizes["position"] == 12  # all-padding positions are dropped
    for var in ("unit_factor", "position_factor", "stimulus_factor", "weight", "objective", "cv_test_error"):
        np.testing.assert_allclose(first[var].values, second[var].values, rtol=1e-6, atol=1e-9)
    scale = np.max(np.where(mask[:, :, None], X, 0)[:, :12, :loud], axis=(0, 1))  # per-unit max over real entries
    truth = planted([A / scale[:, None], B[:12], C])
    score, _ = factor_similarity(stored_model(first, ("unit", "position", "stimulus")), truth)
    assert first.attrs["rank"] == 2 and score >= 0.9


def test_tca_leaves_out_positions_few_stimuli_reach(tmp_path):
    rng = np.random.default_rng(4)
    n_stim, n_pos = 40, 14
    lengths = np.where(np.arange(n_stim) < 2, 14, 8)  # two long stimuli reach positions 8-13
    mask = np.arange(n_pos)[None, :] < lengths[:, None]
    X = np.where(mask[:, :, None], rng.random((n_stim, n_pos, 6)), 0.0)
    store = write_store(tmp_path / "s.zarr", {"hidden.0": X}, {"mask": (("stimulus", "position"), mask)},
                        kind="sentences")
    out = tmp_path / "tca" / "s.zarr"
    factorization_jobs.run_tca({**TCA_SPEC, "max_rank": 2, "min_position_coverage": 0.1}, store, out)
    group = open_group(out, "hidden.0")
    assert list(group["position"].values) == list(range(8))
    sizes = observed_size(stored_model(group, ("unit", "position", "stimulus")),
                          np.broadcast_to(mask[:, :8].T[None], (6, 8, n_stim)))
    np.testing.assert_allclose(group["size"].values, sizes, rtol=1e-9)
    assert np.all(np.diff(group["size"].values) <= 0)
    summary = json.loads(layout.summary_path(out).read_text())
    assert summary["rare_positions_left_out"] == 6 and summary["sites"]["hidden.0"]["degenerate_pairs"] == []


def test_tca_across_checkpoints_recovers_training_time_courses(tmp_path):
    rng = np.random.default_rng(3)
    n_units, n_stim, steps = 16, 60, [0, 5, 10, 20, 40, 80, 160, 320]
    split = np.where(np.arange(n_stim) % 3 == 0, "test", "train")
    test = split == "test"
    units = rng.standard_normal((n_units, 2))
    stimuli = rng.standard_normal((n_stim, 2))
    course = np.stack([1 / (1 + np.exp(-(np.log1p(steps) - c) * 3)) for c in (2.0, 4.5)], axis=1) + 0.05
    stores = []
    for k in rng.permutation(len(steps)):  # handed over out of order; the job sorts by step
        X = np.einsum("ur,sr,r->su", units, stimuli, course[k])[:, None, :]
        X = X + 0.001 * rng.standard_normal(X.shape)
        X[~test] = rng.standard_normal(X[~test].shape)  # only the test split is analysed
        stores.append(write_store(tmp_path / f"c{k}.zarr", {"hidden.0.act": X},
                                  {"split": (("stimulus",), split)}, step=steps[k], kind="digits"))
    out = tmp_path / "across.zarr"
    factorization_jobs.run_tca_across(TCA_SPEC, stores, out)
    summary = json.loads(layout.summary_path(out).read_text())
    assert summary["analysis"] == "tca-across" and summary["steps"] == steps and summary["run"] == "base-seed0"
    assert summary["sites"]["hidden.0.act"]["nonneg"] is False and summary["sites"]["hidden.0.act"]["rank"] == 2
    group = open_group(out, "hidden.0.act")
    assert list(group["step"].values) == steps
    assert list(group["stimulus"].values) == [f"s{i:03d}" for i in np.flatnonzero(test)]
    score, _ = factor_similarity(stored_model(group, ("unit", "stimulus", "checkpoint")),
                                 planted([units, stimuli[test], course]))
    assert score >= 0.9


def test_connectome_finds_planted_communities_and_when_they_are_active(tmp_path):
    rng = np.random.default_rng(4)
    n_stim, n_pos, size = 100, 3, 8
    active = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1]], bool)  # (group, checkpoint)
    groups = np.repeat(np.arange(3), size)
    stores = []
    for k in range(active.shape[1]):
        latent = rng.standard_normal((n_stim, n_pos, 3))
        X = 0.3 * rng.standard_normal((n_stim, n_pos, groups.size))
        X += latent[:, :, groups] * active[groups, k]
        stores.append(write_store(tmp_path / f"c{k}.zarr", {"hidden.1": X}, {}, step=10 * k, kind="digits"))
    out = tmp_path / "connectome.zarr"
    factorization_jobs.run_connectome(CONNECTOME_SPEC, stores, out)
    summary = json.loads(layout.summary_path(out).read_text())
    assert summary["analysis"] == "connectome" and sorted(summary["sites"]["hidden.1"]["community_sizes"]) == [8, 8, 8]
    group = open_group(out, "hidden.1")
    assert group["affinity"].shape == (24, 24, 6)
    found = group["community"].values
    for g in range(3):
        members = found[groups == g]
        assert (members == members[0]).all() and members[0] not in found[groups != g]
        course = group["checkpoint_factor"].values[:, members[0]]
        assert course[active[g]].min() > 3 * course[~active[g]].max()
    # sizes: the part of each community off the masked diagonal; for 8 units of equal loading, sqrt(1 - 1/8) of it
    size, weight = group["size"].values, group["weight"].values
    assert np.all(np.diff(size) <= 0) and np.all((0.9 < size / weight) & (size / weight < 0.97))


def test_connectome_fails_a_site_with_nan_activations(tmp_path):
    rng = np.random.default_rng(5)
    stores = []
    for k in range(3):
        X = rng.standard_normal((40, 2, 6))
        if k == 1:
            X[:] = np.nan  # a diverged checkpoint
        stores.append(write_store(tmp_path / f"c{k}.zarr", {"hidden.1": X}, {}, step=k, kind="digits"))
    out = tmp_path / "connectome.zarr"
    factorization_jobs.run_connectome(CONNECTOME_SPEC, stores, out)
    site = json.loads(layout.summary_path(out).read_text())["sites"]["hidden.1"]
    assert site["status"] == "failed" and "step-0001 has NaN or inf" in site["error"]


def test_a_warning_of_a_site_s_fit_is_logged_naming_the_site(tmp_path, caplog):
    rng = np.random.default_rng(7)
    stores = [write_store(tmp_path / f"c{k}.zarr", {"hidden.1": rng.standard_normal((40, 1, 3))}, {}, step=k,
                          kind="digits") for k in range(4)]
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        factorization_jobs.run_connectome({**CONNECTOME_SPEC, "rank": 4}, stores, tmp_path / "connectome.zarr")
    assert escaped == []  # none as a bare Python warning
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert logged == ["connectome of site hidden.1: rank 4 exceeds the smallest dimension of X (3, 3, 4); the model "
                      "is not unique"]


def test_warnings_raised_before_a_failure_are_logged_too(caplog):
    with pytest.raises(ValueError, match="then this"), jobs.warnings_named("tca of site a"):
        warnings.warn("first", stacklevel=1)
        raise ValueError("then this")
    assert [r.getMessage() for r in caplog.records] == ["tca of site a: first"]


@pytest.mark.parametrize("job", ["run_tca_across", "run_connectome"])
def test_a_run_of_one_checkpoint_has_no_course_over_training_to_fit(tmp_path, job):
    X = np.random.default_rng(6).standard_normal((40, 1, 6))
    store = write_store(tmp_path / "c0.zarr", {"hidden.1": X}, {}, step=0, kind="digits")
    out = tmp_path / "across.zarr"
    getattr(factorization_jobs, job)(TCA_SPEC if job == "run_tca_across" else CONNECTOME_SPEC, [store], out)
    summary = json.loads(layout.summary_path(out).read_text())
    assert summary["sites"] == {} and summary["steps"] == [0]


def test_affinity_is_absolute_pearson_correlation():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((50, 6)) @ rng.standard_normal((6, 6))
    X[:, 2] = 4.0  # a constant unit has no correlation: its row and column are 0
    expected = np.abs(np.corrcoef(np.delete(X, 2, axis=1).T))
    got = affinity(X)
    np.testing.assert_allclose(np.delete(np.delete(got, 2, 0), 2, 1), expected, atol=1e-12)
    assert not got[2].any() and not got[:, 2].any()
    np.testing.assert_allclose(affinity(X, "squared_correlation"), got**2, atol=1e-12)


@pytest.mark.parametrize(("kind", "source", "models", "plan"), [
    ("sentences", "huggingface", None, "checkpoint"),
    ("flipflop", "train", None, "checkpoint"),
    ("digits", "train", None, "across"),
    ("digits", "huggingface", None, None),
    ("flipflop", "train", ["other"], None),
    ({"kind": "arrays", "sequence": True}, "checkpoints", None, "checkpoint"),
    ({"kind": "arrays", "sequence": False}, "checkpoints", None, "across"),
])
def test_tca_plan_picks_the_tensor_layout(kind, source, models, plan):
    stimuli = kind if isinstance(kind, dict) else {"kind": kind}
    config = {"stimuli": {"s": stimuli}, "models": {"m": {"source": source}},
              "analyses": {"tca": {} if models is None else {"models": models}, "connectome": {}}}
    assert jobs.tca_plan(config, "m", "s") == plan
    assert jobs.connectome_enabled(config, "m") == (source != "huggingface")


def test_model_report_shows_factors_and_communities_or_no_results(tmp_path):
    from pipeline.report.build import write_checkpoint_report, write_model_report

    rng = np.random.default_rng(6)
    labels = np.array(["+-+", "---"])[np.arange(12) % 2]
    tca_results = []
    for step in (0, 10):
        store = write_store(tmp_path / f"seq{step}.zarr", {"rnn": rng.random((12, 8, 6))},
                            {"label": (("stimulus",), labels)}, step=step)
        tca_results.append(tmp_path / "tca" / f"seq{step}.zarr")
        small = {**TCA_SPEC, "max_rank": 2, "replicates": 1, "n_iter_max": 20}
        factorization_jobs.run_tca(small, store, tca_results[-1])
    stores = [write_store(tmp_path / f"ff{k}.zarr", {"hidden.0": rng.standard_normal((30, 1, 6))},
                          {"label": (("stimulus",), np.arange(30) % 3)}, step=k, kind="digits") for k in range(3)]
    across = tmp_path / "runs" / "a" / "toy-set.across.zarr"
    factorization_jobs.run_tca_across({**TCA_SPEC, "max_rank": 2, "replicates": 1, "n_iter_max": 20}, stores, across)
    connectome = tmp_path / "runs" / "c" / "toy-set.across.zarr"
    factorization_jobs.run_connectome({**CONNECTOME_SPEC, "rank": 2, "replicates": 1}, stores, connectome)

    def spec(inputs):
        return {"model_name": "toy", "model": {"source": "train", "sites": ["rnn"]}, "analyses": {},
                "output_dir": str(tmp_path), "inputs": [str(p) for p in inputs]}

    def report(inputs, name):
        write_model_report(spec(inputs), tmp_path / name / "toy" / "index.html")
        return tmp_path / name / "toy"

    full = report(tca_results + [layout.summary_path(across), layout.summary_path(connectome)], "full")
    page = (full / "index.html").read_text()
    for section in ("tca-across", "connectome"):
        body = page.split(f'<section id="{section}">')[1].split("</section>")[0]
        assert "data:image/png;base64," in body and "No results" not in body
    assert "could not be built" not in page
    write_checkpoint_report(spec(tca_results[1:]), full / "base-seed0" / "toy-set" / "step-0010.html")
    checkpoint_page = (full / "base-seed0" / "toy-set" / "step-0010.html").read_text()
    body = checkpoint_page.split('<section id="tca">')[1].split("</section>")[0]
    assert "data:image/png;base64," in body and "time step" in body

    empty = report([], "empty")
    page = (empty / "index.html").read_text()
    for section in ("tca-across", "connectome"):
        assert "No results for this section: it needs a series of two or more checkpoints" in page.split(
            f'<section id="{section}">')[1].split("</section>")[0]


def test_canonical_sorts_components_and_fixes_signs_without_changing_the_model():
    from pipeline.analyses.factorization import reconstruct
    from pipeline.analyses.tca import canonical

    rng = np.random.default_rng(7)
    model = planted([rng.standard_normal((5, 3)), rng.standard_normal((6, 3)), rng.standard_normal((4, 3))])
    fixed = canonical(model)
    np.testing.assert_allclose(reconstruct(fixed), reconstruct(model), atol=1e-12)
    assert np.all(np.diff(fixed.weights) <= 0)
    assert (fixed.factors[0].sum(axis=0) >= 0).all() and (fixed.factors[2].sum(axis=0) >= 0).all()


def test_components_are_ordered_by_their_size_on_the_fitted_entries():
    from pipeline.analyses.factorization import reconstruct
    from pipeline.analyses.tca import canonical

    rng = np.random.default_rng(8)
    factors = [rng.random((5, 3)), rng.random((6, 3)), rng.random((4, 3))]
    factors[1][:, 0] = 0.0
    factors[1][5, 0] = 1.0  # component 1 lives at the last position, mostly in units 0-3...
    factors[0][:, 0] = [1.0, 1.0, 1.0, 1.0, 1e-3]
    model = planted(factors)
    model.weights[0] = 50.0 * model.weights.max()  # ... with the largest weight
    mask = np.ones((5, 6, 4), bool)
    mask[:4, 5, :] = False  # ... and the last position is padding for units 0-3
    one = CPResult(weights=model.weights[:1], factors=[f[:, :1] for f in model.factors], rel_error=0.0, n_iter=0,
                   loss_history=[])
    sizes = observed_size(model, mask)
    for r in range(3):
        component = CPResult(weights=model.weights[r:r + 1], factors=[f[:, r:r + 1] for f in model.factors],
                             rel_error=0.0, n_iter=0, loss_history=[])
        assert sizes[r] == pytest.approx(np.linalg.norm(reconstruct(component)[mask]), rel=1e-12)
    np.testing.assert_allclose(observed_size(model), model.weights, rtol=1e-12)  # unit-norm columns
    assert np.argmax(canonical(model).weights) == 0
    fixed = canonical(model, mask=mask)
    np.testing.assert_allclose(reconstruct(fixed), reconstruct(model), atol=1e-9)
    np.testing.assert_allclose(fixed.weights[-1], one.weights[0])  # the big weight, least of the data, comes last
    assert np.all(np.diff(observed_size(fixed, mask)) <= 0)


def test_helpers_run_in_a_strict_array_namespace():
    xps = pytest.importorskip("array_api_strict")
    from pipeline.analyses.tca import scale_units, unit_variance

    rng = np.random.default_rng(8)
    X, mask = rng.standard_normal((10, 4, 5)), rng.random((10, 4)) > 0.3
    got = unit_variance(xps.asarray(X), xps.asarray(mask))
    assert isinstance(got, type(xps.asarray(0.0)))
    np.testing.assert_allclose(np.asarray(got), X[mask].var(axis=0), atol=1e-12)
    T = rng.standard_normal((5, 4, 3))
    scaled, _ = scale_units(xps.asarray(T))
    np.testing.assert_allclose(np.asarray(scaled), T / np.abs(T).max(axis=(1, 2))[:, None, None], atol=1e-12)
    Y = rng.standard_normal((30, 6))
    np.testing.assert_allclose(np.asarray(affinity(xps.asarray(Y))), np.abs(np.corrcoef(Y.T)), atol=1e-12)
    model = planted([rng.random((5, 3)), rng.random((6, 3)), rng.random((4, 3))])
    strict = CPResult(weights=xps.asarray(model.weights), factors=[xps.asarray(f) for f in model.factors],
                      rel_error=0.0, n_iter=0, loss_history=[])
    observed = rng.random((5, 6, 4)) > 0.3
    np.testing.assert_allclose(np.asarray(observed_size(strict, xps.asarray(observed))),
                               observed_size(model, observed), rtol=1e-12)


def test_interrupted_extraction_is_reported_once_on_the_model_page(tmp_path):
    from pipeline.report.build import write_model_report

    partial = tmp_path / "activations" / "toy" / "base-seed0" / "step-0010" / "toy-set.zarr.partial"
    partial.mkdir(parents=True)
    spec = {"model_name": "toy", "model": {"source": "train", "sites": ["rnn"]}, "analyses": {},
            "output_dir": str(tmp_path), "inputs": []}
    out = tmp_path / "reports" / "toy" / "index.html"
    write_model_report(spec, out)
    assert out.read_text().count(f"incomplete activation store {partial}") == 1
    assert json.loads(layout.model_summary(tmp_path / "reports", "toy").read_text())["n_errors"] == 1


def test_report_cautions_at_the_largest_rank_fitted_and_for_unreproducible_components():
    from pipeline.report.factorization import rank_cautions

    params = {"max_rank": 3, "replicates": 5, "n_iter_max": 60, "tol": 1e-4}
    assert rank_cautions({"ranks": [1, 2, 3], "rank": 2, "similarity": [1.0, 0.97, 0.6]}, params) == []
    top, unstable = rank_cautions({"ranks": [1, 2, 3], "rank": 3, "similarity": [1.0, 0.97, 0.6],
                                   "sweeps": [[5] * 5, [20] * 5, [60, 60, 31, 60, 12]]}, params)
    assert "largest rank tried (3)" in top and "raise analyses.tca.max_rank" in top
    assert ("mean similarity 0.60 (below 0.9): these components may not be unique, or the fits stopped before "
            "converging (3 of 5 starts ran all 60 sweeps; the others stopped once the error changed between sweeps by "
            "less than 0.0001 of itself); raise analyses.tca.n_iter_max and lower tol") in unstable
    for sweeps, text in (([60] * 5, "(all 5 starts ran all 60 sweeps)"),
                         ([9, 30, 12, 7, 40], "(every start stopped before its 60 sweeps, once the error changed")):
        _, unstable = rank_cautions({"ranks": [1, 2, 3], "rank": 3, "similarity": [1.0, 0.97, 0.6],
                                     "sweeps": [[5] * 5, [20] * 5, sweeps]}, params)
        assert text in unstable
    _, unstable = rank_cautions({"ranks": [1, 2, 3], "rank": 3, "similarity": [1.0, 0.97, 0.6]}, params)
    assert "converging; raise analyses.tca.n_iter_max" in unstable  # a summary of an earlier version: no sweeps
    top, _ = rank_cautions({"ranks": [1, 2, 3], "rank": 3, "similarity": [1.0, 0.97, 0.6]},
                           {**params, "max_rank": 6})  # 3 checkpoints
    assert "smallest dimension allows no more" in top
    one_start = {**params, "replicates": 1}
    assert rank_cautions({"ranks": [1], "rank": 1, "similarity": [None]}, one_start) == []  # nothing to compare
    (unknown,) = rank_cautions({"ranks": [1, 2, 3], "rank": 2, "similarity": [1.0, None, 0.4]}, params)
    assert unknown.startswith("at this rank none of the other 4 random starts fits within 5% of the best one's error")
    (degenerate,) = rank_cautions({"ranks": [1, 2], "rank": 1, "similarity": [1.0, 1.0],
                                   "degenerate_pairs": [[0, 2, -0.962]]}, params)
    assert degenerate.startswith("components #1 and #3 cancel each other (congruence -0.96): a degenerate pair")


def test_components_lying_mostly_on_masked_entries_are_named():
    from pipeline.report.factorization import masked_caution

    assert masked_caution([57.0, 45.0, 12.0], [57.0, 44.0, 11.9]) is None
    caution = masked_caution([5.2e4, 30.0, 1.6e3], [57.0, 29.0, 12.0])
    assert caution.startswith("components #1 (w 5.2e+04, size 57), #3 (w 1.6e+03, size 12) lie mostly on the masked")
    assert masked_caution([30.0, 1.6e3], [29.0, 12.0]).startswith("component #2 (w 1.6e+03, size 12) lies mostly on")


def test_a_single_rank_needs_no_rank_choice():
    rng = np.random.default_rng(0)
    T = np.einsum("i,j,k->ijk", rng.random(6), rng.random(5), rng.random(4)) + 0.01 * rng.random((6, 5, 4))
    fit = fit_tca(T, 1, replicates=1, holdout=0)
    assert fit.rank == 1 and fit.model.rank == 1 and fit.cv is None
    with pytest.raises(ValueError, match="replicates >= 2"):
        fit_tca(T, 2, replicates=1, holdout=0)


def test_pooled_variance_is_the_variance_of_the_parts_together():
    from pipeline.analyses.tca import pooled_variance

    rng = np.random.default_rng(9)
    parts = [rng.standard_normal((n, 5)) * scale + shift for n, scale, shift in ((7, 1.0, 0.0), (1, 3.0, 50.0),
                                                                                  (30, 0.1, -4.0))]
    np.testing.assert_allclose(pooled_variance(iter(parts)), np.concatenate(parts).var(axis=0), rtol=1e-12)
    with pytest.raises(ValueError, match="no samples"):
        pooled_variance([])
    empty = np.zeros((0, 5))
    np.testing.assert_allclose(pooled_variance([empty, parts[0], empty, parts[1]]),
                               np.concatenate(parts[:2]).var(axis=0), rtol=1e-12)  # empty parts are skipped
    with pytest.raises(ValueError, match="no samples"):
        pooled_variance([empty])


def test_across_checkpoint_jobs_keep_the_units_their_variance_rule_names(tmp_path):
    """TCA across checkpoints keeps the units of largest variance over all checkpoints together (drift counts);
    the connectome those of largest variance within each checkpoint, summed."""
    rng = np.random.default_rng(10)
    n_stim, n_units = 40, 20
    scale = np.ones(n_units)
    scale[:5] = 3.0  # units 0-4: the most variable within every checkpoint
    scale[5:10] = 0.1  # units 5-9: nearly constant within a checkpoint, but their mean drifts by 10 per checkpoint
    drift = np.zeros(n_units)
    drift[5:10] = 10.0
    values = [rng.standard_normal((n_stim, 1, n_units)) * scale + k * drift for k in range(3)]
    stores = [write_store(tmp_path / f"c{k}.zarr", {"hidden.0": X}, {}, step=k, kind="digits")
              for k, X in enumerate(values)]
    tca = tmp_path / "tca.zarr"
    factorization_jobs.run_tca_across({**TCA_SPEC, "max_units": 5, "max_rank": 2, "replicates": 1}, stores, tca)
    connectome = tmp_path / "connectome.zarr"
    factorization_jobs.run_connectome({**CONNECTOME_SPEC, "max_units": 5, "rank": 2, "replicates": 1}, stores,
                                      connectome)
    pooled = np.concatenate([X[:, 0] for X in values]).var(axis=0)
    within = sum(X[:, 0].var(axis=0) for X in values)
    assert list(open_group(tca, "hidden.0")["unit"].values) == sorted(np.argsort(-pooled)[:5]) == [5, 6, 7, 8, 9]
    assert list(open_group(connectome, "hidden.0")["unit"].values) == sorted(np.argsort(-within)[:5]) == [0, 1, 2, 3, 4]
