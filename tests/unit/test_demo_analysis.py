"""Pure parts of the demo's analysis: preference-pair statistics, temperature scaling, table rendering."""

from __future__ import annotations

import numpy as np

from axolotl_calib_plugin import metrics
from scipy.special import softmax

from axolotl_calib_plugin.demo import analysis, report


def _data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4)) * 2
    p = softmax(z, axis=1)
    y = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1).clip(max=3)
    return z, p, y


def test_pair_stats_oracle_and_collapse():
    z, p, y = _data(seed=2)
    rng = np.random.default_rng(0)
    pairs = []
    for row in p:
        a, b = rng.choice(4, 2, replace=False)
        w, l = (a, b) if rng.random() < row[a] / (row[a] + row[b]) else (b, a)
        pairs.append({"chosen_idx": int(w), "rejected_idx": int(l)})
    oracle = analysis.pair_stats(np.log(p), pairs, p)
    assert abs(oracle.pref_ratio - oracle.true_pref) < 1e-12
    sharp = analysis.pair_stats(np.log(p) * 4, pairs, p)  # sharpened = collapsed
    assert sharp.pref_ratio > oracle.true_pref + 0.05
    assert abs(sharp.rank_acc - oracle.rank_acc) < 1e-12  # same ranking


def test_temperature_scale_keeps_argmax():
    z, p, y = _data(seed=3)
    t, (q,), _ = analysis.temperature_scale(z[:500] * 3, y[:500], z[500:] * 3)
    assert t > 2
    assert np.array_equal(q.argmax(1), z[500:].argmax(1))


def test_table_renders_every_row_in_arm_order_with_checks():
    s = {"conf_ece": 0.1, "cw_ece": 0.05, "acc": 0.6, "mean_conf": 0.7, "n": 10}
    pairs = {"pref_ratio": 0.8, "true_pref": 0.7, "rank_acc": 0.7, "n": 10}
    keys = ["overfit.rcft", "aligned.cft", "oracle", "base", "aligned", "aligned.ts", "aligned.cft_lam0", "overfit",
            "aligned.ls", "aligned.rcft", "overfit.cft", "aligned.cft_online"]
    rows = {k: {"in": dict(s), "out": dict(s), "pairs": pairs} for k in keys}
    rows["aligned"]["in"]["conf_ece"] = 0.3
    rows["aligned.ts"]["temperature"] = 1.7
    settings = {"n_eval_in": 10, "n_eval_out": 10, "n_ts": 5}
    res = {"rows": rows, "true_pref": 0.7, "checks": report.checks(rows),
           "meta": {"seed": 0, "world": "topic", "wall_time_s": 1.0, "settings": settings}}
    assert report.ordered_keys(rows) == ["oracle", "base", "aligned", "aligned.ts", "aligned.ls", "aligned.cft_lam0",
                                         "aligned.cft", "aligned.cft_online", "aligned.rcft", "overfit", "overfit.cft",
                                         "overfit.rcft"]
    txt = report.render_text(res)
    md = report.markdown_report(res)
    for k in keys:
        assert report.row_label(k) in txt and report.row_label(k) in md
    assert "+ SFT only (CFT, λ=0)" in txt and "+ CFT (online E-step)" in txt
    checks = {c["name"]: c["ok"] for c in res["checks"]}
    assert checks["alignment raises in-domain conf-ECE"] and checks["aligned: CFT cuts in-domain conf-ECE by >= half"]
    assert "conf-ECE in" in txt and "| model |" in md and "numbers vary by machine" in md


def test_reuse_note_says_a_resumed_seed_reused_runs():
    from axolotl_calib_plugin.demo.report import reuse_note

    assert reuse_note({"runs": [{}, {}, {}], "reused_runs": []}) == ""
    assert reuse_note({"runs": [{}, {}, {}], "reused_runs": ["base", "aligned"], "train_seconds_total": 250.4}) == (
        " (2 of 3 training runs reused from an earlier invocation; training time of all runs, summed: 250 s)")
