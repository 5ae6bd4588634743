"""Command line: exit codes and one-line errors on stderr."""

import errno
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cli import main
from pipeline.config import validate_config

ROOT = Path(__file__).resolve().parents[1]


def pipeline_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def restore_logging():
    """``main`` configures the root logger; put it back so later tests do not log to a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_validate_shipped_config_prints_it_with_defaults():
    done = pipeline_cli("validate", "config.yaml")
    assert done.returncode == 0, done.stderr
    with open(ROOT / "config.yaml") as f:
        assert yaml.safe_load(done.stdout) == validate_config(yaml.safe_load(f))


def test_validate_bad_config_fails_with_one_line(tmp_path):
    with open(ROOT / "config.yaml") as f:
        config = yaml.safe_load(f)
    config["batchsize"] = 8
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    done = pipeline_cli("validate", str(path))
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "ERROR" in lines[0] and "config error: unknown key 'batchsize' in the top level" in lines[0]


def test_missing_required_key_in_process(tmp_path, capsys, restore_logging):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"stimuli": {"s": {"kind": "digits"}}}))
    assert main(["validate", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "missing a required key: 'models'" in lines[0]


@pytest.mark.parametrize(("content", "expected"), [(None, "cannot be read"), ("models: [unclosed", "not valid YAML")])
def test_validate_missing_or_unparsable_file(tmp_path, capsys, restore_logging, content, expected):
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content)
    assert main(["validate", str(path)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0]


def test_spec_that_is_not_json_names_the_option():
    done = pipeline_cli("stats", "--spec", "{not json", "--store", "s.zarr", "--out", "o.zarr")
    assert done.returncode == 2
    assert "argument --spec: not valid JSON" in done.stderr.strip().splitlines()[-1]


def test_arguments_from_a_file(tmp_path, capsys, restore_logging):
    arguments = tmp_path / "arguments.txt"
    arguments.write_text(f"validate\n{ROOT / 'config.yaml'}\n")  # one argument per line, as the workflow writes
    assert main([f"@{arguments}"]) == 0
    with open(ROOT / "config.yaml") as f:
        assert yaml.safe_load(capsys.readouterr().out) == validate_config(yaml.safe_load(f))


def test_show_missing_store_fails_with_one_line(tmp_path, capsys, restore_logging):
    assert main(["show", str(tmp_path / "absent.zarr")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "does not exist; re-run the extraction" in lines[0]


def test_show_prints_a_store(tmp_path, capsys, store_writer, restore_logging):
    store = store_writer(tmp_path / "s.zarr", {"layer.0": np.zeros((3, 2, 4))}, np.ones((3, 2), bool),
                         **{f"extra_{i}": i for i in range(30)}, checkpoint_sha256="f" * 64)
    assert main(["show", str(store)]) == 0
    out = capsys.readouterr().out
    assert "layer.0" in out and "stim-02" in out
    assert '"extra_29": 29' in out and "f" * 64 in out  # every attribute, not xarray's shortened list


def test_an_interrupted_command_ends_with_one_line(tmp_path, capsys, restore_logging, monkeypatch):
    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr("pipeline.cli._dispatch", interrupted)
    assert main(["show", str(tmp_path / "s.zarr")]) == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith("show interrupted; run the workflow again to resume or redo it")


def refusing_disk(error: BaseException):
    def dispatch(_args):
        raise error
    return dispatch


def chained_read_only():
    try:
        raise OSError(errno.EROFS, "Read-only file system", "reports/index.html")
    except OSError as err:
        raise RuntimeError("while writing the page") from err


@pytest.mark.parametrize(("error", "expected"), [
    (OSError(errno.ENOSPC, "No space left on device", "results/a.zarr/c.0.0"),
     "No space left on device (results/a.zarr/c.0.0); free space on that disk (for the workflow's own outputs, or set "
     "output_dir or report_dir to another one), then run the workflow again"),
    (OSError(errno.ENOSPC, "No space left on device"),  # a write that names no file: the command's output is named
     "No space left on device (writing {out}); free space on that disk (for the workflow's own outputs, or set "
     "output_dir or report_dir to another one), then run the workflow again"),
])
def test_a_full_disk_ends_with_one_line(tmp_path, capsys, restore_logging, monkeypatch, error, expected):
    monkeypatch.setattr("pipeline.cli._dispatch", refusing_disk(error))
    out = tmp_path / "s.zarr"
    assert main(["stats", "--spec", "{}", "--store", str(tmp_path / "a.zarr"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith(f"stats failed: {expected.format(out=out)}")


def test_a_read_only_folder_found_behind_another_error_ends_with_one_line(tmp_path, capsys, restore_logging,
                                                                          monkeypatch):
    def dispatch(_args):
        chained_read_only()

    monkeypatch.setattr("pipeline.cli._dispatch", dispatch)
    assert main(["show", str(tmp_path / "s.zarr")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith("show failed: Read-only file system (reports/index.html); write it to a "
                                            "writable place (for the workflow's own outputs, set output_dir or "
                                            "report_dir to one), then run the workflow again")


def test_other_os_errors_keep_their_traceback(tmp_path, capsys, restore_logging, monkeypatch):
    monkeypatch.setattr("pipeline.cli._dispatch", refusing_disk(OSError(errno.EIO, "Input/output error")))
    assert main(["show", str(tmp_path / "s.zarr")]) == 2
    err = capsys.readouterr().err
    assert "show failed unexpectedly" in err and "Traceback" in err


def test_a_log_file_on_a_full_disk_adds_no_tracebacks(tmp_path, capsys, restore_logging, monkeypatch):
    monkeypatch.setattr("pipeline.cli._dispatch", refusing_disk(OSError(errno.ENOSPC, "No space left on device")))
    monkeypatch.setattr(logging, "raiseExceptions", logging.raiseExceptions)  # restored after the test
    out = tmp_path / "s.zarr"
    assert main(["--log", "/dev/full", "stats", "--spec", "{}", "--store", str(out), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()  # /dev/full refuses every write with ENOSPC, as a full disk does
    assert "Logging error" not in err and "\n" not in err and "stats failed: No space left on device" in err
