"""The content hash of a stimulus set: equal for equal stimuli, different as soon as one value differs."""

import hashlib

import numpy as np

from pipeline.stimuli import StimulusSet


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
