"""Train the built-in demo models and write a series of checkpoints along the way.

Two tasks: an :class:`~pipeline.architectures.MLP` classifying the scikit-learn digits, and a
:class:`~pipeline.architectures.RecurrentNet` solving the 3-bit flip-flop task. Each checkpoint is
a safetensors file ``step-{step:06d}.safetensors`` whose metadata carries the task, architecture,
architecture params (enough to rebuild the model), seed, step and performance at that step.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.architectures import build_model
from pipeline.checkpoints import save_checkpoint
from pipeline.tasks import FLIPFLOP_BITS, digits_data, flipflop_trials, model_params

TASKS = ("digits", "flipflop")
FLIPFLOP_TEST_TRIALS = 256
CLIP_NORM = 1.0


@contextmanager
def torch_threads(n: int):
    """Run the enclosed block with ``n`` PyTorch CPU threads, then restore the previous count.

    The demo models are small: one thread is about as fast as several on an idle machine and far
    faster when parallel jobs share the cores, where extra threads contend for them.
    """
    if int(n) < 1:
        raise ValueError(f"threads={n!r} must be a positive integer")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def checkpoint_path(out_dir, step: int) -> Path:
    """File name of the checkpoint written at ``step``."""
    return Path(out_dir) / f"step-{step:06d}.safetensors"


def train_digits_mlp(
    out_dir,
    *,
    params: dict,
    seed: int,
    epochs: int,
    checkpoint_epochs: list[float],
    lr: float = 1e-3,
    batch_size: int = 32,
    test_fraction: float = 0.25,
    split_seed: int = 0,
    threads: int = 1,
) -> list[Path]:
    """Train an MLP on the digits with Adam and cross-entropy, saving checkpoints at chosen epochs.

    Parameters
    ----------
    out_dir : str or Path
        Folder for the checkpoints (created if missing).
    params : dict
        MLP params (``hidden``, ``activation``, ...); ``n_in`` and ``n_out`` default to 64 and 10.
    seed : int
        Seeds the initial weights and the batch order.
    epochs : int
        Passes over the training split.
    checkpoint_epochs : list of float
        Epochs at which to save, possibly fractional (0 is the initialization); each is rounded
        to the nearest optimizer step.
    lr, batch_size, test_fraction
        Adam learning rate, minibatch size and test share of the data.
    split_seed : int
        Seed of the train/test split, kept apart from ``seed`` so that runs with different seeds
        share one test set (the one a digits stimulus set with the same split seed selects).
    threads : int
        CPU threads for PyTorch during training (restored afterwards).

    Returns
    -------
    list of Path
        The checkpoint files, in step order.
    """
    if int(epochs) < 1:
        raise ValueError(f"epochs={epochs!r} must be a positive integer")
    data = digits_data(test_fraction=test_fraction, seed=split_seed)
    is_train = data["split"] == "train"
    X_train, y_train = torch.from_numpy(data["X"][is_train]), torch.from_numpy(data["y"][is_train])
    X_test, y_test = torch.from_numpy(data["X"][~is_train]), torch.from_numpy(data["y"][~is_train])
    steps_per_epoch = math.ceil(len(y_train) / batch_size)
    total = int(epochs) * steps_per_epoch
    bad = [e for e in checkpoint_epochs if not 0 <= e <= epochs]
    if bad or not checkpoint_epochs:
        raise ValueError(f"checkpoint_epochs={checkpoint_epochs!r} must be a non-empty list of epochs in [0, {epochs}]")
    save_steps = sorted({round(e * steps_per_epoch) for e in checkpoint_epochs})

    params = model_params("digits", params or {}, {})
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with torch_threads(threads):
        torch.manual_seed(seed)
        model = build_model("mlp", params)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(seed)
        base = {
            "task": "digits",
            "architecture": "mlp",
            "params": params,
            "seed": seed,
            "lr": lr,
            "batch_size": batch_size,
            "test_fraction": test_fraction,
            "split_seed": split_seed,
        }

        def save(step: int) -> Path:
            model.eval()
            with torch.no_grad():
                train_loss = loss_fn(model(X_train), y_train).item()
                test_loss = loss_fn(model(X_test), y_test).item()
                accuracy = (model(X_test).argmax(dim=1) == y_test).float().mean().item()
            model.train()
            metrics = {"train_loss": train_loss, "test_loss": test_loss, "test_accuracy": accuracy}
            path = checkpoint_path(out_dir, step)
            save_checkpoint(
                path, model.state_dict(), {**base, "step": step, "epoch": step / steps_per_epoch, **metrics}
            )
            return path

        paths = [save(0)] if save_steps[0] == 0 else []
        step = 0
        with tqdm(total=total, desc="digits mlp", unit="step", disable=None) as progress:
            for _ in range(int(epochs)):
                order = torch.randperm(len(y_train), generator=generator)
                for batch in order.split(batch_size):
                    optimizer.zero_grad()
                    loss = loss_fn(model(X_train[batch]), y_train[batch])
                    loss.backward()
                    optimizer.step()
                    step += 1
                    progress.update()
                    if step in save_steps:
                        paths.append(save(step))
        return paths


def train_flipflop(
    out_dir,
    *,
    params: dict,
    seed: int,
    steps: int,
    checkpoint_steps: list[int],
    lr: float = 1e-3,
    batch_size: int = 64,
    n_steps: int = 60,
    n_bits: int = FLIPFLOP_BITS,
    threads: int = 1,
) -> list[Path]:
    """Train a RecurrentNet on the flip-flop task with Adam and mean squared error.

    Every optimizer step draws a fresh batch of trials; gradients are clipped to norm 1.

    Parameters
    ----------
    out_dir : str or Path
        Folder for the checkpoints (created if missing).
    params : dict
        RecurrentNet params (``n_hidden``, ``cell``); ``n_in`` and ``n_out`` default to ``n_bits``.
    seed : int
        Seeds the initial weights and the trial generator.
    steps : int
        Optimizer steps.
    checkpoint_steps : list of int
        Steps at which to save (0 is the initialization).
    lr, batch_size, n_steps, n_bits
        Adam learning rate, trials per batch, time steps per trial and flip-flop channels.
    threads : int
        CPU threads for PyTorch during training (restored afterwards).

    Returns
    -------
    list of Path
        The checkpoint files, in step order. Metadata include ``test_mse`` on a fixed held-out
        batch and ``train_loss``, the MSE on the training batch drawn at that step.
    """
    if int(steps) < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer")
    bad = [s for s in checkpoint_steps if not 0 <= s <= steps or int(s) != s]
    if bad or not checkpoint_steps:
        raise ValueError(f"checkpoint_steps={checkpoint_steps!r} must be a non-empty list of integers in [0, {steps}]")
    save_steps = {int(s) for s in checkpoint_steps}

    params = model_params("flipflop", params or {}, {"n_bits": n_bits})
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with torch_threads(threads):
        torch.manual_seed(seed)
        model = build_model("recurrent", params)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = nn.MSELoss()
        test_seed, train_seed = np.random.SeedSequence(seed).spawn(2)
        test = flipflop_trials(FLIPFLOP_TEST_TRIALS, n_steps, n_bits, seed=test_seed)
        test_inputs, test_targets = torch.from_numpy(test["inputs"]), torch.from_numpy(test["targets"])
        batch_seeds = train_seed.spawn(int(steps) + 1)
        base = {
            "task": "flipflop",
            "architecture": "recurrent",
            "params": params,
            "seed": seed,
            "lr": lr,
            "batch_size": batch_size,
            "n_steps": n_steps,
            "n_bits": n_bits,
        }

        paths = []
        with tqdm(total=int(steps), desc="flip-flop rnn", unit="step", disable=None) as progress:
            for step in range(int(steps) + 1):
                batch = flipflop_trials(batch_size, n_steps, n_bits, seed=batch_seeds[step])
                loss = loss_fn(model(torch.from_numpy(batch["inputs"])), torch.from_numpy(batch["targets"]))
                if step in save_steps:
                    with torch.no_grad():
                        test_mse = loss_fn(model(test_inputs), test_targets).item()
                    metadata = {**base, "step": step, "test_mse": test_mse, "train_loss": loss.item()}
                    path = checkpoint_path(out_dir, step)
                    save_checkpoint(path, model.state_dict(), metadata)
                    paths.append(path)
                if step == steps:
                    break
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
                optimizer.step()
                progress.update()
        return paths


def train(task: str, out_dir, *, params: dict, seed: int, **train_params) -> list[Path]:
    """Train the built-in model of ``task`` ("digits" or "flipflop"); see the task's function for parameters."""
    if task == "digits":
        return train_digits_mlp(out_dir, params=params, seed=seed, **train_params)
    if task == "flipflop":
        return train_flipflop(out_dir, params=params, seed=seed, **train_params)
    raise ValueError(f"task={task!r} has no built-in training; use one of {list(TASKS)}")
