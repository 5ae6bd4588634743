"""Report figures: user labels are drawn literally."""

from pipeline.report import figures


def test_labels_with_dollar_signs_are_text_not_tex():
    fig, (ax,) = figures.small_multiples(1)
    for label in (r"$\frac$", "$x$ costs $5"):
        ax.plot([0, 1], [0, 1], label=label)
    ax.legend()
    assert figures.to_data_uri(fig).startswith("data:image/png;base64,")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [r"$\frac$", "$x$ costs $5"]


def test_reference_chart_draws_intervals_that_leave_out_the_estimate_as_they_are():
    from pipeline.report.sections import _reference_chart

    intervals = {"a": (0.3, 0.35, 0.5), "b": (0.2, 0.0, 0.1), "c": (0.4, 0.3, 0.6)}  # above, below, around
    summary = {"params": {"compare_method": "spearman"}, "references": {"label": {"status": "ok"}},
               "tests": {site: {"label": {"method": "kendall_tau_a", "statistic": value, "ci_low": low,
                                          "ci_high": high, "pvalue": 0.01}}
                         for site, (value, low, high) in intervals.items()}}
    (ax,) = _reference_chart(summary).axes
    lines = next(c for c in ax.collections if len(c.get_segments()) == len(intervals))
    drawn = [sorted(y for _, y in segment) for segment in lines.get_segments()]
    assert drawn == [[low, high] for _, low, high in intervals.values()]
    assert [bar.get_height() for bar in ax.patches] == [value for value, _, _ in intervals.values()]


def test_labels_sort_whole_numbers_by_value_then_text():
    assert sorted(["10", "2", "01", "1", "cat", "--5", "²", "-3"], key=figures.label_key) == [
        "-3", "01", "1", "2", "10", "--5", "cat", "²"]
