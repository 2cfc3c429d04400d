"""The demo's preference domain (known reward r*): its data, the exact alignment metrics, the candidate scorer
against a direct forward of the tiny model, and the alignment study's summary."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest
from scipy.special import expit, softmax

from axolotl_calib_plugin.demo.studies import AlignmentStudy
from axolotl_calib_plugin.demo.studies import alignment as alignment_study
from axolotl_calib_plugin.demo.analysis import reward_bounds, reward_stats
from axolotl_calib_plugin.demo.world import PreferenceDomain, TopicWorld, generate, preference_domain_for
from axolotl_calib_plugin.rows import CalibDataError, read_jsonl

SIZES = dict(n_base=30, n_train=30, n_dpo=20, n_ts=10, n_eval_in=20, n_eval_out=10)


def test_reward_is_the_sum_of_the_prompt_words_weights_and_words_are_disjoint_from_the_mcq_world():
    world = TopicWorld(seed=2)
    pref = preference_domain_for(world, 2)
    assert not set(pref.vocabulary()) & set(world.vocabulary())
    assert len(set(pref.vocabulary())) == pref.n_words + pref.n_responses
    q = pref.sample(50, np.random.default_rng(0))
    assert len(set(q.texts)) == 50
    text = q.texts[3]
    ids = [pref.words.index(w) for w in text.split("\n")[0].split()[1:]]
    assert q.rewards[3] == pytest.approx(sum(pref.weights[i] for i in ids))
    assert text.endswith("\nReply:") and all(r.startswith(" ") for r in pref.replies())
    again = preference_domain_for(TopicWorld(seed=2), 2)
    assert again.words == pref.words and np.array_equal(again.weights, pref.weights)


def test_sample_refuses_more_prompts_than_the_domain_holds():
    pref = PreferenceDomain(n_words=3, prompt_len=2)
    with pytest.raises(ValueError, match="do not fit"):
        pref.sample(5, np.random.default_rng(0))


def test_mcq_files_are_the_same_with_or_without_the_preference_domain(tmp_path):
    world = TopicWorld(seed=4)
    plain = generate(str(tmp_path / "a"), world, **SIZES)
    pref = preference_domain_for(world, 4)
    withp = generate(str(tmp_path / "b"), world, **SIZES, pref=pref, n_pref_base=15, n_pref_dpo=12, n_pref_eval=8)
    for name in ("base_train", "train", "ts_fit", "eval_in", "eval_out", "pairs_eval"):
        assert filecmp.cmp(getattr(plain, name), getattr(withp, name), shallow=False), name
    dpo = read_jsonl(withp.dpo)
    assert dpo[:20] == read_jsonl(plain.dpo) and len(dpo) == 32  # MCQ pairs first, then the domain's
    assert all(r["id"].startswith("pdpo-") and r["chosen"] in pref.replies() for r in dpo[20:])
    base = read_jsonl(withp.pref_base)
    assert len(base) == 15 and all(set(r) == {"prompt", "completion"} for r in base)
    ev = read_jsonl(withp.pref_eval)
    assert len(ev) == 8 and all(r["replies"] == pref.replies() and len(r["reward"]) == pref.n_responses for r in ev)
    texts = [r["prompt"] for r in base] + [r["prompt"] for r in dpo[20:]] + [r["prompt"] for r in ev]
    assert len(set(texts)) == len(texts)  # held-out prompts are new
    assert json.loads(open(withp.world).read())["preference_domain"]["responses"] == pref.responses


def test_dpo_winners_follow_bradley_terry_on_the_reward(tmp_path):
    """Over many pairs, the share whose winner has the higher reward equals the mean true P(higher wins)."""
    from axolotl_calib_plugin.demo.world import reward_pairs

    pref = PreferenceDomain(seed=1)
    q = pref.sample(4000, np.random.default_rng(3))
    rows = reward_pairs(pref, q, np.random.default_rng(4), "x")
    r = q.rewards
    hi_won = np.array([r[i, p["chosen_idx"]] > r[i, p["rejected_idx"]] for i, p in enumerate(rows)])
    p_hi = np.array([expit(abs(r[i, p["chosen_idx"]] - r[i, p["rejected_idx"]])) for i, p in enumerate(rows)])
    assert abs(hi_won.mean() - p_hi.mean()) < 3 * np.sqrt(p_hi.mean() * (1 - p_hi.mean()) / len(rows))
    for i, p in enumerate(rows[:50]):
        assert p["p_true"] == pytest.approx(expit(r[i, p["chosen_idx"]] - r[i, p["rejected_idx"]]), abs=1e-6)


def test_reward_stats_hand_computed():
    """Two prompts, three replies. Prompt 1: policy (0.5, 0.25, 0.25), rewards (1, 0, 2); prompt 2: uniform,
    rewards (0, 0, 3)."""
    z = np.log([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    r = np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    s = reward_stats(z, r, reference=np.zeros((2, 3)))
    assert s["expected_reward"] == pytest.approx(((0.5 + 0.5) + 1.0) / 2)
    assert s["best_reply"] == pytest.approx((0.25 + 1 / 3) / 2)
    # pairs (0,1), (0,2), (1,2). Prompt 1: ratios 2/3, 2/3, 1/2 (tie: first of the pair counts as preferred);
    # true for the preferred: s(1), s(-1), s(-2). Prompt 2: all ties -> first: s(0), s(-3), s(-3).
    assert s["pref_ratio"] == pytest.approx((2 / 3 + 2 / 3 + 0.5 + 0.5 * 3) / 6)
    assert s["true_pref"] == pytest.approx((expit(1) + expit(-1) + expit(-2) + expit(0) + 2 * expit(-3)) / 6)
    # ranking agreement: prompt 1 (0,1): model + true + ok; (0,2): model + true - no; (1,2): model 0 -> "not >0",
    # true - -> agree; prompt 2: (0,1) both 0 agree; (0,2),(1,2) model 0, true - -> agree
    assert s["pair_rank_acc"] == pytest.approx(5 / 6)
    # against the uniform reference: prompt 1 by enumeration, prompt 2 is the uniform policy itself (0.5)
    beats = lambda a, b: 1.0 if a > b else 0.5 if a == b else 0.0  # noqa: E731
    w1 = sum(p * q * beats(r[0, j], r[0, k]) for j, p in enumerate([0.5, 0.25, 0.25]) for k, q in enumerate([1 / 3] * 3))
    assert s["win_rate"] == pytest.approx((w1 + 0.5) / 2)
    assert reward_bounds(r) == {"uniform": pytest.approx(1.0), "best": pytest.approx(2.5)}


def test_the_bradley_terry_policy_shows_no_preference_collapse_and_a_sharper_one_does():
    """pi proportional to exp(r*) has pair ratios sigmoid(r*_a - r*_b): ratio == true exactly; pi ~ exp(3 r*)
    (what DPO's small beta drives towards) exceeds it."""
    r = np.random.default_rng(0).normal(size=(200, 5))
    bt = reward_stats(r, r)
    assert bt["pref_ratio"] == pytest.approx(bt["true_pref"], abs=1e-12)
    sharp = reward_stats(3 * r, r, reference=r)
    assert sharp["pref_ratio"] > sharp["true_pref"] + 0.05
    assert sharp["expected_reward"] > bt["expected_reward"] and sharp["win_rate"] > 0.5
    assert reward_stats(r, r, reference=r)["win_rate"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="must both be"):
        reward_stats(r[:, :4], r)


def test_candidate_logprobs_equal_a_direct_forward(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_calib_plugin.eval.evaluation import load_lm
    from axolotl_calib_plugin.preference import candidate_logprobs

    prompts = ["Question: is the sky blue?\nAnswer:", "Say: one two\nReply:"]
    cands = [[" yes", " no", " blue sky"], [" one", " two", " three"]]
    lm = load_lm(tiny_model_dir, 4)
    got = candidate_logprobs(lm, prompts, cands)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for i, (p, cs) in enumerate(zip(prompts, cands)):
        ctx = tok(p)["input_ids"]
        for j, c in enumerate(cs):
            full = tok(p + c)["input_ids"]
            assert full[:len(ctx)] == ctx
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), -1)
            want = sum(float(lp[t - 1, full[t]]) for t in range(len(ctx), len(full)))
            assert got[i, j] == pytest.approx(want, abs=1e-4)
    with pytest.raises(CalibDataError, match="row 1.*same response"):
        candidate_logprobs(lm, prompts[:1], [[" yes", " yes", " no"]], where="replies.jsonl")
    with pytest.raises(ValueError, match="one length"):
        candidate_logprobs(lm, prompts, [[" a"], [" b", " c"]])


def _seed_rows(base, dpo, fixes):
    rows = {"oracle": {"reward": {"uniform": 0.0, "best": 2.0}}, "base": {"reward": {"expected_reward": base}},
            "aligned": {"reward": {"expected_reward": dpo, "win_rate": 0.5}}}
    for k, (er, wr) in fixes.items():
        rows[k] = {"reward": {"expected_reward": er, "win_rate": wr}}
    return {"rows": rows}


def test_alignment_summary_gain_margin_and_verdicts():
    """DPO gains 1.0 over base on every seed (CI excludes 0); margin = 10% of it. A fix 0.02 below DPO on every
    seed keeps alignment; one 0.5 below does not; TS is marked as DPO's policy."""
    per_seed = {}
    for s, jitter in enumerate((0.0, 0.01, -0.01)):
        per_seed[str(s)] = _seed_rows(0.2 + jitter, 1.2 + jitter + 0.001 * s, {
            "aligned.cft": (1.18 + jitter + 0.001 * s, 0.49),
            "aligned.rcft": (0.7 + jitter, 0.3 + 0.01 * s),
            "aligned.ts": (1.2 + jitter + 0.001 * s, 0.5)})
    a = alignment_study.summarize_alignment(per_seed)
    assert a["dpo_adds_alignment"] and a["dpo_gain"]["mean"] == pytest.approx(1.001)
    assert a["margin"] == pytest.approx(0.1001)
    assert a["fixes"]["aligned.cft"]["kept"] is True
    assert a["fixes"]["aligned.rcft"]["kept"] is False
    assert a["fixes"]["aligned.ts"]["policy_unchanged"]
    assert a["fixes"]["aligned.rcft"]["win_rate"]["mean"] == pytest.approx(0.31)
    assert a["bounds"]["best"]["mean"] == 2.0


def test_alignment_study_writes_calibration_and_alignment_sections(tmp_path):
    """write(): the held-out comparisons of the aligned arm (vs its lambda-0 run) and the alignment table, from
    synthetic seeds whose differences are known: CFT with held-out bins 0.05 below its lambda-0 run on every
    seed, DPO 1.0 above base in expected reward."""
    per_seed = {}
    for s in range(3):
        rows = _seed_rows(0.2 + 0.01 * s, 1.2 + 0.02 * s, {"aligned.cft_lam0": (1.1, 0.45), "aligned.cft": (1.1, 0.45),
                                                           "aligned.cft_heldout": (1.15 + 0.001 * s, 0.48),
                                                           "aligned.ts": (1.2 + 0.02 * s, 0.5)})["rows"]
        for k, ece in (("aligned.cft_lam0", 0.10), ("aligned.cft", 0.10 + 0.001 * s), ("aligned.cft_heldout", 0.05),
                       ("aligned.ts", 0.06), ("aligned", 0.3), ("base", 0.03)):
            rows[k].update({d: {"conf_ece": ece + 0.002 * s, "cw_ece": ece / 2, "acc": 0.6, "mean_conf": 0.7}
                            for d in ("in", "out")})
        per_seed[str(s)] = {"rows": rows, "timings_s": {"base": 10.0}}
    study = {"meta": {"seeds": [0, 1, 2], "n_seeds": 3, "commit": "x", "machine": "test",
                      "settings": {"world": "topic", "n_train": 30, "n_ts": 10, "n_eval_in": 20, "n_eval_out": 10}},
             "per_seed": per_seed}
    AlignmentStudy().write(study, str(tmp_path))
    md = (tmp_path / "alignment.md").read_text()
    saved = json.loads((tmp_path / "alignment.json").read_text())
    comp = {c["key"]: c for c in saved["summary"]["comparisons"]}
    assert comp["aligned.cft_heldout"]["vs_lam0"]["conf_ece_in"]["mean"] == pytest.approx(-0.05)
    assert saved["summary"]["fix_arm"] == "aligned" and saved["summary"]["alignment"]["dpo_adds_alignment"]
    assert "aligned (DPO) arm" in md and "DPO − base expected reward: +1.010" in md
    assert "= DPO (TS leaves the policy unchanged)" in md and (tmp_path / "alignment_deltas.png").exists()
    assert alignment_study.table3_line(saved).startswith("DPO − base E[r*] +1.010")


def test_runs_are_labelled_by_the_bins_their_config_read(tmp_path):
    """A CFT run without calib_bin_accuracy but with an eval split read held-out rows (auto): relabelled, and the
    explicit held-out run it duplicates skipped; with the key explicit nothing changes."""
    import yaml

    from axolotl_calib_plugin.demo.studies.alignment import bin_accuracy_as_run

    cfgs = {"aligned.cft": {"calib_mode": "cft", "test_datasets": [{"path": "h.jsonl"}]},
            "aligned.cft_heldout": {"calib_mode": "cft", "calib_bin_accuracy": "heldout"},
            "aligned.rcft": {"calib_mode": "rcft", "calib_bin_accuracy": "train", "val_set_size": 0.1},
            "aligned.cft_lam0": {"calib_mode": "cft"}, "base": {"datasets": []}}
    for name, cfg in cfgs.items():
        (tmp_path / f"{name}.yml").write_text(yaml.safe_dump(cfg))
    used = bin_accuracy_as_run(str(tmp_path))
    assert used == {"aligned.cft": "heldout", "aligned.cft_heldout": "heldout", "aligned.rcft": "train",
                    "aligned.cft_lam0": "train"}
    per_seed = {"0": {"bin_accuracy": used, "rows": {"aligned.cft_heldout": {}}}}
    assert alignment_study.as_run(per_seed) == ({"aligned.cft": "heldout_auto"}, ("aligned.cft_heldout",))
    used["aligned.cft"] = "train"
    assert alignment_study.as_run(per_seed) == ({}, ())
