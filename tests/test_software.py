"""What results record of the software that made them."""

import hashlib
import json
import shutil

from pipeline import layout
from pipeline.jobs import write_json
from pipeline.software import PACKAGE_ROOT, package_versions, source_sha256


def test_source_fingerprint_is_the_hash_of_the_file_hashes_and_follows_edits(tmp_path):
    copy = tmp_path / "pipeline"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    files = sorted(p for p in copy.rglob("*") if p.suffix in (".py", ".yaml", ".html"))
    lines = "".join(f"{p.relative_to(copy).as_posix()} {hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in files)
    assert source_sha256(copy) == hashlib.sha256(lines.encode()).hexdigest() == source_sha256()
    (copy / "stimuli.py").write_text((copy / "stimuli.py").read_text() + "\n# edited\n")
    source_sha256.cache_clear()
    assert source_sha256(copy) != source_sha256()


def test_every_summary_records_the_software(tmp_path):
    out = layout.summary_path(tmp_path / "result.zarr")
    write_json(out, {"analysis": "x"})
    written = json.loads(out.read_text())
    assert written["analysis"] == "x" and written["software"] == package_versions()
    assert written["software"]["pipeline_source"] == source_sha256()
