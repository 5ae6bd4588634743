"""Activation stores: batch-wise round trip, lazy reading, refusal of missing and unfinished stores, chunking."""

import errno
import os
import shutil
import socket
import time

import dask.array as da
import numpy as np
import pytest
import zarr

from pipeline import store as store_module
from pipeline.errors import StoreError
from pipeline.store import StoreWriter, open_group, open_store, partial_path, site_array, stimulus_chunk

N, N_POS = 10, 6
MB = 2**20


def coords(n: int = N, n_pos: int = N_POS) -> dict:
    rng = np.random.default_rng(1)
    mask = np.arange(n_pos)[None, :] < rng.integers(1, n_pos + 1, size=n)[:, None]
    return {
        "stimulus": (("stimulus",), np.array([f"id-{i}" for i in range(n)])),
        "label": (("stimulus",), np.array(["animals", "tools"] * (n // 2))),
        "text": (("stimulus",), np.array([f"Ünïcode sentence {i} — ok" for i in range(n)])),
        "token_id": (("stimulus", "position"), rng.integers(0, 30000, size=(n, n_pos)).astype(np.int32)),
        "mask": (("stimulus", "position"), mask),
    }


PROVENANCE = {"fingerprint": "abc", "model_id": "tiny", "checkpoint": "ckpt/step-10.safetensors",
              "checkpoint_sha256": "0" * 64, "step": 10, "packages": {"numpy": "2.0"}, "stimulus_set": "sents"}


def planted_values():
    rng = np.random.default_rng(0)
    return {"layer.0": rng.standard_normal((N, N_POS, 7)).astype(np.float32),
            "layer.1": rng.standard_normal((N, N_POS, 3)).astype(np.float32)}


def write_in_batches(path, values, sizes=(4, 4, 2), finish=True):
    writer = StoreWriter(path, {site: v.shape[1:] for site, v in values.items()}, coords(), PROVENANCE)
    start = 0
    for size in sizes:
        writer.write({site: v[start:start + size] for site, v in values.items()})
        start += size
    return writer.finish({"extraction_seconds": 1.5}) if finish else writer


def test_round_trip_is_lazy_and_exact(tmp_path):
    values = planted_values()
    path = write_in_batches(tmp_path / "s.zarr", values)
    assert path == tmp_path / "s.zarr"
    assert not partial_path(path).exists()
    ds = open_store(path)
    expected = coords()
    for site, v in values.items():
        assert isinstance(ds[site].data, da.Array)
        assert ds[site].dims == ("stimulus", "position", f"unit:{site}")
        assert ds[site].dtype == np.float32
        np.testing.assert_array_equal(ds[site].values, v)
        arr = site_array(ds, site)
        assert arr.dims == ("stimulus", "position", "unit")
        np.testing.assert_array_equal(arr.values, v)
    for name in ("stimulus", "label", "text", "token_id", "mask"):
        assert name in ds.coords
        np.testing.assert_array_equal(np.asarray(ds[name].values).astype(expected[name][1].dtype), expected[name][1])
        assert ds[name].dims == expected[name][0]
    assert ds["mask"].dtype == bool
    for key, value in PROVENANCE.items():
        assert ds.attrs[key] == value
    assert ds.attrs["sites"] == ["layer.0", "layer.1"]
    assert ds.attrs["complete"] is True
    assert ds.attrs["n_written"] == N
    assert ds.attrs["extraction_seconds"] == 1.5


def test_site_array_names_stored_sites(tmp_path):
    ds = open_store(write_in_batches(tmp_path / "s.zarr", planted_values()))
    with pytest.raises(StoreError, match="stored sites: layer.0, layer.1"):
        site_array(ds, "layer.2")


def test_missing_store_is_refused(tmp_path):
    with pytest.raises(StoreError) as info:
        open_store(tmp_path / "nothing.zarr")
    assert "does not exist" in str(info.value)
    assert "re-run" in str(info.value)


def test_unfinished_store_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    writer = write_in_batches(path, planted_values(), sizes=(4, 4), finish=False)
    assert writer.n_written == 8
    assert not path.exists()
    with pytest.raises(StoreError) as info:
        open_store(path)
    message = str(info.value)
    assert "s.zarr.partial" in message and "re-run" in message and "\n" not in message
    with pytest.raises(StoreError) as info:  # the partial store itself is marked incomplete
        open_store(partial_path(path))
    assert "incomplete (8 stimuli written)" in str(info.value) and "re-run" in str(info.value)
    with pytest.raises(StoreError, match="holds 8 of 10 stimuli"):
        writer.finish()


def test_a_store_missing_chunk_files_or_arrays_is_refused_as_damaged(tmp_path):
    path = write_in_batches(tmp_path / "s.zarr", planted_values())  # a complete store
    (chunk,) = [p for p in (path / "layer.1").rglob("*") if p.is_file() and p.name != "zarr.json"]
    chunk.unlink()  # as an interrupted copy leaves it
    with pytest.raises(StoreError, match=rf"^activation store {path} is damaged: 'layer.1' has 0 of its 1 chunk files "
                                         r"\(a copy cut short\?\); delete it and run the workflow again to record it "
                                         "anew$"):
        open_store(path)
    path = write_in_batches(tmp_path / "cut.zarr", planted_values())
    (chunk,) = [p for p in (path / "layer.0").rglob("*") if p.is_file() and p.name != "zarr.json"]
    size = chunk.stat().st_size
    assert size == N * N_POS * 7 * 4  # uncompressed float32
    os.truncate(chunk, size - 100)  # a copy cut short inside a file
    with pytest.raises(StoreError, match=rf"^activation store {path} is damaged: 'layer.0' has 1 chunk files of other "
                                         rf"than {size} bytes \(a copy cut short\?\); delete it and run the workflow "
                                         "again to record it anew$"):
        open_group(path)
    path = write_in_batches(tmp_path / "t.zarr", planted_values())
    shutil.rmtree(path / "mask")
    with pytest.raises(StoreError, match=rf"^activation store {path} is damaged: it lacks the array 'mask'; "):
        open_group(path)


def test_an_intact_store_with_chunks_of_only_fill_values_is_not_called_damaged(tmp_path):
    n = 300  # several chunks of every array
    coords = {"stimulus": (("stimulus",), np.array([f"s{i}" for i in range(n)])),
              "mask": (("stimulus", "position"), np.zeros((n, 40), bool)),  # all fill value: no chunk file written
              "input_id": (("stimulus", "position"), np.zeros((n, 40), np.int64))}
    writer = StoreWriter(tmp_path / "s.zarr", {"silent": (40, 5), "empty": (40, 0)}, coords, PROVENANCE,
                         batch_size=64)
    for start in range(0, n, 64):
        size = min(64, n - start)
        writer.write({"silent": np.full((size, 40, 5), np.nan, np.float32), "empty": np.zeros((size, 40, 0))})
    path = writer.finish()
    assert not [p for p in (path / "mask").rglob("*") if p.name != "zarr.json"]
    assert open_group(path).attrs["complete"]


def test_foreign_zarr_group_is_refused(tmp_path):
    zarr.open_group(tmp_path / "other.zarr", mode="w").create_array("x", shape=(2,), dtype="f4")
    with pytest.raises(StoreError, match="not an activation store"):
        open_store(tmp_path / "other.zarr")


def test_writer_rejects_bad_batches(tmp_path):
    values = planted_values()
    writer = write_in_batches(tmp_path / "s.zarr", values, sizes=(8,), finish=False)
    with pytest.raises(StoreError, match="every site"):
        writer.write({"layer.0": values["layer.0"][8:]})
    with pytest.raises(StoreError, match="overruns"):
        writer.write({site: v[:3] for site, v in values.items()})


def test_writer_resumes_only_a_partial_store_from_the_same_inputs(tmp_path):
    values = planted_values()
    path = tmp_path / "s.zarr"
    write_in_batches(path, values, sizes=(4,), finish=False)
    shapes = {site: v.shape[1:] for site, v in values.items()}
    resumed = StoreWriter(path, shapes, coords(), PROVENANCE)
    assert resumed.n_written == 4
    resumed.write({site: v[4:] for site, v in values.items()})
    np.testing.assert_array_equal(open_store(resumed.finish())["layer.1"].values, values["layer.1"])

    write_in_batches(path, values, sizes=(4,), finish=False)
    fresh = StoreWriter(path, shapes, coords(), {**PROVENANCE, "fingerprint": "other inputs"})
    assert fresh.n_written == 0
    assert np.isnan(zarr.open_group(partial_path(path))["layer.0"][:]).all()



def test_store_killed_while_being_created_is_rewritten(tmp_path, monkeypatch):
    values = planted_values()
    path = tmp_path / "s.zarr"
    shapes = {site: v.shape[1:] for site, v in values.items()}
    real = store_module._create_group

    async def killed(work, attrs, site_arrays, coord_values):
        # every array and coordinate but the mask exists when the job dies
        await real(work, attrs, site_arrays, {k: v for k, v in coord_values.items() if k != "mask"})
        raise RuntimeError("killed")

    monkeypatch.setattr(store_module, "_create_group", killed)
    with pytest.raises(RuntimeError, match="killed"):
        StoreWriter(path, shapes, coords(), PROVENANCE)
    monkeypatch.setattr(store_module, "_create_group", real)
    assert partial_path(path).exists()
    rerun = StoreWriter(path, shapes, coords(), PROVENANCE)
    assert rerun.n_written == 0
    rerun.write(values)
    ds = open_store(rerun.finish())
    np.testing.assert_array_equal(ds["mask"].values, coords()["mask"][1])
    assert list(ds["stimulus"].values) == list(coords()["stimulus"][1])


def test_finishing_again_replaces_the_old_store_whole(tmp_path):
    values = planted_values()
    path = write_in_batches(tmp_path / "s.zarr", values)
    doubled = {site: 2 * v for site, v in values.items()}
    write_in_batches(path, doubled)
    np.testing.assert_array_equal(open_store(path)["layer.0"].values, doubled["layer.0"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_nan_batches_survive_partial_chunk_writes_and_resume(tmp_path):
    # small batches share one chunk (each write reads the chunk back); a batch that equals the fill
    # value (all NaN) and scattered NaNs must be stored as such, also by a writer reopened half-way
    values = planted_values()
    values["layer.0"][2:4] = np.nan
    values["layer.1"][0, 1, 2] = np.nan
    shapes = {site: v.shape[1:] for site, v in values.items()}
    path = tmp_path / "s.zarr"
    first = StoreWriter(path, shapes, coords(), PROVENANCE, batch_size=2)
    assert zarr.open_group(partial_path(path))["layer.0"].chunks == (N, N_POS, 7)
    for start in (0, 2):
        first.write({site: v[start:start + 2] for site, v in values.items()})
    resumed = StoreWriter(path, shapes, coords(), PROVENANCE, batch_size=2)
    assert resumed.n_written == 4
    for start in range(4, N, 2):
        resumed.write({site: v[start:start + 2] for site, v in values.items()})
    ds = open_store(resumed.finish())
    for site, v in values.items():
        np.testing.assert_array_equal(ds[site].values, v)
    assert np.isnan(ds["layer.0"].values[2:4]).all() and not np.isnan(ds["layer.0"].values[4:]).any()

@pytest.mark.parametrize(("n_stimuli", "n_positions", "n_units"), [
    (256, 64, 384),  # MiniLM residual stream on the built-in sentences
    (256, 64, 1536),  # MiniLM MLP activations
    (1797, 1, 32),  # digits MLP hidden layer: the whole set is far below 1 MB, one chunk
    (96, 60, 64),  # flip-flop RNN states
    (100_000, 128, 4096),  # a large language model layer
])
def test_chunks_along_stimulus_hit_the_size_target(tmp_path, n_stimuli, n_positions, n_units):
    coords_ = {"stimulus": (("stimulus",), np.array([str(i) for i in range(n_stimuli)]))}
    StoreWriter(tmp_path / "s.zarr", {"site": (n_positions, n_units)}, coords_, {"fingerprint": "f"})
    array = zarr.open_group(partial_path(tmp_path / "s.zarr"))["site"]
    assert array.chunks[1:] == (n_positions, n_units)
    chunk_bytes = array.chunks[0] * n_positions * n_units * 4
    total_bytes = n_stimuli * n_positions * n_units * 4
    if total_bytes < MB:
        assert array.chunks[0] == n_stimuli
    else:
        assert MB <= chunk_bytes <= 8 * MB


def test_dask_chunks_follow_the_stored_chunks(tmp_path):
    n, units = 3000, 384
    values = np.random.default_rng(2).standard_normal((n, 1, units)).astype(np.float32)
    writer = StoreWriter(tmp_path / "s.zarr", {"site": (1, units)},
                         {"stimulus": (("stimulus",), np.arange(n).astype(str)),
                          "mask": (("stimulus", "position"), np.ones((n, 1), bool))}, {"fingerprint": "f"})
    for start in range(0, n, 1000):
        writer.write({"site": values[start:start + 1000]})
    ds = open_store(writer.finish())
    rows = stimulus_chunk(n, 1, units, 4)
    assert 1 * MB <= rows * units * 4 <= 8 * MB
    assert ds["site"].data.chunks[0] == (rows, n - rows)
    np.testing.assert_array_equal(ds["site"].values, values)


def test_a_waiting_writer_takes_the_lock_once_its_holder_is_done(tmp_path, lock_holder):
    path = tmp_path / "result.zarr"
    lock_holder(path, seconds=1.0)
    held_since = time.monotonic()  # the holder keeps the lock for about a second from here
    with store_module.writer_lock(path, wait=True):
        assert time.monotonic() - held_since >= 0.9  # not before the holder let go
        assert path.with_name("result.zarr.lock").read_text().strip() == f"pid {os.getpid()} on {socket.gethostname()}"
    assert not path.with_name("result.zarr.lock").exists()


def test_a_file_system_without_locks_is_written_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(store_module.fcntl, "flock", no_locks)
    path = tmp_path / "s.zarr"
    with store_module.writer_lock(path):
        written = write_in_batches(path, planted_values())
    assert open_group(written).attrs["complete"]
    assert f"cannot lock {path}.lock (No locks available); writing it without a lock" in caplog.text
