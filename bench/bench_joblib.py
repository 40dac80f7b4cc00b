"""joblib benchmark: scikit-learn's GridSearchCV on the "pydistributed" backend vs joblib's loky.

Run from the repository root::

    python bench/bench_joblib.py [--rounds N] [--json FILE]

What it measures: ``GridSearchCV(SVC(), grid, cv=5, n_jobs=2).fit(X, y)`` on scikit-learn's
bundled digits data (1797 images, pixels scaled to [0, 1]), a grid of 24 candidates (4 ``C`` x
6 ``gamma``), so 120 fits and 120 scorings of a fold, plus the refit; joblib's auto-batching.
Contenders, each in a fresh process of its own (``--child``):

- **loky**: joblib's default backend, ``n_jobs=2`` (it starts 2 worker processes at the first
  call and keeps them for the next ones);
- **pydistributed**: ``addprocs(2)`` then ``with parallel_backend("pydistributed")``, ``n_jobs=2``;
- **serial**: ``n_jobs=1``, for reference (joblib runs it in the calling process).

Each child reports its setup time (``addprocs(2)`` for pydistributed; nothing for the others),
its first fit (``cold``: loky starts its workers during it) and the median of the next fits
(``warm``). The children run in rounds, each round running every contender once, so that a
slow spell of this shared machine hits them all alike; the figures are medians over rounds.
Every child also reports the best parameters, which must be the same for all.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
CONTENDERS = ("loky", "pydistributed", "serial")
GRID = {"C": [0.1, 1.0, 10.0, 100.0], "gamma": [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1]}
CHILD_TIMEOUT = 600.0


def child(name: str, fits: int) -> dict[str, Any]:
    from joblib import parallel_backend
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    setup = 0.0
    n_jobs = 1 if name == "serial" else 2
    if name == "pydistributed":
        import pydistributed.joblib  # noqa: F401  (registers the backend)
        from pydistributed import addprocs

        t0 = time.perf_counter()
        addprocs(2)
        setup = time.perf_counter() - t0
        ctx: Any = parallel_backend("pydistributed")
    else:
        ctx = parallel_backend("loky")
    times = []
    best = None
    with ctx:
        for _ in range(fits):
            gs = GridSearchCV(SVC(), GRID, cv=5, n_jobs=n_jobs)
            t0 = time.perf_counter()
            gs.fit(X, y)
            times.append(time.perf_counter() - t0)
            best = gs.best_params_
    return {"setup": setup, "times": times, "best": best}


def run_child(name: str, fits: int) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", name, "--fits", str(fits)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env=env,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fits", type=int, default=3, help="fits per child (1 cold + the rest warm)")
    ap.add_argument("--json", help="also write every sample to this file")
    ap.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.fits)))
        return

    samples: dict[str, list[dict[str, Any]]] = {c: [] for c in CONTENDERS}
    for r in range(args.rounds):
        for name in CONTENDERS:
            samples[name].append(run_child(name, args.fits))
            print(f"round {r + 1}/{args.rounds}: {name} done", file=sys.stderr)

    import joblib
    import sklearn

    print(
        f"GridSearchCV(SVC(), 24 candidates, cv=5) on digits (1797 x 64), n_jobs=2; "
        f"joblib {joblib.__version__}, scikit-learn {sklearn.__version__}, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
        f"{args.rounds} rounds x {args.fits} fits, medians"
    )
    head = ("backend", "setup s", "cold fit s", "warm fit s", "spread (warm)")
    print(f"{head[0]:<15} {head[1]:>8} {head[2]:>11} {head[3]:>11} {head[4]:>16}")
    bests: set[str] = set()
    warm_median: dict[str, float] = {}
    for name in CONTENDERS:
        runs = samples[name]
        setup = statistics.median(s["setup"] for s in runs)
        cold = statistics.median(s["times"][0] for s in runs)
        warm_all = [t for s in runs for t in s["times"][1:]] or [s["times"][0] for s in runs]
        warm = statistics.median(warm_all)
        warm_median[name] = warm
        bests.update(json.dumps(s["best"], sort_keys=True) for s in runs)
        print(
            f"{name:<15} {setup:>8.2f} {cold:>11.2f} {warm:>11.2f} "
            f"{min(warm_all):>7.2f}..{max(warm_all):<7.2f}"
        )
    ours, loky, serial = (warm_median[c] for c in ("pydistributed", "loky", "serial"))
    print(
        f"warm: pydistributed takes {ours / loky:.2f}x loky's time; "
        f"speedup over serial: pydistributed {serial / ours:.2f}x, loky {serial / loky:.2f}x"
    )
    print(f"best parameters, all runs: {' | '.join(sorted(bests))}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(samples, f, indent=1)


if __name__ == "__main__":
    main()
