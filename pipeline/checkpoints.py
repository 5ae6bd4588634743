"""Checkpoint files: save and load weights with metadata, find and order a training series.

Checkpoints are written as safetensors files whose header carries the metadata as JSON under
the key ``"pipeline"``; a safetensors file without that key gives its plain header keys. PyTorch
pickles (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are read with ``weights_only=True``, so loading
never executes code stored in a file. PyTorch and safetensors load only when weights are read or
written: the workflow imports this module to find checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import CheckpointError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

METADATA_KEY = "pipeline"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
_STATE_DICT_KEYS = ("state_dict", "model")
_SHOWN_KEYS = 5
_STEP_KEYS = ("step", "global_step", "epoch")  # global_step: PyTorch Lightning
_UMASK = os.umask(0o022)  # read once, at import (reading it means setting it; 022 meanwhile is a safe value)
os.umask(_UMASK)


def save_checkpoint(path, state_dict: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write weights and metadata to a safetensors file, atomically.

    Parameters
    ----------
    path : str or Path
        Target file; should end in ``.safetensors``. Missing parent folders are created.
    state_dict : dict of str to torch.Tensor
        Weights to store (moved to CPU and made contiguous).
    metadata : dict
        JSON-serializable metadata (training step, task, ...), stored under ``"pipeline"``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    try:
        header = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    except TypeError as err:
        raise ValueError(f"metadata for {path} is not JSON-serializable ({err}); pass plain Python values") from err
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 -> the mode the user's other new files get
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read weights and metadata from a checkpoint file on the CPU.

    Parameters
    ----------
    path : str or Path
        A ``.safetensors`` file, or a PyTorch file (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) holding
        either a bare state dict or a dict with ``"state_dict"`` or ``"model"`` beside plain keys
        such as ``step`` or ``epoch``.

    Returns
    -------
    state_dict : dict of str to torch.Tensor
    metadata : dict
        The ``"pipeline"`` header of a safetensors file, else its plain header keys (values that
        read as JSON numbers or booleans become those); for a PyTorch file the plain keys beside
        the weights. Empty when there are none.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != SAFETENSORS_SUFFIX and suffix not in TORCH_SUFFIXES:
        known = ", ".join((SAFETENSORS_SUFFIX, *TORCH_SUFFIXES))
        raise CheckpointError(f"checkpoint {path} has unknown extension {path.suffix!r}; use one of {known}")
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; check the path or the checkpoint folder in the config"
        )
    if suffix == SAFETENSORS_SUFFIX:
        return _load_safetensors(path)
    return _load_torch(path)


def _corrupt(path: Path) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is truncated or corrupt; re-save or delete it")


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            state_dict = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise _corrupt(path) from err
    if METADATA_KEY not in header:
        return state_dict, {key: _header_value(value) for key, value in header.items()}
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError:
        metadata = None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint {path} has unreadable {METADATA_KEY!r} metadata (not a JSON object); "
                              "re-save it")
    return state_dict, metadata


def _header_value(text: str):
    """A plain safetensors header value: a finite JSON number or a boolean as such, else the string."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    if isinstance(value, (bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return text


def _load_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    import torch

    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # the weights-only unpickler words every failure alike; only an unsupported global is code
        if "unsupported global" not in str(err).lower():
            raise _corrupt(path) from err
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"a {found.group(1)} object" if found else "objects"
        raise CheckpointError(
            f"checkpoint {path} holds {what} that would need code execution to load; keep only the weights and plain "
            "values in it (numbers, strings, lists, dicts; numpy numbers converted with float() or int()), e.g. "
            "{'state_dict': model.state_dict(), 'step': 100}, or save it as safetensors"
        ) from err
    except (EOFError, OSError, RuntimeError, ValueError, KeyError, IndexError) as err:
        # a file that is not a zip is read as a raw pickle stream, whose opcodes fail in any of these ways
        raise _corrupt(path) from err
    if not isinstance(content, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(content).__name__}, not a state dict; "
            "re-save it with torch.save(model.state_dict(), path)"
        )
    metadata = {}
    for key in _STATE_DICT_KEYS:
        if isinstance(content.get(key), dict):
            metadata = {k: v for k, v in content.items() if k != key and _is_plain(v)}
            content = content[key]
            break
    bad = [name for name, value in content.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} has non-tensor entries {bad[:_SHOWN_KEYS]}; store the weights as a state dict "
            "or under the key 'state_dict' or 'model'"
        )
    return dict(content), metadata


def _is_plain(value) -> bool:
    """True for JSON-like values: numbers, strings, booleans, None, and lists/dicts of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def sha256_file(path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file, read in chunks of ``chunk_size`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(files) -> str:
    """SHA-256 naming a model's weights: the file's own digest when there is one file; for weights
    sharded over several files, the digest of the lines ``'<file name> <sha256>\\n'`` in name order."""
    files = sorted(Path(f) for f in files)
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{f.name} {sha256_file(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def last_integer(text: str) -> int | None:
    """The last run of digits in ``text`` as an integer (``'epoch-3_model'`` -> 3), else None."""
    numbers = re.findall(r"\d+", text)
    return int(numbers[-1]) if numbers else None


def checkpoint_step(metadata: dict, name: str | None = None) -> int:
    """A checkpoint's training step: the first whole number among ``metadata``'s ``step``,
    ``global_step`` and ``epoch``, else the last integer in its ``name``, else -1."""
    for key in _STEP_KEYS:
        step = metadata.get(key)
        if not isinstance(step, bool) and isinstance(step, (int, float)) and float(step).is_integer():
            return int(step)
    number = None if name is None else last_integer(name)
    return -1 if number is None else number


def training_order(step, name) -> tuple:
    """Sort key of a checkpoint within its run: by training step, those without one (-1) last, then by
    name (as ``discover_checkpoints`` orders files without a number)."""
    step = -1 if step is None else int(step)
    return (step < 0, step, name or "")


def discover_checkpoints(folder, pattern: str) -> list[Path]:
    """Checkpoint files in ``folder`` matching the glob ``pattern``, in training order.

    The search does not descend into subfolders unless ``pattern`` contains ``'/'`` (e.g.
    ``"*/model.pt"`` or ``"**/*.pt"``). Files sort by the last integer in their path below
    ``folder`` (``epoch-3/model.pt`` by 3; files without one come last), then by that path.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist; create it or fix the folder in the config")
    files = [path for path in folder.glob(pattern) if path.is_file()]

    def key(path: Path):
        relative = path.relative_to(folder)
        number = last_integer(str(relative.with_suffix("")))
        return (number is None, number or 0, str(relative))

    return sorted(files, key=key)


def glob_hint(folder) -> str:
    """For a series whose glob matches nothing: the most common kind of checkpoint file directly in ``folder``
    and a glob for them, as "; it holds 7 .pt files (glob '*.pt' matches them)", or "" when there is none."""
    kinds = (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES)
    folder = Path(folder)
    counts = Counter(p.suffix for p in folder.iterdir() if p.is_file() and p.suffix.lower() in kinds)
    if not counts:
        return ""
    suffix, n = counts.most_common(1)[0]
    return f"; it holds {n} {suffix} file{'s' if n > 1 else ''} (glob '*{suffix}' matches {'them' if n > 1 else 'it'})"


def checkpoint_name(path, folder=None) -> str:
    """A checkpoint's name: its path below ``folder`` (or its file name) without the suffix, every
    character outside letters, digits, '-', '_', '.' replaced by '_' (``epoch-3/model.pt`` ->
    ``epoch-3_model``)."""
    path = Path(path)
    relative = path.relative_to(folder) if folder is not None else Path(path.name)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(relative.with_suffix("")))
    if not name.strip("."):
        raise CheckpointError(f"checkpoint {path} has no usable file name; rename it (e.g. step-000100.safetensors)")
    return name


def name_checkpoints(folder, files) -> dict[str, Path]:
    """Name -> path for checkpoint ``files`` found in ``folder``, refusing two files with one name."""
    names: dict[str, Path] = {}
    for path in files:
        name = checkpoint_name(path, folder)
        if name in names:
            raise CheckpointError(f"checkpoints {names[name]} and {path} would both be named {name!r}; "
                                  "rename one of them")
        names[name] = Path(path)
    return names


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source) -> None:
    """Load ``state_dict`` into ``model`` strictly, with a one-line error naming what does not fit.

    A prefix that every key shares is removed when more keys then fit the model: the ``module.``
    of (Distributed)DataParallel, the ``_orig_mod.`` of torch.compile, the attribute that held the
    model in a PyTorch Lightning module (``model.``), or several of these.

    Parameters
    ----------
    model : torch.nn.Module
    state_dict : dict of str to torch.Tensor
    source : str or Path
        Where the weights come from, for the error message.
    """
    expected = model.state_dict()
    state_dict = _unwrap(state_dict, expected, source)
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    mismatched = [
        name for name in expected if name in state_dict and tuple(state_dict[name].shape) != tuple(expected[name].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    for name in mismatched[:_SHOWN_KEYS]:
        found, wanted = tuple(state_dict[name].shape), tuple(expected[name].shape)
        problems.append(f"shape mismatch for {name} (checkpoint {found} vs model {wanted})")
    if problems:
        # keys missing on both sides are named differently: another class saved them, params cannot explain it
        hint = ("its key names differ from the model's; check that the architecture is the class that saved it"
                if missing and unexpected else "check the architecture params in the config")
        raise CheckpointError(f"checkpoint {source} does not fit {type(model).__name__}: {', '.join(problems)}; {hint}")
    model.load_state_dict(state_dict, strict=True)


def _unwrap(state_dict: dict[str, torch.Tensor], expected: dict, source) -> dict[str, torch.Tensor]:
    """``state_dict`` with the leading key components that all its keys share removed, one at a time, as far as
    that fits the most keys of ``expected``."""
    best, candidate, removed, best_removed = state_dict, state_dict, "", ""
    while candidate and all("." in name for name in candidate):
        heads = {name.split(".", 1)[0] for name in candidate}
        if len(heads) != 1:
            break
        prefix = heads.pop() + "."
        candidate = {name.removeprefix(prefix): tensor for name, tensor in candidate.items()}
        removed += prefix
        if len(candidate.keys() & expected.keys()) > len(best.keys() & expected.keys()):
            best, best_removed = candidate, removed
    if best_removed:
        log.info("checkpoint %s: removed the prefix %r of every key (saved from a wrapped model)", source, best_removed)
    return best


def _first(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN_KEYS])
    more = f", ... (+{len(names) - _SHOWN_KEYS} more)" if len(names) > _SHOWN_KEYS else ""
    return f"[{shown}{more}]"
