"""The real-model study (study/real_model_plan.md) without training: each row's Axolotl config against the plan,
the summary and its Markdown on hand-made per-seed numbers, and the study reached through the registry, the runner
and the CLI."""

from __future__ import annotations

import json
import math
import os

import pytest

from axolotl_calib_plugin.cli.parser import build_parser
from axolotl_calib_plugin.demo import study as runner
from axolotl_calib_plugin.demo.real_pipeline import REAL, ROWS, RUNS, run_config
from axolotl_calib_plugin.demo.studies import STUDIES, RealStudy, get_study
from axolotl_calib_plugin.demo.stats import seeds_to_clear
from axolotl_calib_plugin.demo.studies import real as real_study

#: Student t quantiles (two-sided 95 %), df 2
T2 = 4.302652729911275
DATA = {s: f"/data/{s}.jsonl" for s in ("train", "target", "report", "test_in", "test_out")}

#: the plan's rows: (calib_mode, calib_lambda, calib_bin_accuracy, calib_targets, calib_ece_loss, label smoothing,
#: E-step, eval split, calib_target_fraction)
PLAN_ROWS = {
    "ls": ("cft", 0.0, "train", "bin", "mse", 0.1, "exact", "report", None),
    "sft": ("cft", 0.0, "train", "bin", "mse", None, "exact", "report", None),
    "cft_train": ("cft", 1.0, "train", "bin", "mse", None, "online", "report", None),
    "cft_heldout": ("cft", 1.0, "heldout", "bin", "mse", None, "online", "target", 1.0),
    "cft_temp": ("cft", 1.0, "train", "temperature", "kl", None, "online", "target", 1.0),
    "rcft": ("rcft", 1.0, "heldout", "bin", "mse", None, "online", "target", 1.0),
}


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_each_rows_config_is_the_plans(run):
    cfg = run_config(run, "/real/model", DATA, "/out/runs/seed3", REAL, 3)
    mode, lam, bins_from, targets, loss, ls, estep, eval_split, fraction = PLAN_ROWS[run.name]
    got = (cfg["calib_mode"], cfg["calib_lambda"], cfg["calib_bin_accuracy"], cfg.get("calib_targets", "bin"),
           cfg.get("calib_ece_loss", "mse"), cfg.get("calib_label_smoothing"), cfg.get("calib_estep", "exact"),
           os.path.basename(cfg["test_datasets"][0]["path"]).split(".")[0], cfg.get("calib_target_fraction"))
    assert got == (mode, lam, bins_from, targets, loss, ls, estep, eval_split, fraction)
    # the fine-tune budget of study/real_model_precheck.md: full fine-tune, plain, lr 5e-5, batch 8, 3 epochs, 64
    assert (cfg["learning_rate"], cfg["micro_batch_size"], cfg["num_epochs"], cfg["sequence_len"]) == (5e-5, 8, 3, 64)
    assert cfg["calib_prompt_format"] == "plain" and "adapter" not in cfg and "max_steps" not in cfg
    assert cfg["calib_bins"] == 10 and cfg["seed"] == 3 and cfg["base_model"] == "/real/model"
    assert cfg["datasets"] == [{"path": "/data/train.jsonl", "type": "axolotl_calib_plugin.mcq"}]
    assert cfg["output_dir"] == f"/out/runs/seed3/models/{run.name}"
    # the SFT scope comes from calib_mode (cft: answer only, rcft: prompt and answer), never set against it
    assert "calib_sft_scope" not in cfg and "train_on_inputs" not in cfg
    # batches padded to their longest row, not to Axolotl's default multiple of 64 (~1.5x the compute here)
    assert cfg["pad_to_sequence_len"] is False


def test_the_study_has_the_plans_rows_in_order():
    assert [r.name for r in RUNS] == list(PLAN_ROWS)
    assert list(ROWS) == ["dpo", "ts", *PLAN_ROWS]
    assert real_study.PRIMARY == "cft_heldout" and real_study.SECONDARY == ("cft_train", "cft_temp", "rcft")


def _per_seed(over: dict) -> dict:
    """Three seeds; every row has SFT's numbers unless ``over[(row, dom, metric)]`` says otherwise."""
    base = {"conf_ece": [0.10, 0.12, 0.14], "cw_ece": [0.05, 0.05, 0.05], "acc": [0.70, 0.72, 0.74],
            "mean_conf": [0.6, 0.6, 0.6]}
    per_seed = {s: {"rows": {}} for s in ("0", "1", "2")}
    for row in ROWS:
        for dom in ("in", "out"):
            for metric, values in base.items():
                for i, s in enumerate(per_seed):
                    per_seed[s]["rows"].setdefault(row, {}).setdefault(dom, {})[metric] = \
                        over.get((row, dom, metric), values)[i]
    for i, s in enumerate(per_seed):
        per_seed[s]["rows"]["ts"]["temperature"] = [1.5, 2.0, 2.5][i]
    return per_seed


#: CFT held-out bins 0.05 below SFT λ=0 on conf-ECE in both domains; in domain TS is 0.05 / 0.065 / 0.085, so the
#: difference to TS is 0 / +0.005 / +0.005 (mean +0.00333, interval [-0.00384, +0.01050]: straddles +0.01)
BASE_OVER = {("cft_heldout", "in", "conf_ece"): [0.05, 0.07, 0.09],
             ("cft_heldout", "out", "conf_ece"): [0.05, 0.07, 0.09],
             ("ts", "in", "conf_ece"): [0.05, 0.065, 0.085],
             ("cft_train", "in", "conf_ece"): [0.08, 0.11, 0.12]}


def test_summary_cells_differences_and_holm_by_hand():
    s = real_study.summarize(_per_seed(BASE_OVER))
    cell = s["cells"]["sft"]["conf_ece_in"]
    assert cell["mean"] == pytest.approx(0.12) and cell["half"] == pytest.approx(T2 * 0.02 / math.sqrt(3))
    assert s["temperature"]["mean"] == pytest.approx(2.0)
    d = s["diffs"]["cft_heldout"]["sft"]["in"]["conf_ece"]
    assert (d["mean"], d["lo"], d["hi"]) == pytest.approx((-0.05, -0.05, -0.05))
    d = s["diffs"]["cft_heldout"]["ts"]["in"]["conf_ece"]
    half = T2 * (0.005 / math.sqrt(3)) / math.sqrt(3)  # sd of (0, .005, .005) is .005/sqrt(3)
    assert (d["mean"], d["lo"], d["hi"]) == pytest.approx((0.01 / 3, 0.01 / 3 - half, 0.01 / 3 + half))
    v = s["verdicts"]["cft_heldout"]["in"]
    assert v == {"vs_sft_conf_ece": "yes", "vs_ts_conf_ece": "inconclusive", "vs_ts_no_worse": "open",
                 "acc_vs_sft": "reproduced"}
    assert s["verdicts"]["cft_heldout"]["out"]["vs_ts_no_worse"] == "yes"
    # secondary: CFT training-row bins in domain, differences -0.02 / -0.01 / -0.02: t = -5 on 2 df,
    # p = 1 - 5 / sqrt(27); the other five tests have difference 0 (p 1); Holm multiplies the smallest by 6
    h = s["holm_secondary"]
    assert list(h) == [f"{r} {d}" for r in ("cft_train", "cft_temp", "rcft") for d in ("in", "out")]
    assert h["cft_train in"]["p"] == pytest.approx(1 - 5 / math.sqrt(27))
    assert h["cft_train in"]["p_holm"] == pytest.approx(6 * (1 - 5 / math.sqrt(27)))
    assert h["cft_train in"]["below_sft"] is False and h["rcft out"]["p_holm"] == 1.0


@pytest.mark.parametrize("extra, answer", [
    ({}, "inconclusive"),  # in domain: no worse than TS is open
    ({("ts", "in", "conf_ece"): [0.10, 0.12, 0.14]}, "yes"),
    ({("cft_heldout", "out", "acc"): [0.68, 0.70, 0.72]}, "no"),  # -2 points: the interval lies below -1 point
])
def test_primary_answer_follows_the_pre_registered_margins(extra, answer):
    s = real_study.summarize(_per_seed({**BASE_OVER, **extra}))
    assert s["primary"]["answer"] == answer


def test_primary_answer_gives_the_seeds_that_would_decide_each_open_condition():
    p = real_study.summarize(_per_seed(BASE_OVER))["primary"]
    # in domain only "no worse than TS" is open (differences 0 / +0.005 / +0.005 against a bound of +0.01)
    assert p["seeds_needed"]["out"] == {} and list(p["seeds_needed"]["in"]) == ["conf_ece_no_worse_than_ts"]
    n = p["seeds_needed"]["in"]["conf_ece_no_worse_than_ts"]
    assert n == seeds_to_clear(0.01 / 3, 0.005 / math.sqrt(3), hi=0.01, power=real_study.SEEDS_POWER) and 3 < n < 10
    # a mean that fails the condition: more seeds cannot make it hold
    worse = {**BASE_OVER, ("cft_heldout", "in", "conf_ece"): [0.06, 0.075, 0.115]}  # +0.01 / +0.01 / +0.03 vs TS
    p = real_study.summarize(_per_seed(worse))["primary"]
    assert p["in"]["conf_ece_no_worse_than_ts"] == "open"
    assert p["seeds_needed"]["in"]["conf_ece_no_worse_than_ts"] == "wrong side"
    md_open = RealStudy().render(_study(_per_seed(worse)))
    assert "- in: conf ece no worse than ts: wrong side" in md_open
    # every condition decided: no such list
    decided = {**BASE_OVER, ("ts", "in", "conf_ece"): [0.10, 0.12, 0.14]}
    assert "Seeds a new study would need" not in RealStudy().render(_study(_per_seed(decided)))


def _study(per_seed: dict) -> dict:
    study = {"meta": {"seeds": [0, 1, 2], "commit": "abc", "machine": "2 CPU cores", "wall_time_s": 1.0,
                      "settings": {"lr": 5e-5}}, "per_seed": per_seed}
    study["summary"] = real_study.summarize(per_seed)
    return json.loads(json.dumps(study))


def test_render_from_the_study_dict():
    per_seed = _per_seed({**BASE_OVER, ("cft_heldout", "out", "acc"): [0.68, 0.70, 0.72]})
    study = {"meta": {"seeds": [0, 1, 2], "commit": "abc", "machine": "2 CPU cores", "wall_time_s": 1.0,
                      "settings": {"lr": 5e-5}}, "per_seed": per_seed}
    study["summary"] = real_study.summarize(per_seed)
    md = RealStudy().render(json.loads(json.dumps(study)))  # from the JSON alone
    assert "Seeds (training seed, split seed): (0, 0), (1, 1), (2, 2)" in md
    assert "| SFT λ=0 | 0.120 ± 0.050 | 0.050 ± 0.000 | 0.720 ± 0.050 |" in md
    assert "| CFT, held-out bins (target) | SFT λ=0 | -0.050 [-0.050, -0.050] | +0.000 [+0.000, +0.000] | " \
           "+0.00 pt [+0.00, +0.00] |" in md
    assert "| CFT, held-out bins (target) | out | yes | different | yes | not reproduced |" in md
    assert "- out: conf ece below sft: yes, conf ece no worse than ts: yes, acc non inferior to sft: no" in md
    assert md.rstrip().endswith("**Answer: no** (3 seeds).")


def test_real_study_is_registered_and_run_study_runs_it_per_seed_pair(tmp_path, monkeypatch):
    assert STUDIES["real"] is RealStudy and get_study("real").stem == "real_model"
    calls = []

    def fake(seed_dir, seed, real_dir, settings, parallel, reuse):
        calls.append((seed_dir, seed, real_dir, settings, parallel, reuse))
        return {"rows": _per_seed(BASE_OVER)[str(seed)]["rows"],
                "meta": {"errors": {}, "timings_s": {}, "wall_time_s": 1.0, "reused_runs": []}}

    monkeypatch.setattr(real_study, "run_real_seed", fake)
    res = runner.run_study(str(tmp_path / "out"), [0, 1, 2], parallel=1, summary_dir=str(tmp_path / "sum"),
                           kind="real")
    out = tmp_path / "out"
    assert calls == [(str(out / "runs" / f"seed{k}"), k, str(out / "real"), REAL, 1, True) for k in (0, 1, 2)]
    assert res["meta"]["settings"]["lr"] == 5e-5 and res["meta"]["primary"] == "cft_heldout"
    assert res["summary"]["primary"]["answer"] == "inconclusive"
    assert (tmp_path / "sum" / "real_model.md").read_text(encoding="utf-8") == RealStudy().render(res)


def test_cli_reaches_the_real_study():
    a = build_parser().parse_args(["demo", "--seeds", "5", "--study", "real", "--parallel", "1", "--output-dir", "x"])
    assert (a.study, a.seeds, a.parallel) == ("real", [0, 1, 2, 3, 4], 1)


@pytest.mark.parametrize("extra", [["--fast"], ["--world", "sampled"], []])
def test_cli_refuses_settings_the_real_study_does_not_use(extra, capsys):
    from axolotl_calib_plugin.cli import main

    seeds = [] if extra == [] else ["--seeds", "2"]
    with pytest.raises(SystemExit) as e:
        main(["demo", "--study", "real", "--output-dir", "x", *seeds, *extra])
    assert e.value.code == 2 and "--study real runs a real-model study" in capsys.readouterr().err


# ----------------------------------------------------------------------------- finished seeds, bins and figures

#: two questions: A at 0.72 (gold A: right), C at 0.46 (gold A: wrong); every row of the fake seed scores them so
PROBS = [[0.72, 0.12, 0.10, 0.06], [0.25, 0.24, 0.46, 0.05]]


def _fake_seed(seed_dir, seed: int, real_dir) -> None:
    """A seed folder as a finished run leaves it: data, a done marker per trained run (the reuse key this checkout
    computes), every lm-eval dump and results.json (T = 2)."""
    from axolotl_calib_plugin import orchestrate
    from axolotl_calib_plugin.demo.real_world import MODEL_DIR

    data = {}
    for split in ("train", "target", "report", "test_in", "test_out"):
        path = seed_dir / "data" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"question": f"{split} {seed}", "choices": ["a", "b"], "answer": 0}) + "\n")
        data[split] = str(path)
    for run in RUNS:
        cfg = run_config(run, os.path.join(str(real_dir), MODEL_DIR), data, str(seed_dir), REAL, seed)
        os.makedirs(cfg["output_dir"])
        with open(os.path.join(cfg["output_dir"], orchestrate.DONE_FILE), "w") as f:
            json.dump({"config_hash": orchestrate.config_hash(cfg), "seconds": 1.0}, f)
    (seed_dir / "eval").mkdir()
    dump = {"logliks": [[math.log(p) for p in row] for row in PROBS], "labels": [0, 0]}
    for name in ("dpo",) + tuple(r.name for r in RUNS):
        for dom in ("in", "out"):
            (seed_dir / "eval" / f"{name}__{dom}.json").write_text(json.dumps(dump))
    (seed_dir / "eval" / "dpo__target.json").write_text(json.dumps(dump))
    rows = _per_seed(BASE_OVER)[str(seed)]["rows"]
    rows["ts"]["temperature"] = 2.0
    (seed_dir / "results.json").write_text(json.dumps(
        {"meta": {"errors": {}, "timings_s": {}, "wall_time_s": 100.0 + seed, "reused_runs": []}, "rows": rows}))


def test_seed_reliability_and_its_pooling_by_hand(tmp_path):
    from scipy.special import softmax

    _fake_seed(tmp_path / "seed0", 0, tmp_path / "real")
    rel = real_study.seed_reliability(str(tmp_path / "seed0"))
    assert set(rel) == set(ROWS) and set(rel["sft"]) == {"in", "out"}
    t = rel["sft"]["in"]
    assert t["count"] == [0, 0, 0, 0, 1, 0, 0, 1, 0, 0] and t["acc"][4] == 0.0 and t["acc"][7] == 1.0
    assert t["conf"][4] == pytest.approx(0.46) and t["conf"][7] == pytest.approx(0.72)
    assert t["letter_share"] == [0.5, 0.0, 0.5, 0.0]
    # TS: the shipped model's log-likelihoods over T = 2 (argmax unchanged)
    ts_conf = softmax(0.5 * __import__("numpy").log(PROBS), axis=1).max(axis=1)
    assert rel["ts"]["in"]["letter_share"] == [0.5, 0.0, 0.5, 0.0]
    assert sorted(c for c in rel["ts"]["in"]["conf"] if c is not None) == pytest.approx(sorted(ts_conf), abs=1e-6)
    # two seeds pooled: counts, hits and confidences add; conf-ECE of the pooled bins (2*0.28 + 2*0.46) / 4
    pooled = real_study.pooled_reliability({"0": {"reliability": rel}, "1": {"reliability": rel}})
    p = pooled["sft"]["in"]
    assert p["count"][4] == p["count"][7] == 2 and p["hits"][7] == 2 and p["hits"][4] == 0
    assert p["conf_sum"][7] == pytest.approx(1.44) and p["n_seeds"] == 2
    from axolotl_calib_plugin.eval.plots import stats_view
    import numpy as np

    c = np.asarray(p["count"], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        view = stats_view(c, np.asarray(p["hits"]) / c, np.asarray(p["conf_sum"]) / c)
    assert view.ece == pytest.approx((2 * 0.28 + 2 * 0.46) / 4) and view.n == 4


def test_summary_only_reads_finished_seeds_and_draws_the_figures(tmp_path):
    out = tmp_path / "out"
    for k in (0, 1, 2):
        _fake_seed(out / "runs" / f"seed{k}", k, out / "real")
    res = runner.run_study(str(out), [0, 1, 2], parallel=2, summary_dir=str(tmp_path / "sum"), kind="real",
                           summary_only=True)
    assert res["meta"]["wall_time_s"] == 303.0 and res["meta"]["code_fingerprint"]
    assert res["summary"]["reliability"]["cft_heldout"]["out"]["n_seeds"] == 3
    md = (tmp_path / "sum" / "real_model.md").read_text(encoding="utf-8")
    assert "**Interim: 3 of the plan's 5 seeds.**" in md
    assert "| SFT λ=0 | 0.600 ± 0.000 | A 0.50 B 0.00 C 0.50 D 0.00 |" in md
    for name in ("real_model_reliability_in.png", "real_model_reliability_out.png", "real_model_deltas.png"):
        assert (tmp_path / "sum" / name).stat().st_size > 10_000
    # re-rendered from the JSON alone, byte for byte
    before = md
    RealStudy().rerender(str(tmp_path / "sum"))
    assert (tmp_path / "sum" / "real_model.md").read_text(encoding="utf-8") == before


@pytest.mark.parametrize("damage, said", [
    (lambda d: os.remove(d / "models" / "rcft" / "calib_run_done.json"), "rcft: no finished run"),
    (lambda d: (d / "data" / "train.jsonl").write_text('{"question": "changed", "choices": ["a", "b"], '
                                                       '"answer": 1}\n'),
     "ls: trained with another config, data or code"),
    (lambda d: os.remove(d / "eval" / "cft_temp__out.json"), "missing lm-eval dump"),
    (lambda d: os.remove(d / "results.json"), "results.json"),
])
def test_summary_only_refuses_a_seed_that_is_not_finished_under_this_code(tmp_path, damage, said):
    from axolotl_calib_plugin.orchestrate import StepFailed

    out = tmp_path / "out"
    _fake_seed(out / "runs" / "seed1", 1, out / "real")
    damage(out / "runs" / "seed1")
    with pytest.raises(StepFailed, match="seed 1") as e:
        runner.run_study(str(out), [1], summary_dir=str(tmp_path / "sum"), kind="real", summary_only=True)
    assert said in str(e.value) and not (tmp_path / "sum" / "real_model.json").exists()


def test_cli_summary_only_needs_seeds(capsys):
    from axolotl_calib_plugin.cli import main

    with pytest.raises(SystemExit) as e:
        main(["demo", "--summary-only", "--output-dir", "x"])
    assert e.value.code == 2 and "--summary-only summarises a study" in capsys.readouterr().err


def test_summary_only_carries_seeds_from_a_summary_of_this_code(tmp_path):
    """A study spread over machines: seeds 0 and 1 ran here and were summarised; their folders are gone; seed 2 ran
    later. The summary of 0, 1, 2 takes 0 and 1 from the committed JSON, and refuses when that JSON is other code's."""
    import shutil

    out, summary = tmp_path / "out", tmp_path / "sum"
    for k in (0, 1):
        _fake_seed(out / "runs" / f"seed{k}", k, out / "real")
    first = runner.run_study(str(out), [0, 1], summary_dir=str(summary), kind="real", summary_only=True)
    shutil.rmtree(out / "runs")
    _fake_seed(out / "runs" / "seed2", 2, out / "real")
    res = runner.run_study(str(out), [0, 1, 2], summary_dir=str(summary), kind="real", summary_only=True)
    assert res["meta"]["seeds_from_summary"] == [0, 1] and res["meta"]["seeds"] == [0, 1, 2]
    assert res["per_seed"]["0"] == first["per_seed"]["0"] and res["per_seed"]["2"]["wall_time_s"] == 102.0
    path = summary / "real_model.json"
    study = json.loads(path.read_text(encoding="utf-8"))
    study["meta"]["code_fingerprint"] = "0123456789abcdef"
    path.write_text(json.dumps(study), encoding="utf-8")
    from axolotl_calib_plugin.orchestrate import StepFailed

    with pytest.raises(StepFailed, match="seed 0: no .* written by other code"):
        runner.run_study(str(out), [0, 1, 2], summary_dir=str(summary), kind="real", summary_only=True)
    with pytest.raises(StepFailed, match="seed 7: no .* not in"):
        runner.run_study(str(out), [7], summary_dir=str(tmp_path / "other"), kind="real", summary_only=True)


# ----------------------------------------------------------------------------- the staged (exploratory) study

def _fake_staged(seed_dir, seed: int) -> None:
    """What run_staged_seed leaves in ``seed_dir/staged``: done markers of this checkout, dumps, results.json."""
    from axolotl_calib_plugin import orchestrate
    from axolotl_calib_plugin.demo.real_pipeline import run_config as cfg_of
    from axolotl_calib_plugin.demo.studies import real_staged

    out = seed_dir / "staged"
    for run in real_staged.RUNS:
        cfg = cfg_of(run, real_staged.start_model(str(seed_dir)), real_study.seed_data(str(seed_dir)), str(out),
                     real_staged.SETTINGS, seed)
        os.makedirs(cfg["output_dir"])
        with open(os.path.join(cfg["output_dir"], orchestrate.DONE_FILE), "w") as f:
            json.dump({"config_hash": orchestrate.config_hash(cfg), "seconds": 1.0}, f)
    (out / "eval").mkdir()
    dump = {"logliks": [[math.log(p) for p in row] for row in PROBS], "labels": [0, 0]}
    for name in ("dpo",) + tuple(r.name for r in real_staged.RUNS):
        for dom in ("in", "out"):
            (out / "eval" / f"{name}__{dom}.json").write_text(json.dumps(dump))
    (out / "eval" / "dpo__target.json").write_text(json.dumps(dump))
    main_rows = _per_seed(BASE_OVER)[str(seed)]["rows"]
    rows = {"start": main_rows["sft"], "ts": {**main_rows["ts"], "temperature": 2.0}, "sft": main_rows["sft"],
            "cft_heldout": main_rows["cft_heldout"], "cft_train": main_rows["cft_train"]}
    (out / "results.json").write_text(json.dumps(
        {"meta": {"errors": {}, "timings_s": {}, "wall_time_s": 10.0, "reused_runs": []}, "rows": rows}))


def test_staged_runs_start_from_the_main_studys_sft_model_for_one_epoch():
    from axolotl_calib_plugin.demo.studies import real_staged

    for run in real_staged.RUNS:
        cfg = run_config(run, "/out/runs/seed3/models/sft", DATA, "/out/runs/seed3/staged", real_staged.SETTINGS, 3)
        assert cfg["base_model"] == "/out/runs/seed3/models/sft" and cfg["num_epochs"] == 1
        assert (cfg["learning_rate"], cfg["micro_batch_size"], cfg["sequence_len"]) == (5e-5, 8, 64)
        assert cfg["output_dir"] == f"/out/runs/seed3/staged/models/{run.name}"
    assert [(r.name, r.lam, r.variant) for r in real_staged.RUNS] == [
        ("sft", 0.0, "train"), ("cft_heldout", 1.0, "heldout"), ("cft_train", 1.0, "train")]
    assert STUDIES["real_staged"] is real_staged.RealStagedStudy


def test_staged_summary_only_and_its_refusals(tmp_path):
    from axolotl_calib_plugin.orchestrate import StepFailed

    out = tmp_path / "out"
    for k in (0, 1):
        _fake_seed(out / "runs" / f"seed{k}", k, out / "real")
        _fake_staged(out / "runs" / f"seed{k}", k)
    res = runner.run_study(str(out), [0, 1], summary_dir=str(tmp_path / "sum"), kind="real_staged",
                           summary_only=True)
    md = (tmp_path / "sum" / "real_model_staged.md").read_text(encoding="utf-8")
    assert "| SFT λ=0, 3 epochs (the start) | 0.110 ± 0.127 |" in md and "TS: T fitted on the start model's" in md
    assert "Does CFT, held-out bins, +1 epoch have lower conf-ECE than SFT λ=0, +1 epoch" in md
    assert set(res["summary"]["reliability"]) == {"start", "ts", "sft", "cft_heldout", "cft_train"}
    assert (tmp_path / "sum" / "real_model_staged_deltas.png").exists()
    # the main study's sft run is the start: retrained under another config, the staged seed is refused
    done = out / "runs" / "seed1" / "models" / "sft" / "calib_run_done.json"
    done.write_text(json.dumps({"config_hash": "0" * 16, "seconds": 1.0}))
    with pytest.raises(StepFailed, match="seed 1: the main study's sft run"):
        runner.run_study(str(out), [0, 1], summary_dir=str(tmp_path / "sum2"), kind="real_staged",
                         summary_only=True)
    os.remove(out / "runs" / "seed0" / "staged" / "eval" / "cft_train__in.json")
    with pytest.raises(StepFailed, match="missing lm-eval dump .*cft_train__in.json"):
        runner.run_study(str(out), [0], summary_dir=str(tmp_path / "sum3"), kind="real_staged", summary_only=True)


def test_summary_only_refuses_a_carried_seed_whose_numbers_are_text(tmp_path):
    from axolotl_calib_plugin.orchestrate import StepFailed

    out, summary = tmp_path / "out", tmp_path / "sum"
    _fake_seed(out / "runs" / "seed0", 0, out / "real")
    runner.run_study(str(out), [0], summary_dir=str(summary), kind="real", summary_only=True)
    import shutil

    shutil.rmtree(out / "runs")
    path = summary / "real_model.json"
    study = json.loads(path.read_text(encoding="utf-8"))
    study["per_seed"]["0"]["rows"]["sft"]["in"]["conf_ece"] = "0.1"
    path.write_text(json.dumps(study), encoding="utf-8")
    with pytest.raises(StepFailed, match=r"per_seed\.0\.rows\.sft\.in\.conf_ece .* is '0\.1', not a number"):
        runner.run_study(str(out), [0], summary_dir=str(summary), kind="real", summary_only=True)
