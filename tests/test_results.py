"""The jobs' direct Zarr access: stores read as open_store reads them, result stores laid out as xarray writes them."""

import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.errors import StoreError
from pipeline.jobs import read_json, write_json
from pipeline.results import ALL_CHUNKS, Result, ResultGroup, dims, read, write_result
from pipeline.store import StoreWriter, open_group, open_store, partial_path, site_array


def planted_store(path, store_writer):
    rng = np.random.default_rng(0)
    mask = np.ones((7, 3), bool)
    mask[2, 2] = False
    sites = {"a.b": rng.standard_normal((7, 3, 4)).astype(np.float32), "c": rng.standard_normal((7, 3, 2))}
    return store_writer(path, sites, mask, batch=3, step=5)


def test_reads_what_open_store_reads(tmp_path, store_writer):
    path = planted_store(tmp_path / "s.zarr", store_writer)
    ds, group = open_store(path), open_group(path)
    attrs = group.attrs.asdict()
    assert attrs.pop("coordinates") == "label text token mask"  # xarray turns this one into coordinates
    assert attrs == ds.attrs
    keep = np.array([0, 3, 6])
    for site in ds.attrs["sites"]:
        want = site_array(ds, site)
        np.testing.assert_array_equal(read(group, site), want.values)
        np.testing.assert_array_equal(read(group, site, keep), want.isel(stimulus=keep).values)
        assert dims(group, site) == ds[site].dims
    tokens = read(group, "token", keep)
    assert tokens.dtype.kind == "U" and tokens.tolist() == ds["token"].values[keep].tolist()
    np.testing.assert_array_equal(read(group, "mask"), ds["mask"].values)


def broken_stores(tmp_path, store_writer):
    """Paths open_store refuses: missing, interrupted (only the partial exists), a partial store, a foreign group."""
    interrupted = tmp_path / "interrupted.zarr"
    writer = StoreWriter(interrupted, {"x": (1, 2)}, {"stimulus": (("stimulus",), np.array(["s0", "s1"]))},
                         {"fingerprint": "f"})
    writer.write({"x": np.zeros((1, 1, 2))})
    zarr.open_group(tmp_path / "foreign.zarr", mode="w").create_array("x", shape=(2,), dtype="f4")
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "zarr.json").write_text("not json")
    return [tmp_path / "missing.zarr", interrupted, partial_path(interrupted), tmp_path / "foreign.zarr",
            tmp_path / "junk.zarr"]


def test_refuses_what_open_store_refuses_with_its_message(tmp_path, store_writer):
    for path in broken_stores(tmp_path, store_writer):
        with pytest.raises(StoreError) as expected:
            open_store(path)
        with pytest.raises(StoreError) as got:
            open_group(path)
        assert str(got.value) == str(expected.value)
        assert "\n" not in str(got.value)


def test_result_store_reads_back_as_the_dataset_xarray_builds(tmp_path):
    rng = np.random.default_rng(1)
    names = np.array(["x", "y.z"], dtype=str)
    root = Result(
        {"m": (("site_a", "site_b"), rng.random((2, 2))), "count": (("site",), np.array([3, 0], np.int64)),
         "rep:y.z": (("stimulus", "unit:y.z"), rng.random((3, 4)).astype(np.float32)),
         "empty": (("none", "none_b"), np.zeros((0, 0)))},
        {"site": names, "site_a": names, "site_b": names, "stimulus": np.array(["s0", "s1", "s2"], dtype=object),
         "label": ("stimulus", np.array(["cat", "dog", "cat"])),
         "flag": (("stimulus",), np.array([True, False, True]))},
        {"analysis": "test", "n": np.int64(4), "scale": np.float32(0.5), "ranks": np.arange(3), "ok": True},
    )
    site = Result({"factor": (("unit", "component"), rng.random((4, 2)))},
                  {"unit": np.array([1, 5, 6, 9]), "component": np.arange(2)}, {"rank": 2})
    out = tmp_path / "r.zarr"
    write_result(out, root, {"y.z": site})
    assert not (tmp_path / "r.zarr.partial").exists()

    want = xr.Dataset(root.data, coords=root.coords,
                      attrs={"analysis": "test", "n": 4, "scale": 0.5, "ranks": [0, 1, 2], "ok": True,
                             ALL_CHUNKS: True})
    got = xr.open_zarr(out, consolidated=False, zarr_format=3).load()
    xr.testing.assert_identical(got, want)
    assert got["site"].dtype.kind in "OUT" and got["count"].dtype == np.int64
    xr.testing.assert_identical(xr.open_zarr(out, group="y.z", consolidated=False, zarr_format=3).load(),
                                xr.Dataset(site.data, coords=site.coords, attrs=site.attrs | {ALL_CHUNKS: True}))


def test_result_store_replaces_an_old_one(tmp_path):
    out = tmp_path / "r.zarr"
    write_result(out, Result({"old": (("i",), np.arange(3))}))
    write_result(out, Result({"new": (("j",), np.arange(2))}))
    got = xr.open_zarr(out, consolidated=False, zarr_format=3)
    assert list(got.data_vars) == ["new"]


def test_a_result_store_missing_a_chunk_file_is_refused_not_read_as_zeros(tmp_path):
    out = tmp_path / "r.zarr"
    cka = np.zeros((3, 3))  # only the fill value: zarr would skip its chunk unless told to write it
    write_result(out, Result({"cka": (("a", "b"), cka), "note": (("a",), np.array(["x", "yy", "z"]))}),
                 {"site.1": Result({"factor": (("unit", "component"), np.ones((4, 2)))})})
    np.testing.assert_array_equal(ResultGroup(out)["cka"], cka)
    (out / "cka" / "c.0.0").unlink()
    (out / "site.1" / "factor" / "c.0.0").write_bytes(b"\0" * 8)  # cut short
    with pytest.raises(StoreError, match=rf"^result store {out} is damaged: 'cka' has 0 of its 1 chunk files "
                                         r"\(a copy cut short\?\); delete it and run the workflow again to remake it$"):
        ResultGroup(out)["cka"]
    with pytest.raises(StoreError, match=r"is damaged: 'site.1/factor' has 1 chunk files of other than 64 bytes"):
        ResultGroup(out, "site.1")["factor"]
    assert ResultGroup(out)["note"].tolist() == ["x", "yy", "z"]  # strings: files of any size

    zarr.open_group(out, mode="r+").attrs.pop(ALL_CHUNKS)  # a store of an earlier version: no way to tell
    np.testing.assert_array_equal(ResultGroup(out)["cka"], cka)


def test_a_damaged_or_missing_summary_is_named_with_the_fix(tmp_path):
    path = tmp_path / "digits.json"
    write_json(path, {"analysis": "stats", "sites": {"a": {"status": "ok"}}})
    assert read_json(path)["sites"] == {"a": {"status": "ok"}}
    path.write_text(path.read_text()[:40])  # cut short, as by a full disk or a killed copy
    with pytest.raises(StoreError, match=rf"^{path} is damaged \(.*\); delete it and run the workflow again to make "
                                         "it anew$"):
        read_json(path)
    with pytest.raises(StoreError, match=rf"^{tmp_path / 'absent.json'} is missing; run the workflow again to make "
                                         "it$"):
        read_json(tmp_path / "absent.json")
