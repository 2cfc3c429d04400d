"""The demo's synthetic worlds: the oracle p*, fixed golds, determinism, sampling, preference pairs."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from axolotl_calib_plugin import metrics
from axolotl_calib_plugin.demo.world import OPTIONS, SampledWorld, TopicWorld, generate, make_world, preference_pairs
from axolotl_calib_plugin.prompts import format_mcq_prompt
from axolotl_calib_plugin.rows import read_jsonl

SIZES = dict(n_base=60, n_train=80, n_dpo=20, n_ts=10, n_eval_in=40, n_eval_out=30)


@pytest.fixture(scope="module")
def topic():
    return TopicWorld(seed=0)


def _word_ids(world, texts):
    return np.array([[world.words.index(w) for w in t.split()[1:]] for t in texts])


def test_topic_oracle_is_bayes_posterior_mixture(topic):
    """p*(y|x) = sum_t P(t|x) p(y|t), P(t|x) by Bayes' rule: checked by hand for one question."""
    q = topic.sample("in", 3, np.random.default_rng(0))
    ids = _word_ids(topic, q.texts)[0]
    wd = topic._word_dists["in"]
    post = np.array([topic._priors["in"][t] * np.prod(wd[t, ids]) for t in range(topic.n_topics)])
    post /= post.sum()
    np.testing.assert_allclose(q.p_star[0], post @ topic.answer_probs(), rtol=1e-10)
    np.testing.assert_allclose(q.p_star.sum(axis=1), 1.0, atol=1e-12)


def test_topic_tau_hits_target_oracle_accuracy_and_is_not_deterministic(topic):
    q = topic.sample("in", 20000, np.random.default_rng(1))
    assert abs(q.p_star.max(axis=1).mean() - topic.target_oracle_acc) < 0.01
    assert 0.3 < q.p_star.max(axis=1).min() and q.p_star.max(axis=1).max() < 0.999


def test_topic_oracle_is_calibrated_on_its_hard_labels(topic):
    q = topic.sample("in", 20000, np.random.default_rng(2))
    assert metrics.conf_ece(q.p_star, q.answers) < 0.02
    assert abs(metrics.accuracy(q.p_star, q.answers) - q.p_star.max(axis=1).mean()) < 0.015
    o = topic.sample("out", 20000, np.random.default_rng(3))
    assert metrics.conf_ece(o.p_star, o.answers) < 0.02  # the out-domain oracle is exact too


def test_topic_question_text_has_learnable_structure(topic):
    """Words of one question come mostly from one topic: co-occurrence a language model can learn."""
    q = topic.sample("in", 2000, np.random.default_rng(4))
    ids = _word_ids(topic, q.texts)
    topic_of = np.minimum(ids // topic.words_per_topic, topic.n_topics)  # filler words -> n_topics
    same = [np.bincount(r[r < topic.n_topics], minlength=topic.n_topics).max() for r in topic_of]
    # >= 3 of 6 words share a topic far more often than for uniformly random words
    assert np.mean(np.array(same) >= 3) > 0.8


def test_fixed_golds_and_no_question_text_repeats_across_files(tmp_path):
    d = generate(str(tmp_path), TopicWorld(seed=5), **SIZES)
    golds = defaultdict(set)
    texts = []
    for f in (d.base_train, d.train, d.ts_fit, d.eval_in, d.eval_out):
        for r in read_jsonl(f):
            golds[r["question"]].add(r["answer"])
            texts.append(r["question"])
    for r in read_jsonl(d.dpo):
        texts.append(r["prompt"].split("\n")[0])
    assert all(len(g) == 1 for g in golds.values())  # one gold answer per question
    assert len(texts) == len(set(texts))  # every question is new: none repeats within or across files
    pairs = read_jsonl(d.pairs_eval)
    assert [p["prompt"].split("\n")[0] for p in pairs] == [r["question"] for r in read_jsonl(d.eval_in)]


def test_determinism_under_seed(tmp_path):
    a = generate(str(tmp_path / "a"), TopicWorld(seed=3), **SIZES)
    b = generate(str(tmp_path / "b"), TopicWorld(seed=3), **SIZES)
    c = generate(str(tmp_path / "c"), TopicWorld(seed=4), **SIZES)
    for f in ("base_train", "train", "dpo", "ts_fit", "eval_in", "eval_out", "pairs_eval", "world"):
        assert open(getattr(a, f)).read() == open(getattr(b, f)).read(), f
    assert open(a.train).read() != open(c.train).read()
    assert json.load(open(a.world))["kind"] == "topic"


def test_sampled_world_answers_follow_p_star_and_questions_repeat():
    w = make_world("sampled", 0)
    assert isinstance(w, SampledWorld)
    q = w.sample("in", 20000, np.random.default_rng(1))
    np.testing.assert_allclose(np.bincount(q.answers, minlength=4) / len(q.answers), q.p_star.mean(axis=0), atol=0.015)
    assert len(set(q.texts)) < len(q.texts)  # the earlier setting: the same question with fresh answers
    assert metrics.conf_ece(q.p_star, q.answers) < 0.02
    with pytest.raises(ValueError, match="world must be one of"):
        make_world("nope", 0)


def test_rows_use_the_shared_prompt(tmp_path, topic):
    d = generate(str(tmp_path), topic, **SIZES)
    row = read_jsonl(d.eval_in)[0]
    assert row["choices"] == list(OPTIONS)
    assert 0 <= row["answer"] < 4 and abs(sum(row["p_star"]) - 1) < 1e-5
    pair = read_jsonl(d.pairs_eval)[0]
    assert pair["prompt"] == format_mcq_prompt(row["question"], row["choices"])
    assert pair["chosen"] == " " + "ABCD"[pair["chosen_idx"]] and pair["chosen_idx"] != pair["rejected_idx"]


def test_preference_labels_follow_bradley_terry(topic):
    q = topic.sample("in", 1, np.random.default_rng(6))
    n = 20000
    rep = q._replace(texts=q.texts * n, p_star=np.repeat(q.p_star, n, axis=0), answers=np.repeat(q.answers, n))
    pairs = preference_pairs(topic, rep, np.random.default_rng(5), "t")
    a, b = 0, 1
    sel = [x for x in pairs if {x["chosen_idx"], x["rejected_idx"]} == {a, b}]
    frac = np.mean([x["chosen_idx"] == a for x in sel])
    p = q.p_star[0]
    assert abs(frac - p[a] / (p[a] + p[b])) < 4 * np.sqrt(0.25 / len(sel))
