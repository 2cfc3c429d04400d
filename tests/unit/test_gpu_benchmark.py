"""The one-command GPU benchmark runs (its CPU smoke mode: the same code path on a tiny model), so it works
unchanged when a GPU machine is available; its numbers are not checked here (timings never are)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_benchmark.py"


def test_gpu_benchmark_smoke_mode_reports_every_measurement(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "gpu.json"
    assert mod.main(["--smoke", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    for key in ("exact_estep_over_epoch", "online_estep_over_epoch", "online_total_over_sft_2ep",
                "online_total_over_sft_5ep"):
        assert math.isfinite(res[key]) and res[key] > 0, key
    assert res["step_ms"]["ratio"] > 0 and res["online_estep_over_epoch"] < res["exact_estep_over_epoch"]
