"""What results record of the software that made them."""

import json

from pipeline import layout
from pipeline.jobs import write_json
from pipeline.software import package_versions, source_sha256


def test_source_fingerprint_of_a_known_tree(tmp_path):
    """Expected value from the shell: the lines '<path> <sha256sum of the file>' in path order, through sha256sum."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "s.yaml").write_text("k: v\n")
    (tmp_path / "sub" / "page.html").write_text("<p>{{ t }}</p>\n")
    (tmp_path / "notes.txt").write_text("ignored\n")  # not source
    assert source_sha256(tmp_path) == "0594bf737e2ff29d45478ae7d13c9f558c8ad70b2435cf8a6830a88817750cb2"
    (tmp_path / "sub" / "page.html").write_text("<p>{{ t }}</p>\n<!-- edited -->\n")
    source_sha256.cache_clear()
    assert source_sha256(tmp_path) != "0594bf737e2ff29d45478ae7d13c9f558c8ad70b2435cf8a6830a88817750cb2"


def test_every_summary_records_the_software(tmp_path):
    out = layout.summary_path(tmp_path / "result.zarr")
    write_json(out, {"analysis": "x"})
    written = json.loads(out.read_text())
    assert written["analysis"] == "x" and written["software"] == package_versions()
    assert written["software"]["pipeline_source"] == source_sha256()
