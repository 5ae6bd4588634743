"""Stores read and written through Zarr directly, as the analysis jobs and the report pages use them.

A job or page reads a few whole arrays and writes a few small ones, so the labelled, lazy view of
``pipeline.store.open_store`` (xarray with dask and pandas, over a second of imports) buys it
nothing. Result stores are laid out as xarray writes them (``dimension_names`` on every array,
non-dimension coordinates listed in the group's ``coordinates`` attribute), so ``xr.open_zarr``
reads them back as labelled datasets, while jobs and pages read them as plain numpy arrays.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync

from pipeline.errors import StoreError
from pipeline.store import chunk_damage, json_safe, partial_path, strings, writer_lock

# chunk files named c.0.0 beside the array's metadata, not in nested folders c/0/0: a third of the folders to make
FLAT_CHUNK_KEYS = {"name": "default", "separator": "."}
# Every chunk is written, also one of only the fill value, so that a missing chunk file shows as damage instead of
# reading as zeros; groups written so say it in this attribute (stores of earlier versions lack it).
ALL_CHUNKS = "all_chunks_written"


def read(group: zarr.Group, name: str, index=None) -> np.ndarray:
    """Array ``name`` of ``group`` as numpy, optionally only the rows ``index`` (ints) of its first axis.

    Strings come back as a numpy unicode array. Raises StoreError for an array of a result store that lacks chunk
    files, or has some cut short.
    """
    array = group[name]
    if group.attrs.get(ALL_CHUNKS) and isinstance(group.store, zarr.storage.LocalStore):
        damage = chunk_damage(array, Path(group.store.root) / array.path)
        if damage:
            raise StoreError(f"result store {group.store.root} is damaged: {array.path!r} {damage} (a copy cut "
                             "short?); delete it and run the workflow again to remake it")
    values = array[...] if index is None else array.get_orthogonal_selection((np.asarray(index),))
    values = np.asarray(values)
    return strings(values) if values.dtype.kind in "OT" else values


def dims(group: zarr.Group, name: str) -> tuple[str, ...]:
    """Dimension names of array ``name`` of ``group``."""
    return tuple(group[name].metadata.dimension_names)


@dataclass
class Result:
    """One group of a result store, as xarray's Dataset constructor takes it.

    Attributes
    ----------
    data : variable name -> (dims, values)
    coords : coordinate name -> (dims, values), or values alone for a coordinate named like its dimension
    attrs : group attributes; numpy scalars and arrays are stored as plain JSON values
    """

    data: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    coords: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def write_result(out: Path, root: Result, groups: dict[str, Result] | None = None) -> None:
    """Write a result store (optionally one sub-group per site) into ``<out>.partial``, then rename it to ``out``.

    Every array is written whole, uncompressed, with its metadata in the same call; the arrays of
    all groups are written concurrently.
    """
    out = Path(out)
    tmp = partial_path(out)
    with writer_lock(out, wait=True):  # another writer of the same result (a left-over job) finishes first
        if tmp.exists():
            shutil.rmtree(tmp)
        sync(_write(tmp, root, groups or {}))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)


def _dim_names(d) -> list[str]:
    return [d] if isinstance(d, str) else [str(name) for name in d]


def _coords(result: Result) -> dict[str, tuple[Any, Any]]:
    return {name: value if isinstance(value, tuple) else ((name,), value) for name, value in result.coords.items()}


def _group_attrs(result: Result) -> dict:
    attrs = json_safe(dict(result.attrs)) | {ALL_CHUNKS: True}
    extra = [name for name, (d, _) in _coords(result).items() if _dim_names(d) != [name]]
    if extra:
        attrs["coordinates"] = " ".join(extra)
    return attrs


async def _write(path: Path, root: Result, groups: dict[str, Result]) -> None:
    """Create the root group, the site groups, then every array with its values, all arrays at once."""
    top = await zarr.api.asynchronous.create_group(store=path, zarr_format=3, attributes=_group_attrs(root))
    subs = await asyncio.gather(*(top.create_group(name, attributes=_group_attrs(r)) for name, r in groups.items()))
    await asyncio.gather(*(
        group.create_array(name, data=_stored(values), compressors=None, chunk_key_encoding=FLAT_CHUNK_KEYS,
                           dimension_names=_dim_names(d), config={"write_empty_chunks": True})
        for group, result in zip([top, *subs], [root, *groups.values()])
        for name, (d, values) in {**result.data, **_coords(result)}.items()
    ))


def _stored(values) -> np.ndarray:
    """Values as numpy; strings as variable-length UTF-8 (Zarr's ``string``, what xarray writes for text)."""
    values = np.asarray(values)
    if values.dtype.kind in "OUT":
        return np.array(values.tolist(), dtype=np.dtypes.StringDType())
    return values


class ResultGroup:
    """One group of a result store: its attributes and its arrays by name, each read when first asked for.

    Parameters
    ----------
    path : result store (``.zarr``).
    group : a sub-group (a site of a TCA or connectome store), or None for the root group.
    """

    def __init__(self, path: str | Path, group: str | None = None):
        self.path = Path(path)
        self._group = zarr.open_group(self.path, path=group or "", mode="r")
        self.attrs = dict(self._group.attrs)
        self._arrays: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._group

    def __getitem__(self, name: str) -> np.ndarray:
        """The whole array ``name`` (strings as a numpy unicode array)."""
        if name not in self._arrays:
            if name not in self._group:
                raise KeyError(f"{self.path} has no array {name!r}")
            self._arrays[name] = read(self._group, name)
        return self._arrays[name]
