"""Shared fixtures: small activation stores written through the store's own writer; a process holding a writer
lock."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.store import StoreWriter


def write_store(path: Path, sites: dict[str, np.ndarray], mask: np.ndarray, batch: int = 4,
                without: tuple[str, ...] = (), **attrs) -> Path:
    """Write a complete activation store.

    Parameters
    ----------
    path : store path (``.zarr``).
    sites : site name -> values of shape (stimuli, positions, units).
    mask : (stimuli, positions) bool, True on real positions.
    batch : stimuli per written batch.
    without : coordinates left out (of label, text, token), as for a user's stimuli without them.
    attrs : extra provenance attributes.

    Returns
    -------
    The store path.
    """
    n, n_pos = mask.shape
    coords = {
        "stimulus": (("stimulus",), np.array([f"stim-{i:02d}" for i in range(n)])),
        "label": (("stimulus",), np.array([f"cat{i % 3}" for i in range(n)])),
        "text": (("stimulus",), np.array([f"sentence number {i}" for i in range(n)])),
        "token": (("stimulus", "position"), np.array([[f"t{i}.{p}" for p in range(n_pos)] for i in range(n)])),
        "mask": (("stimulus", "position"), mask),
    }
    coords = {name: coord for name, coord in coords.items() if name not in without}
    shapes = {site: values.shape[1:] for site, values in sites.items()}
    writer = StoreWriter(path, shapes, coords, {"fingerprint": "test", "model_id": "planted", **attrs})
    for start in range(0, n, batch):
        writer.write({site: values[start:start + batch] for site, values in sites.items()})
    return writer.finish()


@pytest.fixture
def store_writer():
    """The ``write_store`` helper, for tests that need a small complete store."""
    return write_store


HOLD_LOCK = """import sys, time
from pipeline.store import writer_lock
with writer_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def lock_holder():
    """Start a process that holds the writer lock of a path for some seconds (as a job left running by a killed
    workflow would); returns it once it holds the lock. Killed at the end of the test."""
    started = []

    def start(path, seconds: float = 60.0) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)], stdout=subprocess.PIPE,
                                text=True)
        started.append(proc)
        assert proc.stdout.readline() == "held\n"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()
        proc.stdout.close()
