"""Built-in architectures, demo task data and training runs."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pipeline.architectures import MLP, RecurrentNet, build_model
from pipeline.checkpoints import load_checkpoint, load_weights
from pipeline.config import validate_config
from pipeline.extract import extract
from pipeline.jobs import extract_spec
from pipeline.store import open_store
from pipeline.tasks import digits_data, flipflop_trials
from pipeline.train import train


def test_mlp_sites_and_shapes():
    model = MLP(n_in=64, hidden=(32, 24, 16, 12), n_out=10, activation="relu")
    names = dict(model.named_modules())
    for i, width in enumerate((32, 24, 16, 12)):
        assert isinstance(names[f"hidden.{i}.act"], torch.nn.ReLU)
        assert names[f"hidden.{i}.linear"].out_features == width
    assert names["readout"].out_features == 10
    assert model(torch.zeros(5, 64)).shape == (5, 10)


def test_recurrent_net_sites_and_shapes():
    for cell, kind in (("rnn", torch.nn.RNN), ("gru", torch.nn.GRU)):
        model = RecurrentNet(n_in=3, n_hidden=16, n_out=2, cell=cell)
        assert isinstance(model.rnn, kind) and model.rnn.batch_first
        assert cell == "gru" or model.rnn.nonlinearity == "tanh"
        x = torch.randn(4, 7, 3)
        states, _ = model.rnn(x)
        assert states.shape == (4, 7, 16)
        assert torch.allclose(model(x), model.readout(states))
        assert model(x).shape == (4, 7, 2)


def test_build_model_by_name_and_import_path():
    assert isinstance(build_model("mlp", {"hidden": [8, 4]}), MLP)
    assert isinstance(build_model("recurrent", {"cell": "gru"}).rnn, torch.nn.GRU)
    linear = build_model("torch.nn:Linear", {"in_features": 3, "out_features": 2})
    assert linear.weight.shape == (2, 3)
    with pytest.raises(ValueError, match="mlp, recurrent"):
        build_model("transformer", {})
    with pytest.raises(ValueError, match="cannot import module 'no_such_package.mod'.*PYTHONPATH"):
        build_model("no_such_package.mod:Net", {})
    with pytest.raises(ValueError, match="'mlp' does not accept params .*'width'"):
        build_model("mlp", {"width": 3})
    with pytest.raises(ValueError, match="activation='sigmoid'"):
        build_model("mlp", {"activation": "sigmoid"})


def test_digits_data_is_scaled_and_split_stratified():
    data = digits_data(test_fraction=0.25, seed=0)
    X, y, split = data["X"], data["y"], data["split"]
    reference = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    np.testing.assert_allclose(X, reference.data / 16.0, rtol=1e-6)
    assert X.min() == 0.0 and X.max() == 1.0
    assert y.dtype == np.int64 and np.array_equal(y, reference.target)
    assert set(split) == {"train", "test"}
    assert (split == "test").sum() == math.ceil(0.25 * 1797)
    for label in range(10):
        in_class = y == label
        assert abs((split[in_class] == "test").sum() - 0.25 * in_class.sum()) <= 1
    assert not np.array_equal(split, digits_data(seed=1)["split"])
    with pytest.raises(ValueError, match="test_fraction"):
        digits_data(test_fraction=1.0)
    for fraction in (0.001, 0.999):  # extreme fractions still leave every class in both splits
        split = digits_data(test_fraction=fraction)["split"]
        for label in range(10):
            assert set(split[y == label]) == {"train", "test"}, (fraction, label)


def _last_pulse_sign(pulses):
    """Sign of the most recent nonzero entry up to each time step, written as a plain loop."""
    out = np.zeros_like(pulses)
    for t in range(len(pulses)):
        earlier = np.flatnonzero(pulses[: t + 1])
        out[t] = np.sign(pulses[earlier[-1]]) if len(earlier) else 0.0
    return out


def test_flipflop_targets_are_the_sign_of_the_last_pulse():
    trials = flipflop_trials(40, 80, n_bits=3, pulse_prob=0.05, seed=3)
    inputs, targets, condition = trials["inputs"], trials["targets"], trials["condition"]
    assert inputs.shape == targets.shape == (40, 80, 3)
    assert inputs.dtype == targets.dtype == np.float32
    assert set(np.unique(inputs)) <= {-1.0, 0.0, 1.0}
    assert np.all(inputs[:, 0, :] != 0)  # every trial starts from a state set at t=0
    for trial in range(40):
        final = ""
        for bit in range(3):
            expected = _last_pulse_sign(inputs[trial, :, bit])
            np.testing.assert_array_equal(targets[trial, :, bit], expected)
            final += "+" if expected[-1] > 0 else "-"
        assert condition[trial] == final
    flips = np.abs(np.diff(targets, axis=1)) > 0
    assert flips.any() and not flips.all()


def test_flipflop_pulse_rate_matches_pulse_prob():
    inputs = flipflop_trials(500, 100, n_bits=3, pulse_prob=0.04, seed=0)["inputs"]
    rate = (inputs[:, 1:, :] != 0).mean()
    assert abs(rate - 0.04) < 0.003  # about 6 standard errors of the mean over 148500 draws
    signs = inputs[inputs != 0]
    assert abs((signs > 0).mean() - 0.5) < 0.02


def test_digits_training_reaches_high_accuracy(tmp_path):
    out = tmp_path / "digits"
    paths = train(
        "digits", out, params={"hidden": [32, 24, 16, 12]}, seed=0, epochs=4, checkpoint_epochs=[0, 0.5, 4], lr=1e-2
    )
    data = digits_data(seed=0)
    steps_per_epoch = math.ceil((data["split"] == "train").sum() / 32)
    expected_steps = [0, round(0.5 * steps_per_epoch), 4 * steps_per_epoch]
    assert [p.name for p in paths] == [f"step-{s:06d}.safetensors" for s in expected_steps]
    test = data["split"] == "test"
    accuracies = []
    for path, step in zip(paths, expected_steps, strict=True):
        state, meta = load_checkpoint(path)
        assert meta["task"] == "digits" and meta["architecture"] == "mlp" and meta["seed"] == 0
        assert meta["step"] == step and meta["epoch"] == pytest.approx(step / steps_per_epoch)
        model = build_model(meta["architecture"], meta["params"])
        load_weights(model, state, path)
        with torch.no_grad():
            predicted = model(torch.from_numpy(data["X"][test])).argmax(dim=1).numpy()
        accuracy = (predicted == data["y"][test]).mean()
        assert meta["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
        accuracies.append(accuracy)
    assert accuracies[0] < 0.3
    assert accuracies[-1] > 0.8


def test_digits_training_is_deterministic_given_seed(tmp_path):
    kwargs = dict(params={"hidden": [8]}, epochs=1, checkpoint_epochs=[1])
    first = load_checkpoint(train("digits", tmp_path / "a", seed=5, **kwargs)[0])[0]
    second = load_checkpoint(train("digits", tmp_path / "b", seed=5, **kwargs)[0])[0]
    other_path = train("digits", tmp_path / "c", seed=6, **kwargs)[0]
    other, meta = load_checkpoint(other_path)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["readout.weight"], other["readout.weight"])
    # the test split follows split_seed, not the training seed: recompute the accuracy on split 0
    data = digits_data(seed=0)
    test = data["split"] == "test"
    model = build_model("mlp", meta["params"])
    load_weights(model, other, other_path)
    with torch.no_grad():
        predicted = model(torch.from_numpy(data["X"][test])).argmax(dim=1).numpy()
    assert meta["split_seed"] == 0
    assert meta["test_accuracy"] == pytest.approx((predicted == data["y"][test]).mean(), abs=1e-6)


def _flipflop_mse(path, trials):
    state, meta = load_checkpoint(path)
    model = build_model(meta["architecture"], meta["params"])
    load_weights(model, state, path)
    with torch.no_grad():
        output = model(torch.from_numpy(trials["inputs"])).numpy()
    return float(np.mean((output - trials["targets"]) ** 2)), meta


def test_flipflop_training_lowers_the_error(tmp_path):
    paths = train(
        "flipflop",
        tmp_path / "ff",
        params={"n_hidden": 32, "cell": "rnn"},
        seed=0,
        steps=200,
        checkpoint_steps=[0, 200],
        lr=3e-3,
        batch_size=32,
        n_steps=40,
    )
    assert [p.name for p in paths] == ["step-000000.safetensors", "step-000200.safetensors"]
    planted = flipflop_trials(200, 40, n_bits=3, seed=12345)
    before, meta_before = _flipflop_mse(paths[0], planted)
    after, meta_after = _flipflop_mse(paths[1], planted)
    assert meta_after["task"] == "flipflop" and meta_after["step"] == 200
    assert meta_after["params"] == {"n_in": 3, "n_out": 3, "n_hidden": 32, "cell": "rnn"}
    assert before > 0.8  # an untrained network outputs about 0 against targets of +-1
    assert after < 0.4 * before
    assert meta_after["test_mse"] < 0.4 * meta_before["test_mse"]


def test_train_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="task='vision'"):
        train("vision", tmp_path, params={}, seed=0)
    with pytest.raises(ValueError, match="checkpoint_epochs"):
        train("digits", tmp_path, params={}, seed=0, epochs=2, checkpoint_epochs=[3])
    with pytest.raises(ValueError, match="checkpoint_steps"):
        train("flipflop", tmp_path, params={}, seed=0, steps=10, checkpoint_steps=[2.5])


def test_training_restores_the_torch_thread_count(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train("digits", tmp_path, params={"hidden": [4]}, seed=0, epochs=1, checkpoint_epochs=[1], threads=1)
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="threads=0"):
            train("flipflop", tmp_path, params={}, seed=0, steps=1, checkpoint_steps=[1], threads=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_model_trained_with_other_task_sizes_is_rebuilt_for_extraction(tmp_path):
    # the extraction spec of a trained model gives the architecture the sizes it was trained with
    config = validate_config({
        "stimuli": {"ff1": {"kind": "flipflop", "n_bits": 1, "n_trials": 4, "n_steps": 10}},
        "models": {"rnn": {"source": "train", "task": "flipflop", "architecture": "recurrent",
                           "params": {"n_hidden": 8}, "seeds": [0], "stimuli": ["ff1"], "sites": ["rnn"],
                           "training": {"steps": 2, "checkpoint_steps": [2], "n_bits": 1, "n_steps": 10}}},
    })
    spec = extract_spec(config, "rnn", "base-seed0", "ff1")
    assert spec["model"]["params"] == {"n_in": 1, "n_out": 1, "n_hidden": 8}
    (path,) = train("flipflop", tmp_path / "base-seed0", params={"n_hidden": 8}, seed=0,
                    **config["models"]["rnn"]["training"])
    store = extract(spec, tmp_path / "activations" / "rnn" / "base-seed0" / path.stem / "ff1.zarr", checkpoint=path)
    assert open_store(store)["rnn"].shape == (4, 10, 8)
