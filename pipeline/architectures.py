"""Small built-in network architectures for the demo experiments, and model construction by name.

Submodules are named so that recording sites read well: ``hidden.0.act`` is the activation of
the first hidden layer of an :class:`MLP`, ``rnn`` the hidden state over time of a
:class:`RecurrentNet`.
"""

from __future__ import annotations

import importlib
import inspect

from torch import nn

from pipeline.errors import InputError, ModelError, first_line

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
CELLS = ("rnn", "gru")


class Block(nn.Module):
    """One hidden layer: ``act(linear(x))``, initialized for its nonlinearity (Glorot normal weights scaled by
    its gain, zero bias), so that a deep narrow ReLU stack does not start with most units silent."""

    def __init__(self, n_in: int, n_out: int, activation: str):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.act = ACTIVATIONS[activation]()
        nn.init.xavier_normal_(self.linear.weight, gain=nn.init.calculate_gain(activation))
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        return self.act(self.linear(x))


class MLP(nn.Module):
    """Feed-forward classifier with named hidden blocks and a linear readout.

    Parameters
    ----------
    n_in : int
        Input features.
    hidden : sequence of int
        Width of each hidden layer.
    n_out : int
        Number of classes (logits).
    activation : {"tanh", "relu"}
        Nonlinearity of the hidden layers.
    """

    def __init__(self, n_in: int = 64, hidden=(32, 24, 16, 12), n_out: int = 10, activation: str = "tanh"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ModelError(f"activation={activation!r} is not supported; use one of {', '.join(sorted(ACTIVATIONS))}")
        widths = [int(n_in), *(int(width) for width in hidden)]
        self.hidden = nn.ModuleList(Block(a, b, activation) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.readout = nn.Linear(widths[-1], int(n_out))

    def forward(self, x):
        """Map inputs of shape (batch, n_in) to logits of shape (batch, n_out)."""
        for block in self.hidden:
            x = block(x)
        return self.readout(x)


class RecurrentNet(nn.Module):
    """Single-layer recurrent network (vanilla tanh RNN or GRU) with a linear readout at every step.

    Parameters
    ----------
    n_in : int
        Input channels per time step.
    n_hidden : int
        Hidden units.
    n_out : int
        Output channels per time step.
    cell : {"rnn", "gru"}
        Recurrent cell type.
    """

    def __init__(self, n_in: int = 3, n_hidden: int = 64, n_out: int = 3, cell: str = "rnn"):
        super().__init__()
        if cell == "rnn":
            self.rnn = nn.RNN(int(n_in), int(n_hidden), nonlinearity="tanh", batch_first=True)
        elif cell == "gru":
            self.rnn = nn.GRU(int(n_in), int(n_hidden), batch_first=True)
        else:
            raise ModelError(f"cell={cell!r} is not supported; use one of {', '.join(CELLS)}")
        self.readout = nn.Linear(int(n_hidden), int(n_out))

    def forward(self, x):
        """Map inputs of shape (batch, time, n_in) to outputs of shape (batch, time, n_out)."""
        if x.ndim != 3:  # nn.RNN would read a 2-D batch as one unbatched sequence
            raise ModelError(f"RecurrentNet takes input of shape (batch, time, features), got {tuple(x.shape)}")
        states, _ = self.rnn(x)
        return self.readout(states)


BUILTIN = {"mlp": MLP, "recurrent": RecurrentNet}


def build_model(architecture: str, params: dict) -> nn.Module:
    """Construct a model from a built-in name or an import path.

    Parameters
    ----------
    architecture : str
        ``"mlp"``, ``"recurrent"``, or ``"package.module:ClassName"`` for any importable
        ``nn.Module`` subclass (or factory).
    params : dict
        Keyword arguments for the constructor.

    Returns
    -------
    torch.nn.Module
    """
    if architecture in BUILTIN:
        factory = BUILTIN[architecture]
    else:
        factory = _import(architecture)
    params = params or {}
    _check_params(architecture, factory, params)
    try:
        return factory(**params)
    except InputError:
        raise
    except (TypeError, ValueError) as err:
        raise ModelError(
            f"architecture {architecture!r} cannot be built from params {params!r} ({first_line(err)})"
        ) from err


def _check_params(architecture: str, factory, params: dict) -> None:
    """Raise ModelError naming the params the factory's signature rejects and those it accepts."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some callables (C extensions) have no signature to check against
        return
    try:
        signature.bind(**params)
    except TypeError as err:
        accepted = [name for name, p in signature.parameters.items()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise ModelError(f"architecture {architecture!r} does not accept params {params!r} ({err}); "
                         f"its params: {', '.join(accepted) or 'none'}") from None


def _import(architecture: str):
    hint = f"use a built-in name ({', '.join(BUILTIN)}) or 'package.module:ClassName'"
    module_name, sep, attribute = architecture.partition(":")
    if not sep or not module_name or not attribute:
        raise ModelError(f"architecture {architecture!r} is unknown; {hint}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        if isinstance(err, ModuleNotFoundError) and f"{module_name}.".startswith(f"{err.name}."):
            where = (f"the jobs must be able to import it: install your package (pip install -e <its folder>), "
                     f"add its folder to PYTHONPATH, or put {module_name.replace('.', '/')}.py in the folder "
                     "snakemake runs in")
        else:  # the module exists but an import inside it fails
            where = "install what it imports in the environment the jobs run in"
        raise ModelError(
            f"architecture {architecture!r}: cannot import module {module_name!r} ({err}); {where}"
        ) from err
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelError(f"architecture {architecture!r}: module {module_name!r} has no class {attribute!r}; {hint}")
    return factory
