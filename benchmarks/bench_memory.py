"""How much memory does the ECE term add to training, and what does an E-step need? Each phase in a fresh process.

On the tiny Llama of bench_step.py (benchmarks/common.py builds it), three phases, each in a fresh subprocess,
interleaved over ``--mem-repeats`` rounds (median): ``--mem-steps`` plain SFT steps (``AxolotlTrainer``), as many
steps with the ECE term (``AxolotlCalibTrainer``), and one E-step (``run_estep`` + M-step).
* on CPU: peak-RSS growth, i.e. ``VmHWM`` minus the RSS right before the phase, after resetting the kernel's peak
  counter through ``/proc/self/clear_refs``; ``tracemalloc`` cannot see torch's allocations;
* on a GPU: ``torch.cuda.max_memory_allocated`` growth.
Reported, no target.

``--model DIR`` / ``--data FILE.jsonl``: as in bench_step.py (each child loads the folder).

Usage: python benchmarks/bench_memory.py [--rows 64] [--batch 8] [--hidden 256] [--layers 4] [--words 75]
       [--mem-steps 3] [--mem-repeats 3] [--threads 1] [--model DIR] [--data FILE.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

from axolotl_calib_plugin.offline import OFFLINE_ENV
os.environ.update(OFFLINE_ENV)

import torch  # noqa: E402

from common import (add_model_args, apply_threads, build, data_file, em_refresh, machine_info,  # noqa: E402
                    model_args, step)


def _vm_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s+(\d+)", fh.read()).group(1))


def memory_child(args) -> None:
    """Run ONE phase in this fresh process and print its peak memory growth as JSON."""
    s = build(args)
    phase = args.child
    # a first step/E-step before measuring would hide the optimizer state and the first
    # allocations; instead measure the whole phase from a settled process
    import gc

    gc.collect()
    if s.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before = _vm_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:  # reset the peak-RSS counter (Linux >= 4.0)
            fh.write("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    if phase == "estep":
        em_refresh(s)
    else:
        trainer = s.calib_trainer if phase == "calib" else s.plain_trainer
        batches = s.calib_batches if phase == "calib" else s.plain_batches
        for b in batches[: args.mem_steps]:
            step(s, trainer, b)
    result = {"phase": phase, "rss_peak_growth_mb": (_vm_kb("VmHWM") - rss_before) / 1024,
              "hwm_reset": hwm_reset}
    if s.device.type == "cuda":
        torch.cuda.synchronize()
        result["cuda_peak_growth_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    print("MEMJSON " + json.dumps(result))


def memory_report(args) -> None:
    print(f"\nPeak memory, each phase in a fresh subprocess ({args.mem_steps} training steps / one E-step), "
          f"{args.mem_repeats} interleaved rounds")
    base_cmd = [sys.executable, os.path.abspath(__file__), *model_args(args), "--mem-steps", str(args.mem_steps)]
    runs: dict[str, list[dict]] = {"sft": [], "calib": [], "estep": []}
    for _ in range(args.mem_repeats):
        for phase in runs:  # interleaved, like the timings
            proc = subprocess.run(base_cmd + ["--child", phase], capture_output=True, text=True, env={**os.environ})
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEMJSON ")]
            if proc.returncode != 0 or not line:
                print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n")
                raise RuntimeError(f"memory child {phase!r} failed (rc {proc.returncode})")
            runs[phase].append(json.loads(line[-1][len("MEMJSON "):]))
    key = "cuda_peak_growth_mb" if "cuda_peak_growth_mb" in runs["sft"][0] else "rss_peak_growth_mb"
    results = {ph: {**rs[0], key: statistics.median(r[key] for r in rs), "all": [r[key] for r in rs]}
               for ph, rs in runs.items()}
    what = "CUDA max_memory_allocated growth" if key.startswith("cuda") else "peak RSS (VmHWM) growth over the pre-phase RSS"
    names = {"sft": "training, plain SFT (AxolotlTrainer)", "calib": "training, with ECE term (AxolotlCalibTrainer)",
             "estep": "E-step (run_estep + M-step)"}
    print(f"   metric: {what}" + ("" if results["sft"].get("hwm_reset", True) else "  [WARNING: peak counter not reset]"))
    for phase in ("sft", "calib", "estep"):
        each = ", ".join(f"{v:.1f}" for v in results[phase]["all"])
        print(f"   {names[phase]:<48} {results[phase][key]:9.1f} MB   (median of {args.mem_repeats} processes: {each})")
    sft, cal = results["sft"][key], results["calib"][key]
    print(f"   training with / without the ECE term: {cal / sft:.3f}x  ({cal - sft:+.1f} MB)")
    print(f"   E-step / plain SFT training:          {results['estep'][key] / sft:.3f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--mem-steps", type=int, default=3, help="training steps per training phase")
    ap.add_argument("--mem-repeats", type=int, default=3, help="fresh processes per phase (median)")
    ap.add_argument("--child", choices=["sft", "calib", "estep"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    apply_threads(args)
    if args.child:
        memory_child(args)
        return 0
    print("=" * 100)
    print("bench_memory: peak memory of training with / without the ECE term and of the E-step, on "
          + (f"the model folder {args.model}" if args.model else "a local tiny Llama")
          + f"; {args.rows} rows" + (f" of {data_file(args)}" if data_file(args) else " (synthetic)")
          + f", batch {args.batch}")
    for line in machine_info():
        print(line)
    memory_report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
