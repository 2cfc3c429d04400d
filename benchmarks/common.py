"""What the benchmarks share: the A/B timing protocol, its report, and the synthetic MCQ rows.

Timing protocol: warm-up runs first, then repeated timed runs that alternate A and B (and alternate
which goes first) so drift from other processes on a shared machine hits both sides; verdicts use the
median of the per-pair ratios B/A (each pair runs back to back, so a slow spell cancels).
"""

from __future__ import annotations

import os
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


def machine_info() -> list[str]:
    """What a timing depends on besides our code, as lines to print before the numbers: the CPU model (the
    interpreter loop of a baseline and a compiled kernel speed up differently from one model to the next),
    the SIMD extensions numpy dispatches to, the CPU numba compiles for (LLVM tunes the kernel to that model),
    the thread settings, the BLAS core override and the load average."""
    import platform

    import numpy as np

    cpu = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                cpu.setdefault(key.strip(), val.strip())
    except OSError:
        pass
    model = cpu.get("model name") or platform.processor() or "unknown"
    ident = f"family {cpu.get('cpu family', '?')} model {cpu.get('model', '?')} stepping {cpu.get('stepping', '?')}"
    flags = set(cpu.get("flags", "").split())
    simd = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
                        "avx512_fp16", "amx_tile") if f in flags]
    try:
        from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_baseline__, __cpu_features__
    np_on = [k for k, v in __cpu_features__.items() if v and k not in __cpu_baseline__]
    try:
        import llvmlite.binding as llvm
        import numba

        jit = (f"numba {numba.__version__} compiles for CPU '{numba.config.CPU_NAME or llvm.get_host_cpu_name()}'"
               f"{' (NUMBA_CPU_NAME)' if numba.config.CPU_NAME else ' (the host model)'}, "
               f"NUMBA_NUM_THREADS {numba.config.NUMBA_NUM_THREADS} (the metrics kernel runs on one)")
    except ImportError:
        jit = "numba not installed"
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                       "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "NUMBA_CPU_NAME") if k in os.environ}
    mhz = cpu.get("cpu MHz")
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    return [
        f"cpu: {model} ({ident}{f', {float(mhz):.0f} MHz' if mhz else ''}), {os.cpu_count()} cores; "
        f"python {platform.python_version()}; load average {', '.join(f'{x:.2f}' for x in load)}",
        f"simd (/proc/cpuinfo): {' '.join(simd) or 'none of sse4_2..avx512'}; numpy {np.__version__} dispatches "
        f"beyond its baseline to: {' '.join(np_on) or 'nothing'}",
        f"threads: torch {torch.get_num_threads()}; {jit}; environment: "
        + (", ".join(f"{k}={v}" for k, v in env.items()) or "no thread / BLAS variables set"),
    ]
