"""Data for the built-in demo tasks: handwritten digits and the 3-bit flip-flop."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

DIGITS_PIXELS, DIGITS_CLASSES = 64, 10
FLIPFLOP_BITS = 3


def model_params(task: str, params: dict, training: dict) -> dict:
    """Architecture params of a model trained on a built-in task: ``params`` (the config's), with the
    task's input and output sizes as ``n_in`` and ``n_out`` where they are not given.

    ``training`` is the config's training settings (the flip-flop's ``n_bits`` sets both sizes).
    """
    if task == "flipflop":
        n_bits = training.get("n_bits", FLIPFLOP_BITS)
        sizes = {"n_in": n_bits, "n_out": n_bits}
    else:
        sizes = {"n_in": DIGITS_PIXELS, "n_out": DIGITS_CLASSES}
    return {**sizes, **params}


def _digits_file() -> Path:
    """The digits CSV that scikit-learn ships, found without importing scikit-learn (slow to import)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-learn, which ships the digits data set, is not installed; pip install it")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def digits_data(test_fraction: float = 0.25, seed: int = 0) -> dict:
    """The scikit-learn 8x8 handwritten digits with a stratified train/test split.

    Parameters
    ----------
    test_fraction : float
        Share of the images in the test split, in (0, 1); every class keeps at least one image in each split.
    seed : int
        Seed of the split.

    Returns
    -------
    dict
        ``X`` (1797, 64) float32 pixel intensities in [0, 1]; ``y`` (1797,) int64 digit labels;
        ``split`` (1797,) str, ``"train"`` or ``"test"`` per image.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction!r} must lie strictly between 0 and 1")
    data = np.loadtxt(_digits_file(), delimiter=",")
    X = (data[:, :-1] / 16.0).astype(np.float32)
    y = data[:, -1].astype(np.int64)
    rng = np.random.default_rng(seed)
    test_index = np.concatenate([  # stratified: the test share of every class, at least one image, not all
        rng.permutation(members)[: min(max(round(test_fraction * len(members)), 1), len(members) - 1)]
        for members in (np.flatnonzero(y == label) for label in np.unique(y))
    ])
    split = np.full(len(y), "train")
    split[test_index] = "test"
    return {"X": X, "y": y, "split": split}


def flipflop_trials(n_trials: int, n_steps: int, n_bits: int = FLIPFLOP_BITS, pulse_prob: float = 0.04, seed=0) -> dict:
    """Trials of the n-bit flip-flop task (Sussillo & Barak 2013).

    Each input channel carries brief pulses of +1 or -1; the target of each channel is the sign
    of its most recent pulse. Every trial starts with a pulse of random sign on every channel at
    t=0, which sets a random initial state, so targets are always +1 or -1. After t=0 each
    channel pulses independently with probability ``pulse_prob`` per step, with random sign.

    Parameters
    ----------
    n_trials, n_steps, n_bits : int
        Trials, time steps per trial and channels.
    pulse_prob : float
        Probability of a pulse per channel and step after t=0.
    seed : int or numpy SeedSequence
        Seed of the trial generator.

    Returns
    -------
    dict
        ``inputs`` (n_trials, n_steps, n_bits) float32 in {-1, 0, +1}; ``targets`` (n_trials,
        n_steps, n_bits) float32 in {-1, +1}; ``condition`` (n_trials,) str, the final state as
        one ``+`` or ``-`` per channel, e.g. ``"+-+"``.
    """
    for name, value in (("n_trials", n_trials), ("n_steps", n_steps), ("n_bits", n_bits)):
        if int(value) < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if not 0 <= pulse_prob <= 1:
        raise ValueError(f"pulse_prob={pulse_prob!r} must lie in [0, 1]")
    rng = np.random.default_rng(seed)
    shape = (int(n_trials), int(n_steps), int(n_bits))
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=shape)
    pulses = rng.random(shape) < pulse_prob
    pulses[:, 0, :] = True
    inputs = np.where(pulses, signs, 0.0).astype(np.float32)
    targets = np.empty(shape, dtype=np.float32)
    state = inputs[:, 0, :]
    for t in range(shape[1]):
        state = np.where(pulses[:, t, :], inputs[:, t, :], state)
        targets[:, t, :] = state
    condition = np.array(["".join("+" if v > 0 else "-" for v in final) for final in targets[:, -1, :]])
    return {"inputs": inputs, "targets": targets, "condition": condition}
