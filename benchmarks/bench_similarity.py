"""Benchmark: pipeline.analyses.similarity against rsatoolbox and a per-pair CKA loop, in one process.

Run from the repository root: ``python benchmarks/bench_similarity.py [--quick]``.
Scenarios (float64, random data):

1. One RDM pair, n=1000 stimuli, d=384 features: ``rdm`` x2 + ``compare_rdms`` vs rsatoolbox
   ``calc_rdm`` x2 + ``compare``.
2. All pairs of 100 RDMs (same n, d): one stacked ``rdm`` + one ``compare_rdms`` vs rsatoolbox
   ``calc_rdm`` on 100 datasets + one ``compare`` of the two RDMs collections.
3. All-pairs linear CKA of 50 representations (n=2000, d=384): ``cka_matrix`` vs a Python loop over
   the 1225 pairs of the literal formula ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred data,
   and vs a loop over ``cka``.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from pipeline.analyses.similarity import cka, cka_matrix, compare_rdms, rdm


def timed(fn, repeats=1):
    """Best wall time of ``repeats`` calls and the last result."""
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def reference_linear_cka(X, Y):
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))


def report(name, ours, theirs, target):
    ratio = theirs / ours
    verdict = "meets" if ratio >= target else "MISSES"
    print(f"{name:<52} ours {ours:8.3f} s  reference {theirs:8.3f} s  ratio {ratio:6.1f}x  ({verdict} >= {target}x)")


def bench_rsa(n, d, k, methods):
    import rsatoolbox as rt

    names = {"spearman": "spearman", "pearson": "corr", "rho_a": "rho-a"}
    g = np.random.default_rng(0)
    X, Y = g.standard_normal((n, d)), g.standard_normal((n, d))
    for method in methods:
        t_ours, ours = timed(lambda m=method: compare_rdms(rdm(X), rdm(Y), m), repeats=3)

        def theirs(method=method):
            a = rt.rdm.calc_rdm(rt.data.Dataset(X), method="correlation")
            b = rt.rdm.calc_rdm(rt.data.Dataset(Y), method="correlation")
            return rt.rdm.compare(a, b, method=names[method])[0, 0]

        t_theirs, ref = timed(theirs, repeats=3)
        assert abs(ours - ref) < 1e-8, (ours, ref)
        report(f"one pair, n={n} d={d}, correlation RDM + {method}", t_ours, t_theirs, 5)
    stack = g.standard_normal((k, n, d))
    compare_rdms(*(2 * [rdm(stack)]), "pearson")  # untimed: the process's first touch of GB-sized buffers
    for method in methods:  # best of 3 on each side, as for one pair: GB-sized calls vary with page-fault cost
        t_ours, ours = timed(lambda m=method: compare_rdms(*(2 * [rdm(stack)]), m), repeats=3)

        def theirs(method=method):
            rdms = rt.rdm.calc_rdm([rt.data.Dataset(s) for s in stack], method="correlation")
            return rt.rdm.compare(rdms, rdms, method=names[method])

        t_theirs, ref = timed(theirs, repeats=3)
        assert np.max(np.abs(ours - ref)) < 1e-8
        report(f"all pairs of {k} RDMs, n={n} d={d}, {method}", t_ours, t_theirs, 20)


def bench_cka(n, d, r):
    g = np.random.default_rng(1)
    shared = g.standard_normal((n, 32))
    reps = np.stack([shared @ g.standard_normal((32, d)) + g.standard_normal((n, d)) for _ in range(r)])
    t_ours, ours = timed(lambda: cka_matrix(reps), repeats=2)

    def loop(fn):
        out = np.eye(r)
        for i in range(r):
            for j in range(i + 1, r):
                out[i, j] = out[j, i] = fn(reps[i], reps[j])
        return out

    t_ref, ref = timed(lambda: loop(reference_linear_cka), repeats=2)
    assert np.max(np.abs(ours - ref)) < 1e-10
    report(f"all-pairs linear CKA, {r} reps, n={n} d={d} vs formula loop", t_ours, t_ref, 10)
    t_cka, via_cka = timed(lambda: loop(cka), repeats=2)
    assert np.max(np.abs(ours - via_cka)) < 1e-10
    report(f"all-pairs linear CKA, {r} reps, n={n} d={d} vs cka() loop", t_ours, t_cka, 10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"numpy {np.__version__}")
    methods = ["spearman", "pearson", "rho_a"]
    if args.quick:
        bench_rsa(n=200, d=64, k=10, methods=methods)
        bench_cka(n=300, d=64, r=8)
    else:
        bench_rsa(n=1000, d=384, k=100, methods=methods)
        bench_cka(n=2000, d=384, r=50)


if __name__ == "__main__":
    main()
