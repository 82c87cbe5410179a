"""Benchmark ``voronoi_weights`` against its matrix-multiply bound.

The bound is the bare float64 product ``(n_samples, d) @ (d, m)`` done chunk by chunk with
the same chunk size into a reused buffer (the full product would not fit in memory): every
nearest-neighbour pass must at least compute it. "fraction" = bound time / our time.

    python benchmarks/bench_voronoi.py --quick
    python benchmarks/bench_voronoi.py        # 1e6 samples, 1e4 points, d = 8
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from pluralign.core.clones import default_chunk_size, voronoi_weights


def matmul_bound(n_samples: int, points: np.ndarray, chunk: int, seed: int) -> float:
    """Seconds for the chunked (n_samples, d) @ (d, m) product alone."""
    m, d = points.shape
    p_t = np.ascontiguousarray(points.T)  # (d, m)
    x = np.random.default_rng(seed).uniform(size=(chunk, d))  # (chunk, d), reused
    buf = np.empty((chunk, m))
    t0 = time.perf_counter()
    for start in range(0, n_samples, chunk):
        n = min(chunk, n_samples - start)
        np.matmul(x[:n], p_t, out=buf[:n])
    return time.perf_counter() - t0


def seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--n-samples", type=int, default=None)
    ap.add_argument("--m", type=int, default=None, help="number of points")
    ap.add_argument("--d", type=int, default=8, help="dimension")
    ap.add_argument("--chunk-size", type=int, default=None, help="default: from the memory budget")
    ap.add_argument("--repeat", type=int, default=1, help="best of this many runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="limit BLAS threads (1 gives steadier timings on a busy machine)",
    )
    args = ap.parse_args()
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits  # ships with scikit-learn

        threadpool_limits(args.blas_threads)  # inherited by forked workers
    n_samples = args.n_samples or (20_000 if args.quick else 1_000_000)
    m = args.m or (500 if args.quick else 10_000)
    chunk = args.chunk_size or default_chunk_size(m)
    points = np.random.default_rng(args.seed).normal(size=(m, args.d))  # (m, d)

    t_ours = min(
        seconds(lambda: voronoi_weights(points, n_samples=n_samples, chunk_size=chunk))
        for _ in range(args.repeat)
    )
    t_mm = min(matmul_bound(n_samples, points, chunk, args.seed) for _ in range(args.repeat))
    gflop = 2.0 * n_samples * m * args.d / 1e9
    print(
        "| n_samples | m | d | chunk | voronoi_weights s | matmul bound s | GFLOP/s bound "
        "| fraction |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {n_samples:,} | {m:,} | {args.d} | {chunk:,} | {t_ours:.2f} | {t_mm:.2f} "
        f"| {gflop / t_mm:.1f} | {t_mm / t_ours:.0%} |"
    )


if __name__ == "__main__":
    main()
