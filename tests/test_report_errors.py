"""Every failure a report page shows is listed in its Errors section and counted on the index."""

import dataclasses
import json

import numpy as np
import pytest

from pipeline import layout
from pipeline.jobs import run_stats
from pipeline.jobs.factorization import run_connectome
from pipeline.report import sections
from pipeline.report.build import (
    write_checkpoint_report,
    write_index,
    write_model_report,
    write_run_report,
)
from pipeline.report.context import load_model_context

STATS_SPEC = {"zero_threshold": 1e-6, "massive_ratio": 100, "massive_min": 1.0}
CONNECTOME_SPEC = {"sites": ["*"], "affinity": "abs_correlation", "rank": 2, "replicates": 1, "n_iter_max": 50,
                   "tol": 1e-6, "max_units": 8, "max_stimuli": 50, "seed": 0, "device": "cpu", "dtype": "float64"}


def errors_section(html: str) -> str:
    return html.split('<section id="errors">')[1].split("</section>")[0]


def spec(tmp_path, inputs, **extra) -> dict:
    return {"model_name": "m", "model": {"source": "train", "sites": ["*"]}, "analyses": {},
            "output_dir": str(tmp_path), "inputs": [str(p) for p in inputs], **extra}


def index_of(reports) -> str:
    out = reports / "index.html"
    write_index({"model_summaries": [str(layout.model_summary(reports, "m"))], "comparisons_summary": None}, out)
    return out.read_text()


def test_failed_sites_of_a_run_are_listed_on_the_model_page_and_counted(tmp_path, store_writer):
    rng = np.random.default_rng(0)
    stores = []
    for step in (0, 10):
        sites = {"good": rng.standard_normal((12, 1, 4)), "broken": np.full((12, 1, 4), np.nan)}
        stores.append(store_writer(tmp_path / f"step-{step}.zarr", sites, np.ones((12, 1), bool), run="r",
                                   checkpoint_name=f"step-{step}", step=step, stimulus_set="s"))
    connectome = layout.across_result(str(tmp_path), "connectome", "m", "r", "s")
    run_connectome(CONNECTOME_SPEC, stores, connectome)
    failure = json.loads(layout.summary_path(connectome).read_text())["sites"]["broken"]["error"]
    run_report = layout.run_report(str(tmp_path), "m", "r", "s")
    write_run_report(spec(tmp_path, [layout.summary_path(connectome)], run="r", stimuli="s"), run_report)

    reports = tmp_path / "reports"
    write_model_report(spec(tmp_path, [run_report]), layout.model_page(reports, "m"))
    page = layout.model_page(reports, "m").read_text()
    shown = page.split('<section id="connectome">')[1].split("</section>")[0]
    assert f"broken: {failure}" in shown  # the section shows the failure ...
    assert f"connectome failed for r/s site broken: {failure}" in errors_section(page)  # ... and so do the errors
    assert json.loads(layout.model_summary(reports, "m").read_text())["n_errors"] == 1
    assert failure in errors_section(index_of(reports))


def test_a_checkpoint_section_that_fails_is_counted_for_its_model_and_listed_on_the_index(
        tmp_path, store_writer, monkeypatch):
    store = store_writer(tmp_path / "s.zarr", {"a": np.ones((4, 1, 2))}, np.ones((4, 1), bool), run="r",
                         checkpoint_name="c", step=1, stimulus_set="s")
    result = tmp_path / "stats.zarr"
    run_stats(STATS_SPEC, store, result)

    def broken(_ctx, _page):
        raise RuntimeError("cannot draw")

    monkeypatch.setattr(sections, "SECTIONS", [dataclasses.replace(s, collect=broken) if s.id == "stats" else s
                                               for s in sections.SECTIONS])
    reports = tmp_path / "reports"
    checkpoint = layout.checkpoint_page(layout.model_page(reports, "m").parent, "r", "c", "s")
    write_checkpoint_report(spec(tmp_path, [result]), checkpoint)
    message = "section 'Activation statistics' could not be built for r/c/s: RuntimeError: cannot draw"
    assert message in errors_section(checkpoint.read_text()).replace("&#39;", "'")

    write_model_report(spec(tmp_path, [result]), layout.model_page(reports, "m"))
    assert message in errors_section(layout.model_page(reports, "m").read_text()).replace("&#39;", "'")
    assert json.loads(layout.model_summary(reports, "m").read_text())["n_errors"] == 1
    index = errors_section(index_of(reports))
    assert 'href="m/index.html#errors"' in index and message in index.replace("&#39;", "'")


def test_index_without_errors_says_so(tmp_path, store_writer):
    store = store_writer(tmp_path / "s.zarr", {"a": np.ones((4, 1, 2))}, np.ones((4, 1), bool), run="r",
                         checkpoint_name="c", step=1, stimulus_set="s")
    result = tmp_path / "stats.zarr"
    run_stats(STATS_SPEC, store, result)
    reports = tmp_path / "reports"
    write_model_report(spec(tmp_path, [result]), layout.model_page(reports, "m"))
    assert "No failed or incomplete items." in errors_section(index_of(reports))
    out = reports / "index.html"
    write_index({"model_summaries": [str(layout.model_summary(reports, "m"))], "comparisons_summary": None,
                 "waiting": {"<b>run</b>": "no file in /runs matches '*.pt' yet"}}, out)
    assert ("Model &lt;b&gt;run&lt;/b&gt; is not in this report yet: no file in /runs matches &#39;*.pt&#39; yet."
            in out.read_text())


@pytest.mark.parametrize("record, shown", [
    ({"sites": {"a": {"status": "ok", "rdm_error": "the RDM holds NaN"}}, "tests": {}},
     "similarity has no RDM for r/c/s site a: the RDM holds NaN"),
    ({"sites": {"a": {"status": "ok"}}, "tests": {"a": {"input": {"method": "spearman", "error": "RDM constant"}}}},
     "similarity against the input RDM failed for r/c/s site a: RDM constant"),
])
def test_similarity_failures_shown_beside_the_results_are_errors(tmp_path, record, shown):
    result = tmp_path / "similarity.zarr"
    provenance = {"run": "r", "checkpoint_name": "c", "stimulus_set": "s", "step": 1}
    layout.summary_path(result).write_text(json.dumps({"analysis": "similarity", "provenance": provenance, **record}))
    assert load_model_context(spec(tmp_path, [result])).errors == [shown]
