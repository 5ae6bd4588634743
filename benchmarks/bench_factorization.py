"""CP benchmark: pipeline.analyses.factorization against TensorLy (numpy backend) and tensortools.

Run:  python benchmarks/bench_factorization.py [--iters 50] [--repeats 7] [--ensemble-iters 10]

1. One rank-8 CP fit of a noisy 200 x 150 x 100 tensor, float64 and float32, same start and
   number of ALS sweeps (tol 0) for this package and TensorLy's ``parafac``; tensortools'
   ``cp_als`` (its own random start, same sweeps, timed once: it is slow) alongside. Prints times, ratios and errors.
2. A rank-selection ensemble (ranks 1-10 x 5 replicates, fixed sweeps per fit) against
   tensortools' ``Ensemble``.
3. The memory-bandwidth floor: bytes of the tensor streamed per sweep (this package streams it
   twice) divided by the bandwidth of a large array copy, as a fraction of the measured sweep time.

With ``--device gpu`` the tensor and the starts live on the GPU (CuPy) and TensorLy runs on its CuPy
backend; tensortools, which is numpy-only, is left out, and the ensemble runs for this package alone.
"""

import argparse
import os
import platform
import time
from importlib.metadata import version

import numpy as np
import tensorly as tl
from tensorly.decomposition import parafac

from pipeline.analyses.factorization import cp, rank_ensemble, reconstruct
from pipeline.backend import to_numpy

SHAPE, RANK = (200, 150, 100), 8
xp = np  # the namespace the fits run in: numpy, or CuPy with --device gpu


def synchronize():
    """Wait for queued GPU work, so that a clock read after it counts it (no-op on the CPU)."""
    if xp is not np:
        xp.cuda.Device().synchronize()


def planted(dtype, seed=0):
    rng = np.random.default_rng(seed)
    factors = [rng.standard_normal((d, RANK)) for d in SHAPE]
    X = np.einsum("ir,jr,kr->ijk", *factors)
    X += 0.1 * X.std() * rng.standard_normal(SHAPE)
    return X.astype(dtype)


def best_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        synchronize()
        t0 = time.perf_counter()
        out = fn()
        synchronize()
        times.append(time.perf_counter() - t0)
    return min(times), out


def rel_error(X, full):
    X64, full = to_numpy(X).astype(np.float64), to_numpy(full)
    return float(np.linalg.norm(X64 - full) / np.linalg.norm(X64))


def copy_bandwidth(nbytes=400 * 2**20, repeats=5):
    """Bytes per second of a copy between two large arrays (read + write counted)."""
    src = xp.ones(nbytes // 8)
    dst = xp.empty_like(src)

    def copy():
        dst[...] = src

    t, _ = best_time(copy, repeats)
    return 2 * nbytes / t


def import_tensortools():
    try:
        import tensortools

        return tensortools, None
    except Exception as err:  # report, never patch
        return None, f"failed to import ({type(err).__name__}: {err})"


def bench_single(dtype, iters, repeats, tt, bandwidth):
    X = xp.asarray(planted(dtype))
    rng = np.random.default_rng(1)
    init = [xp.asarray(rng.standard_normal((d, RANK)).astype(dtype)) for d in SHAPE]
    start = tl.cp_tensor.CPTensor((xp.ones(RANK, dtype=dtype), init))
    times_ours, times_tl = [], []
    for _ in range(repeats):  # interleaved, so that both sides see the same machine load
        t, ours = best_time(lambda: cp(X, RANK, init=init, n_iter_max=iters, tol=0), 1)
        times_ours.append(t)
        t, ref = best_time(lambda: parafac(X, RANK, init=start.cp_copy(), n_iter_max=iters, tol=0), 1)
        times_tl.append(t)
    t_ours, t_tl = min(times_ours), min(times_tl)
    paired = np.median(np.array(times_tl) / np.array(times_ours))
    err_ours, err_tl = rel_error(X, reconstruct(ours)), rel_error(X, tl.cp_to_tensor(ref))
    print(f"\n[{np.dtype(dtype).name}] rank-{RANK} CP of {SHAPE}, {iters} ALS sweeps, best of {repeats} interleaved")
    print(f"  ours      {t_ours:8.3f} s   rel error {err_ours:.8f} (reported {ours.rel_error:.8f})")
    print(f"  tensorly  {t_tl:8.3f} s   rel error {err_tl:.8f}   ratio tensorly/ours = {t_tl / t_ours:.2f}x "
          f"(best against best; median of the {repeats} paired ratios {paired:.2f}x)")
    print(f"  |error difference| / error = {abs(err_ours - err_tl) / err_tl:.2e}")
    if tt is not None:
        opts = dict(init="randn", random_state=1, tol=-1.0, max_iter=iters, verbose=False)
        t_tt, res = best_time(lambda: tt.cp_als(X, RANK, **opts), 1)
        err_tt = rel_error(X, res.factors.full())
        print(
            f"  tensortools cp_als {t_tt:8.3f} s ({res.iterations} sweeps, own start)   rel error {err_tt:.8f}   "
            f"ratio tensortools/ours = {t_tt / t_ours:.2f}x"
        )
    floor = 2 * X.nbytes / bandwidth
    per_sweep = t_ours / iters
    print(
        f"  per sweep {per_sweep * 1e3:.2f} ms; floor (2 passes x {X.nbytes / 2**20:.1f} MiB at copy bandwidth) "
        f"{floor * 1e3:.2f} ms -> {floor / per_sweep:.0%} of the bandwidth floor"
    )


def bench_ensemble(iters, tt):
    X = xp.asarray(planted(np.float64))
    ranks, replicates = list(range(1, 11)), 5
    print(f"\n[float64] ensemble ranks 1-10 x {replicates} replicates, {iters} ALS sweeps per fit, tensor {SHAPE}")
    t_ours, ens = best_time(lambda: rank_ensemble(X, ranks, replicates=replicates, n_iter_max=iters, tol=0,
                                                  random_state=0), 1)
    print(f"  ours        {t_ours:8.2f} s   best error at rank 8 {ens.objectives[8][0]:.6f}")
    if tt is None:
        return
    ensemble = tt.Ensemble(fit_method="cp_als", fit_options=dict(tol=-1.0, max_iter=iters, verbose=False))
    t0 = time.perf_counter()
    ensemble.fit(X, ranks, replicates=replicates, verbose=False)
    t_tt = time.perf_counter() - t0
    sweeps = ensemble.results[8][0].iterations
    print(f"  tensortools {t_tt:8.2f} s   best error at rank 8 {min(ensemble.objectives(8)):.6f} ({sweeps} sweeps)")
    print(f"  ratio tensortools/ours = {t_tt / t_ours:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--ensemble-iters", type=int, default=10)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args()
    tt, tt_error = import_tensortools()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}")
    if args.device == "gpu":
        global xp
        import cupy

        xp = cupy
        tl.set_backend("cupy")
        tt, tt_error = None, "numpy only; left out on the GPU"
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        print(f"GPU: {name}, CuPy {cupy.__version__}, TensorLy backend {tl.get_backend()}")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, tensorly {tl.__version__}")
    tt_version = version("tensortools") if tt is not None else None
    print("tensortools: " + (tt_version if tt is not None else tt_error))
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth ({args.device}, 400 MiB, read+write): {bandwidth / 1e9:.2f} GB/s")
    for dtype in (np.float64, np.float32):
        bench_single(dtype, args.iters, args.repeats, tt, bandwidth)
    bench_ensemble(args.ensemble_iters, tt)


if __name__ == "__main__":
    main()
