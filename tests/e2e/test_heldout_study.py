"""End to end: the held-out M-step study on the fast settings (one seed, CFT only, lambda 0 and 10): real
``axolotl train`` runs with an eval split, real lm-eval, the pre-check table, the paired comparisons and the
figure; each held-out run's per-refresh log reads the whole TS-fit split."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fast_heldout_study_end_to_end(tmp_path):
    from axolotl_calib_plugin.demo.studies import heldout as heldout_study
    from axolotl_calib_plugin.demo.pipeline import FAST
    from axolotl_calib_plugin.demo.study import run_study

    plan = replace(heldout_study.PLAN, lambdas=(0.0, 10.0), variants=("heldout", "temp"), modes=("cft",), extra_runs=())
    # smaller than the fast demo: this test checks the wiring, not the numbers
    settings = replace(FAST, n_base=240, n_train=120, n_dpo=120, n_ts=60, n_eval_in=80, n_eval_out=60, base_epochs=2,
                       overfit_epochs=2)
    study = run_study(str(tmp_path / "out"), [0], settings, plan, parallel=2, summary_dir=str(tmp_path), kind="heldout")
    assert not study["per_seed"]["0"]["errors"]
    s = study["summary"]
    # pre-check: both start models, training rows vs the held-out TS-fit split, every row counted once
    for arm in ("aligned", "overfit"):
        pc = s["precheck"][arm]
        assert sum(pc["train_bins"]["count"]) == settings.n_train and sum(pc["heldout_bins"]["count"]) == settings.n_ts
    keys = {c["key"] for c in s["comparisons"]}
    assert keys == {"overfit.cft_heldout_lam10", "overfit.cft_temp_lam10"}
    assert all(c["base"] == "overfit.cft_lam0" and c["vs_lam0"]["conf_ece_in"]["n"] == 1 for c in s["comparisons"])
    md = open(tmp_path / "heldout.md", encoding="utf-8").read()
    assert study["meta"]["commit"] and "Pre-check" in md and "held-out bins" in md and "held-out temperature targets" in md
    assert os.path.getsize(tmp_path / "heldout_deltas.png") > 1000
    # the held-out runs read all n_ts held-out rows at every refresh; the temperature run fitted a T
    runs = tmp_path / "out" / "runs" / "seed0" / "models"
    for name, key in (("overfit.cft_heldout_lam10", "heldout_count"), ("overfit.cft_temp_lam10", "heldout_count")):
        with open(runs / name / "calib_refresh.jsonl", encoding="utf-8") as f:
            recs = [json.loads(line) for line in f]
        assert recs and all(sum(b[key] for b in r["bins"]) == settings.n_ts for r in recs)
    assert all("temperature" in json.loads(line) for line in open(runs / "overfit.cft_temp_lam10" / "calib_refresh.jsonl"))
