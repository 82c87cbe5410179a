"""Benchmark ``mixture.fit_em`` on planted linear BT groups: time to convergence and scaling.

Planted data: K orthogonal rewards of norm 3 in d dimensions, users assigned to groups at
random, each comparison between two N(0, I) feature vectors drawn from the user's group's BT
model. Table 1 times ``fit_em`` (hard and soft) and the cross-fitted hard EM
(``crossfit_em.cross_fitted_hard_em``, 2 folds: notebook 04's E-step), with its default
per-group temperature calibration and without (what calibration costs), to convergence at the
headline size (goal: 10,000 users x 100 comparisons, d = 32, K = 4 in under 10 s on 2
cores); table 2 the time per
EM iteration as users grow, which should grow about linearly (E- and M-step are vectorized
over comparisons). Each fit runs in a forked process killed after ``--cap`` seconds. The
100,000-user size holds 10^7 comparisons: about 9 GB of memory.

    python benchmarks/bench_em.py --quick     # 1,000 users; scaling 250 -> 2,000 users
    python benchmarks/bench_em.py             # 10,000 users; scaling 1,000 -> 100,000 users
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np
from scipy.special import expit
from sklearn.metrics import adjusted_rand_score

from pluralign.core.crossfit_em import cross_fitted_hard_em, fit_linear
from pluralign.core.mixture import fit_em


def make_data(n_users: int, per_user: int, d: int, K: int, seed: int):
    """(chosen (n, d), rejected (n, d), users (n,), true group per user (n_users,))."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, K)))
    theta = 3.0 * q.T  # (K, d)
    groups = rng.integers(0, K, n_users)
    users = np.repeat(np.arange(n_users), per_user)  # (n,)
    chosen = rng.normal(size=(users.size, d))  # (n, d), becomes the winner in place
    rejected = rng.normal(size=(users.size, d))
    margin = np.einsum("nd,nd->n", chosen - rejected, theta[groups[users]])
    swap = rng.uniform(size=users.size) >= expit(margin)  # the second one wins
    chosen[swap], rejected[swap] = rejected[swap], chosen[swap].copy()
    return chosen, rejected, users, groups


def _child(conn, n_users: int, args: argparse.Namespace, how: str) -> None:
    ch, rj, u, groups = make_data(n_users, args.per_user, args.d, args.K, args.seed)
    t0 = time.perf_counter()
    if how.startswith("cross-fitted"):
        fit, margins = fit_linear(ch, rj, lam=1e-2)
        res = cross_fitted_hard_em(
            fit, margins, u, args.K, n_iter=args.n_iter, seed=args.seed,
            calibrate=how == "cross-fitted",
        )  # fmt: skip
    else:
        res = fit_em(ch, rj, u, args.K, hard=how == "hard", n_iter=args.n_iter, seed=args.seed)
    sec = time.perf_counter() - t0
    conn.send((sec, res.n_iter, res.converged, adjusted_rand_score(groups, res.assignment)))


def timed(n_users: int, args: argparse.Namespace, how: str):
    """(seconds, n_iter, converged, ARI) of one fit in a forked process; None past the cap."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, n_users, args, how))
    proc.start()
    send.close()
    out = recv.recv() if recv.poll(args.cap) else None
    proc.kill()
    proc.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--cap", type=float, default=60.0, help="seconds allowed per fit")
    ap.add_argument("--per-user", type=int, default=100, help="comparisons per user")
    ap.add_argument("--d", type=int, default=32, help="feature dimension")
    ap.add_argument("--K", type=int, default=4, help="planted and fitted number of groups")
    ap.add_argument("--n-iter", type=int, default=50, help="maximum EM iterations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="limit BLAS threads; use 1 on a busy machine, where OpenBLAS threads that wait on "
        "each other make a small (6,000 x 32) syrk ~100x slower",
    )
    args = ap.parse_args()
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits  # ships with scikit-learn

        threadpool_limits(args.blas_threads)  # inherited by forked workers
    headline = 1_000 if args.quick else 10_000
    scaling = [250, 500, 1_000, 2_000] if args.quick else [1_000, 3_000, 10_000, 30_000, 100_000]

    print(f"d = {args.d}, K = {args.K}, {args.per_user} comparisons per user, cap {args.cap:g} s")
    print("\n| EM | users | comparisons | seconds | iterations | converged | ARI |")
    print("|---|---|---|---|---|---|---|")
    for name in ("hard", "soft", "cross-fitted", "cross-fitted, uncalibrated"):
        out = timed(headline, args, name)
        n = headline * args.per_user
        if out is None:
            print(f"| {name} | {headline:,} | {n:,} | > {args.cap:g} | | | |", flush=True)
            continue
        sec, it, conv, ari = out
        print(
            f"| {name} | {headline:,} | {n:,} | {sec:.2f} | {it} | {conv} | {ari:.3f} |", flush=True
        )

    print("\n| users | comparisons | hard s | iterations | s / iteration | us / comparison-iter |")
    print("|---|---|---|---|---|---|")
    for n_users in scaling:
        n = n_users * args.per_user
        out = timed(n_users, args, "hard")
        if out is None:
            print(f"| {n_users:,} | {n:,} | > {args.cap:g} | | | |", flush=True)
            break  # larger sizes would take longer still
        sec, it, _, _ = out
        per_it = sec / it
        print(
            f"| {n_users:,} | {n:,} | {sec:.2f} | {it} | {per_it:.3f} | {1e6 * per_it / n:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
