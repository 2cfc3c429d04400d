"""What the benchmarks share: the A/B timing protocol, its report, and the synthetic MCQ rows.

Timing protocol: warm-up runs first, then repeated timed runs that alternate A and B (and alternate
which goes first) so drift from other processes on a shared machine hits both sides; verdicts use the
median of the per-pair ratios B/A (each pair runs back to back, so a slow spell cancels).
"""

from __future__ import annotations

import random
import statistics
import time

import torch

WORDS = ("alpha beta gamma delta red green blue cat dog the of and what which is true false question answer "
         "option heart lung cell atom light water energy force mass").split()


def make_rows(n: int, words: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = 4 if i % 8 else 5  # mostly 4 options, some 5 (mixed K, as in ARC)
        q = " ".join(rng.choice(WORDS) for _ in range(words)) + "?"
        choices = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(k)]
        rows.append({"question": q, "choices": choices, "answer": rng.randrange(k)})
    return rows


def ab_timings(fn_a, fn_b, repeats: int, warmup: int, sync_fn=lambda: None):
    """Alternate A and B (and who goes first) ``repeats`` times after ``warmup`` rounds of each."""
    for _ in range(warmup):
        fn_a(); fn_b()  # noqa: E702
    sync_fn()
    ta, tb = [], []
    for r in range(repeats):
        pair = ((fn_a, ta), (fn_b, tb)) if r % 2 == 0 else ((fn_b, tb), (fn_a, ta))
        for fn, acc in pair:
            t0 = time.perf_counter()
            fn()
            sync_fn()
            acc.append(time.perf_counter() - t0)
    return ta, tb


def report_ratio(label_a, ta, label_b, tb, target, unit_div=1, unit="ms/step"):
    ma, mb = statistics.median(ta), statistics.median(tb)
    paired = statistics.median(b / a for a, b in zip(ta, tb))
    scale = 1e3 / unit_div
    print(f"   {label_a:<44} median {ma * scale:9.1f} {unit}   (runs: {', '.join(f'{t * scale:.0f}' for t in ta)})")
    print(f"   {label_b:<44} median {mb * scale:9.1f} {unit}   (runs: {', '.join(f'{t * scale:.0f}' for t in tb)})")
    ratio = mb / ma
    verdict = "PASS" if paired <= target else "FAIL"
    print(f"   ratio B/A: {paired:.3f}x (median of the per-pair ratios; ratio of the medians {ratio:.3f}x)   "
          f"target <= {target:.2f}x: {verdict}")
    return paired


def timed(fn, repeats: int):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), times


def timed_interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median wall time of each function over ``repeats`` rounds; every round runs each once."""
    outs, wall, _ = timed_interleaved_cpu(fns, repeats)
    return outs, wall


def timed_interleaved_cpu(fns: dict, repeats: int) -> tuple[dict, dict, dict]:
    """:func:`timed_interleaved` plus the median CPU time of this process per call
    (``time.process_time``): on a box shared with other jobs, time slices given to them inflate
    the wall time of a few-ms call by whole slices, but not its CPU time."""
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    outs = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            outs[name] = fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = statistics.median
    return outs, {k: med(v) for k, v in wall.items()}, {k: med(v) for k, v in cpu.items()}


class HeadOnly(torch.nn.Module):
    """Just an output head, with the accessor ``loss.option_logits`` uses."""

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)

    def get_output_embeddings(self):
        return self.lm_head
