"""Stimulus sets: labelled sentences, digit images, flip-flop task trials, a user's own arrays.

Every set is loaded into a StimulusSet with stimulus ids, coordinates (labels, texts, ...)
and either texts (for language models) or a numeric input array.
"""

from __future__ import annotations

import csv
import hashlib
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import tasks
from pipeline.errors import StimulusError

BUILTIN_SENTENCES = Path(__file__).parent / "data" / "sentences.tsv"


@dataclass
class StimulusSet:
    """One stimulus set.

    ``coords`` maps a coordinate name to ``(dims, values)`` along ``stimulus`` (length n);
    ``inputs`` is (n, ...) for array models, (n, time, ...) when ``sequence`` (axis 1 is then the
    store's position axis); ``texts`` holds n strings for language models (a sequence of tokens). A
    ``mask`` coordinate (n, time) marks the real time steps of sequences of unequal length.
    """

    name: str
    kind: str
    ids: np.ndarray
    coords: dict[str, tuple[tuple[str, ...], np.ndarray]] = field(default_factory=dict)
    inputs: np.ndarray | None = None
    texts: list[str] | None = None
    sequence: bool = False  # set by ``load_stimuli`` from the config entry (``is_sequence``)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def content_hash(self) -> str:
        """sha256 over ids, coordinates and inputs: changes whenever the stimuli change.

        Text coordinates enter as their characters, numeric ones as dtype, shape and raw bytes
        (formatting numbers as text would cost a third of a second on the digits).
        """
        h = hashlib.sha256()
        h.update("\n".join(self.ids).encode())
        for name in sorted(self.coords):
            values = np.ascontiguousarray(self.coords[name][1])
            h.update(name.encode())
            if values.dtype.kind in "OUST":
                h.update(values.astype(str).tobytes())
            else:
                h.update(f"{values.dtype.str}{values.shape}".encode())
                h.update(values.tobytes())
        if self.inputs is not None:
            h.update(f"{self.inputs.dtype.str}{self.inputs.shape}".encode())
            h.update(np.ascontiguousarray(self.inputs).tobytes())
        for text in self.texts or []:
            h.update(text.encode())
        return h.hexdigest()


def is_sequence(spec: dict) -> bool:
    """Whether a stimulus set's (validated) config entry gives sequences, whose tokens or time steps are the
    store's position axis."""
    return spec["kind"] in ("sentences", "flipflop") or bool(spec.get("sequence"))


def sequence_hint(stim: StimulusSet, spec: dict) -> str | None:
    """A warning for an ``arrays`` set of integer inputs (stimulus, time) whose config leaves ``sequence`` out:
    token ids in a row are most often a sequence, and recorded as one position their outputs would be flattened
    into time x unit columns. Writing ``sequence: false`` silences it."""
    if (stim.kind != "arrays" or "sequence" in spec or stim.inputs.dtype.kind not in "iu" or stim.inputs.ndim != 2
            or stim.inputs.shape[1] < 2):
        return None
    return (f"stimulus set {stim.name!r} holds integer inputs of shape {stim.inputs.shape}, read as one position "
            f"per stimulus; if the second axis is time (tokens), set stimuli.{stim.name}.sequence to true, else set "
            "it to false to silence this warning")


def load_stimuli(name: str, spec: dict) -> StimulusSet:
    """Load the stimulus set ``name`` described by its (validated) config entry ``spec``."""
    loaders = {"sentences": _sentences, "digits": _digits, "flipflop": _flipflop, "arrays": _arrays}
    stim = loaders[spec["kind"]](name, spec)
    stim.sequence = is_sequence(spec)
    if len(stim) == 0:
        raise StimulusError(f"stimulus set {name!r} is empty; give it at least one stimulus")
    return stim


def _sentences(name: str, spec: dict) -> StimulusSet:
    path = BUILTIN_SENTENCES if spec.get("path", "builtin") == "builtin" else Path(spec["path"])
    if not path.is_file():
        raise StimulusError(f"stimulus set {name!r}: sentence file {path} does not exist; fix stimuli.{name}.path")
    # text is taken verbatim (quotes are characters, not quoting); utf-8-sig drops a byte-order mark
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"id", "category", "text"} - set(reader.fieldnames or [])
        if missing:
            raise StimulusError(
                f"stimulus set {name!r}: {path} lacks column(s) {', '.join(sorted(missing))}; "
                "it must be tab-separated with a header id, category, text"
            )
        rows, blank = [], {"id": [], "category": [], "text": []}
        for r in reader:
            rows.append(r)
            for column, lines in blank.items():
                if not (r[column] or "").strip():
                    lines.append(f"id {r['id']!r} on line {reader.line_num}" if column != "id" else
                                 f"line {reader.line_num}")
    for column, lines in blank.items():
        if lines:
            more = f", ... (+{len(lines) - 5} more)" if len(lines) > 5 else ""
            raise StimulusError(f"stimulus set {name!r}: {path} has rows with blank {column} ({', '.join(lines[:5])}"
                                f"{more}); fill in their {column} or delete them")
    if not rows:
        raise StimulusError(f"stimulus set {name!r} is empty: {path} has no rows below its header")
    if spec.get("limit"):
        kept, seen = [], {}
        for r in rows:
            seen[r["category"]] = seen.get(r["category"], 0) + 1
            if seen[r["category"]] <= spec["limit"]:
                kept.append(r)
        rows = kept
    ids = [r["id"] for r in rows]
    duplicated = sorted(i for i, count in Counter(ids).items() if count > 1)
    if duplicated:
        raise StimulusError(f"stimulus set {name!r}: ids must be unique; repeated: {', '.join(duplicated[:5])}")
    texts = [r["text"].strip() for r in rows]
    return StimulusSet(
        name=name, kind="sentences", ids=np.array(ids, dtype=str), texts=texts,
        coords={"label": (("stimulus",), np.array([r["category"] for r in rows], dtype=str)),
                "text": (("stimulus",), np.array(texts, dtype=str))},
    )


def _digits(name: str, spec: dict) -> StimulusSet:
    data = tasks.digits_data(test_fraction=spec["test_fraction"], seed=spec["seed"])
    keep = np.ones(len(data["y"]), bool) if spec["split"] == "all" else data["split"] == spec["split"]
    index = np.flatnonzero(keep)
    return StimulusSet(
        name=name, kind="digits", ids=np.array([f"digit-{i:04d}" for i in index], dtype=str),
        inputs=np.asarray(data["X"][index], dtype=np.float32),
        coords={"label": (("stimulus",), np.asarray(data["y"][index]).astype(str)),
                "split": (("stimulus",), np.asarray(data["split"][index], dtype=str)),
                "input": (("stimulus", "pixel"), np.asarray(data["X"][index], dtype=np.float32))},
    )


def _flipflop(name: str, spec: dict) -> StimulusSet:
    trials = tasks.flipflop_trials(n_trials=spec["n_trials"], n_steps=spec["n_steps"], n_bits=spec["n_bits"],
                                   pulse_prob=spec["pulse_prob"], seed=spec["seed"])
    n = spec["n_trials"]
    return StimulusSet(
        name=name, kind="flipflop", ids=np.array([f"trial-{i:04d}" for i in range(n)], dtype=str),
        inputs=np.asarray(trials["inputs"], dtype=np.float32),
        coords={"label": (("stimulus",), np.asarray(trials["condition"], dtype=str)),
                "input": (("stimulus", "position", "bit"), np.asarray(trials["inputs"], np.float32)),
                "target": (("stimulus", "position", "bit"), np.asarray(trials["targets"], np.float32))},
    )


ARRAY_KEYS = ("inputs", "labels", "ids", "split", "mask")


def _arrays(name: str, spec: dict) -> StimulusSet:
    """A user's stimuli from a ``.npz`` file (read without pickles): ``inputs`` (n, ...) and optional ``labels``,
    ``ids``, ``split`` (n,) and, for sequences, ``mask`` (n, time)."""
    path = Path(spec["path"])
    where = f"stimulus set {name!r}: {path}"
    arrays = _read_npz(path, where)
    unknown = sorted(set(arrays) - set(ARRAY_KEYS))
    if unknown or "inputs" not in arrays:
        found = f"has unknown arrays {', '.join(unknown)}" if unknown else "has no 'inputs' array"
        raise StimulusError(f"{where} {found}; save it with np.savez(path, inputs=..., labels=..., ids=..., "
                            "split=..., mask=...) (all but inputs optional)")
    inputs = arrays["inputs"]
    if inputs.dtype.kind not in "biuf" or inputs.ndim < 1 or len(inputs) == 0:
        raise StimulusError(f"{where}: 'inputs' must be a non-empty numeric array (stimulus, ...), got dtype "
                            f"{inputs.dtype} and shape {inputs.shape}")
    n, sequence = len(inputs), is_sequence(spec)
    if sequence and inputs.ndim < 2:
        raise StimulusError(f"{where}: a sequence set needs 'inputs' of shape (stimulus, time, ...), got "
                            f"{inputs.shape}; set stimuli.{name}.sequence to false")
    integer = inputs.dtype.kind in "iu"
    if not integer and not np.isfinite(inputs).all():
        raise StimulusError(f"{where}: 'inputs' holds {np.count_nonzero(~np.isfinite(inputs))} NaN or infinite "
                            "values; replace them (a model's activations on them would be meaningless)")
    kept = np.iinfo(np.int64) if integer else np.finfo(np.float32)
    if inputs.size and (inputs.max() > kept.max or inputs.min() < kept.min):
        raise StimulusError(f"{where}: 'inputs' holds values beyond the range of {kept.dtype}, which the model "
                            "reads; rescale them")
    inputs = inputs.astype(np.int64 if integer else np.float32)
    for key in ("labels", "ids", "split"):
        if key in arrays and arrays[key].shape != (n,):
            raise StimulusError(f"{where}: '{key}' must have one entry per stimulus, shape ({n},), got "
                                f"{arrays[key].shape}")
    ids = _array_strings(arrays["ids"], where, "ids") if "ids" in arrays else np.array(
        [f"stimulus-{i:05d}" for i in range(n)], dtype=str)
    duplicated = sorted(i for i, count in Counter(ids.tolist()).items() if count > 1)
    if duplicated:
        raise StimulusError(f"{where}: ids must be unique; repeated: {', '.join(duplicated[:5])}")
    # the inputs as a coordinate, one row per stimulus (per time step of a sequence); integer inputs are ids
    # (tokens, operands), kept as they are and not as a numeric input whose distances mean something
    rows = inputs.reshape(n, inputs.shape[1], -1) if sequence else inputs.reshape(n, -1)
    dims = ("stimulus", "position", "feature") if sequence else ("stimulus", "feature")
    coords = {"input_id" if integer else "input": (dims, rows)}
    if "labels" in arrays:
        coords["label"] = (("stimulus",), _array_strings(arrays["labels"], where, "labels"))
    if "split" in arrays:
        if arrays["split"].dtype.kind not in "US":
            raise StimulusError(f"{where}: 'split' must hold strings such as 'train' and 'test', got dtype "
                                f"{arrays['split'].dtype}")
        coords["split"] = (("stimulus",), _array_strings(arrays["split"], where, "split"))
    if "split" in coords and not (coords["split"][1] == "test").any():
        names = ", ".join(repr(v) for v in sorted(set(coords["split"][1].tolist()))[:5])
        raise StimulusError(f"{where}: 'split' has no 'test' entry (it holds {names}); analyses draw from the stimuli "
                            "marked 'test', so mark the held-out ones so, or leave the split out")
    if "mask" in arrays:
        coords["mask"] = (("stimulus", "position"), _sequence_mask(arrays["mask"], inputs.shape, sequence, where))
    return StimulusSet(name=name, kind="arrays", ids=ids, inputs=inputs, coords=coords)


def _read_npz(path: Path, where: str) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file, refusing pickled objects."""
    if not path.is_file():
        raise StimulusError(f"{where} does not exist; fix its 'path'")
    if not zipfile.is_zipfile(path):  # np.load would read any other file as a .npy or a pickle
        raise StimulusError(f"{where} is not a .npz file; write it with np.savez(path, inputs=..., ...)")
    arrays, key = {}, None
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                arrays[key] = npz[key]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise StimulusError(f"{where}: '{key}' holds Python objects, which are not loaded (no pickles); save "
                                f"strings and numbers as plain arrays, e.g. np.array({key}, dtype=str)") from None
        raise StimulusError(f"{where} is not a readable .npz file ({err}); write it with np.savez") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise StimulusError(f"{where} is not a readable .npz file ({err}); write it with np.savez") from None
    return arrays


def _array_strings(values: np.ndarray, where: str, key: str) -> np.ndarray:
    """Labels, ids or split names as strings; blanks are refused."""
    if values.dtype.kind not in "biuUS":
        raise StimulusError(f"{where}: '{key}' must hold strings or integers, got dtype {values.dtype}; save "
                            f"{key}.astype(int) or {key}.astype(str)")
    strings = np.char.strip(values.astype(str))
    blank = np.flatnonzero(strings == "")
    if blank.size:
        raise StimulusError(f"{where}: '{key}' is blank for stimuli {', '.join(map(str, blank[:5]))}; fill them in")
    return strings


def _sequence_mask(mask: np.ndarray, shape: tuple, sequence: bool, where: str) -> np.ndarray:
    """The (stimulus, time) mask of real steps, checked against the inputs."""
    if not sequence:
        raise StimulusError(f"{where}: 'mask' marks the real time steps of sequences; set the set's sequence to "
                            "true or leave the mask out")
    if mask.dtype.kind not in "biu" or mask.shape != tuple(shape[:2]):
        raise StimulusError(f"{where}: 'mask' must be boolean (or integer 0/1) of shape (stimulus, time) = "
                            f"{tuple(shape[:2])}, got {mask.dtype} {mask.shape}")
    if mask.dtype.kind in "iu":
        if not np.isin(mask, (0, 1)).all():
            raise StimulusError(f"{where}: 'mask' holds values other than 0 and 1; save it as booleans, True on the "
                                "real steps")
        mask = mask.astype(bool)
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise StimulusError(f"{where}: 'mask' has no real step for stimuli {', '.join(map(str, empty[:5]))}; "
                            "every stimulus needs at least one")
    return mask
