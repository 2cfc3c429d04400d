"""End to end: ``axolotl-calib demo --fast`` (real axolotl train x5, real lm-eval) produces every artefact."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROWS = ("oracle", "base", "aligned", "aligned.ts", "aligned.ls", "aligned.cft", "aligned.rcft")
PNGS = ("reliability_aligned.png", "reliability_aligned.ts.png", "reliability_aligned.ls.png", "reliability_aligned.cft.png",
        "reliability_aligned.rcft.png", "comparison_aligned.png")


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_fast")
    proc = subprocess.run([sys.executable, "-m", "axolotl_calib_plugin.cli", "demo", "--fast", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    return out, proc


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fast_demo_runs(fast_demo):
    out, proc = fast_demo
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "conf-ECE in" in proc.stdout and "aligned (DPO)" in proc.stdout


@pytest.mark.slow
def test_fast_demo_results_well_formed(fast_demo):
    out, _ = fast_demo
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["errors"] == {}
    for key in ROWS:
        row = res["rows"][key]
        for dom in ("in", "out"):
            for m in ("conf_ece", "cw_ece", "acc"):
                assert 0.0 <= row[dom][m] <= 1.0, (key, dom, m)
        assert 0.0 <= row["pairs"]["pref_ratio"] <= 1.0 and 0.0 <= row["pairs"]["rank_acc"] <= 1.0
    # lm-eval's own aggregates agree with the recomputation from its per-question log-likelihoods
    for key in ("base", "aligned", "aligned.ls", "aligned.cft", "aligned.rcft"):
        for dom in ("in", "out"):
            r = res["rows"][key][dom]
            for m in ("conf_ece", "cw_ece", "acc"):
                assert abs(r[m] - r["lm_eval"][m]) < 1e-6, (key, dom, m)
    # temperature scaling never changes accuracy
    for dom in ("in", "out"):
        assert res["rows"]["aligned.ts"][dom]["acc"] == res["rows"]["aligned"][dom]["acc"]
    assert res["rows"]["aligned.ts"]["temperature"] > 0
    # the regime diagnosis of the start models used their predictions on the training set too
    assert res["rows"]["aligned"]["regime"]["train_acc"] is not None
    assert res["checks"] and all({"name", "ok", "detail"} <= set(c) for c in res["checks"])
    md = (out / "results.md").read_text()
    assert "| model |" in md and "+ CFT" in md and "+ RCFT" in md


@pytest.mark.slow
def test_fast_demo_artefacts(fast_demo):
    out, _ = fast_demo
    for png in PNGS:
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    for name in ("base", "aligned", "aligned.ls", "aligned.cft", "aligned.rcft"):
        assert (out / "configs" / f"{name}.yml").exists()
        assert (out / "models" / name / "model.safetensors").exists()
    for f in ("base_train", "train", "dpo", "ts_fit", "eval_in", "eval_out", "pairs_eval"):
        assert os.path.getsize(out / "data" / f"{f}.jsonl") > 0
