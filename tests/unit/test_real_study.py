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
    assert e.value.code == 2 and "--study real runs the real-model study" in capsys.readouterr().err
