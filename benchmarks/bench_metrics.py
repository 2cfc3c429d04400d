"""Metrics core vs a straightforward per-sample Python loop (issue 7).

Prints, for n = 100k and 1M samples (K=4, 10 bins):
  * the values of conf-ECE, cw-ECE and accuracy from both implementations (asserted equal to 1e-9),
  * the wall time of each and the speed ratio loop / core (target >= 100x);
and then how the core's cost grows with n (10k .. 10M): time per sample should be flat (linear cost).

The baseline is deliberately not a strawman: the inputs are converted to Python lists once (timed),
the bin of each value is found with ``bisect`` (C) on the precomputed edges m/M, and the per-bin sums
are accumulated in plain lists -- one Python-level iteration per sample (per sample and class for cw-ECE).
Both the baseline and the core are timed directly; nothing is extrapolated. A loop that indexes the
numpy rows directly (np.argmax(row), float(row[j]), scanning the edges) measured the same ~3 us/sample.
The core is timed as users call it: three functions, each validating its input.

Usage: python benchmarks/bench_metrics.py [--sizes 100000,1000000] [--scaling 10000,...] [--repeats N]
"""

from __future__ import annotations

import argparse
import bisect
import os
import statistics
import sys
import time

import numpy as np
import torch

from axolotl_calib_plugin.metrics import accuracy, conf_ece, cw_ece

K = 4
N_BINS = 10
TOL = 1e-9


# ----------------------------------------------------------------------------- the loop baseline
def loop_metrics(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict[str, float]:
    """conf-ECE, cw-ECE and accuracy by the textbook definitions, one Python iteration per sample.

    Bins ((m-1)/M, m/M] (0 in the first): bisect_left on the inner edges m/M, m=1..M-1.
    ECE = sum_m |B_m|/n * |acc(B_m) - conf(B_m)|; argmax ties go to the lowest index.
    """
    rows = probs.tolist()
    ys = labels.tolist()
    n = len(rows)
    k = len(rows[0])
    inner = [m / n_bins for m in range(1, n_bins)]
    # conf-ECE + accuracy
    cnt = [0] * n_bins
    s_conf = [0.0] * n_bins
    s_acc = [0.0] * n_bins
    n_correct = 0
    # cw-ECE: per class and bin
    c_cnt = [[0] * n_bins for _ in range(k)]
    c_p = [[0.0] * n_bins for _ in range(k)]
    c_y = [[0.0] * n_bins for _ in range(k)]
    for row, y in zip(rows, ys):
        best = 0
        for j in range(1, k):
            if row[j] > row[best]:
                best = j
        conf = row[best]
        b = bisect.bisect_left(inner, conf)
        cnt[b] += 1
        s_conf[b] += conf
        if best == y:
            s_acc[b] += 1.0
            n_correct += 1
        for j in range(k):
            pj = row[j]
            bj = bisect.bisect_left(inner, pj)
            c_cnt[j][bj] += 1
            c_p[j][bj] += pj
            if j == y:
                c_y[j][bj] += 1.0

    def ece(count, s_val, s_hit):
        total = 0.0
        for m in range(n_bins):
            if count[m]:
                total += count[m] / n * abs(s_hit[m] / count[m] - s_val[m] / count[m])
        return total

    return {
        "conf_ece": ece(cnt, s_conf, s_acc),
        "cw_ece": sum(ece(c_cnt[j], c_p[j], c_y[j]) for j in range(k)) / k,
        "accuracy": n_correct / n,
    }


def core_metrics(probs, labels, n_bins: int = N_BINS) -> dict[str, float]:
    return {
        "conf_ece": conf_ece(probs, labels, n_bins),
        "cw_ece": cw_ece(probs, labels, n_bins),
        "accuracy": accuracy(probs, labels),
    }


# ----------------------------------------------------------------------------- data + timing
def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dirichlet probs (n, K) float64 with labels from a mildly over-confident model; ~2% of the
    rows are snapped to multiples of 1/20 so plenty of confidences sit exactly on bin edges."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(K, 0.6), size=n)
    snap = rng.random(n) < 0.02
    w = rng.integers(0, 6, size=(int(snap.sum()), K)).astype(np.float64)
    w[:, 0] += 1
    probs[snap] = w / w.sum(axis=1, keepdims=True)
    true = 0.7 * probs + 0.3 / K
    labels = (true.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).clip(max=K - 1)
    return probs, labels.astype(np.int64)


def timed(fn, repeats: int):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), times


def fmt_t(sec: float) -> str:
    return f"{sec * 1e3:9.1f} ms" if sec < 10 else f"{sec:9.2f} s "


def compare(n: int, repeats_core: int) -> bool:
    probs, labels = make_data(n)
    core_metrics(probs[:1000], labels[:1000])  # warm-up
    core, t_core, _ = timed(lambda: core_metrics(probs, labels), repeats_core)
    t_core_parts = {}
    for name, fn in (("conf_ece", conf_ece), ("cw_ece", cw_ece), ("accuracy", accuracy)):
        _, t_core_parts[name], _ = timed(lambda fn=fn: fn(probs, labels), repeats_core)
    loop, t_loop, _ = timed(lambda: loop_metrics(probs, labels), 1)
    ok = True
    print(f"\n n = {n:,}  (K={K}, {N_BINS} bins)")
    print(f"   {'metric':<9} {'loop':>20} {'core':>20} {'|diff|':>9}")
    for key in ("conf_ece", "cw_ece", "accuracy"):
        diff = abs(loop[key] - core[key])
        ok &= diff <= TOL
        print(f"   {key:<9} {loop[key]:20.15f} {core[key]:20.15f} {diff:9.1e}{'' if diff <= TOL else '  MISMATCH'}")
    ratio = t_loop / t_core
    print(f"   time: loop (all three, one pass, timed once) {fmt_t(t_loop)}   "
          f"core (all three, median of {repeats_core}) {fmt_t(t_core)}  "
          f"[conf_ece {t_core_parts['conf_ece'] * 1e3:.1f} ms, cw_ece {t_core_parts['cw_ece'] * 1e3:.1f} ms, "
          f"accuracy {t_core_parts['accuracy'] * 1e3:.1f} ms]")
    print(f"   per sample: loop {t_loop / n * 1e9:7.0f} ns, core {t_core / n * 1e9:5.0f} ns "
          f"(>= 100x needs core <= {t_loop / n * 1e9 / 100:.0f} ns/sample)")
    print(f"   speed-up loop/core: {ratio:7.1f}x   (target >= 100x: {'PASS' if ratio >= 100 else 'FAIL'})")
    assert ok, f"core and loop disagree by more than {TOL} at n={n}"
    return ratio >= 100


def scaling(sizes: list[int]) -> None:
    print(f"\n Core cost vs n (conf_ece + cw_ece + accuracy, each validating its input; median of repeats)")
    print(f"   {'n':>12} {'time':>12} {'ns/sample':>10} {'ns/sample rel. to smallest':>27}")
    base = None
    for n in sizes:
        probs, labels = make_data(n, seed=1)
        repeats = 7 if n <= 100_000 else (3 if n <= 1_000_000 else 2)
        core_metrics(probs[:1000], labels[:1000])
        _, t, _ = timed(lambda: core_metrics(probs, labels), repeats)
        per = t / n * 1e9
        base = base or per
        print(f"   {n:12,} {fmt_t(t):>12} {per:10.1f} {per / base:27.2f}")
        del probs, labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="n for the loop-vs-core comparison")
    ap.add_argument("--scaling", default="10000,100000,1000000,10000000", help="n for the core scaling table")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of the core (median)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: the loop is single-threaded too, and on a shared "
                         "2-core box 2 threads make every torch op wait for a busy core)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("=" * 100)
    print("bench_metrics: metrics core (axolotl_calib_plugin.metrics) vs per-sample Python loop")
    print(f"torch {torch.__version__}, numpy {np.__version__}, torch threads {torch.get_num_threads()}, "
          f"cpu count {os.cpu_count()}")
    all_ok = True
    for n in [int(s) for s in args.sizes.split(",") if s]:
        all_ok &= compare(n, args.repeats)
    scaling([int(s) for s in args.scaling.split(",") if s])
    print(f"\n values identical (<= {TOL:g}) at every n: yes;  speed-up target >= 100x: "
          f"{'met' if all_ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
