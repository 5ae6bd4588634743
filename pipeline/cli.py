"""Command line: ``pipeline <command>``; the workflow's rules call these, people can too.

The commands that rules call take their settings as a JSON *spec* (built by ``pipeline.jobs``); errors in the
input (config, checkpoint, store, stimuli, sites) end the command with one line on stderr. An
argument ``@file`` stands for the arguments in that file, one per line.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import os
import sys
from pathlib import Path

from pipeline.errors import ConfigError, InputError, first_line


def _spec(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err})") from None


SPEC_HELP = ("the job's settings as JSON, built from the config by pipeline.jobs; "
             "`snakemake -n -p <output>` prints the full command of the job that writes <output>")


def _parser() -> argparse.ArgumentParser:
    # '@file' stands for the arguments in file, one per line (the workflow passes long lists so)
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0], fromfile_prefix_chars="@")
    parser.add_argument("--log", type=Path, help="also write the log to this file")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch and BLAS (default: their own choice)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a config file and print it with defaults filled in")
    p.add_argument("config", type=Path)

    p = sub.add_parser("train", help="train one run of a built-in model into a checkpoint folder")
    p.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("extract", help="record activations into an activation store")
    p.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
    p.add_argument("--out", type=Path, required=True, help="store path (.zarr)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file (not for Hugging Face models)")

    p = sub.add_parser("stats", help="activation statistics of every site of a store")
    p.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="result store path (.zarr); summary JSON beside it")

    p = sub.add_parser("stats-across", help="activation statistics of a run across its checkpoints")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("results", type=Path, nargs="+", help="per-checkpoint result stores of 'stats'")

    p = sub.add_parser("similarity", help="representational similarity between the sites of a store")
    p.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="result store path (.zarr); summary JSON beside it")

    p = sub.add_parser("similarity-across", help="similarity of each site between the checkpoints of a run")
    p.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("results", type=Path, nargs="+", help="per-checkpoint result stores of 'similarity'")

    p = sub.add_parser("similarity-models", help="similarity between models' final checkpoints on one stimulus set")
    p.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
    p.add_argument("--out", type=Path, required=True, help="result store path (.zarr); summary JSON beside it")
    p.add_argument("results", type=Path, nargs="+", help="final-checkpoint result stores of 'similarity'")

    p = sub.add_parser("report-comparisons", help="write the report page comparing models")
    p.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("tca", help="tensor component analysis of a store's sites (unit x position x stimulus)")
    p.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="result store path (.zarr); summary JSON beside it")

    p = sub.add_parser("tca-across", help="tensor component analysis of a run (unit x stimulus x checkpoint)")
    p.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
    p.add_argument("--out", type=Path, required=True, help="result store path (.zarr); summary JSON beside it")
    p.add_argument("stores", type=Path, nargs="+", help="the run's activation stores, one per checkpoint")

    p = sub.add_parser("connectome", help="communities of co-active units across a run's checkpoints")
    p.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
    p.add_argument("--out", type=Path, required=True, help="result store path (.zarr); summary JSON beside it")
    p.add_argument("stores", type=Path, nargs="+", help="the run's activation stores, one per checkpoint")

    p = sub.add_parser("report-model", help="write one model's page and its summary for the index")
    p.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
    p.add_argument("--out", type=Path, required=True, help="the model's page (<report_dir>/<model>/index.html)")

    p = sub.add_parser("report-run", help="draw what a model's page shows of one run's across-checkpoint results")
    p.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
    p.add_argument("--out", type=Path, required=True, help="the run's report (JSON, figures embedded)")

    p = sub.add_parser("report-checkpoint", help="write the report page of one checkpoint and stimulus set")
    p.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
    p.add_argument("--out", type=Path, required=True, help="the page (.html)")

    p = sub.add_parser("report-index", help="write the report index page")
    p.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("report-bundle", help="gather the report pages into one folder for `snakemake --report`")
    p.add_argument("--report-dir", type=Path, required=True, help="the report folder the pages are in")
    p.add_argument("--out", type=Path, required=True, help="the bundle folder")
    p.add_argument("pages", type=Path, nargs="+", help="the pages, index included")

    p = sub.add_parser("show", help="print an activation store's sites, coordinates and provenance")
    p.add_argument("store", type=Path)
    return parser


def _setup_logging(log_file: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    logging.raiseExceptions = False  # a log file on a full disk drops its lines instead of printing tracebacks


def _limit_threads(n: int) -> None:
    """Keep a job to its share of the cores when the workflow runs several at once.

    Set before numpy and torch are imported (commands import them lazily), which read these.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.log)
    if args.threads:
        _limit_threads(args.threads)
    try:
        return _dispatch(args)
    except InputError as err:
        logging.getLogger("pipeline").error("%s", err)
        return 1
    except KeyboardInterrupt:
        logging.getLogger("pipeline").error("%s interrupted; run the workflow again to resume or redo it", args.command)
        return 130
    except Exception as err:
        disk = _disk_error(err, getattr(args, "out", None))
        if disk is None:
            logging.getLogger("pipeline").exception("%s failed unexpectedly", args.command)
            return 2
        logging.getLogger("pipeline").error("%s failed: %s", args.command, disk)
        return 1


# what to do about a file system that refuses a write
DISK_FIXES = {
    errno.ENOSPC: "free space on that disk (for the workflow's own outputs, or set output_dir or report_dir to "
                  "another one)",
    errno.EDQUOT: "free space within your quota (for the workflow's own outputs, or set output_dir or report_dir "
                  "elsewhere)",
    errno.EROFS: "write it to a writable place (for the workflow's own outputs, set output_dir or report_dir to one)",
    errno.EACCES: "make it writable for you (for the workflow's own outputs, or set output_dir or report_dir to a "
                  "folder that is)",
}


def _disk_error(err: BaseException, out: Path | None = None) -> str | None:
    """One line for a write the file system refused (full disk, quota, read-only, permissions), found in ``err`` or
    the exceptions it was raised from, naming the file (else the command's output ``out``); None for any other
    error."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FIXES:
            where = f" ({err.filename})" if err.filename else f" (writing {out})" if out else ""
            return f"{err.strerror}{where}; {DISK_FIXES[err.errno]}, then run the workflow again"
        err = err.__cause__ or err.__context__
    return None


# command -> (module, function, the parsed arguments it takes in order); modules load on demand so a
# job imports only what it runs
JOBS = {
    "train": ("pipeline.jobs", "run_train", ("spec", "out")),
    "extract": ("pipeline.jobs", "run_extract", ("spec", "out", "checkpoint")),
    "stats": ("pipeline.jobs", "run_stats", ("spec", "store", "out")),
    "stats-across": ("pipeline.jobs", "run_stats_across", ("results", "out")),
    "similarity": ("pipeline.jobs.similarity", "run_similarity", ("spec", "store", "out")),
    "similarity-across": ("pipeline.jobs.similarity", "run_similarity_across", ("spec", "results", "out")),
    "similarity-models": ("pipeline.jobs.similarity", "run_similarity_models", ("spec", "results", "out")),
    "tca": ("pipeline.jobs.factorization", "run_tca", ("spec", "store", "out")),
    "tca-across": ("pipeline.jobs.factorization", "run_tca_across", ("spec", "stores", "out")),
    "connectome": ("pipeline.jobs.factorization", "run_connectome", ("spec", "stores", "out")),
    "report-model": ("pipeline.report.build", "write_model_report", ("spec", "out")),
    "report-run": ("pipeline.report.build", "write_run_report", ("spec", "out")),
    "report-checkpoint": ("pipeline.report.build", "write_checkpoint_report", ("spec", "out")),
    "report-comparisons": ("pipeline.report.build", "write_comparisons_report", ("spec", "out")),
    "report-index": ("pipeline.report.build", "write_index", ("spec", "out")),
    "report-bundle": ("pipeline.report.build", "write_bundle", ("report_dir", "pages", "out")),
}


def _dispatch(args) -> int:
    if args.command == "validate":
        import yaml

        from pipeline.config import validate_config

        try:
            with open(args.config) as f:
                raw = yaml.safe_load(f) or {}
        except OSError as err:
            raise ConfigError(f"config file {args.config} cannot be read ({err.strerror}); check the path") from None
        except yaml.YAMLError as err:
            raise ConfigError(
                f"config file {args.config} is not valid YAML ({first_line(err)}); fix its syntax"
            ) from None
        config = validate_config(raw)
        print(yaml.safe_dump(config, sort_keys=False))
    elif args.command == "show":
        from pipeline.store import open_store

        ds = open_store(args.store)
        print(ds)
        print("\nprovenance:")
        print(json.dumps(dict(ds.attrs), indent=1, default=str))
    else:
        module, function, names = JOBS[args.command]
        getattr(importlib.import_module(module), function)(*(getattr(args, name) for name in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
