"""The software that made a result: package versions and a fingerprint of this package's own source."""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

from pipeline import __version__

TRACKED_PACKAGES = ("torch", "transformers", "numpy", "scipy", "tensorly", "zarr", "xarray")
SOURCE_SUFFIXES = (".py", ".yaml", ".html")  # code, the config schema, report templates
PACKAGE_ROOT = Path(__file__).parent


@functools.cache
def source_sha256(root: Path = PACKAGE_ROOT) -> str:
    """SHA-256 over the lines ``<path> <sha256>`` of the source files under ``root`` in path order: it changes
    with any edit to the code that ran, also in an editable install whose version number stays the same."""
    files = sorted(p for p in root.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file())
    lines = "".join(f"{p.relative_to(root).as_posix()} {hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of this package (with ``pipeline_source``: ``source_sha256``) and of the libraries results depend on."""
    versions = {"pipeline": __version__, "pipeline_source": source_sha256()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
