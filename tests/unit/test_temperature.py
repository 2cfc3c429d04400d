"""Temperature scaling: recovers a known T, keeps accuracy, T=1 on calibrated data."""

from __future__ import annotations

import numpy as np
import pytest

from axolotl_calib_plugin import metrics
from axolotl_calib_plugin.eval.temperature import apply_temperature, fit_temperature, nll, probs_to_logits, softmax_rows


def _sample(logits, rng):
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return (rng.random(len(p))[:, None] > np.cumsum(p, 1)).sum(1).clip(max=p.shape[1] - 1)


@pytest.mark.parametrize("t_true", [0.5, 2.0, 3.0])
def test_recovers_known_temperature(t_true):
    rng = np.random.default_rng(0)
    z = rng.normal(scale=2.0, size=(20000, 4))
    y = _sample(z, rng)  # labels drawn from softmax(z): the calibrated logits are z
    t = fit_temperature(z * t_true, y)  # the model reports logits scaled by t_true
    assert abs(t - t_true) / t_true < 0.05


def test_temperature_one_on_calibrated_data():
    rng = np.random.default_rng(1)
    z = rng.normal(scale=1.5, size=(20000, 4))
    y = _sample(z, rng)
    assert abs(fit_temperature(z, y) - 1.0) < 0.05


def test_accuracy_unchanged_and_ece_reduced():
    rng = np.random.default_rng(2)
    z = rng.normal(scale=1.5, size=(5000, 4))
    y = _sample(z, rng)
    over = z * 3.0  # over-confident model
    t = fit_temperature(over, y)
    p_before = apply_temperature(over, 1.0)
    p_after = apply_temperature(over, t)
    assert t > 2.0
    assert metrics.accuracy(p_before, y) == metrics.accuracy(p_after, y)
    assert np.array_equal(p_before.argmax(1), p_after.argmax(1))
    assert metrics.conf_ece(p_after, y) < metrics.conf_ece(p_before, y) / 2
    assert nll(over, y, t) < nll(over, y, 1.0)


def test_log_probs_work_like_logits():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(3000, 4)) * 2
    y = _sample(z / 2, rng)
    p = apply_temperature(z, 1.0)
    assert abs(fit_temperature(probs_to_logits(p), y) - fit_temperature(z, y)) < 1e-4


def test_gradient_flows_not_stuck_at_init():
    # the reference code's bug left T at its init of 1.5; a real fit must move
    rng = np.random.default_rng(4)
    z = rng.normal(size=(2000, 4))
    y = _sample(z, rng)
    assert abs(fit_temperature(z, y, init=1.5) - 1.5) > 0.2


def test_bad_inputs():
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((3,)), [0, 1, 2])
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((3, 4)), [0, 1, 7])
    with pytest.raises(ValueError):
        apply_temperature(np.zeros((3, 4)), 0.0)


# ---------------------------------------------------------------------------------- lm-eval samples: what T is fitted on
def _items(n, k, t_model, seed):
    """Questions whose labels follow softmax(z) while the model reports z * t_model (t_model > 1: over-confident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, k))
    y = _sample(z, rng)
    logits = z * t_model
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return [{"doc_id": i, "probs": p[i].tolist(), "gold": int(y[i]), "logliks": logits[i].tolist()} for i in range(n)]


MMLU = "samples_calib_mmlu_2026-01-01T00-00-00.000001.jsonl"
ARC = "samples_calib_arc_challenge_2026-01-01T00-00-00.000001.jsonl"


def test_in_domain_tasks_are_the_in_domain_suites_and_the_users_file():
    from axolotl_calib_plugin.eval.temperature import in_domain_tasks

    assert in_domain_tasks() == ["calib_in_domain_pooled", "calib_jsonl", "calib_medmcqa", "calib_mmlu", "calib_openbookqa"]


def test_scale_samples_never_fits_on_an_out_of_domain_task_by_default():
    """An over-confident in-domain task (T* = 3) next to an under-confident out-of-domain one (T* = 0.5): by
    default T is exactly the in-domain fit, and the out-of-domain column is scored on questions T never saw."""
    from axolotl_calib_plugin.eval.temperature import pad_ragged_logits, scale_samples

    mmlu, arc = _items(2000, 4, 3.0, seed=1), _items(2000, 4, 0.5, seed=2)
    res = scale_samples({MMLU: mmlu, ARC: arc}, {MMLU: mmlu, ARC: arc})
    only_mmlu = fit_temperature(pad_ragged_logits([it["logliks"] for it in mmlu]), [it["gold"] for it in mmlu])
    assert res["temperature"] == pytest.approx(only_mmlu, rel=1e-9) and abs(res["temperature"] - 3.0) < 0.25
    assert res["fit"]["tasks"] == ["calib_mmlu"] and res["fit"]["excluded"] == {ARC: "calib_arc_challenge"}
    assert res["fit"]["n"] == 2000
    assert res["apply"][ARC]["held_out"] is True and res["apply"][ARC]["n_fitted"] == 0
    assert res["apply"][MMLU]["held_out"] is False and res["apply"][MMLU]["n_fitted"] == 2000  # in-sample, marked

    pooled = scale_samples({MMLU: mmlu, ARC: arc}, {ARC: arc}, fit_tasks=["calib_mmlu", "calib_arc_challenge"])
    assert pooled["fit"]["n"] == 4000 and pooled["temperature"] < 0.8 * res["temperature"]  # what fitting on ARC does
    assert pooled["apply"][ARC]["held_out"] is False  # ...and then ARC is not held-out any more
    with pytest.raises(ValueError, match="found calib_arc_challenge.*pass --fit-tasks"):
        scale_samples({ARC: arc}, {ARC: arc})


def test_scored_questions_exclude_every_fitted_question_wherever_the_file_lies():
    """A copy of the fitted samples under another folder is the same questions: scored on the rest only."""
    from axolotl_calib_plugin.eval.temperature import scale_samples

    mmlu = _items(100, 4, 2.0, seed=3)
    res = scale_samples({f"a/{MMLU}": mmlu}, {f"b/{MMLU}": [dict(it) for it in mmlu]}, fit_fraction=0.3, seed=7)
    scored = res["apply"][f"b/{MMLU}"]
    assert res["fit"]["n"] == 30 and len(scored["items"]) == 70 and scored["n_fitted"] == 30
    assert scored["held_out"] is True and scored["held_out_only"] is True
    fitted_ids = {it["doc_id"] for it in mmlu} - {it["doc_id"] for it in scored["items"]}
    assert len(fitted_ids) == 30
    other_model = []
    for it in mmlu:
        z = [v + 0.5 * (j == 0) for j, v in enumerate(it["logliks"])]
        other_model.append({**it, "logliks": z, "probs": softmax_rows([z], 1.0)[0]})
    assert scale_samples({MMLU: mmlu}, {f"c/{MMLU}": other_model})["apply"][f"c/{MMLU}"]["n_fitted"] == 0


@pytest.mark.parametrize("damage, message", [
    ("appended", r"2 question\(s\) appear more than once \(doc_id 0, 1\).*appended to or concatenated"),
    ("short", r"doc_id 1: 2 option log-likelihoods for 4 options; the file is damaged or was edited"),
    ("nan", r"doc_id 1: option log-likelihoods \[nan, .*\] are not all finite"),
    ("edited", r"doc_id 1: its option probabilities are not the softmax of its option log-likelihoods"),
])
def test_scale_samples_refuses_a_damaged_samples_file(damage, message):
    """A samples file no evaluation wrote is refused with its path and question, never fitted: two runs appended
    into one file (each question twice: n doubled), log-likelihoods cut short (T fitted on 2 of 4 options: on the
    tiny model 0.68 instead of 0.59), not finite, or edited away from the probabilities the report reads."""
    from axolotl_calib_plugin.eval.temperature import scale_samples

    good = _items(2, 4, 2.0, seed=4)
    bad = [dict(it) for it in good]
    if damage == "appended":
        bad = bad + [dict(it) for it in good]
    elif damage == "short":
        bad[1]["logliks"] = bad[1]["logliks"][:2]
    elif damage == "nan":
        bad[1]["logliks"] = [float("nan")] + bad[1]["logliks"][1:]
    else:
        bad[1]["logliks"] = [v * 2 for v in bad[1]["logliks"]]
    path = f"damaged/{MMLU}"
    with pytest.raises(ValueError, match=r"^damaged/samples_calib_mmlu_.*\.jsonl: " + message):
        scale_samples({path: bad}, {path: bad})
    with pytest.raises(ValueError, match=message):  # an --apply file is checked as well
        scale_samples({MMLU: good}, {path: bad})
    assert scale_samples({MMLU: good}, {MMLU: good})["fit"]["n"] == 2  # the intact file passes
