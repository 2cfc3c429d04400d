"""The demo's synthetic world: the oracle p*, determinism, sampling, preference pairs."""

from __future__ import annotations

import numpy as np
import pytest

from axolotl_calib_plugin import metrics
from axolotl_calib_plugin.demo.world import OPTIONS, World, generate, preference_pairs
from axolotl_calib_plugin.rows import read_jsonl
from axolotl_calib_plugin.prompts import format_mcq_prompt


@pytest.fixture(scope="module")
def world():
    return World(seed=0)


def test_oracle_rows_are_distributions(world):
    for dom in ("in", "out"):
        p = world.oracle_probs(world.domain_combos(dom))
        assert np.all(p > 0)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)


def test_domains_partition_the_combinations(world):
    a = {tuple(c) for c in world.domain_combos("in")}
    b = {tuple(c) for c in world.domain_combos("out")}
    assert a and b and not (a & b)
    assert len(a) + len(b) == world.words_per_slot ** world.n_slots
    np.testing.assert_allclose(world.domain_weights("out").sum(), 1.0)


def test_tau_hits_target_oracle_accuracy(world):
    p = world.oracle_probs(world.domain_combos("in"))
    assert abs(p.max(axis=1).mean() - world.target_oracle_acc) < 1e-6
    # informative but not deterministic
    assert 0.3 < p.max(axis=1).min() and p.max(axis=1).max() < 0.999


def test_determinism_under_seed(tmp_path):
    a = generate(str(tmp_path / "a"), World(seed=3), 50, 20, 10, 30, 20)
    b = generate(str(tmp_path / "b"), World(seed=3), 50, 20, 10, 30, 20)
    c = generate(str(tmp_path / "c"), World(seed=4), 50, 20, 10, 30, 20)
    for f in ("train", "dpo", "ts_fit", "eval_in", "eval_out", "pairs_eval", "world"):
        assert open(getattr(a, f)).read() == open(getattr(b, f)).read(), f
    assert open(a.train).read() != open(c.train).read()


def test_sampled_answer_frequencies_match_p_star(world):
    rng = np.random.default_rng(0)
    combo = world.domain_combos("in")[:1]
    n = 40000
    combos = np.repeat(combo, n, axis=0)
    p = world.oracle_probs(combos)
    u = rng.random(n)[:, None]
    answers = (u > np.cumsum(p, axis=1)).sum(axis=1)
    freq = np.bincount(answers, minlength=world.n_options) / n
    np.testing.assert_allclose(freq, p[0], atol=4 * np.sqrt(0.25 / n))
    # and through the public sampler: pooled frequencies per option match mean p*
    c, ps, a = world.sample("in", 20000, np.random.default_rng(1))
    np.testing.assert_allclose(np.bincount(a, minlength=4) / len(a), ps.mean(axis=0), atol=0.015)


def test_oracle_is_calibrated_on_samples(world):
    c, p, a = world.sample("in", 20000, np.random.default_rng(2))
    assert metrics.conf_ece(p, a) < 0.02
    assert metrics.cw_ece(p, a) < 0.02
    assert abs(metrics.accuracy(p, a) - p.max(axis=1).mean()) < 0.015


def test_rows_use_the_shared_prompt(tmp_path, world):
    d = generate(str(tmp_path), world, 5, 5, 5, 5, 5)
    row = read_jsonl(d.eval_in)[0]
    assert row["choices"] == list(OPTIONS)
    assert 0 <= row["answer"] < 4 and abs(sum(row["p_star"]) - 1) < 1e-5
    pair = read_jsonl(d.pairs_eval)[0]
    assert pair["prompt"] == format_mcq_prompt(row["question"], row["choices"])
    assert pair["chosen"] == " " + "ABCD"[pair["chosen_idx"]] and pair["chosen_idx"] != pair["rejected_idx"]


def test_preference_labels_follow_bradley_terry(world):
    combos = np.repeat(world.domain_combos("in")[:1], 20000, axis=0)
    p = world.oracle_probs(combos)
    pairs = preference_pairs(world, combos, p, np.random.default_rng(5), "t")
    # for one fixed (a, b) orientation, P(a chosen) = p_a / (p_a + p_b)
    a, b = 0, 1
    sel = [q for q in pairs if {q["chosen_idx"], q["rejected_idx"]} == {a, b}]
    frac = np.mean([q["chosen_idx"] == a for q in sel])
    assert abs(frac - p[0, a] / (p[0, a] + p[0, b])) < 4 * np.sqrt(0.25 / len(sel))
