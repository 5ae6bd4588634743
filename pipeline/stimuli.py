"""Stimulus sets: labelled sentences, digit images, flip-flop task trials.

Every set is loaded into a StimulusSet with stimulus ids, coordinates (labels, texts, ...)
and either texts (for language models) or a numeric input array.
"""

from __future__ import annotations

import csv
import hashlib
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
    ``inputs`` is (n, features) or (n, time, features) for array models; ``texts`` holds n
    strings for language models.
    """

    name: str
    kind: str
    ids: np.ndarray
    coords: dict[str, tuple[tuple[str, ...], np.ndarray]] = field(default_factory=dict)
    inputs: np.ndarray | None = None
    texts: list[str] | None = None

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
            h.update(np.ascontiguousarray(self.inputs).tobytes())
        for text in self.texts or []:
            h.update(text.encode())
        return h.hexdigest()


def load_stimuli(name: str, spec: dict) -> StimulusSet:
    """Load the stimulus set ``name`` described by its (validated) config entry ``spec``."""
    loaders = {"sentences": _sentences, "digits": _digits, "flipflop": _flipflop}
    stim = loaders[spec["kind"]](name, spec)
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
