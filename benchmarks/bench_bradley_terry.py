"""Benchmark ``fit_bt`` against choix's I-LSR and Newton-CG at the same optimum.

Random BT data with planted N(0, 1) scores; every method gets the same comparisons. At
``--lam 0`` all three solve the unregularized MLE; for ``lam > 0`` choix.opt_pairwise gets
``alpha = lam / 2`` (its penalty is ``alpha * ||r||^2``) and I-LSR is skipped, because its
``alpha`` is a different regularizer (see tests/test_bradley_terry.py). Each method runs in a
forked process killed after ``--cap`` seconds, so the full run stays under ~10 minutes.

    python benchmarks/bench_bradley_terry.py --quick
    python benchmarks/bench_bradley_terry.py            # m = 1e3, 5e3; n = 1e5, 1e6
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from collections.abc import Callable
from importlib.metadata import version

import choix
import numpy as np

from pluralign.core.bradley_terry import fit_bt, win_matrix


def make_data(m: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` BT draws on random pairs, plus a 2m-comparison cycle (i beats i+1 and loses to it).

    The cycle makes the comparison graph strongly connected, so the unregularized MLE exists
    even at 20 comparisons per alternative (m = 5,000, n = 1e5), where random data often
    leave an alternative that never lost.
    """
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=m)
    i = rng.integers(0, m, n)
    j = (i + rng.integers(1, m, n)) % m  # (n,), j != i
    i_wins = rng.uniform(size=n) < 1.0 / (1.0 + np.exp(scores[j] - scores[i]))
    ring, nxt = np.arange(m), (np.arange(m) + 1) % m
    winners = np.concatenate([np.where(i_wins, i, j), ring, nxt])
    losers = np.concatenate([np.where(i_wins, j, i), nxt, ring])
    return winners, losers


def _child(fn: Callable[[], np.ndarray], conn) -> None:
    t0 = time.perf_counter()
    try:
        r = fn()
    except Exception as exc:  # report, e.g. "no finite MLE", instead of waiting for the cap
        conn.send((None, f"{type(exc).__name__}: {exc}"))
        return
    conn.send((time.perf_counter() - t0, r))


def timed(fn: Callable[[], np.ndarray], cap: float) -> tuple[float | None, np.ndarray | None]:
    """(seconds, result) of ``fn()`` in a forked process; (None, None) past ``cap`` seconds."""
    ctx = mp.get_context("fork")  # fork: the closure and its data need no pickling
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, send))
    proc.start()
    send.close()
    sec, res = recv.recv() if recv.poll(cap) else (None, None)
    proc.kill()
    proc.join()
    if isinstance(res, str):
        raise RuntimeError(res)
    return sec, res


def centered_diff(a: np.ndarray | None, b: np.ndarray | None) -> str:
    """Max |a - b| after centering both: the methods may fix the shift gauge differently."""
    if a is None or b is None:
        return "n/a"
    return f"{np.abs((a - a.mean()) - (b - b.mean())).max():.1e}"


def fmt(sec: float | None, cap: float) -> str:
    return f"> {cap:g}" if sec is None else f"{sec:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--cap", type=float, default=45.0, help="seconds allowed per method and size")
    ap.add_argument("--lam", type=float, default=0.0, help="ridge strength lambda of fit_bt")
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
    sizes = (
        [(50, 2_000), (200, 20_000)]
        if args.quick
        else [(1_000, 100_000), (1_000, 1_000_000), (5_000, 100_000), (5_000, 1_000_000)]
    )

    print(f"lam = {args.lam:g}, cap = {args.cap:g} s per method, choix {version('choix')}\n")
    print(
        "| m | comparisons | fit_bt s | ilsr s | opt s | speedup | max diff ilsr | max diff opt |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for m, n in sizes:
        win, los = make_data(m, n, args.seed)
        data = list(zip(win.tolist(), los.tolist(), strict=True))  # choix's input format

        def ours(win=win, los=los, m=m) -> np.ndarray:
            return fit_bt(win_matrix(win, los, m), lam=args.lam)

        def ilsr(data=data, m=m) -> np.ndarray:
            return choix.ilsr_pairwise(m, data, alpha=0.0, tol=1e-10, max_iter=10_000)

        def opt(data=data, m=m) -> np.ndarray:
            return choix.opt_pairwise(m, data, alpha=args.lam / 2, tol=1e-10)

        t_ours, r_ours = timed(ours, args.cap)
        t_ilsr, r_ilsr = timed(ilsr, args.cap) if args.lam == 0 else (None, None)
        t_opt, r_opt = timed(opt, args.cap)

        done = [t for t in (t_ilsr, t_opt) if t is not None]
        if t_ours is None:
            speedup = "n/a"
        elif done:
            speedup = f"{min(done) / t_ours:.1f}x"
        else:  # both choix methods hit the cap: report a lower bound
            speedup = f"> {args.cap / t_ours:.1f}x"
        ilsr_cell = fmt(t_ilsr, args.cap) if args.lam == 0 else "n/a (other prior)"
        print(
            f"| {m:,} | {n:,} | {fmt(t_ours, args.cap)} | {ilsr_cell} | {fmt(t_opt, args.cap)} "
            f"| {speedup} | {centered_diff(r_ilsr, r_ours)} | {centered_diff(r_opt, r_ours)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
