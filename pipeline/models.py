"""Load the models the workflow records from: Hugging Face transformers and checkpoint series."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.architectures import build_model
from pipeline.checkpoints import checkpoint_step, load_checkpoint, load_weights, sha256_file, weights_sha256
from pipeline.config import hf_model_folder
from pipeline.errors import ModelError, first_line


@dataclass
class LoadedModel:
    """A model ready for recording, with what is needed to feed it and where it came from."""

    name: str
    module: torch.nn.Module
    takes_text: bool
    tokenizer: object | None = None
    provenance: dict = field(default_factory=dict)


def torch_device(device: str) -> torch.device:
    """The torch device for the config's ``device`` (auto picks CUDA when present)."""
    if device == "gpu" and not torch.cuda.is_available():
        raise ModelError("device 'gpu' was requested but this PyTorch build sees no CUDA device; "
                         "install a CUDA build of PyTorch or set device: auto")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


def load_huggingface(name: str, path: str, device: torch.device) -> LoadedModel:
    """A pretrained transformer and its tokenizer, from a local folder, never from the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    folder = hf_model_folder(name, path)
    try:
        module = AutoModel.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # missing files, damaged weights (SafetensorError), unknown classes, ...
        raise ModelError(f"model {name!r}: cannot load {folder}: {first_line(err)}; "
                         "check or re-download the model folder") from None
    vocab_size = getattr(module.config, "vocab_size", None)
    if vocab_size and len(tokenizer) < vocab_size // 2:  # transformers builds a stub when the files are missing
        raise ModelError(f"model {name!r}: the tokenizer in {folder} knows {len(tokenizer)} tokens of the model's "
                         f"{vocab_size}; save the tokenizer into the folder too (tokenizer.save_pretrained)")
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers; the attention mask still marks the padding
        if tokenizer.eos_token is None:
            raise ModelError(f"model {name!r}: the tokenizer in {folder} has neither a pad nor an end-of-text token; "
                             "add a pad_token to its tokenizer_config.json")
        tokenizer.pad_token = tokenizer.eos_token
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    provenance = {
        "model_id": name,
        "model_path": str(folder),
        "model_class": type(module).__name__,
        "checkpoint": str(weights[0]) if len(weights) == 1 else str(folder),
        "checkpoint_sha256": weights_sha256(weights) if weights else "",
        "step": -1,
    }
    return LoadedModel(name, module.to(device).eval(), True, tokenizer, provenance)


def load_from_checkpoint(name: str, architecture: str, params: dict, checkpoint: Path,
                         device: torch.device, checkpoint_name: str | None = None) -> LoadedModel:
    """Build ``architecture`` with ``params`` and load the checkpoint's weights (no pickled code runs).

    The step is the checkpoint's metadata step, else the number in ``checkpoint_name``."""
    state, metadata = load_checkpoint(checkpoint)
    module = build_model(architecture, params)
    load_weights(module, state, str(checkpoint))
    provenance = {
        "model_id": name,
        "model_class": type(module).__name__,
        "architecture": architecture,
        "architecture_params": params,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "step": checkpoint_step(metadata, checkpoint_name),
        "checkpoint_metadata": metadata,
    }
    return LoadedModel(name, module.to(device).eval(), False, None, provenance)
