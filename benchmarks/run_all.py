"""Run every ``benchmarks/bench_*.py`` in sequence (sorted by name), streaming their output.

Exits non-zero if any benchmark fails (a crash or a failed correctness assertion; missing a
speed target only prints FAIL in that benchmark's output, it is not an error). ``make bench``
runs this. Usage:

    python benchmarks/run_all.py                 # all of them
    python benchmarks/run_all.py metrics train   # only bench_metrics.py and bench_train.py
    python benchmarks/run_all.py --list
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from axolotl_calib_plugin.offline import OFFLINE_ENV

HERE = Path(__file__).resolve().parent


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
    env = {**os.environ, **OFFLINE_ENV}
    # the package must be importable from the repo root even without an editable install
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent), env.get("PYTHONPATH", "")) if p)
    results = []
    for script in scripts:
        print(f"\n##### {script.name} " + "#" * max(0, 90 - len(script.name)), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=str(HERE.parent), env=env)
        results.append((script.name, rc, time.perf_counter() - t0))
    print("\n##### run_all summary " + "#" * 78)
    for name, rc, sec in results:
        print(f"   {name:<28} {'ok' if rc == 0 else f'FAILED (exit {rc})':<18} {sec:8.1f} s")
    failed = [name for name, rc, _ in results if rc != 0]
    if failed:
        print(f"run_all: {len(failed)} benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
