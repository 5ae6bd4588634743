"""Record activations of a model on a stimulus set into an activation store, batch by batch."""

from __future__ import annotations

import datetime
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.config import config_hash
from pipeline.errors import InputError, SiteError, StimulusError, first_line
from pipeline.hooks import record, resolve_sites
from pipeline.models import LoadedModel, ModelError, load_from_checkpoint, load_huggingface, torch_device
from pipeline.software import package_versions
from pipeline.stimuli import StimulusSet, load_stimuli
from pipeline.store import StoreWriter, resumable_shapes, writer_lock

log = logging.getLogger(__name__)

def load_for_spec(spec: dict, checkpoint: Path | None, device: torch.device,
                  checkpoint_name: str | None = None) -> LoadedModel:
    """Load the model an extraction spec names (see ``extract``); ``checkpoint_name`` gives a step to a
    checkpoint without one in its metadata."""
    model = spec["model"]
    if model["source"] == "huggingface":
        return load_huggingface(spec["model_name"], model["path"], device)
    if checkpoint is None:
        raise ModelError(f"model {spec['model_name']!r} records from checkpoints; pass --checkpoint")
    params = model.get("params", {})
    return load_from_checkpoint(spec["model_name"], model["architecture"], params, Path(checkpoint), device,
                                checkpoint_name)


def _check_text_length(loaded: LoadedModel, stim: StimulusSet, n_tokens: int) -> None:
    """Refuse texts tokenized longer than the model has positions for, naming the largest max_length that fits."""
    limits = [getattr(loaded.module.config, "max_position_embeddings", None),
              getattr(loaded.tokenizer, "model_max_length", None)]
    limits = [int(n) for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    if limits and n_tokens > min(limits):
        raise StimulusError(f"stimulus set {stim.name!r}: its texts take {n_tokens} tokens but model {loaded.name!r} "
                            f"has {min(limits)} positions; set stimuli.{stim.name}.max_length to {min(limits)} or less")


class Inputs:
    """Model inputs for a stimulus set, served in batches, plus the coordinates they add.

    Text is tokenized once to a common padded length, so every batch has the same positions.
    """

    def __init__(self, loaded: LoadedModel, stim: StimulusSet, max_length: int | None):
        self.coords = dict(stim.coords)
        self.coords["stimulus"] = (("stimulus",), stim.ids)
        if loaded.takes_text:
            if stim.texts is None:
                raise ModelError(f"model {loaded.name!r} reads text but stimulus set {stim.name!r} holds arrays; "
                                 "pair it with a sentence set")
            # padded to the longest (truncated) text of the whole set, not of a batch
            encoded = loaded.tokenizer(stim.texts, padding="longest", truncation=True, max_length=max_length,
                                       return_tensors="pt")
            _check_text_length(loaded, stim, encoded["input_ids"].shape[1])
            self.tensors = {k: v for k, v in encoded.items()}
            self.coords["token_id"] = (("stimulus", "position"), encoded["input_ids"].numpy().astype(np.int32))
            self.coords["token"] = (("stimulus", "position"), np.array(
                [loaded.tokenizer.convert_ids_to_tokens(row) for row in encoded["input_ids"].tolist()], dtype=str))
            self.coords["mask"] = (("stimulus", "position"), encoded["attention_mask"].numpy().astype(bool))
        else:
            if stim.inputs is None:
                raise ModelError(f"model {loaded.name!r} reads arrays but stimulus set {stim.name!r} holds text; "
                                 "pair it with a numeric set (digits, flipflop, arrays)")
            self.tensors = {"x": torch.from_numpy(np.ascontiguousarray(stim.inputs))}
            n_positions = stim.inputs.shape[1] if stim.sequence else 1
            self.coords.setdefault("mask", (("stimulus", "position"), np.ones((len(stim), n_positions), bool)))
        self.takes_text = loaded.takes_text
        self.sequence = stim.sequence

    def batch(self, start: int, stop: int, device: torch.device):
        """Call arguments for stimuli ``start:stop``: (args, kwargs)."""
        parts = {k: v[start:stop].to(device) for k, v in self.tensors.items()}
        return ((), parts) if self.takes_text else ((parts["x"],), {})


def _first_unit_axis(tensor: torch.Tensor, sequence: bool) -> int:
    """Where the units start in a recorded output: a (batch, unit) output has one position; a larger one is
    (batch, position, ...) for ``sequence`` stimuli (tokens, time steps) and (batch, ...) otherwise."""
    return 2 if sequence and tensor.ndim > 2 else 1


def unit_shape(tensor: torch.Tensor, sequence: bool) -> tuple[int, ...]:
    """The shape of one stimulus' units (one position's, for sequences) in a recorded output, which the store
    flattens into its unit axis: (channel, height, width) for a convolution's (batch, channel, height, width)."""
    return tuple(tensor.shape[_first_unit_axis(tensor, sequence):])


def as_site_array(site: str, tensor: torch.Tensor, dtype: str, sequence: bool) -> np.ndarray:
    """A recorded output as (batch, position, unit) in the store dtype, its unit axes (``unit_shape``) flattened in
    C order."""
    if tensor.ndim < 2:
        raise ModelError(f"site {site!r} outputs shape {tuple(tensor.shape)}; only outputs with a batch axis "
                         "and at least one more can be recorded")
    tensor = tensor.flatten(_first_unit_axis(tensor, sequence))
    if tensor.ndim == 2:
        tensor = tensor[:, None, :]
    return tensor.to(getattr(torch, dtype)).cpu().numpy()


def check_site_names(sites: list[str], coords: dict, stimuli_name: str) -> None:
    """Raise SiteError for sites named like a coordinate or dimension of the store (the arrays would clash)."""
    names = {*coords, *(dim for dims, _ in coords.values() for dim in dims)}
    taken = sorted(set(sites) & names)
    if taken:
        raise SiteError(f"site {', '.join(map(repr, taken))} has the name of a coordinate of the store for stimulus "
                        f"set {stimuli_name!r} ({', '.join(sorted(names))}); rename the module in the "
                        "architecture or record another one")


def check_positions(model_name: str, stim: StimulusSet, shapes: dict, coords: dict) -> None:
    """Raise ModelError for a site whose position count differs from the stimulus mask's."""
    n_positions = coords["mask"][1].shape[1]
    other = {site: shape[0] for site, shape in shapes.items() if shape[0] != n_positions}
    if other:
        found = ", ".join(f"{site!r} has {k}" for site, k in other.items())
        arrays = (f" (or, if the inputs are not sequences, set stimuli.{stim.name}.sequence to false)"
                  if stim.kind == "arrays" else "")
        raise ModelError(f"model {model_name!r}: every site needs the {n_positions} positions (tokens or time steps) "
                         f"of stimulus set {stim.name!r}, but site {found}; pooled outputs cannot be recorded, "
                         f"so record a site with one output per position instead{arrays}")


def check_batch_shapes(model_name: str, start: int, batch: dict[str, np.ndarray], shapes: dict) -> None:
    """Raise ModelError for a site whose (position, unit) shape in this batch differs from the store's."""
    for site, values in batch.items():
        if tuple(values.shape[1:]) != tuple(shapes[site]):
            raise ModelError(f"site {site!r} of model {model_name!r} gives (position, unit) shape "
                             f"{tuple(values.shape[1:])} for the batch from stimulus {start} but {tuple(shapes[site])} "
                             "for the store; every batch must give one shape, so pad all stimuli to one length "
                             "(a model must not trim padding per batch)")


def extract(spec: dict, out: Path, checkpoint: Path | None = None, progress: bool | None = None) -> Path:
    """Record one (model, checkpoint, stimulus set) into the store ``out``.

    ``spec`` holds ``model_name``, ``model`` (what extraction reads of its config entry:
    ``source``, ``path`` or ``architecture`` and ``params``, ``task``, ``sites``), ``run``, ``stimuli_name``,
    ``stimuli`` (its config entry), ``device``, ``dtype`` and ``batch_size``. A partial store
    from an interrupted run with the same inputs is resumed; anything else is rewritten.
    """
    out = Path(out)
    started = time.perf_counter()
    name, task, kind = spec["model_name"], spec["model"].get("task"), spec["stimuli"]["kind"]
    if task is not None and task != kind:
        raise ModelError(f"model {name!r} is trained on the {task} task but stimulus set {spec['stimuli_name']!r} "
                         f"holds {kind} stimuli; pair it with a {task} stimulus set")
    stim = load_stimuli(spec["stimuli_name"], spec["stimuli"])
    device = torch_device(spec["device"])
    checkpoint_name = out.parent.name  # <output>/activations/<model>/<run>/<checkpoint>/<stimuli>.zarr
    loaded = load_for_spec(spec, checkpoint, device, checkpoint_name)
    sites = resolve_sites(loaded.module, spec["model"]["sites"], repr(name))
    inputs = Inputs(loaded, stim, spec["stimuli"].get("max_length"))
    check_site_names(sites, inputs.coords, stim.name)
    batch_size, dtype, n = spec["batch_size"], spec["dtype"], len(stim)
    # filled by the first forward pass, in the order it reaches the sites (a module's hook runs when its forward
    # returns, so a block comes after the submodules it is computed from)
    unit_shapes: dict[str, tuple[int, ...]] = {}

    def run_batch(start: int, first_pass: bool = False) -> dict[str, np.ndarray]:
        """Record one batch; a failure of the first forward pass names the model and its input."""
        args, kwargs = inputs.batch(start, min(n, start + batch_size), device)
        with torch.inference_mode(), record(loaded.module, sites, repr(name)) as captured:
            try:
                loaded.module(*args, **kwargs)
            except Exception as err:
                if not first_pass or isinstance(err, SiteError):
                    raise
                given = next(iter(inputs.tensors.values()))
                fix = ("integer inputs reach the model as int64 ids; if it reads numbers, save them as floats (e.g. "
                       "images / 255)" if stim.inputs is not None and stim.inputs.dtype == np.int64
                       else "record it on stimuli like those it was built for")
                raise ModelError(f"model {name!r} cannot run on stimulus set {stim.name!r} ({stim.kind}, input "
                                 f"shape {tuple(given.shape)}): {first_line(err)}; {fix}") from err
        if first_pass:
            unit_shapes.update({site: unit_shape(tensor, inputs.sequence) for site, tensor in captured.items()})
        return {site: as_site_array(site, captured[site], dtype, inputs.sequence) for site in sites}

    prov = loaded.provenance
    attrs = {
        **prov,
        "run": spec["run"],
        "checkpoint_name": checkpoint_name,
        "stimulus_set": stim.name,
        "stimulus_kind": stim.kind,
        "stimulus_hash": stim.content_hash,
        "dtype": dtype,
        "device": str(device),
        "batch_size": batch_size,
        "config_hash": config_hash(spec),
        "packages": package_versions(),
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    # a partial store is resumed only by a run with the same inputs, device and package versions (an edit to this
    # package's source, such as a report template, does not change what is recorded)
    versions = {k: v for k, v in attrs["packages"].items() if k != "pipeline_source"}
    attrs["fingerprint"] = config_hash([attrs["config_hash"], prov.get("checkpoint_sha256"), stim.content_hash, sites,
                                        attrs["device"], versions])
    # one writer at a time: a job left running by a killed workflow would otherwise write into the same partial
    # store as its re-run
    with writer_lock(out):
        # site shapes come from a resumable partial store, else from the first batch (kept and written below)
        first = None
        shapes = resumable_shapes(out, attrs["fingerprint"], sites)
        if shapes is None:
            first = run_batch(0, first_pass=True)
            shapes = {site: first[site].shape[1:] for site in unit_shapes}  # the store's ``sites`` in forward order
            attrs["unit_shapes"] = {site: list(shape) for site, shape in unit_shapes.items()}
        check_positions(name, stim, shapes, inputs.coords)
        writer = StoreWriter(out, shapes, inputs.coords, attrs, dtype, batch_size)
        if writer.n_written:
            log.info("resuming %s at stimulus %d of %d", out, writer.n_written, n)
        else:
            log.info("recording %d stimuli x %d sites of %s into %s", n, len(sites), name, out)
        starts = range(writer.n_written, n, batch_size)
        quiet = None if progress is None else not progress  # None: a bar on a terminal only, quiet in logs
        # One batch is written in a background thread while the next one runs through the model: at most
        # two batches are held, and leaving the pool waits for the last write, even on an error.
        # A model that fails on a later batch fails there again: its partial store is removed, not kept to resume.
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer") as pool:
                pending = None
                for start in tqdm(starts, desc=f"extract {spec['model_name']}/{out.parent.name}", unit="batch",
                                  disable=quiet):
                    batch = first if first is not None else run_batch(start)
                    first = None
                    check_batch_shapes(name, start, batch, shapes)
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(writer.write, batch)
                    del batch
                if pending is not None:
                    pending.result()
        except InputError:
            writer.discard()
            raise
        path = writer.finish({"extraction_seconds": round(time.perf_counter() - started, 3)})
    log.info("wrote %s: %d stimuli, %d sites", path, n, len(sites))
    return path
