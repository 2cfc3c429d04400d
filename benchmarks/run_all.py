"""Run every ``benchmarks/bench_*.py`` in sequence (sorted by name), streaming their output.

Exit status: 1 if any benchmark fails (a crash or a failed correctness assertion); else 2 if any
recorded target is missed; else 0. A benchmark reports a missed target by printing the word FAIL
(upper case, a whole word: "target <= 1.05x: FAIL") on the verdict's line; run_all collects those
lines and repeats them in a banner at the end, so a regression cannot scroll by unnoticed.
``make bench`` runs this. Usage:

    python benchmarks/run_all.py                 # all of them
    python benchmarks/run_all.py metrics step    # only bench_metrics.py and bench_step.py
    python benchmarks/run_all.py --list
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from axolotl_calib_plugin.offline import OFFLINE_ENV

HERE = Path(__file__).resolve().parent

#: a line with this is a missed target (PASS/FAIL verdicts; "FAILED" and "fail" do not match)
TARGET_MISSED = re.compile(r"\bFAIL\b")

#: exit status when every benchmark ran and was correct but at least one target was missed
EXIT_TARGET_MISSED = 2


def run_streamed(script: Path, env: dict) -> tuple[int, list[str]]:
    """Run one benchmark, echo its output (stdout and stderr, in order) as it comes, and return its
    exit status and the lines that report a missed target."""
    missed = []
    with subprocess.Popen([sys.executable, str(script)], cwd=str(HERE.parent), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if TARGET_MISSED.search(line):
                missed.append(line.strip())
    return proc.returncode, missed


def discover(names: list[str]) -> list[Path]:
    found = sorted(HERE.glob("bench_*.py"))
    if not names:
        return found
    wanted = {n.removeprefix("bench_").removesuffix(".py") for n in names}
    picked = [p for p in found if p.stem.removeprefix("bench_") in wanted]
    missing = wanted - {p.stem.removeprefix("bench_") for p in picked}
    if missing:
        raise SystemExit(f"no benchmarks/bench_<name>.py for {sorted(missing)}; have: {[p.name for p in found]}")
    return picked


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run the benchmarks/bench_*.py scripts in sequence.")
    ap.add_argument("names", nargs="*", help="run only these (e.g. 'metrics' for bench_metrics.py)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    scripts = discover(args.names)
    if args.list:
        print("\n".join(p.name for p in scripts))
        return 0
    if not scripts:
        print("run_all: no benchmarks/bench_*.py found", file=sys.stderr)
        return 1
    env = {**os.environ, **OFFLINE_ENV, "PYTHONUNBUFFERED": "1"}
    # the package must be importable from the repo root even without an editable install
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent), env.get("PYTHONPATH", "")) if p)
    results = []
    for script in scripts:
        print(f"\n##### {script.name} " + "#" * max(0, 90 - len(script.name)), flush=True)
        t0 = time.perf_counter()
        rc, missed = run_streamed(script, env)
        results.append((script.name, rc, time.perf_counter() - t0, missed))
    print("\n##### run_all summary " + "#" * 78)
    for name, rc, sec, missed in results:
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"   {name:<28} {status:<18} {sec:8.1f} s   "
              f"{f'{len(missed)} target(s) missed' if missed else 'no target missed'}")
    failed = [name for name, rc, _, _ in results if rc != 0]
    missed = [(name, line) for name, _, _, lines in results for line in lines]
    if missed:
        bar = "!" * 100
        print(f"\n{bar}\n!!! TARGET MISSED: {len(missed)} recorded performance target(s) not met "
              f"(make bench exits {EXIT_TARGET_MISSED}):")
        for name, line in missed:
            print(f"!!!   {name}: {line}")
        print(bar, flush=True)
    if failed:
        print(f"run_all: {len(failed)} benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if missed:
        print(f"run_all: TARGET MISSED in {', '.join(sorted({name for name, _ in missed}))}", file=sys.stderr)
        return EXIT_TARGET_MISSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
