"""Stimulus sets: sentence files read verbatim; the content hash is equal for equal stimuli only."""

import hashlib

import numpy as np
import pytest

from pipeline.errors import StimulusError
from pipeline.stimuli import StimulusSet, load_stimuli, sequence_hint

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


def test_inputs_of_another_shape_hash_differently():
    inputs = np.arange(12, dtype=np.float32)
    flat = StimulusSet("n", "arrays", np.array(["a", "b"]), inputs=inputs.reshape(2, 6))
    images = StimulusSet("n", "arrays", np.array(["a", "b"]), inputs=inputs.reshape(2, 1, 2, 3))
    assert flat.content_hash != images.content_hash


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


def arrays_set(tmp_path, sequence=False, **arrays):
    path = tmp_path / "stim.npz"
    np.savez(path, **arrays)
    return load_stimuli("mine", {"kind": "arrays", "path": str(path), "sequence": sequence})


def test_array_set_keeps_its_inputs_labels_ids_and_split(tmp_path):
    images = np.random.default_rng(0).random((4, 1, 3, 3))
    stim = arrays_set(tmp_path, inputs=images, labels=np.array([3, 1, 3, 2]), ids=np.array(["a", "b", "c", "d"]),
                      split=np.array(["train", "test", "test", "train"]))
    assert stim.kind == "arrays" and not stim.sequence
    assert stim.inputs.dtype == np.float32 and stim.inputs.shape == (4, 1, 3, 3)
    np.testing.assert_array_equal(stim.inputs, images.astype(np.float32))
    assert list(stim.ids) == ["a", "b", "c", "d"]
    assert list(stim.coords["label"][1]) == ["3", "1", "3", "2"]
    assert list(stim.coords["split"][1]) == ["train", "test", "test", "train"]
    dims, values = stim.coords["input"]
    assert dims == ("stimulus", "feature") and values.shape == (4, 9)
    np.testing.assert_array_equal(values[2], images[2].astype(np.float32).ravel())


@pytest.mark.parametrize("mask_dtype", [bool, np.int8])  # a 0/1 mask is read as booleans
def test_integer_sequences_stay_ids_with_their_mask(tmp_path, mask_dtype):
    tokens = np.array([[5, 2, 7, 0], [1, 1, 0, 0], [9, 8, 7, 6]])
    mask = tokens > 0
    mask[0, 3] = False
    stim = arrays_set(tmp_path, sequence=True, inputs=tokens, mask=mask.astype(mask_dtype))
    assert stim.sequence and stim.inputs.dtype == np.int64
    np.testing.assert_array_equal(stim.inputs, tokens)
    assert "input" not in stim.coords
    assert stim.coords["input_id"][0] == ("stimulus", "position", "feature")
    np.testing.assert_array_equal(stim.coords["input_id"][1][:, :, 0], tokens)
    np.testing.assert_array_equal(stim.coords["mask"][1], mask)
    assert list(stim.ids) == ["stimulus-00000", "stimulus-00001", "stimulus-00002"]


def test_array_set_of_python_objects_is_refused_unread(tmp_path):
    path = tmp_path / "stim.npz"
    np.savez(path, inputs=np.zeros((2, 3)), labels=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(StimulusError) as info:
        load_stimuli("mine", {"kind": "arrays", "path": str(path), "sequence": False})
    assert str(info.value) == (f"stimulus set 'mine': {path}: 'labels' holds Python objects, which are not loaded "
                               "(no pickles); save strings and numbers as plain arrays, e.g. np.array(labels, "
                               "dtype=str)")


@pytest.mark.parametrize(("arrays", "sequence", "expected"), [
    ({"input": np.zeros((2, 3))}, False,
     "has unknown arrays input; save it with np.savez(path, inputs=..., labels=..., ids=..., split=..., mask=...)"),
    ({"labels": np.zeros(2)}, False, "has no 'inputs' array; save it with np.savez("),
    ({"inputs": np.array(["a", "b"])}, False, ": 'inputs' must be a non-empty numeric array (stimulus, ...), got "
                                              "dtype <U1 and shape (2,)"),
    ({"inputs": np.zeros((0, 3))}, False, "'inputs' must be a non-empty numeric array"),
    ({"inputs": np.array([[0.0, np.nan], [np.inf, 1.0]])}, False, "'inputs' holds 2 NaN or infinite values"),
    ({"inputs": np.zeros(3)}, True, "a sequence set needs 'inputs' of shape (stimulus, time, ...), got (3,); set "
                                    "stimuli.mine.sequence to false"),
    ({"inputs": np.zeros((3, 2)), "labels": np.arange(2)}, False,
     "'labels' must have one entry per stimulus, shape (3,), got (2,)"),
    ({"inputs": np.zeros((3, 2)), "labels": np.array([0.5, 1.0, 2.0])}, False,
     "'labels' must hold strings or integers, got dtype float64; save labels.astype(int) or labels.astype(str)"),
    ({"inputs": np.array([[1e39, 0.0]])}, False, "'inputs' holds values beyond the range of float32, which the "
                                                 "model reads; rescale them"),
    ({"inputs": np.array([[2**63, 1]], dtype=np.uint64)}, False, "'inputs' holds values beyond the range of int64"),
    ({"inputs": np.zeros((3, 2)), "split": np.array([0, 1, 1])}, False,
     "'split' must hold strings such as 'train' and 'test', got dtype int64"),
    ({"inputs": np.zeros((3, 2)), "split": np.array(["Train", "Test", "Test"])}, False,
     "'split' has no 'test' entry (it holds 'Test', 'Train'); analyses draw from the stimuli marked 'test', so "
     "mark the held-out ones so, or leave the split out"),
    ({"inputs": np.zeros((3, 2)), "mask": np.array([[1, 0], [1, 2], [1, 1]])}, True,
     "'mask' holds values other than 0 and 1; save it as booleans, True on the real steps"),
    ({"inputs": np.zeros((3, 2)), "mask": np.ones((3, 2))}, True,
     "'mask' must be boolean (or integer 0/1) of shape (stimulus, time) = (3, 2), got float64 (3, 2)"),
    ({"inputs": np.zeros((3, 2)), "mask": np.ones((3, 3), np.int8)}, True,
     "'mask' must be boolean (or integer 0/1) of shape (stimulus, time) = (3, 2), got int8 (3, 3)"),
    ({"inputs": np.zeros((3, 2)), "labels": np.array(["x", " ", ""])}, False,
     "'labels' is blank for stimuli 1, 2; fill them in"),
    ({"inputs": np.zeros((3, 2)), "ids": np.array(["a", "b", "a"])}, False, "ids must be unique; repeated: a"),
    ({"inputs": np.zeros((3, 2)), "mask": np.ones((3, 2), bool)}, False,
     "'mask' marks the real time steps of sequences; set the set's sequence to true or leave the mask out"),
    ({"inputs": np.zeros((3, 2)), "mask": np.ones((3, 3), bool)}, True,
     "'mask' must be boolean (or integer 0/1) of shape (stimulus, time) = (3, 2), got bool (3, 3)"),
    ({"inputs": np.zeros((3, 2)), "mask": np.array([[1, 0], [0, 0], [1, 1]], bool)}, True,
     "'mask' has no real step for stimuli 1; every stimulus needs at least one"),
])
def test_bad_array_sets_are_named_with_the_fix(tmp_path, arrays, sequence, expected):
    with pytest.raises(StimulusError) as info:
        arrays_set(tmp_path, sequence=sequence, **arrays)
    message = str(info.value)
    assert message.startswith(f"stimulus set 'mine': {tmp_path / 'stim.npz'}") and "\n" not in message
    assert expected in message


def npy_file(path):
    with open(path, "wb") as f:  # np.save given a path would add .npy to its name
        np.save(f, np.zeros(3))


def truncated_npz(path):
    np.savez(path, inputs=np.zeros((50, 50)))
    path.write_bytes(path.read_bytes()[:-200])


def corrupted_npz(path):
    np.savez(path, inputs=np.zeros((50, 50)))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of the array's data: its CRC no longer matches
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("write", "expected"), [
    (None, "does not exist; fix its 'path'"),
    (npy_file, "is not a .npz file; write it with np.savez(path, inputs=..., ...)"),
    (lambda path: path.write_bytes(b"not a zip file"), "is not a .npz file"),
    (truncated_npz, "is not a .npz file"),
    (corrupted_npz, "is not a readable .npz file (Bad CRC-32"),
])
def test_missing_or_unreadable_array_file(tmp_path, write, expected):
    path = tmp_path / "stim.npz"
    if write is not None:
        write(path)
    with pytest.raises(StimulusError) as info:
        load_stimuli("mine", {"kind": "arrays", "path": str(path), "sequence": False})
    assert str(info.value).startswith(f"stimulus set 'mine': {path} ") and expected in str(info.value)


@pytest.mark.parametrize(("inputs", "entry", "warned"), [
    (np.arange(12).reshape(4, 3), {}, True),                      # token ids in a row, sequence left out
    (np.arange(12).reshape(4, 3), {"sequence": False}, False),    # said so: silent
    (np.arange(12).reshape(4, 3), {"sequence": True}, False),
    (np.arange(4).reshape(4, 1), {}, False),                      # one id per stimulus
    (np.zeros((4, 3)), {}, False),                                # float features
    (np.arange(24).reshape(4, 3, 2), {}, False),                  # not (stimulus, time)
])
def test_integer_rows_without_a_sequence_flag_are_warned_about(tmp_path, inputs, entry, warned):
    path = tmp_path / "stim.npz"
    np.savez(path, inputs=inputs)
    spec = {"kind": "arrays", "path": str(path), **entry}
    hint = sequence_hint(load_stimuli("mine", spec), spec)
    if warned:
        assert hint == ("stimulus set 'mine' holds integer inputs of shape (4, 3), read as one position per stimulus; "
                        "if the second axis is time (tokens), set stimuli.mine.sequence to true, else set it to false "
                        "to silence this warning")
    else:
        assert hint is None
