"""Record activations of a model on a stimulus set into an activation store, batch by batch."""

from __future__ import annotations

import datetime
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline import __version__
from pipeline.config import config_hash, run_settings
from pipeline.hooks import record, resolve_sites
from pipeline.models import LoadedModel, ModelError, load_from_checkpoint, load_huggingface, torch_device
from pipeline.stimuli import StimulusSet, load_stimuli
from pipeline.store import StoreWriter, resumable_shapes

log = logging.getLogger(__name__)

TRACKED_PACKAGES = ("torch", "transformers", "numpy", "zarr", "xarray")


def package_versions() -> dict[str, str]:
    versions = {"pipeline": __version__}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def load_for_spec(spec: dict, checkpoint: Path | None, device: torch.device) -> LoadedModel:
    """Load the model an extraction spec names (see ``extract``)."""
    model = spec["model"]
    if model["source"] == "huggingface":
        return load_huggingface(spec["model_name"], model["path"], device)
    if checkpoint is None:
        raise ModelError(f"model {spec['model_name']!r} records from checkpoints; pass --checkpoint")
    if model["source"] == "train":
        params, _seed = run_settings(model, spec["run"])
    else:
        params = model.get("params", {})
    return load_from_checkpoint(spec["model_name"], model["architecture"], params, Path(checkpoint), device)


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
            self.tensors = {k: v for k, v in encoded.items()}
            self.coords["token_id"] = (("stimulus", "position"), encoded["input_ids"].numpy().astype(np.int32))
            self.coords["token"] = (("stimulus", "position"), np.array(
                [loaded.tokenizer.convert_ids_to_tokens(row) for row in encoded["input_ids"].tolist()], dtype=str))
            self.coords["mask"] = (("stimulus", "position"), encoded["attention_mask"].numpy().astype(bool))
        else:
            if stim.inputs is None:
                raise ModelError(f"model {loaded.name!r} reads arrays but stimulus set {stim.name!r} holds text; "
                                 "pair it with a numeric set (digits, flipflop)")
            self.tensors = {"x": torch.from_numpy(np.ascontiguousarray(stim.inputs))}
            n_positions = stim.inputs.shape[1] if stim.inputs.ndim == 3 else 1
            self.coords["mask"] = (("stimulus", "position"), np.ones((len(stim), n_positions), bool))
        self.takes_text = loaded.takes_text

    def batch(self, start: int, stop: int, device: torch.device):
        """Call arguments for stimuli ``start:stop``: (args, kwargs)."""
        parts = {k: v[start:stop].to(device) for k, v in self.tensors.items()}
        return ((), parts) if self.takes_text else ((parts["x"],), {})


def as_site_array(site: str, tensor: torch.Tensor, dtype: str) -> np.ndarray:
    """A recorded output as (batch, position, unit) in the store dtype."""
    if tensor.ndim == 2:
        tensor = tensor[:, None, :]
    elif tensor.ndim != 3:
        raise ModelError(f"site {site!r} outputs shape {tuple(tensor.shape)}; only (batch, unit) and "
                         "(batch, position, unit) outputs can be recorded")
    return tensor.to(getattr(torch, dtype)).cpu().numpy()


def extract(spec: dict, out: Path, checkpoint: Path | None = None, progress: bool | None = None) -> Path:
    """Record one (model, checkpoint, stimulus set) into the store ``out``.

    ``spec`` holds ``model_name``, ``model`` (its config entry), ``run``, ``stimuli_name``,
    ``stimuli`` (its config entry), ``device``, ``dtype`` and ``batch_size``. A partial store
    from an interrupted run with the same inputs is resumed; anything else is rewritten.
    """
    out = Path(out)
    started = time.perf_counter()
    stim = load_stimuli(spec["stimuli_name"], spec["stimuli"])
    device = torch_device(spec["device"])
    loaded = load_for_spec(spec, checkpoint, device)
    sites = resolve_sites(loaded.module, spec["model"]["sites"], repr(spec["model_name"]))
    inputs = Inputs(loaded, stim, spec["stimuli"].get("max_length"))
    batch_size, dtype, n = spec["batch_size"], spec["dtype"], len(stim)

    def run_batch(start: int) -> dict[str, np.ndarray]:
        args, kwargs = inputs.batch(start, min(n, start + batch_size), device)
        with torch.inference_mode(), record(loaded.module, sites) as captured:
            loaded.module(*args, **kwargs)
        return {site: as_site_array(site, captured[site], dtype) for site in sites}

    prov = loaded.provenance
    attrs = {
        **prov,
        "run": spec["run"],
        "checkpoint_name": out.parent.name,
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
    attrs["fingerprint"] = config_hash([attrs["config_hash"], prov.get("checkpoint_sha256"), stim.content_hash, sites])
    # site shapes come from a resumable partial store, else from the first batch (kept and written below)
    first = None
    shapes = resumable_shapes(out, attrs["fingerprint"], sites)
    if shapes is None:
        first = run_batch(0)
        shapes = {site: a.shape[1:] for site, a in first.items()}
        positions = {s[0] for s in shapes.values()}
        if len(positions) > 1:
            raise ModelError(f"model {spec['model_name']!r}: sites differ in positions "
                             f"({', '.join(f'{k}: {v[0]}' for k, v in shapes.items())}); "
                             "record sites with different position counts as separate model entries")
    writer = StoreWriter(out, shapes, inputs.coords, attrs, dtype, batch_size)
    if writer.n_written:
        log.info("resuming %s at stimulus %d of %d", out, writer.n_written, n)
    starts = range(writer.n_written, n, batch_size)
    quiet = None if progress is None else not progress  # None: a bar on a terminal only, quiet in logs
    # One batch is written in a background thread while the next one runs through the model: at most
    # two batches are held, and leaving the pool waits for the last write, even on an error.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer") as pool:
        pending = None
        for start in tqdm(starts, desc=f"extract {spec['model_name']}/{out.parent.name}", unit="batch",
                          disable=quiet):
            batch = first if first is not None else run_batch(start)
            first = None
            if pending is not None:
                pending.result()
            pending = pool.submit(writer.write, batch)
            del batch
        if pending is not None:
            pending.result()
    path = writer.finish({"extraction_seconds": round(time.perf_counter() - started, 3)})
    log.info("wrote %s: %d stimuli, %d sites", path, n, len(sites))
    return path
