"""Record the outputs of named modules of a PyTorch model with forward hooks."""

from __future__ import annotations

import contextlib
import fnmatch

import torch

from pipeline.errors import SiteError


def _matches(pattern: str, name: str) -> bool:
    """``*`` matches exactly one dotted part: ``encoder.layer.*`` matches ``encoder.layer.3`` only."""
    parts, pattern_parts = name.split("."), pattern.split(".")
    return len(parts) == len(pattern_parts) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern_parts))


def resolve_sites(model: torch.nn.Module, patterns: list[str], model_name: str = "model") -> list[str]:
    """Expand site patterns to module names, in the model's own module order.

    Raises SiteError naming the pattern that matched nothing and listing valid names.
    """
    names = [name for name, _ in model.named_modules() if name]
    chosen: list[str] = []
    for pattern in patterns:
        matched = [n for n in names if _matches(pattern, n)]
        if not matched:
            shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
            raise SiteError(f"site {pattern!r} matches no module of {model_name}; valid names: {shown}")
        chosen.extend(n for n in matched if n not in chosen)
    order = {n: i for i, n in enumerate(names)}
    return sorted(chosen, key=order.__getitem__)


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    raise TypeError(f"module output of type {type(output).__name__} holds no tensor to record")


@contextlib.contextmanager
def record(model: torch.nn.Module, sites: list[str]):
    """Context manager yielding a dict site -> last output tensor (detached), filled on forward.

    Tuple outputs (recurrent layers, transformer blocks) record their first element.
    """
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(site):
        def hook(_module, _inputs, output):
            captured[site] = _first_tensor(output).detach()

        return hook

    try:
        for site in sites:
            handles.append(modules[site].register_forward_hook(hook_for(site)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
