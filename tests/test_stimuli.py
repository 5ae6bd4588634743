"""Stimulus sets: sentence files read verbatim; the content hash is equal for equal stimuli only."""

import hashlib

import numpy as np
import pytest

from pipeline.errors import StimulusError
from pipeline.stimuli import StimulusSet, load_stimuli

ROWS = [  # quotes are part of the text, balanced or not
    ("q-1", "speech", '"Run!" he shouted.'),
    ("q-2", "speech", '"An unbalanced quote starts here.'),
    ("q-3", "speech", "This row follows it."),
    ("q-4", "quote", 'She said "no" twice, "no".'),
]


def sentences(path, rows, encoding="utf-8"):
    path.write_text("".join(f"{i}\t{c}\t{t}\n" for i, c, t in [("id", "category", "text"), *rows]),
                    encoding=encoding)
    return load_stimuli("s", {"kind": "sentences", "path": str(path)})


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])  # utf-8-sig writes a byte-order mark
def test_sentence_file_is_read_verbatim(tmp_path, encoding):
    stim = sentences(tmp_path / "s.tsv", ROWS, encoding)
    assert list(stim.ids) == [i for i, _, _ in ROWS]
    assert stim.texts == [t for _, _, t in ROWS]
    assert list(stim.coords["label"][1]) == [c for _, c, _ in ROWS]


def test_repeated_sentence_ids_are_named(tmp_path):
    rows = [*ROWS, ("q-3", "x", "again"), ("q-1", "x", "once more"), ("q-1", "x", "and again")]
    with pytest.raises(StimulusError, match=r"ids must be unique; repeated: q-1, q-3$"):
        sentences(tmp_path / "s.tsv", rows)


def test_rows_with_blank_text_are_named_with_the_file(tmp_path):
    path = tmp_path / "s.tsv"
    with pytest.raises(StimulusError) as info:
        sentences(path, [*ROWS[:2], ("b-1", "x", "  "), ROWS[2], ("b-2", "x", "")])
    assert str(info.value) == (f"stimulus set 's': {path} has rows with blank text (id 'b-1' on line 4, id 'b-2' on "
                               "line 6); fill in their text or delete them")
    with pytest.raises(StimulusError, match=r"^stimulus set 's': .*s\.tsv has rows with blank text \(id 'b-0' on "
                                            r"line 2, .* id 'b-4' on line 6, \.\.\. \(\+2 more\)\); fill in"):
        sentences(path, [(f"b-{i}", "x", "") for i in range(7)])


def numeric_set(inputs: np.ndarray) -> StimulusSet:
    ids = np.array([f"s{i}" for i in range(len(inputs))])
    return StimulusSet("n", "digits", ids, inputs=inputs,
                       coords={"label": (("stimulus",), np.array(["a", "b", "a"])),
                               "input": (("stimulus", "pixel"), inputs)})


def test_numeric_sets_hash_equal_only_when_their_values_are_equal():
    inputs = np.random.default_rng(0).random((3, 5)).astype(np.float32)
    assert numeric_set(inputs).content_hash == numeric_set(inputs.copy()).content_hash
    nudged = inputs.copy()
    nudged[1, 2] = np.nextafter(nudged[1, 2], np.float32(2))  # the smallest change a float32 can make
    assert numeric_set(nudged).content_hash != numeric_set(inputs).content_hash
    reshaped = numeric_set(inputs)
    reshaped.coords["input"] = (("stimulus", "pixel", "channel"), inputs.reshape(3, 5, 1))  # same bytes, other shape
    assert reshaped.content_hash != numeric_set(inputs).content_hash


def test_text_set_hash_follows_its_definition():
    ids, labels, texts = np.array(["s0", "s1"]), np.array(["x", "y"]), ["one sentence", "another one"]
    stim = StimulusSet("t", "sentences", ids, texts=texts,
                       coords={"label": (("stimulus",), labels), "text": (("stimulus",), np.array(texts))})
    h = hashlib.sha256()
    h.update(b"s0\ns1")
    for name, values in (("label", labels), ("text", np.array(texts))):  # names in sorted order
        h.update(name.encode())
        h.update(values.astype(str).tobytes())
    for text in texts:
        h.update(text.encode())
    assert stim.content_hash == h.hexdigest()


def test_rows_with_blank_category_or_id_are_named(tmp_path):
    path = tmp_path / "s.tsv"
    with pytest.raises(StimulusError) as info:
        sentences(path, [*ROWS[:2], ("b-1", " ", "a text")])
    assert str(info.value) == (f"stimulus set 's': {path} has rows with blank category (id 'b-1' on line 4); "
                               "fill in their category or delete them")
    with pytest.raises(StimulusError, match=r"has rows with blank id \(line 3\); fill in their id or delete them$"):
        sentences(path, [ROWS[0], ("", "x", "a text")])
