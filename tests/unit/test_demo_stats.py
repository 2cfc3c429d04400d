"""Across-seed statistics of the study (hand-computed cases) and the study's claim logic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from axolotl_calib_plugin.demo.stats import mean_ci, paired_difference, verdict
from axolotl_calib_plugin.demo.studies.main import render_markdown, summarize


def test_mean_ci_by_hand():
    # values 1, 2, 3: mean 2, sd 1, t_{0.975, 2} = 4.30265272975 (tables: 4.303) -> half = 4.3027 / sqrt(3)
    c = mean_ci([1.0, 2.0, 3.0])
    assert c["mean"] == 2.0 and c["sd"] == 1.0 and c["n"] == 3
    assert c["half"] == pytest.approx(4.30265272975 / math.sqrt(3), rel=1e-11)
    assert (c["lo"], c["hi"]) == pytest.approx((2 - c["half"], 2 + c["half"]))
    one = mean_ci([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["half"]) and one["n"] == 1
    assert mean_ci([float("nan"), 1.0, 3.0])["n"] == 2  # NaN dropped
    assert mean_ci([])["n"] == 0


def test_mean_ci_covers_the_mean_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(2000):
        c = mean_ci(rng.normal(0.3, 0.1, size=5))
        covered += c["lo"] <= 0.3 <= c["hi"]
    assert 0.93 < covered / 2000 < 0.97


def test_paired_difference_removes_the_shared_seed_effect():
    seed_effect = np.array([0.0, 0.2, -0.1, 0.3, 0.05])
    a = 0.10 + seed_effect + np.array([0.001, -0.001, 0.002, 0.0, -0.002])
    b = 0.12 + seed_effect
    d = paired_difference(a, b)
    assert d["mean"] == pytest.approx(-0.02, abs=1e-12)
    assert d["significant"] and d["hi"] < 0
    assert d["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    # unpaired, the same data would not be significant: the seed effect swamps the difference
    assert mean_ci(a)["lo"] < mean_ci(b)["mean"] < mean_ci(a)["hi"]
    assert verdict(d, "<0") == "reproduced" and verdict(d, ">0") == "not reproduced"
    flat = paired_difference([0.1, 0.2, 0.3], [0.2, 0.1, 0.3])
    assert not flat["significant"] and verdict(flat, "<0") == "inconclusive"
    with pytest.raises(ValueError):
        verdict(d, "=0")


def test_summarize_builds_cells_comparisons_claims_and_lambda_curve():
    rng = np.random.default_rng(1)
    per_seed = {}
    for s in range(5):
        shift = rng.normal(0, 0.02)

        def row(ece, acc):
            return {"in": {"conf_ece": ece + shift, "cw_ece": ece / 2, "acc": acc + shift, "mean_conf": 0.7},
                    "out": {"conf_ece": ece, "cw_ece": ece / 2, "acc": acc, "mean_conf": 0.7}}

        rows = {"base": row(0.03, 0.60), "aligned": row(0.25, 0.60), "aligned.cft": row(0.03 + 0.001 * s, 0.605),
                "aligned.cft_lam0": row(0.05, 0.61), "aligned.cft_lam3": row(0.02, 0.59), "aligned.rcft": row(0.04, 0.58),
                "aligned.ts": row(0.02, 0.60)}
        rows["aligned"]["regime"] = {"verdict": "calibratable" if s else "non-calibratable", "acc": 0.6,
                                     "train_acc": 0.6, "gap": 0, "gap_z": 0, "ts_conf_ece": 0.02}
        per_seed[str(s)] = {"rows": rows}
    s = summarize(per_seed)
    assert s["cells"]["aligned"]["conf_ece_in"]["n"] == 5
    comp = {c["label"]: c for c in s["comparisons"]}
    assert comp["CFT - aligned"]["diff"]["conf_ece_in"]["mean"] == pytest.approx(-0.22 + 0.002, abs=1e-9)
    claims = {c["claim"]: c["verdict"] for c in s["claims"]}
    assert claims["CFT restores the aligned model's calibration: in-domain conf-ECE falls"] == "reproduced"
    assert claims["Preference alignment (DPO) makes the model over-confident: in-domain conf-ECE rises"] == "reproduced"
    assert claims["RCFT reaches higher in-domain accuracy than CFT (aligned arm)"] == "not reproduced"
    lam = [p["lambda"] for p in s["lambda_curve"]["aligned.cft"]]
    assert lam == [0.0, 1.0, 3.0]
    assert s["regime"]["aligned"] == {"expected": "calibratable", "hits": 4, "n": 5}
    md = render_markdown({"meta": {"n_seeds": 5, "seeds": list(range(5)), "wall_time_s": 60, "machine": "test",
                                   "settings": {"world": "topic", "n_train": 1, "n_eval_in": 1, "n_eval_out": 1}},
                          "summary": s})
    assert "| &nbsp;&nbsp;+ CFT |" in md and "**reproduced**" in md and "4 of 5 seeds" in md
    assert "resumed after" not in md
    noted = render_markdown({"meta": {"n_seeds": 5, "seeds": list(range(5)), "wall_time_s": 60, "machine": "test",
                                      "resume_note": "Seed 0 resumed after a restart.",
                                      "settings": {"world": "topic", "n_train": 1, "n_eval_in": 1, "n_eval_out": 1}},
                             "summary": s})
    assert "\n\nSeed 0 resumed after a restart.\n\n| model |" in noted


def test_study_runs_every_seed_in_its_own_folder_and_aggregates(tmp_path, monkeypatch):
    """Seed plumbing: each seed is its own replicate (own folder, world, data, training seed)."""
    from axolotl_calib_plugin.demo import pipeline, study

    calls = []

    def fake_run_seed(out, seed, settings, plan, parallel, reuse, plots):
        calls.append((out, seed, plots))
        ece = 0.2 + 0.01 * seed
        rows = {"base": {"in": {"conf_ece": 0.03, "cw_ece": 0.02, "acc": 0.6, "mean_conf": 0.6},
                         "out": {"conf_ece": 0.05, "cw_ece": 0.03, "acc": 0.58, "mean_conf": 0.6}},
                "aligned": {"in": {"conf_ece": ece, "cw_ece": 0.1, "acc": 0.6, "mean_conf": 0.8},
                            "out": {"conf_ece": ece, "cw_ece": 0.1, "acc": 0.58, "mean_conf": 0.8}}}
        return {"rows": rows, "meta": {"errors": {}, "timings_s": {}, "wall_time_s": 1.0}}

    monkeypatch.setattr(pipeline, "run_seed", fake_run_seed)  # the synthetic seed pipeline every Study uses by default
    res = study.run_study(str(tmp_path / "out"), seeds=[3, 5, 8], summary_dir=str(tmp_path / "summary"))
    assert [(c[1], c[2]) for c in calls] == [(3, False), (5, False), (8, False)]
    assert [c[0] for c in calls] == [str(tmp_path / "out" / "runs" / f"seed{s}") for s in (3, 5, 8)]
    assert res["meta"]["seeds"] == [3, 5, 8] and set(res["per_seed"]) == {"3", "5", "8"}
    cell = res["summary"]["cells"]["aligned"]["conf_ece_in"]
    assert cell["mean"] == pytest.approx(0.2 + 0.01 * 16 / 3) and cell["n"] == 3
    assert (tmp_path / "summary" / "study.json").exists() and (tmp_path / "summary" / "study.md").exists()


def test_every_run_of_a_seed_trains_with_that_seed(tmp_path):
    from axolotl_calib_plugin.demo import pipeline
    from axolotl_calib_plugin.demo.world import TopicWorld, generate

    runs = pipeline.plan_runs(pipeline.Plan(lambdas=(0.0, 1.0), online=True))
    names = [r.name for r in runs]
    assert names[:3] == ["base", "overfit", "aligned"] and "aligned.cft_online" in names and "overfit.rcft_lam0" in names
    p = pipeline._Paths(str(tmp_path))
    p.data = generate(str(tmp_path / "data"), TopicWorld(seed=7), 20, 20, 10, 10, 10, 10)
    p.sft_base = p.sft_train = str(tmp_path / "sft.jsonl")
    for r in runs:
        p.models.setdefault(r.start, str(tmp_path / "models" / r.start))
        cfg = pipeline.run_config(r, p, pipeline.FAST, seed=7)
        assert cfg["seed"] == 7, r.name
        if r.kind == "calib":
            assert cfg["calib_lambda"] == r.lam and cfg["calib_mode"] == r.mode
            assert cfg.get("calib_estep", "exact") == r.estep


def test_resumed_study_states_the_wall_time_of_seeds_run_from_scratch():
    """A resumed invocation's wall time is not what a fresh study takes: the summary says so and gives the
    per-seed times of the seeds that reused nothing."""
    from axolotl_calib_plugin.demo.studies.main import wall_time_text

    meta = {"wall_time_s": 600, "machine": "2 CPU cores"}
    per_seed = {"0": {"wall_time_s": 7.0, "reused_runs": ["base", "aligned"]},
                "1": {"wall_time_s": 1260.0, "reused_runs": []}, "2": {"wall_time_s": 1380.0}}
    text = wall_time_text({"meta": meta, "per_seed": per_seed})
    assert text == ("Wall time 10 min on 2 CPU cores (resumed: some runs were reused from an earlier invocation); "
                    "a seed run from scratch took 21-23 min (2 of 3 seeds).")
    fresh = wall_time_text({"meta": meta, "per_seed": {"1": per_seed["1"]}})
    assert fresh == "Wall time 10 min on 2 CPU cores; a seed run from scratch took 21-21 min (1 of 1 seeds)."


@pytest.mark.parametrize("plan_name", ["heldout", "alignment"])
def test_every_calib_run_names_its_bin_accuracy_source_explicitly(tmp_path, plan_name):
    """With an eval split, the plugin's default (auto) reads held-out rows: a run meant to use training-row bins
    (Algorithm 1) must say so in its config, else it silently becomes a held-out run (and aligned.cft would equal
    aligned.cft_heldout)."""
    from axolotl_calib_plugin.demo import pipeline
    from axolotl_calib_plugin.demo.studies import alignment as alignment_study, heldout as heldout_study
    from axolotl_calib_plugin.demo.world import TopicWorld, generate

    plan = {"heldout": heldout_study.PLAN, "alignment": alignment_study.PLAN}[plan_name]
    p = pipeline._Paths(str(tmp_path), heldout_eval=plan.heldout_eval)
    p.data = generate(str(tmp_path / "data"), TopicWorld(seed=7), 20, 20, 10, 10, 10, 10)
    p.sft_base = p.sft_train = str(tmp_path / "sft.jsonl")
    seen = {}
    for r in pipeline.plan_runs(plan):
        p.models.setdefault(r.start, str(tmp_path / "models" / r.start))
        cfg = pipeline.run_config(r, p, pipeline.FAST, seed=7)
        if r.kind == "calib" and r.lam:
            assert "test_datasets" in cfg, r.name
            assert cfg["calib_bin_accuracy"] == pipeline.VARIANTS[r.variant][0], r.name
            seen[r.name] = cfg["calib_bin_accuracy"]
    assert seen[f"{'overfit' if plan_name == 'heldout' else 'aligned'}.cft"] == "train"
    assert "heldout" in seen.values()


def test_holm_and_non_inferiority_by_hand():
    from axolotl_calib_plugin.demo.stats import holm, non_inferior

    # sorted 0.01, 0.02, 0.04 of a family of 3 (NaN not counted): 3*0.01, max(0.03, 2*0.02), max(0.04, 1*0.04)
    assert holm([0.04, float("nan"), 0.01, 0.02]) == pytest.approx([0.04, float("nan"), 0.03, 0.04], nan_ok=True)
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    d = {"n": 5, "mean": -0.002, "lo": -0.008, "hi": 0.004}
    assert non_inferior(d, 0.01) == "reproduced" and non_inferior(d, 0.005) == "inconclusive"
    assert non_inferior({"n": 5, "mean": -0.03, "lo": -0.04, "hi": -0.02}, 0.01) == "not reproduced"
    assert non_inferior({"n": 1, "mean": 0.0, "lo": float("nan"), "hi": float("nan")}, 0.01) == "inconclusive"


def test_seeds_to_clear_one_and_two_sided():
    from axolotl_calib_plugin.demo.stats import seeds_needed, seeds_to_clear

    # no spread: two seeds decide a mean inside the bounds, none a mean outside them
    assert seeds_to_clear(-0.02, 0.0, hi=0.0) == 2 and seeds_to_clear(0.02, 0.0, hi=0.0) is None
    # a mean on the wrong side of (or on) a bound: no study clears it with probability above 1/2
    assert seeds_to_clear(0.001, 0.01, hi=0.0) is None and seeds_to_clear(0.0, 0.01, hi=0.0) is None
    assert seeds_to_clear(-0.02, 0.01, lo=-0.01) is None
    # equivalence is the two-sided case of the same computation
    assert seeds_needed(0.002, 0.006, 0.01) == seeds_to_clear(0.002, 0.006, -0.01, 0.01)
    # one bound is easier to clear than two at the same distance, and a mean further from it needs fewer seeds
    assert seeds_to_clear(0.0, 0.01, hi=0.005) <= seeds_needed(0.0, 0.01, 0.005)
    assert seeds_to_clear(-0.01, 0.01, hi=0.0) < seeds_to_clear(-0.005, 0.01, hi=0.0)
    # large n: the normal approximation ((z_.975 + z_.8) sd / distance)^2 = 31.4 seeds for a distance of sd / 2
    n = seeds_to_clear(0.0, 1.0, hi=0.5)
    assert 31 <= n <= 36
    # a lower bound mirrors an upper one
    assert seeds_to_clear(0.0, 1.0, lo=-0.5) == n
