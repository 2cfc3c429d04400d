"""Pure parts of the demo's analysis: plot data, preference-pair statistics, table rendering."""

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


def test_reliability_curve_matches_metrics_core():
    z, p, y = _data()
    cur = analysis.reliability_curve(p, y, "conf")
    rb = metrics.reliability_bins(p, y, 10, "conf")
    assert cur["count"] == rb.count.tolist()
    assert abs(cur["ece"] - metrics.conf_ece(p, y)) < 1e-12
    assert abs(sum(cur["density"]) - 1) < 1e-12
    np.testing.assert_allclose([a for a in cur["accuracy"] if a is not None],
                               rb.accuracy[~np.isnan(rb.accuracy)])


def test_classwise_curve_pools_classes():
    z, p, y = _data(seed=1)
    cur = analysis.reliability_curve(p, y, "class")
    rb = metrics.reliability_bins(p, y, 10, "class")
    assert abs(cur["ece"] - metrics.cw_ece(p, y)) < 1e-12
    assert sum(cur["count"]) == p.size == rb.count.sum()
    # pooled accuracy of a bin = hits / count over all classes
    b = 5
    mask = metrics.bin_index(p, 10).numpy() == b
    hits = (np.eye(4)[y] * mask).sum()
    assert abs(cur["accuracy"][b] - hits / mask.sum()) < 1e-12


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


def test_table_renders_every_row():
    s = {"conf_ece": 0.1, "cw_ece": 0.05, "acc": 0.6, "mean_conf": 0.7, "n": 10}
    pairs = {"pref_ratio": 0.8, "true_pref": 0.7, "rank_acc": 0.7, "n": 10}
    rows = {k: {"in": s, "out": s, "pairs": pairs} for k in report.ROW_ORDER}
    rows["temp_scaling"]["temperature"] = 1.7
    res = {"rows": rows, "true_pref": 0.7, "checks": [{"name": "x", "ok": True, "detail": "d"}],
           "meta": {"seed": 0, "fast": True, "wall_time_s": 1.0, "n_eval_in": 10, "n_eval_out": 10, "n_ts_fit": 5}}
    txt = report.render_text(res)
    md = report.markdown_report(res)
    for k in report.ROW_ORDER:
        assert report.ROW_LABEL[k] in txt and report.ROW_LABEL[k] in md
    assert "conf-ECE in" in txt and "| model |" in md and "T = 1.7000" in md
