"""Report figures: user labels are drawn literally."""

from pipeline.report import figures


def test_labels_with_dollar_signs_are_text_not_tex():
    fig, (ax,) = figures.small_multiples(1)
    for label in (r"$\frac$", "$x$ costs $5"):
        ax.plot([0, 1], [0, 1], label=label)
    ax.legend()
    assert figures.to_data_uri(fig).startswith("data:image/png;base64,")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [r"$\frac$", "$x$ costs $5"]
