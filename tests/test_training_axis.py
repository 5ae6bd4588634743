"""Checkpoints without a training step (no step in their metadata, no number in their name) keep
their own place on every across-training view: their order, labelled by name."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pipeline import layout  # noqa: E402
from pipeline.config import validate_config  # noqa: E402
from pipeline.jobs import connectome_spec, run_stats, run_stats_across, similarity_spec, stats_spec, tca_spec  # noqa: E402
from pipeline.jobs.factorization import run_connectome, run_tca_across  # noqa: E402
from pipeline.jobs.similarity import run_similarity, run_similarity_across  # noqa: E402
from pipeline.report import figures  # noqa: E402

NAMES = ["first", "second", "third"]


def test_checkpoint_labels_are_steps_only_where_every_checkpoint_has_one():
    assert figures.checkpoint_labels([0, 10, 20], NAMES) == (["0", "10", "20"], False)
    assert figures.checkpoint_labels([0, 10, 10], NAMES) == (["0", "10", "10"], False)  # two at one step
    assert figures.checkpoint_labels([-1, -1, -1], NAMES) == (NAMES, True)
    assert figures.checkpoint_labels([0, None, 5], NAMES) == (NAMES, True)
    ax = Figure().add_subplot()
    assert figures.training_axis(ax, [-1, -1, -1], NAMES).tolist() == [0.0, 1.0, 2.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    ax = Figure().add_subplot()
    assert figures.training_axis(ax, [0, 10, 20], NAMES).tolist() == [0.0, 10.0, 20.0]
    assert ax.get_xlabel() == "training step"
    # another run on the same axis lacks steps: this one is numbered in training order too
    ax = Figure().add_subplot()
    assert figures.training_axis(ax, [0, 10, 20], NAMES, in_order=True).tolist() == [0, 1, 2]
    assert ax.get_xlabel() == "checkpoint number, in training order"


def test_report_of_a_series_without_steps_labels_checkpoints_by_name(tmp_path, store_writer):
    from pipeline.report.build import write_model_report, write_run_report

    config = validate_config({"stimuli": {"s": {"kind": "digits"}}, "models": {
        "m": {"source": "checkpoints", "architecture": "mlp", "folder": str(tmp_path), "stimuli": ["s"],
              "sites": ["hidden.0"]}}})
    rng = np.random.default_rng(0)
    n, units = 24, 6
    mask = np.ones((n, 1), bool)
    stores, stats, similarity = [], [], []
    for k, name in enumerate(NAMES):
        values = rng.standard_normal((n, 1, units)) * (1 + k)
        stores.append(store_writer(tmp_path / "act" / name / "s.zarr", {"hidden.0": values}, mask, step=-1,
                                   checkpoint_name=name, run="r", stimulus_set="s", stimulus_kind="digits"))
        stats.append(layout.analysis_result(str(tmp_path), "stats", "m", "r", name, "s"))
        run_stats(stats_spec(config), stores[-1], stats[-1])
        similarity.append(layout.analysis_result(str(tmp_path), "similarity", "m", "r", name, "s"))
        run_similarity({**similarity_spec(config), "seed": 0, "n_permutations": 9, "n_bootstrap": 5},
                       stores[-1], similarity[-1])
    across = {analysis: layout.across_checkpoints(str(tmp_path), analysis, "m", "r", "s")
              for analysis in ("stats", "similarity")}
    run_stats_across(stats, across["stats"])
    run_similarity_across({**similarity_spec(config), "seed": 0}, similarity, across["similarity"])
    tca = layout.across_result(str(tmp_path), "tca", "m", "r", "s")
    run_tca_across({**tca_spec(config), "sites": ["hidden.*"], "max_rank": 2, "replicates": 2, "n_iter_max": 20},
                   stores, tca)
    connectome = layout.across_result(str(tmp_path), "connectome", "m", "r", "s")
    run_connectome({**connectome_spec(config), "sites": ["hidden.*"], "rank": 2, "replicates": 1}, stores, connectome)

    spec = {"model_name": "m", "model": config["models"]["m"], "analyses": config["analyses"],
            "output_dir": str(tmp_path)}
    inputs = [*across.values(), layout.summary_path(tca), layout.summary_path(connectome)]
    run_report = layout.run_report(str(tmp_path), "m", "r", "s")
    write_run_report({**spec, "run": "r", "stimuli": "s", "inputs": [str(p) for p in inputs]}, run_report)
    page = layout.model_page(tmp_path / "report", "m")
    write_model_report({**spec, "inputs": [str(p) for p in [*stats, *similarity, run_report]]}, page)
    html = page.read_text()
    assert "could not be built" not in html
    for section in ("stats-across", "similarity-across", "tca-across", "connectome"):
        body = html.split(f'<section id="{section}">')[1].split("</section>")[0]
        assert "data:image/png;base64," in body, section
    table = html.split('<section id="similarity-across">')[1].split("</section>")[0]
    assert all(f"{name}: " in table for name in NAMES) and "-1: " not in table
