"""Activation stores: one Zarr group per (model, checkpoint, stimulus set), one array per site.

Contract (see docs/store.md):
- each site is an array with dimensions ``(stimulus, position, unit:<site>)``; ``position`` is
  the token index or time step (length 1 for feed-forward inputs); every site has its own unit
  axis because widths differ between sites;
- coordinates along ``stimulus`` (id, label, text, ...) and ``(stimulus, position)`` (token ids,
  ``mask`` with True on real positions and False on padding) are arrays in the same group;
- group attributes carry provenance and the completion marker ``complete``.

A store is written batch by batch into ``<path>.partial`` and renamed to ``<path>`` only after
its last batch, so a reader never sees half a store and a killed job leaves its progress where
the next run can resume it. A writer holds ``<path>.lock`` meanwhile, so that a second one (a job left
running by a killed workflow) never writes into the same partial store.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import logging
import math
import os
import re
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync

from pipeline.errors import StoreError

if TYPE_CHECKING:
    import xarray as xr

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 * 2**20  # target chunk size along the stimulus axis (design: 1-8 MB)
CHUNK_MIN_BYTES, CHUNK_MAX_BYTES = 2**20, 8 * 2**20
# Activation chunks are written uncompressed: float32 activations barely compress (zstd saves 9% on
# MiniLM, lz4 6%) while compressing doubles the cost of writing (benchmarks/bench_extract.md).
COMPRESSORS = None
FORMAT_VERSION = 1
# Every chunk a batch writes holds data: skip zarr's check for chunks that equal the fill value, a full
# extra pass over each batch.
WRITE_CONFIG = {"write_empty_chunks": True}

def unit_dim(site: str) -> str:
    """Name of a site's unit dimension."""
    return f"unit:{site}"


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


@contextlib.contextmanager
def writer_lock(path: str | Path, wait: bool = False):
    """Hold the exclusive lock of whatever is written at ``path`` (a store, a result, a checkpoint folder): the
    file ``<path>.lock``, which names the holder (process id and host) and is removed when released. The kernel
    releases the lock of a killed process. Another holder makes this wait (``wait=True``) or raise ``StoreError``.
    On a file system without locks (some network mounts) it warns and writes unlocked."""
    path = Path(path)
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            if not wait:
                os.close(fd)
                raise StoreError(f"{path} is being written by another process ({holder}; a job left running by a "
                                 "killed workflow?); wait for it to finish or stop it, then run the workflow again"
                                 ) from None
            log.info("waiting for %s, which is writing %s", holder, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:  # no locks on this file system: one writer is then up to the user
            log.warning("cannot lock %s (%s); writing it without a lock", lock, err.strerror)
            os.close(fd)
            fd = None
            break
        try:  # the lock file may have been removed by a holder that finished meanwhile: lock the current one
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    if fd is None:
        yield
        return
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def stimulus_chunk(n_stimuli: int, n_positions: int, n_units: int, itemsize: int,
                   batch_size: int | None = None) -> int:
    """Stimuli per chunk so that one chunk holds about CHUNK_BYTES.

    With ``batch_size`` (the writer's batch), a chunk holds exactly one batch when that is 1-8 MB,
    an even split of a larger batch, or whole batches of a smaller one, so that a batch rarely
    rewrites a chunk another batch already wrote (a partial chunk write reads the chunk back).
    """
    per_stimulus = max(1, n_positions * n_units * itemsize)
    if not batch_size:
        return int(min(n_stimuli, max(1, CHUNK_BYTES // per_stimulus)))
    per_batch = batch_size * per_stimulus
    if per_batch < CHUNK_MIN_BYTES:
        chunk = batch_size * (CHUNK_BYTES // per_batch)
    else:
        chunk = max(d for d in range(1, batch_size + 1)
                    if batch_size % d == 0 and (d == 1 or d * per_stimulus <= CHUNK_MAX_BYTES))
    return int(min(n_stimuli, chunk))


def _matching_partial(work: Path, fingerprint: str, sites) -> zarr.Group | None:
    """The partial store ``work`` when it was made from the same inputs and holds every site, else None."""
    if not work.exists():
        return None
    try:
        group = zarr.open_group(work, mode="r+")
        if group.attrs.get("fingerprint") == fingerprint and set(sites) <= set(group.array_keys()):
            return group
    except Exception:  # unreadable leftovers are not resumed
        pass
    return None


def resumable_shapes(path, fingerprint: str, sites: list[str]) -> dict[str, tuple[int, int]] | None:
    """Site -> (n_positions, n_units) of a partial store at ``path`` that a writer would resume, else None."""
    group = _matching_partial(partial_path(path), fingerprint, sites)
    return None if group is None else {site: tuple(group[site].shape[1:]) for site in sites}


class StoreWriter:
    """Writes one activation store batch by batch, resuming a matching partial store.

    Parameters
    ----------
    path : final store path (``.zarr``); work happens in ``<path>.partial``.
    sites : site name -> (n_positions, n_units).
    coords : coordinate name -> (dims, values); dims use ``stimulus`` and ``position``.
    attrs : provenance written to the group; ``attrs["fingerprint"]`` identifies the inputs so
        that only a partial store made from the same inputs is resumed.
    dtype : stored floating type.
    batch_size : stimuli per ``write`` call, if fixed; chunks are then aligned to batches (see
        ``stimulus_chunk``). Only a speed hint: batches of any size are accepted.
    """

    def __init__(self, path, sites: dict[str, tuple[int, int]], coords: dict[str, tuple[tuple[str, ...], Any]],
                 attrs: dict, dtype: str = "float32", batch_size: int | None = None):
        self.path = Path(path)
        self.work = partial_path(self.path)
        self.sites = sites
        self.n_stimuli = len(coords["stimulus"][1])
        group = _matching_partial(self.work, attrs["fingerprint"], sites)
        if group is None:  # a fresh store (a leftover made from other inputs is removed)
            self.group, self.arrays = self._create(coords, attrs, dtype, batch_size)
        else:
            self.group = group
            self.arrays = {site: group[site].with_config(WRITE_CONFIG).async_array for site in sites}

    @property
    def n_written(self) -> int:
        """Stimuli already written (a resumed store continues from here)."""
        return int(self.group.attrs["n_written"])

    def _create(self, coords, attrs, dtype, batch_size):
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.parent.mkdir(parents=True, exist_ok=True)
        itemsize = np.dtype(dtype).itemsize
        site_arrays = {
            site: dict(shape=(self.n_stimuli, n_pos, n_units), dtype=dtype, fill_value=np.nan,
                       chunks=(stimulus_chunk(self.n_stimuli, n_pos, n_units, itemsize, batch_size), n_pos, n_units),
                       compressors=COMPRESSORS, dimension_names=["stimulus", "position", unit_dim(site)],
                       config=WRITE_CONFIG)
            for site, (n_pos, n_units) in self.sites.items()
        }
        coord_values = {}
        for name, (dims, values) in coords.items():
            values = np.asarray(values)
            if values.dtype.kind in "UOT":
                values = values.astype(str)
            coord_values[name] = (list(dims), values)
        # the fingerprint, which makes a partial store resumable, is written only once every array
        # exists and every coordinate is filled: a store killed while being created is rewritten
        group_attrs = {
            **{k: v for k, v in attrs.items() if k != "fingerprint"},
            "coordinates": " ".join(name for name in coords if name != "stimulus"),
            "sites": list(self.sites),
            "format_version": FORMAT_VERSION,
            "complete": False,
            "n_written": 0,
        }
        group, arrays = sync(_create_group(self.work, json_safe(group_attrs), site_arrays, coord_values))
        group = zarr.Group(group)
        group.attrs["fingerprint"] = attrs["fingerprint"]
        return group, arrays

    def write(self, batch: dict[str, np.ndarray]) -> None:
        """Append the next batch: site -> array (batch, n_positions, n_units)."""
        start = self.n_written
        sizes = {a.shape[0] for a in batch.values()}
        if len(sizes) != 1 or set(batch) != set(self.sites):
            raise StoreError(f"a batch must hold every site with one batch size; got {sorted(batch)} sizes {sizes}")
        stop = start + sizes.pop()
        if stop > self.n_stimuli:
            raise StoreError(f"batch overruns the store {self.path}: {stop} > {self.n_stimuli} stimuli")
        sync(_set_all((self.arrays[site], slice(start, stop), values) for site, values in batch.items()))
        self.group.attrs["n_written"] = stop

    def discard(self) -> None:
        """Remove the partial store (its inputs cannot be recorded, so there is nothing to resume)."""
        shutil.rmtree(self.work, ignore_errors=True)

    def finish(self, extra_attrs: dict | None = None) -> Path:
        """Mark the store complete and move it to its final path."""
        if self.n_written != self.n_stimuli:
            raise StoreError(f"store {self.path} holds {self.n_written} of {self.n_stimuli} stimuli; cannot finish")
        self.group.attrs.update({
            **json_safe(extra_attrs or {}),
            "complete": True,
            "completed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        })
        # an older store at the final path moves aside first and is deleted last, so that no moment
        # shows a half-deleted store marked complete
        old = self.path.with_name(self.path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if self.path.exists():
            self.path.rename(old)
        self.work.rename(self.path)
        if old.exists():
            shutil.rmtree(old)
        return self.path


def json_safe(value):
    """``value`` as strict JSON data (store attributes, summaries): numpy scalars and arrays as Python
    values, NaN and +-Inf as None (null)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


async def _create_group(path: Path, attrs: dict, site_arrays: dict[str, dict],
                        coords: dict[str, tuple[list[str], np.ndarray]]):
    """Create a store's group, its empty site arrays and its filled coordinate arrays, all concurrently.

    Returns the AsyncGroup and site -> AsyncArray.
    """
    group = await zarr.api.asynchronous.open_group(path, mode="w", zarr_format=3, attributes=attrs)

    async def coordinate(name, dims, values):
        dtype = str if values.dtype.kind == "U" else values.dtype
        array = await group.create_array(name, shape=values.shape, dtype=dtype, dimension_names=dims)
        await array.setitem(..., values)

    made = await asyncio.gather(*(group.create_array(site, **kwargs) for site, kwargs in site_arrays.items()),
                                *(coordinate(name, *spec) for name, spec in coords.items()))
    return group, dict(zip(site_arrays, made))


async def _set_all(assignments) -> None:
    """Run ``array[selection] = values`` for (async array, selection, values) triples concurrently."""
    await asyncio.gather(*(array.setitem(selection, values) for array, selection, values in assignments))


def open_group(path) -> zarr.Group:
    """A complete activation store as a read-only Zarr group, without xarray (what analysis jobs read).

    Raises StoreError for a missing, incomplete or foreign store.
    """
    path = Path(path)
    if not path.exists():
        if partial_path(path).exists():
            raise StoreError(f"activation store {path} is unfinished (an interrupted extraction left "
                             f"{partial_path(path).name}); re-run the extraction to resume it")
        raise StoreError(f"activation store {path} does not exist; re-run the extraction to write it")
    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
    except Exception as err:
        raise StoreError(f"{path} is not a readable Zarr store ({err}); delete it and re-run the extraction") from None
    if "format_version" not in attrs or "sites" not in attrs:
        raise StoreError(f"{path} is not an activation store (no provenance attributes)")
    if not attrs.get("complete"):
        raise StoreError(
            f"activation store {path} is incomplete ({attrs.get('n_written', 0)} stimuli written); "
            "re-run the extraction to finish it"
        )
    _check_intact(group, path)
    return group


CHUNK_FILE = re.compile(r"c(?:[./]\d+)*")  # chunk keys of either separator, relative to the array's folder


def _check_intact(group: zarr.Group, path: Path) -> None:
    """Every site and coordinate a complete store names is there, and every site with all its chunk files (written
    even where they hold only NaN): a store copied in part, or damaged on disk, would otherwise read its missing
    activations as NaN. Coordinates skip chunks of only their fill value, so their files are not counted."""
    sites = group.attrs["sites"]
    for name in [*sites, "stimulus", *group.attrs.get("coordinates", "").split()]:
        try:
            array = group[name]
        except KeyError:
            raise StoreError(f"activation store {path} is damaged: it lacks the array {name!r}; delete it and run the "
                             "workflow again to record it anew") from None
        damage = chunk_damage(array, path / name) if name in sites else None
        if damage:
            raise StoreError(f"activation store {path} is damaged: {name!r} {damage} (a copy cut short?); delete it "
                             "and run the workflow again to record it anew")


def chunk_damage(array: zarr.Array, folder: Path) -> str | None:
    """What is wrong with the chunk files of ``array`` (stored in ``folder``, written with every chunk, even those of
    only the fill value), or None: too few files, or, uncompressed, files of other than one chunk's size."""
    if 0 in array.shape:
        return None
    expected = math.prod(math.ceil(size / chunk) for size, chunk in zip(array.shape, array.chunks, strict=True))
    chunk_files = [Path(parent) / file for parent, _, files in os.walk(folder) for file in files
                   if CHUNK_FILE.fullmatch((Path(parent) / file).relative_to(folder).as_posix())]
    if len(chunk_files) < expected:
        return f"has {len(chunk_files)} of its {expected} chunk files"
    if not array.compressors and not array.filters and array.dtype.kind in "biufc":  # fixed size: every file whole
        size = math.prod(array.chunks) * array.dtype.itemsize
        short = sum(1 for file in chunk_files if file.stat().st_size != size)
        return f"has {short} chunk files of other than {size} bytes" if short else None
    return None


def open_store(path) -> xr.Dataset:
    """Open a complete activation store lazily (dask-backed) as an xarray Dataset.

    Each site is a variable with dims ``(stimulus, position, unit:<site>)``; provenance is in
    ``ds.attrs``. Raises StoreError for a missing, incomplete or foreign store.
    """
    import xarray as xr

    open_group(path)
    return xr.open_zarr(Path(path), consolidated=False, zarr_format=3)


def strings(values) -> np.ndarray:
    """A string coordinate read from a store as a plain numpy unicode array."""
    return np.array(np.asarray(values).tolist(), dtype=str)


def site_array(ds: xr.Dataset, site: str) -> xr.DataArray:
    """One site as a DataArray with dims ``(stimulus, position, unit)``."""
    if site not in ds.attrs["sites"]:
        raise StoreError(f"site {site!r} is not in this store; stored sites: {', '.join(ds.attrs['sites'])}")
    return ds[site].rename({unit_dim(site): "unit"})
