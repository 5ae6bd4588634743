"""Compute backend: which array namespace (numpy or CuPy) an analysis runs in, and dtypes.

Analyses are written against the array namespace of their inputs (``array_namespace``), so
the same code runs on numpy, CuPy and strict array-API namespaces. This module is the one
place that decides the device from config (``device: auto|cpu|gpu``), owns the dtype policy
(float32 by default, float64 on request) and moves arrays between host and device. On the CPU,
``each_on_cores`` spreads independent pieces of numpy work over the available cores.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np

from pipeline.errors import BackendError

DEVICES = ("auto", "cpu", "gpu")
DTYPES = ("float32", "float64")


@functools.cache
def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CUDA driver missing or broken: treat as no GPU
        return False


def get_namespace(device: str = "auto") -> ModuleType:
    """Return the array module for ``device``: numpy for cpu, CuPy (``cupy_namespace``) for gpu,
    best for auto."""
    if device not in DEVICES:
        raise BackendError(f"device {device!r} is not one of {', '.join(DEVICES)}; fix 'device' in the config")
    if device == "cpu" or (device == "auto" and not gpu_available()):
        return np
    if not gpu_available():
        raise BackendError(
            "device 'gpu' was requested but CuPy or a CUDA device is not available; "
            "install the 'gpu' extra (pip install -e '.[gpu]') or set device: auto"
        )
    return cupy_namespace()


def cupy_namespace() -> ModuleType:
    """CuPy under the array-API standard's names (``array_api_compat.cupy``: ``cumulative_sum``,
    ``linalg.vector_norm``, ... which CuPy itself lacks); its arrays are plain ``cupy.ndarray``."""
    import array_api_compat.cupy

    return array_api_compat.cupy


def array_namespace(*arrays: Any) -> ModuleType:
    """Namespace shared by ``arrays`` (numpy, CuPy's ``cupy_namespace`` or any array-API namespace)."""
    namespaces = set()
    for a in arrays:
        if a is None or isinstance(a, (int, float)):
            continue
        if hasattr(a, "__array_namespace__") and type(a).__module__.split(".")[0] not in ("numpy", "cupy"):
            namespaces.add(a.__array_namespace__())
        elif type(a).__module__.split(".")[0] == "cupy":
            namespaces.add(cupy_namespace())
        else:
            namespaces.add(np)
    if len(namespaces) > 1:
        names = sorted(getattr(ns, "__name__", str(ns)) for ns in namespaces)
        raise BackendError(f"arrays come from different namespaces ({', '.join(names)}); move them to one device first")
    return namespaces.pop() if namespaces else np


def resolve_dtype(dtype: str, xp: ModuleType = np):
    """The namespace's floating dtype named by the config (``float32`` or ``float64``)."""
    if dtype not in DTYPES:
        raise BackendError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}; fix 'dtype' in the config")
    return getattr(xp, dtype)


def to_device(x: Any, xp: ModuleType, dtype: str | None = None):
    """Copy ``x`` (any array) into namespace ``xp``, optionally casting to ``dtype``."""
    x = to_numpy(x) if xp is np or type(x).__module__.split(".")[0] not in ("numpy", "cupy") else x
    out = xp.asarray(x)
    if dtype is not None:
        out = xp.astype(out, resolve_dtype(dtype, xp)) if hasattr(xp, "astype") else out.astype(dtype)
    return out


def to_numpy(x: Any) -> np.ndarray:
    """Host copy of ``x`` as a numpy array (no copy when it already is one)."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.split(".")[0] == "cupy":
        return x.get()
    return np.asarray(x)


def available_cores() -> int:
    """CPU cores this process may use: those of its affinity mask (where the platform has one),
    at most ``OMP_NUM_THREADS`` when that is set (the workflow sets it to each job's threads)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cores, int(limit))) if limit.isdigit() else cores


# starting the threads of ``each_on_cores`` costs about 0.6 ms: smaller pieces of work run serially
PARALLEL_MIN_ENTRIES = 1 << 16


def each_on_cores(work: Callable[[int], None], count: int, entries: int) -> None:
    """Call ``work(i)`` for i in range(count) on one thread per available core, BLAS limited to
    one thread each (numpy releases the GIL in BLAS, sorts and element-wise loops), so that
    independent matrix products run side by side instead of splitting each one. ``entries`` is
    the array size one call works on; below ``PARALLEL_MIN_ENTRIES`` the calls run serially. An
    exception in any call is raised here."""
    workers = min(count, available_cores())
    if workers < 2 or entries < PARALLEL_MIN_ENTRIES:
        for i in range(count):
            work(i)
        return
    with _thread_libraries().limit(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(count)))


@functools.cache
def _thread_libraries():
    """The process's threaded native libraries (BLAS, OpenMP), found once: finding them walks
    every loaded library."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
