"""Does the ECE term slow a training step? One step with it vs a plain Axolotl SFT step, side by side in one run.

On a local tiny Llama (bigger than the tests' one so the timings mean something: hidden 256, 4 layers, MCQ rows
of ~128 tokens, batch 8), with the SAME model, data, batches and optimizer: forward + backward + AdamW step
through ``AxolotlCalibTrainer.training_step`` with the ECE term (calib_lambda=1, targets from a real E-step) vs
the stock ``AxolotlTrainer.training_step`` on the same batches without the calib_* columns. Target: ratio <= 1.05.

Timing protocol (benchmarks/common.py): a warm-up, then timed runs that alternate A/B (and which goes first) so
drift from other processes hits both sides. The verdict uses the median of the per-pair ratios B/A (each pair
runs back to back, so a slow spell of the machine cancels); the medians of each side are printed too. Nothing
here asserts a time; the target is printed as PASS/FAIL.

``--model DIR`` (e.g. the real model, ``axolotl-calib real-model``'s model/ folder) measures that model on its
``--data`` rows (default: data/train.jsonl beside it) with the same code; ``--clock cpu`` times this process's CPU
time instead of wall time (a busy shared CPU box).

Usage: python benchmarks/bench_step.py [--rows 64] [--batch 8] [--hidden 256] [--layers 4] [--words 75]
       [--repeats 15] [--steps-per-run 2] [--threads 1] [--model DIR] [--data FILE.jsonl] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from axolotl_calib_plugin.offline import OFFLINE_ENV
os.environ.update(OFFLINE_ENV)

from common import ab_timings, add_model_args, apply_threads, banner, build, report_ratio, step, sync  # noqa: E402

TARGET = 1.05


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--repeats", type=int, default=15, help="timed A/B pairs")
    ap.add_argument("--steps-per-run", type=int, default=2, help="training steps per timed run")
    args = ap.parse_args(argv)
    apply_threads(args)
    t0 = time.perf_counter()
    s = build(args)
    banner(s, args, "bench_step: a training step with the ECE term (CFT, calib_lambda=1) vs plain SFT on a local "
                    "tiny Llama", time.perf_counter() - t0)
    k = min(args.steps_per_run, len(s.calib_batches))
    print(f"\nTraining step (forward + backward + AdamW), {k} steps per timed run, "
          f"{args.repeats} alternating A/B runs after 1 warm-up each")

    def run_plain():
        for b in s.plain_batches[:k]:
            step(s, s.plain_trainer, b)

    def run_calib():
        for b in s.calib_batches[:k]:
            step(s, s.calib_trainer, b)

    ta, tb = ab_timings(run_plain, run_calib, args.repeats, warmup=1, sync_fn=lambda: sync(s))
    ratio = report_ratio("A: plain Axolotl SFT step", ta, "B: SFT + ECE term step (AxolotlCalibTrainer)", tb,
                         TARGET, unit_div=k)
    print(f"\n summary: step ratio {ratio:.3f}x (target <= {TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
