"""Tests for pipeline.backend: namespace choice, dtype policy, host/device copies."""

import array_api_strict as xps
import numpy as np
import pytest

from pipeline.backend import (
    BackendError,
    array_namespace,
    available_cores,
    cupy_namespace,
    each_on_cores,
    get_namespace,
    gpu_available,
    resolve_dtype,
    to_device,
    to_numpy,
)


def test_cpu_is_numpy():
    assert get_namespace("cpu") is np


def test_auto_picks_numpy_without_gpu():
    if gpu_available():
        assert get_namespace("auto") is cupy_namespace()
    else:
        assert get_namespace("auto") is np


@pytest.mark.skipif(gpu_available(), reason="a GPU is present")
def test_gpu_without_gpu_raises():
    with pytest.raises(BackendError, match="device: auto"):
        get_namespace("gpu")


@pytest.mark.parametrize("device", ["cuda", "", "CPU", None])
def test_bad_device(device):
    with pytest.raises(BackendError, match="device"):
        get_namespace(device)


def test_resolve_dtype():
    assert resolve_dtype("float32") is np.float32
    assert resolve_dtype("float64", np) is np.float64
    assert resolve_dtype("float32", xps) == xps.float32


@pytest.mark.parametrize("dtype", ["float16", "int32", "double"])
def test_bad_dtype(dtype):
    with pytest.raises(BackendError, match="dtype"):
        resolve_dtype(dtype)


def test_array_namespace():
    a = np.zeros(3)
    s = xps.asarray([1.0, 2.0])
    assert array_namespace(a) is np
    assert array_namespace(a, None, 2.0) is np
    assert array_namespace() is np
    assert array_namespace(s, s) is xps
    with pytest.raises(BackendError, match="different namespaces"):
        array_namespace(a, s)


def test_to_numpy_numpy_is_not_copied():
    a = np.arange(4.0)
    assert to_numpy(a) is a


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_strict_round_trip(dtype):
    host = np.random.default_rng(0).standard_normal((3, 4)).astype(dtype)
    dev = to_device(host, xps)
    assert array_namespace(dev) is xps
    assert dev.dtype == getattr(xps, dtype)
    back = to_numpy(dev)
    assert isinstance(back, np.ndarray)
    assert back.dtype == host.dtype
    np.testing.assert_array_equal(back, host)


def test_strict_scalar_to_numpy():
    assert float(to_numpy(xps.sum(xps.asarray([1.5, 2.0])))) == 3.5


def test_to_device_casts():
    host = np.arange(6.0).reshape(2, 3)
    dev = to_device(host, xps, dtype="float32")
    assert dev.dtype == xps.float32
    back = to_device(dev, np, dtype="float64")
    assert isinstance(back, np.ndarray) and back.dtype == np.float64
    np.testing.assert_array_equal(back, host)
    with pytest.raises(BackendError, match="dtype"):
        to_device(host, np, dtype="float16")


def test_each_on_cores_calls_every_index_once_and_raises():
    for entries in (1, 1 << 20):  # serial, then on threads
        seen = []
        each_on_cores(seen.append, 7, entries)
        assert sorted(seen) == list(range(7))

    def fail(i):
        if i == 3:
            raise ValueError("item 3 is bad")

    with pytest.raises(ValueError, match="item 3 is bad"):
        each_on_cores(fail, 5, 1 << 20)
    assert available_cores() >= 1


def test_available_cores_honours_the_job_thread_limit(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = available_cores()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert available_cores() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "4096")
    assert available_cores() == cores
