"""Record the outputs of named modules of a PyTorch model with forward hooks."""

from __future__ import annotations

import contextlib
import difflib
import fnmatch

import torch

from pipeline.errors import SiteError

_SHOWN_NAMES = 30


def _matches(pattern: str, name: str) -> bool:
    """``*`` matches exactly one dotted part: ``encoder.layer.*`` matches ``encoder.layer.3`` only."""
    parts, pattern_parts = name.split("."), pattern.split(".")
    return len(parts) == len(pattern_parts) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern_parts))


def resolve_sites(model: torch.nn.Module, patterns: list[str], model_name: str = "model") -> list[str]:
    """Expand site patterns to module names, in the model's own module order.

    Raises SiteError naming the pattern that matched nothing, the closest names and the first valid ones.
    """
    names = [name for name, _ in model.named_modules() if name]
    chosen: list[str] = []
    for pattern in patterns:
        matched = [n for n in names if _matches(pattern, n)]
        if not matched:
            raise SiteError(f"site {pattern!r} matches no module of {model_name}; {_suggest(pattern, names)}")
        chosen.extend(n for n in matched if n not in chosen)
    order = {n: i for i, n in enumerate(names)}
    return sorted(chosen, key=order.__getitem__)


def _suggest(pattern: str, names: list[str]) -> str:
    """'did you mean' the names closest to ``pattern`` (or ``pattern`` without a first part that names a model's
    wrapper, such as 'transformer.' of a Hugging Face model with a task head), then the first ``_SHOWN_NAMES``
    valid names."""
    wrapper, inner = pattern.split(".", 1) if "." in pattern else ("", "")
    # a first part unlike every top-level module (not a typo of one) names a wrapper the loaded model lacks
    wrapped = not difflib.get_close_matches(wrapper, {n.split(".", 1)[0] for n in names})
    if inner and wrapped and any(_matches(inner, n) for n in names):
        hint = (f"did you mean {inner}? (names start below '{wrapper}.': the model is loaded without its task head "
                "or wrapper) ")
    else:
        close = difflib.get_close_matches(pattern, names)
        hint = f"did you mean {', '.join(close)}? " if close else ""
    shown, hidden = ", ".join(names[:_SHOWN_NAMES]), len(names) - _SHOWN_NAMES
    more = f", ... and {hidden} more (see model.named_modules())" if hidden > 0 else ""
    return f"{hint}valid names: {shown}{more}"


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    if isinstance(output, dict):
        keys = ", ".join(repr(k) for k in list(output)[:5])
        raise TypeError(f"module output is a dict (keys {keys}), and which of its entries to record is not known")
    raise TypeError(f"module output of type {type(output).__name__} holds no tensor to record")


@contextlib.contextmanager
def record(model: torch.nn.Module, sites: list[str], model_name: str = "model"):
    """Context manager yielding a dict site -> output tensor (detached), filled on forward.

    Tuple outputs (recurrent layers, transformer blocks) record their first element. Leaving the
    block after a forward pass raises SiteError for a site that did not run exactly once.
    """
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    calls = dict.fromkeys(sites, 0)
    handles = []

    def hook_for(site):
        def hook(_module, _inputs, output):
            calls[site] += 1
            try:
                captured[site] = _first_tensor(output).detach()
            except TypeError as err:
                raise SiteError(f"site {site!r} of {model_name}: {err}; "
                                "record a submodule that outputs a tensor") from None

        return hook

    try:
        for site in sites:
            handles.append(modules[site].register_forward_hook(hook_for(site)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
    _check_calls(modules, calls, model_name)


def _check_calls(modules: dict[str, torch.nn.Module], calls: dict[str, int], model_name: str) -> None:
    """Raise SiteError for sites that did not run, or ran more than once, in one forward pass."""
    repeated = {site: n for site, n in calls.items() if n > 1}
    if repeated:
        runs = ", ".join(f"{site!r} runs {n} times" for site, n in repeated.items())
        raise SiteError(f"site {runs} per forward pass of {model_name} (shared weights); "
                        "record a module that runs once")
    idle = [site for site, n in calls.items() if n == 0]
    if idle:
        fixes = ", ".join(f"{site!r} (record its children instead, e.g. '{site}.*')"
                          if next(modules[site].children(), None) is not None else f"{site!r} (drop it)"
                          for site in idle)
        raise SiteError(f"sites of {model_name} that never run in a forward pass cannot be recorded (a container such "
                        f"as a ModuleList is not called itself): {fixes}")
