"""The optimism of scoring a model on the rows that set its targets: the fit-split scores a seed keeps, the
summary (report-row minus target-row conf-ECE, net of the lambda-0 run), its rendering, and the reduced study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.special import softmax

from axolotl_calib_plugin import metrics
from axolotl_calib_plugin.demo import pipeline
from axolotl_calib_plugin.demo import study as runner
from axolotl_calib_plugin.demo.studies import get_study, heldout, optimism

VARIANTS = ("overfit.cft_heldout", "overfit.cft_temp")


def _row(conf_ece: float) -> dict:
    return {"in": {"conf_ece": conf_ece, "cw_ece": 0.0, "acc": 0.5, "mean_conf": 0.5},
            "out": {"conf_ece": 0.0, "cw_ece": 0.0, "acc": 0.5, "mean_conf": 0.5}}


def _fit(conf_ece: float, share: float) -> dict:
    return {"conf_ece": conf_ece, "cw_ece": 0.0, "acc": 0.5, "n": 500, "report_n": 1500, "target_fraction": share}


def _per_seed(with_fit: bool = True) -> dict:
    """Three seeds, report-row (eval_in) and target-row (fit split) conf-ECE chosen by hand."""
    report = {"overfit": [0.20, 0.21, 0.22], "overfit.cft_lam0": [0.10, 0.11, 0.12],
              "overfit.cft_heldout": [0.05, 0.06, 0.07], "overfit.cft_temp": [0.04, 0.04, 0.04],
              "overfit.ts": [0.03, 0.02, 0.04]}
    target = {"overfit": [0.21, 0.22, 0.23], "overfit.cft_lam0": [0.11, 0.12, 0.115],
              "overfit.cft_heldout": [0.02, 0.03, 0.025], "overfit.cft_temp": [0.01, 0.02, 0.03],
              "overfit.ts": [0.02, 0.02, 0.02]}
    share = {"overfit": 0.0, "overfit.cft_lam0": 0.0, "overfit.cft_heldout": 1.0, "overfit.cft_temp": 1.0,
             "overfit.ts": 1.0}
    out = {}
    for i in range(3):
        s = {"rows": {k: _row(v[i]) for k, v in report.items()}}
        if with_fit:
            s["fit"] = {k: _fit(v[i], share[k]) for k, v in target.items()}
        out[str(i)] = s
    return out


def test_optimism_is_report_minus_target_conf_ece_paired_over_seeds_and_net_of_the_lambda0_run():
    s = heldout.summarize(_per_seed())
    by_key = {e["key"]: e for e in s["optimism"]}
    assert list(by_key) == ["overfit", "overfit.cft_lam0", *VARIANTS, "overfit.ts"]
    h = by_key["overfit.cft_heldout"]
    # per seed 0.03, 0.03, 0.045 (report - target); lambda 0: -0.01, -0.01, +0.005; net: 0.04, 0.04, 0.04
    assert h["optimism"]["mean"] == pytest.approx(0.035) and h["optimism"]["n"] == 3
    assert h["conf_ece_target"]["mean"] == pytest.approx(0.025) and h["conf_ece_report"]["mean"] == pytest.approx(0.06)
    assert h["net"]["mean"] == pytest.approx(0.04) and h["net"]["half"] == pytest.approx(0.0, abs=1e-12)
    assert h["base"] == "overfit.cft_lam0" and h["target_fraction"] == [1.0]
    assert h["n_target_rows"] == [500] and h["n_report_rows"] == [1500]
    t = by_key["overfit.cft_temp"]  # per seed 0.03, 0.02, 0.01; net 0.04, 0.03, 0.005
    assert t["optimism"]["mean"] == pytest.approx(0.02)
    assert t["net"]["mean"] == pytest.approx(0.075 / 3)
    sd = np.std([0.04, 0.03, 0.005], ddof=1)
    assert t["net"]["half"] == pytest.approx(4.302652729749464 * sd / np.sqrt(3))
    assert by_key["overfit.cft_lam0"]["optimism"]["mean"] == pytest.approx(-0.005)
    assert "net" not in by_key["overfit.cft_lam0"] and "net" not in by_key["overfit"]
    ts = by_key["overfit.ts"]  # per seed 0.01, 0.0, 0.02; its start model's -0.01 each: net 0.02, 0.01, 0.03
    assert ts["optimism"]["mean"] == pytest.approx(0.01)
    assert ts["base"] == "overfit" and ts["net"]["mean"] == pytest.approx(0.02)


def test_without_fit_split_scores_the_summary_and_markdown_are_those_of_before():
    """A committed held-out summary has no fit-split scores: no optimism key, no section (its Markdown is checked
    byte for byte against the committed file in test_studies.py)."""
    s = heldout.summarize(_per_seed(with_fit=False))
    assert "optimism" not in s
    study = {"meta": _meta(), "per_seed": _per_seed(with_fit=False), "summary": s}
    assert "Optimism" not in heldout.render_markdown(study)


def _meta() -> dict:
    return {"n_seeds": 3, "seeds": [0, 1, 2], "commit": "abc", "machine": "2 CPU cores",
            "settings": {"world": "topic", "n_train": 1000, "n_ts": 500, "n_eval_in": 1500, "n_eval_out": 1000}}


def test_the_held_out_study_and_the_optimism_study_print_the_optimism_with_its_n():
    per_seed = _per_seed()
    study = {"meta": _meta(), "per_seed": per_seed, "summary": heldout.summarize(per_seed)}
    md = heldout.render_markdown(study)
    assert "**optimism = conf-ECE on report rows − conf-ECE on target rows**" in md
    assert ("* CFT, held-out bins, λ=1: optimism +0.035 [+0.013, +0.057], net of its λ=0 run +0.040 [+0.040, +0.040] "
            "(n = 3 seed(s); 500 target rows, 1500 report rows).") in md
    assert "| CFT, λ=0 (plain SFT through the plugin) | 0 | 500 | 0.115 ± 0.012 | 1500 | 0.110 ± 0.025 | -0.005 [" in md
    md2 = get_study("heldout_optimism").render(study)
    assert md2.startswith(optimism.TITLE) and "* CFT, held-out temperature targets, KL, λ=1: optimism +0.020" in md2
    assert "* temperature scaling (T fitted on the fit split): optimism +0.010 [-0.015, +0.035], net of its start model +0.020" in md2
    assert "## Verdicts per variant" not in md2 and "## Absolute values" in md2


def _seed_dir(tmp_path: Path, labels_in_dump=None) -> Path:
    """A seed folder as the pipeline leaves it: the fit split, two models' eval dumps, a config, results.json."""
    d = tmp_path / "seed0"
    for sub in ("data", "eval", "configs"):
        (d / sub).mkdir(parents=True)
    gold = [0, 1, 2, 0]
    (d / "data" / "ts_fit.jsonl").write_text("".join(json.dumps({"answer": y}) + "\n" for y in gold))
    z = {"overfit": np.log([[0.7, 0.1, 0.1, 0.1], [0.2, 0.6, 0.1, 0.1], [0.5, 0.2, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]]),
         "overfit.cft_heldout": np.log([[0.4, 0.2, 0.2, 0.2], [0.3, 0.4, 0.2, 0.1], [0.3, 0.3, 0.3, 0.1],
                                        [0.9, 0.05, 0.03, 0.02]])}
    for name, zz in z.items():
        (d / "eval" / f"{name}__ts_fit.json").write_text(json.dumps(
            {"logliks": zz.tolist(), "labels": labels_in_dump or gold}))
        (d / "eval" / f"{name}__in.json").write_text(json.dumps({"logliks": [[0, 0, 0, 0]] * 7, "labels": [0] * 7}))
    (d / "configs" / "overfit.cft_heldout.yml").write_text(yaml.safe_dump(
        {"calib_lambda": 1.0, "calib_bin_accuracy": "heldout", "calib_target_fraction": 1.0,
         "test_datasets": [{"path": str(d / "data" / "ts_fit.jsonl"), "type": "axolotl_calib_plugin.mcq"}]}))
    (d / "results.json").write_text(json.dumps({"rows": {"overfit.ts": {"temperature": 2.0}}}))
    return d


def test_fit_split_scores_are_the_models_scores_on_the_fit_split_with_the_share_of_rows_that_set_targets(tmp_path):
    d = _seed_dir(tmp_path)
    fit = heldout.HeldoutStudy().seed_extras(str(d))["fit"]
    assert set(fit) == {"overfit", "overfit.cft_heldout", "overfit.ts"}
    gold = np.array([0, 1, 2, 0])
    p = np.array([[0.4, 0.2, 0.2, 0.2], [0.3, 0.4, 0.2, 0.1], [0.3, 0.3, 0.3, 0.1], [0.9, 0.05, 0.03, 0.02]])
    h = fit["overfit.cft_heldout"]
    # bins: 0.4 (rows 1, 2: both right), 0.3 (row 3: wrong), 0.9 (row 4: right) ->
    # (2 * |1 - 0.4| + |0 - 0.3| + |1 - 0.9|) / 4 = 0.4
    assert h["conf_ece"] == pytest.approx(0.4)
    assert h["conf_ece"] == pytest.approx(metrics.conf_ece(p, gold, 10))
    assert h["target_fraction"] == 1.0 and h["n"] == 4 and h["report_n"] == 7 and h["acc"] == pytest.approx(0.75)
    assert fit["overfit"]["target_fraction"] == 0.0  # no config that reads the fit split: its rows set nothing
    z = np.log([[0.7, 0.1, 0.1, 0.1], [0.2, 0.6, 0.1, 0.1], [0.5, 0.2, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]])
    assert fit["overfit.ts"]["conf_ece"] == pytest.approx(metrics.conf_ece(softmax(z / 2.0, axis=1), gold, 10))
    assert fit["overfit.ts"]["target_fraction"] == 1.0
    # a run whose config reads the split with a fraction: that share; a lambda-0 run: none
    cfg = yaml.safe_load((d / "configs" / "overfit.cft_heldout.yml").read_text())
    (d / "configs" / "overfit.cft_heldout.yml").write_text(yaml.safe_dump(dict(cfg, calib_target_fraction=0.5)))
    assert heldout.fit_split_scores(str(d))["overfit.cft_heldout"]["target_fraction"] == 0.5
    (d / "configs" / "overfit.cft_heldout.yml").write_text(yaml.safe_dump(dict(cfg, calib_lambda=0.0)))
    assert heldout.fit_split_scores(str(d))["overfit.cft_heldout"]["target_fraction"] == 0.0


def test_fit_split_scores_refuse_a_dump_whose_golds_are_not_the_fit_splits(tmp_path):
    d = _seed_dir(tmp_path, labels_in_dump=[0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"overfit(\.cft_heldout)?__ts_fit\.json: its gold labels differ from .*ts_fit\.jsonl"):
        heldout.fit_split_scores(str(d))


def test_a_seed_without_fit_split_evaluations_keeps_nothing(tmp_path):
    (tmp_path / "eval").mkdir()
    assert heldout.HeldoutStudy().seed_extras(str(tmp_path)) == {}


def test_held_out_evaluation_scores_every_model_on_the_fit_split(tmp_path, monkeypatch):
    cmds = []
    monkeypatch.setattr(pipeline, "run_logged", lambda cmd, log, what: cmds.append(cmd) or 0.0)
    data = type("D", (), {"eval_in": "in.jsonl", "eval_out": "out.jsonl", "ts_fit": "ts.jsonl", "train": "tr.jsonl",
                          "pref_eval": None})()
    for heldout_eval, want in ((True, "ts_fit=ts.jsonl:base,overfit,overfit.cft_heldout"), (False, "ts_fit=ts.jsonl:base,overfit")):
        cmds.clear()
        p = pipeline._Paths(str(tmp_path), data=data, heldout_eval=heldout_eval,
                            models={"base": "m/b", "overfit": "m/o", "overfit.cft_heldout": "m/h"})
        pipeline.evaluate_all(p, parallel=1)
        assert want in cmds[0] and "train=tr.jsonl:base,overfit" in cmds[0]


def test_the_optimism_study_runs_its_reduced_plan_and_settings(tmp_path, monkeypatch):
    seen = []

    def fake_run_seed(out, seed, settings, plan, parallel, reuse, plots):
        seen.append((settings, plan))
        return {"rows": {}, "meta": {"errors": {}, "timings_s": {}, "wall_time_s": 1.0}}

    monkeypatch.setattr(pipeline, "run_seed", fake_run_seed)  # the synthetic seed pipeline every Study uses by default
    res = runner.run_study(str(tmp_path / "out"), [0], summary_dir=str(tmp_path / "sum"), kind="heldout_optimism")
    settings, plan = seen[0]
    assert plan == optimism.PLAN and settings.n_train == 1000 and settings.n_pref_base == 0
    assert settings.n_ts == pipeline.FULL.n_ts and res["meta"]["settings"]["n_train"] == 1000
    names = [r.name for r in pipeline.plan_runs(plan)]
    assert names == ["base", "overfit", "overfit.cft_lam0", "overfit.cft_heldout", "overfit.cft_temp"]
    assert "No seed was scored on the fit split" in (tmp_path / "sum" / "heldout_optimism.md").read_text()
