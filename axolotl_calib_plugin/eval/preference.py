"""Preference check (``axolotl-calib preference``) and exact win rates over known rewards.

The paper's second claim (its Table 3) is that CFT / RCFT restore calibration without undoing what
preference tuning bought. A judge-based win rate (AlpacaEval 2, Arena-Hard) answers that for
generations; this module answers a cheaper, judge-free question on a held-out preference file: does
the model still put more probability on the chosen response than on the rejected one?

* :func:`score_preferences` scores every pair with the model (and, with a reference such as the model
  before DPO, the DPO implicit reward ``log pi(y|x) - log pi_ref(y|x)``); :func:`preference_metrics`
  turns the per-pair log-probs into the report.
* :func:`win_rate` / :func:`expected_reward` are exact, by enumeration, for finite response sets with
  known rewards (the demo world's judge), so there is no sampling noise to average away.

Rows are ``{prompt, chosen, rejected}`` strings, or the binarized-preference layout where ``chosen`` /
``rejected`` are chat message lists whose last (assistant) turn is the response and whose earlier turns
are the prompt (or hold only the assistant turn and ``prompt`` holds the prompt). A response's tokens
are exactly the tokens after the tokenized prompt: prompt+response must tokenize to the prompt's tokens
followed by more, else the row is refused (a template that rewrites earlier turns once an answer is there
would otherwise be scored on tokens the prompt never had).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from ..encoding import encode_plain, first_difference, render_chat, show_tokens
from ..rows import CalibDataError, describe_value, raise_row_errors, read_records, require_field, require_text

__all__ = ["PAIRS_FILE", "REPORT_JSON", "REPORT_MD", "PreferencePair", "encode_pairs", "expected_reward",
           "preference_metrics", "read_pairs", "render_markdown", "score_preferences", "win_rate"]

REPORT_JSON, REPORT_MD, PAIRS_FILE = "preference_report.json", "preference_report.md", "preference_pairs.jsonl"
#: what a row holds, in every message about a bad row.
ROW_LAYOUT = ("{prompt, chosen, rejected} strings, or chosen / rejected as chat message lists "
              "[{role, content}, ...] ending in the assistant response")


# ------------------------------------------------------------------------------------- exact win rates
def _policy_reward(policy, reward, what: str) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(policy, dtype=np.float64)
    r = np.asarray(reward, dtype=np.float64)
    if p.ndim == 1:
        p = p[None]
    if r.ndim == 1:
        r = r[None]
    if p.ndim != 2 or p.shape != r.shape:
        raise ValueError(f"{what} and reward must both be (n_prompts, n_responses), got {np.shape(policy)} and "
                         f"{np.shape(reward)}")
    if not np.all(np.isfinite(r)):
        raise ValueError("reward has non-finite values")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"{what} has negative or non-finite probabilities")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > 1e-6)
    if bad.size:
        raise ValueError(f"{what} row {bad[0]} sums to {float(sums[bad[0]])!r}, not 1 (each prompt's row is a "
                         "distribution over its responses)")
    return p, r


def win_rate(policy_a, policy_b, reward, per_prompt: bool = False):
    """P[r(y_a) > r(y_b)] + 1/2 P[r(y_a) = r(y_b)], y_a ~ policy_a and y_b ~ policy_b drawn independently
    for the same prompt, averaged over prompts with equal weight: exact, by enumerating response pairs.

    ``policy_a``, ``policy_b``, ``reward``: (n_prompts, n_responses) (a 1-D array is one prompt); row i of
    a policy is its distribution over prompt i's candidate responses, whose rewards are ``reward[i]``.
    A policy against itself gives exactly 0.5. ``per_prompt``: the (n_prompts,) win rates instead.
    """
    a, r = _policy_reward(policy_a, reward, "policy_a")
    b, _ = _policy_reward(policy_b, reward, "policy_b")
    beats = (r[:, :, None] > r[:, None, :]) + 0.5 * (r[:, :, None] == r[:, None, :])  # (n, m, m): a's j vs b's k
    per = np.einsum("nj,njk,nk->n", a, beats, b)
    return per if per_prompt else float(per.mean())


def expected_reward(policy, reward, per_prompt: bool = False):
    """E[r(y)], y ~ policy, averaged over prompts with equal weight (same shapes as :func:`win_rate`)."""
    p, r = _policy_reward(policy, reward, "policy")
    per = (p * r).sum(axis=1)
    return per if per_prompt else float(per.mean())


# ------------------------------------------------------------------------------------------- rows
class PreferencePair(NamedTuple):
    """A checked row: ``where`` (file and line), the prompt (text, or chat turns), the two responses."""

    where: str
    prompt: str | list[dict]
    chosen: str
    rejected: str


def _messages(value: Any, field: str) -> list[dict]:
    if hasattr(value, "tolist") and not isinstance(value, list):  # numpy arrays from a parquet column
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise CalibDataError(f"field {field!r} must be a non-empty list of chat messages, got {describe_value(value)}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise CalibDataError(f"field {field!r} message {i} must be {{'role': str, 'content': str}}, "
                                 f"got {describe_value(m)}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _response(turns: list[dict], field: str) -> str:
    last = turns[-1]
    if last["role"] != "assistant":
        raise CalibDataError(f"field {field!r}: the last message is a {last['role']!r} turn; it must be the "
                             "assistant response")
    if not last["content"].strip():
        raise CalibDataError(f"field {field!r}: the assistant response is empty")
    return last["content"]


def parse_pair(row: Any, where: str, chat: bool) -> PreferencePair:
    """One raw row -> :class:`PreferencePair`; :class:`CalibDataError` names the field at fault."""
    if not isinstance(row, Mapping):
        raise CalibDataError(f"expected a JSON object ({ROW_LAYOUT}), got {type(row).__name__}")
    chosen, rejected = require_field(row, "chosen"), require_field(row, "rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        prompt = require_text(row, "prompt")
        chosen, rejected = require_text(row, "chosen"), require_text(row, "rejected")
    elif isinstance(chosen, str) or isinstance(rejected, str):
        raise CalibDataError(f"'chosen' is {describe_value(chosen)} but 'rejected' is {describe_value(rejected)}; "
                             "both must be strings, or both chat message lists")
    else:
        if not chat:
            raise CalibDataError("'chosen' and 'rejected' are chat message lists: pass --apply-chat-template (the "
                                 "tokenizer's chat template renders them)")
        c_turns, r_turns = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        chosen, rejected = _response(c_turns, "chosen"), _response(r_turns, "rejected")
        if c_turns[:-1] != r_turns[:-1]:
            raise CalibDataError("'chosen' and 'rejected' have different turns before the response; a pair answers "
                                 "one prompt")
        prompt = c_turns[:-1]
        if not prompt:  # the prompt lives in its own field (TRL's conversational layout)
            value = require_field(row, "prompt")
            prompt = ([{"role": "user", "content": require_text(row, "prompt")}] if isinstance(value, str)
                      else _messages(value, "prompt"))
    if chosen == rejected:
        raise CalibDataError("'chosen' and 'rejected' are the same response; a pair needs two different responses")
    return PreferencePair(where, prompt, chosen, rejected)


def read_pairs(paths: Sequence[str], chat: bool = False) -> list[PreferencePair]:
    """Every row of the files as a :class:`PreferencePair`; all bad rows are listed in one
    :class:`CalibDataError` (file and 1-based line or row, field, what to do), none is skipped."""
    pairs, errors = [], []
    for path in paths:
        records, _ = read_records(path)
        for where, row in records:
            try:
                pairs.append(parse_pair(row, where, chat))
            except CalibDataError as e:
                errors.append((where, str(e)))
    raise_row_errors(errors, ", ".join(paths))
    return pairs


# ------------------------------------------------------------------------------------------- tokens
def _continuation(tokenizer, prompt_ids: list[int], full_ids: list[int], chat: bool) -> list[int] | str:
    """The response tokens (``full_ids`` after ``prompt_ids``), or why there are none."""
    n = len(prompt_ids)
    if full_ids[:n] != prompt_ids:
        i = first_difference(prompt_ids, full_ids)
        fix = ("the chat template renders the earlier turns differently once the response is there (e.g. it drops "
               "reasoning blocks); use a template that keeps them, or drop --apply-chat-template" if chat else
               "the prompt's last characters merge with the response's first into one token; end the prompt with a "
               "separator (space, newline) the tokenizer keeps apart, or use --apply-chat-template")
        return (f"prompt+response does not tokenize to the prompt's tokens followed by the response's (first "
                f"difference at token {i}: prompt {show_tokens(tokenizer, prompt_ids[i:i + 3])}, prompt+response "
                f"{show_tokens(tokenizer, full_ids[i:i + 3])}), so the response's tokens are undefined: {fix}")
    if len(full_ids) <= n:
        return "the response adds no token after the prompt"
    return full_ids[n:]


def _encode_responses(tokenizer, prompt, responses: Sequence[str], chat: bool, eos: bool = True
                      ) -> tuple[list[int], list[list[int] | str]]:
    """``(prompt_ids, [response tokens, or why there are none, per response])``.

    Plain: the prompt with the tokenizer's special tokens (BOS) and prompt + response (+ EOS), the text
    joined as given (as TRL's DPO does; put any separator in the data). Chat: the tokenizer's template, the
    prompt turns with the generation prompt, and the whole conversation (the end-of-turn tokens count)."""
    if chat:
        turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        prompt_ids = render_chat(tokenizer, tokenizer.chat_template, turns, True, None)
        fulls = [render_chat(tokenizer, tokenizer.chat_template, turns + [{"role": "assistant", "content": y}],
                              False, None) for y in responses]
    else:
        tail = [] if not eos or tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
        prompt_ids = encode_plain(tokenizer, prompt)
        fulls = [encode_plain(tokenizer, prompt + y) + tail for y in responses]
    return prompt_ids, [_continuation(tokenizer, prompt_ids, full, chat) for full in fulls]


def _require_chat_template(tokenizer, chat: bool) -> None:
    if chat and not getattr(tokenizer, "chat_template", None):
        raise CalibDataError("--apply-chat-template: the tokenizer has no chat template (set chat_template in its "
                             "tokenizer_config.json)")


def encode_pairs(tokenizer, pairs: Sequence[PreferencePair], chat: bool = False
                 ) -> list[tuple[list[int], list[int], list[int]]]:
    """``(prompt_ids, chosen_ids, rejected_ids)`` per pair: the tokens a response adds after its prompt
    (plain: + EOS; see :func:`_encode_responses`)."""
    _require_chat_template(tokenizer, chat)
    out, errors = [], []
    for pair in pairs:
        prompt_ids, conts = _encode_responses(tokenizer, pair.prompt, (pair.chosen, pair.rejected), chat)
        for field, cont in zip(("chosen", "rejected"), conts):
            if isinstance(cont, str):
                errors.append((pair.where, f"field {field!r}: {cont}"))
        if not any(isinstance(c, str) for c in conts):
            if conts[0] == conts[1]:
                errors.append((pair.where, "'chosen' and 'rejected' tokenize to the same response"))
            out.append((prompt_ids, conts[0], conts[1]))
    raise_row_errors(errors, "preference data", " (tokenization)")
    return out


def candidate_logprobs(lm, prompts: Sequence[Any], candidates: Sequence[Sequence[str]], chat: bool = False,
                       eos: bool = False, where: str = "candidates") -> np.ndarray:
    """(n, K) summed log-probs of every candidate response of every prompt under a loaded lm-eval ``HFLM``
    (plain prompts: without EOS unless ``eos``, so single-token replies give the reply token's log-prob at
    the reply position -- the same construction as MCQ confidence). A policy over the candidates is the
    row-wise softmax. Candidates that do not tokenize apart from their prompt, or collide, are refused."""
    _require_chat_template(lm.tokenizer, chat)
    ks = {len(c) for c in candidates}
    if len(prompts) != len(candidates) or len(ks) > 1:
        raise ValueError(f"{len(prompts)} prompts need as many candidate lists of one length, got lengths {sorted(ks)}")
    encoded, errors = [], []
    for i, (prompt, cands) in enumerate(zip(prompts, candidates)):
        prompt_ids, conts = _encode_responses(lm.tokenizer, prompt, cands, chat, eos)
        bad = [f"candidate {j} {c!r}: {why}" for j, (c, why) in enumerate(zip(cands, conts)) if isinstance(why, str)]
        if not bad and len({tuple(c) for c in conts}) < len(conts):
            bad = ["two candidates tokenize to the same response"]
        errors += [(f"{where} row {i + 1}", b) for b in bad]
        encoded.append((prompt_ids, conts))
    raise_row_errors(errors, where, " (tokenization)")
    return _loglikelihoods(lm, [(f"{i}.{j}", prompt_ids, c) for i, (prompt_ids, conts) in enumerate(encoded)
                                for j, c in enumerate(conts)]).reshape(len(encoded), -1)


# ------------------------------------------------------------------------------------------- scoring
def _loglikelihoods(lm, requests: Sequence[tuple[str, list[int], list[int]]]) -> np.ndarray:
    """Summed log-probs of ``(key, context_ids, continuation_ids)`` requests, in order: lm-eval's own batched
    scorer (``_loglikelihood_tokens``: sorted by length, padded, progress bar) on our token ids; the
    log-softmax runs in float32 even for a bf16 model (a sum over hundreds of tokens)."""
    import torch

    lm.softmax_dtype = torch.float32
    res = lm._loglikelihood_tokens([((key, ""), ctx, cont) for key, ctx, cont in requests])
    return np.asarray([x[0] for x in res], dtype=np.float64)


def sequence_logprobs(lm, encoded: Sequence[tuple[list[int], list[int], list[int]]], desc: str = "") -> np.ndarray:
    """(n, 2) summed log-probs of the chosen and rejected tokens under a loaded lm-eval ``HFLM``."""
    requests = [(f"{desc}{i} {side}", prompt, cont) for i, (prompt, c, r) in enumerate(encoded)
                for side, cont in (("chosen", c), ("rejected", r))]
    return _loglikelihoods(lm, requests).reshape(-1, 2)


def _summaries(per_pair: Mapping[str, np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict:
    """``{name: {"mean", "ci95"}}``: each per-pair quantity's mean and 95% percentile-bootstrap interval over
    pairs (the same resamples for all; ``ci95`` None for fewer than 2 pairs). Bootstrap, not mean +- 1.96 se,
    so a share's interval stays inside [0, 1]."""
    keys = list(per_pair)
    x = np.stack([np.asarray(per_pair[k], dtype=np.float64) for k in keys], axis=1)  # (n, k)
    n = len(x)
    lo = hi = None
    if n >= 2:
        rng, draws = np.random.default_rng(seed), []
        chunk = max(1, min(n_boot, 10_000_000 // n))  # bounds the (chunk, n) weight matrix
        for start in range(0, n_boot, chunk):
            w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, n_boot - start)) / n
            draws.append(w @ x)
        lo, hi = np.percentile(np.concatenate(draws), [2.5, 97.5], axis=0)
    means = x.mean(axis=0)
    return {k: {"mean": float(means[j]), "ci95": None if lo is None else [float(lo[j]), float(hi[j])]}
            for j, k in enumerate(keys)}


def _wins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a > b) + 0.5 * (a == b)


def preference_metrics(logp: np.ndarray, n_tokens: np.ndarray, ref_logp: np.ndarray | None = None,
                       beta: float = 0.1) -> dict:
    """The report's numbers from per-pair (n, 2) [chosen, rejected] summed log-probs and token counts.

    * ``chosen_preferred_sum`` / ``_mean``: share of pairs with log pi(y_w) > log pi(y_l), by the summed and the
      length-normalised (per-token) log-prob (a tie counts 1/2);
    * ``preference_ratio``: pi(y_w) / (pi(y_w) + pi(y_l)) = sigmoid(log pi(y_w) - log pi(y_l)), the paper's
      preference-collapse quantity, computed in log space;
    * with ``ref_logp``: ``implicit_reward_accuracy`` (share with (log pi - log pi_ref)(y_w) > (...)(y_l)),
      ``implicit_reward_margin`` beta * that difference, ``implicit_reward_chosen`` / ``_rejected`` and the DPO
      loss -log sigmoid(margin), plus the reference's own ``chosen_preferred_*``.
    Each is ``{"mean", "ci95"}`` over pairs (:func:`_summaries`).
    """
    from scipy.special import expit, log_expit

    lw, ll = logp[:, 0], logp[:, 1]
    per_token = logp / n_tokens
    per_pair = {
        "chosen_preferred_sum": _wins(lw, ll),
        "chosen_preferred_mean": _wins(per_token[:, 0], per_token[:, 1]),
        "preference_ratio": expit(lw - ll),
        "logp_chosen": lw,
        "logp_rejected": ll,
        "tokens_chosen": n_tokens[:, 0],
        "tokens_rejected": n_tokens[:, 1],
    }
    if ref_logp is not None:
        rw, rl = lw - ref_logp[:, 0], ll - ref_logp[:, 1]
        margin = beta * (rw - rl)
        ref_tok = ref_logp / n_tokens
        per_pair.update({
            "implicit_reward_accuracy": _wins(rw, rl),
            "implicit_reward_margin": margin,
            "implicit_reward_chosen": beta * rw,
            "implicit_reward_rejected": beta * rl,
            "dpo_loss": -log_expit(margin),
            "reference_chosen_preferred_sum": _wins(ref_logp[:, 0], ref_logp[:, 1]),
            "reference_chosen_preferred_mean": _wins(ref_tok[:, 0], ref_tok[:, 1]),
        })
    return _summaries(per_pair)


def score_preferences(pairs: Sequence[PreferencePair], load, model: str, reference: str | None = None,
                      chat: bool = False) -> dict:
    """Tokenize with ``model``'s tokenizer and score every pair with ``model``, then ``reference``
    (one model in memory at a time). ``load(path)`` returns a loaded lm-eval ``HFLM``.

    Returns ``{"encoded", "logp" (n, 2), "n_tokens" (n, 2), "ref_logp" (n, 2) or None, "n_truncated"}``;
    a pair longer than the model's context has its prompt cut from the left (counted in ``n_truncated``),
    a response longer than it is an error naming the row.
    """
    import gc

    lm = load(model)
    tokenizer = lm.tokenizer
    encoded = encode_pairs(tokenizer, pairs, chat)
    max_len = int(lm.max_length)
    too_long = [(p.where, f"field {f!r}: the response has {len(c)} tokens, more than the model's context of {max_len}")
                for p, (_, *cs) in zip(pairs, encoded) for f, c in zip(("chosen", "rejected"), cs) if len(c) > max_len]
    raise_row_errors(too_long, "preference data")
    n_truncated = sum(len(pr) + max(len(c), len(r)) > max_len + 1 for pr, c, r in encoded)
    logp = sequence_logprobs(lm, encoded, "model ")
    vocab = tokenizer.get_vocab() if reference else None
    del lm
    gc.collect()
    ref_logp = None
    if reference:
        ref = load(reference)
        if ref.tokenizer.get_vocab() != vocab:
            raise CalibDataError(f"--reference {reference}: its tokenizer differs from the model's; the implicit "
                                 "reward compares both models on the same tokens (use the model this one was "
                                 "tuned from)")
        ref_logp = sequence_logprobs(ref, encoded, "reference ")
        del ref
        gc.collect()
    n_tokens = np.asarray([[len(c), len(r)] for _, c, r in encoded], dtype=np.int64)
    return {"encoded": encoded, "logp": logp, "n_tokens": n_tokens, "ref_logp": ref_logp, "n_truncated": n_truncated}


# ------------------------------------------------------------------------------------------- report
_LABELS = {
    "chosen_preferred_sum": "prefers chosen (summed log-prob)",
    "chosen_preferred_mean": "prefers chosen (per-token log-prob)",
    "preference_ratio": "preference ratio pi(y_w)/(pi(y_w)+pi(y_l))",
    "implicit_reward_accuracy": "DPO implicit-reward accuracy",
    "implicit_reward_margin": "implicit reward margin beta*(r_w - r_l)",
    "implicit_reward_chosen": "implicit reward, chosen",
    "implicit_reward_rejected": "implicit reward, rejected",
    "dpo_loss": "DPO loss -log sigmoid(margin)",
    "reference_chosen_preferred_sum": "reference prefers chosen (summed)",
    "reference_chosen_preferred_mean": "reference prefers chosen (per-token)",
    "logp_chosen": "log pi(y_w), mean",
    "logp_rejected": "log pi(y_l), mean",
    "tokens_chosen": "tokens of y_w, mean",
    "tokens_rejected": "tokens of y_l, mean",
}


def render_markdown(report: Mapping) -> str:
    meta = report["meta"]
    lines = [f"# Preference check: {meta['model']}", "",
             f"{report['n_pairs']} pairs from {', '.join(meta['data'])}; "
             f"{'chat template' if meta['apply_chat_template'] else 'plain text'}"
             + (f"; reference {meta['reference']}, beta {meta['beta']}" if meta.get("reference") else "") + ".", "",
             "| metric | value | 95% CI |", "|---|---:|---|"]
    for key, label in _LABELS.items():
        v = report["metrics"].get(key)
        if v is None:
            continue
        ci = f"[{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]" if v["ci95"] else "-"
        lines.append(f"| {label} | {v['mean']:.4f} | {ci} |")
    lines += ["", "A tie counts 1/2. This measures the model's likelihoods on fixed responses, not the quality of its "
              "own generations: it complements, and does not replace, a judge-based win rate (AlpacaEval 2, "
              "Arena-Hard)."]
    if report["n_truncated"]:
        lines.append(f"\n{report['n_truncated']} pair(s) longer than the model's context had their prompt cut from "
                     "the left.")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, pairs: Sequence[PreferencePair], scores: Mapping, meta: Mapping) -> dict:
    """``preference_report.{json,md}`` and one line per pair in ``preference_pairs.jsonl``; returns the report."""
    os.makedirs(out_dir, exist_ok=True)
    metrics = preference_metrics(scores["logp"], scores["n_tokens"], scores["ref_logp"], meta.get("beta", 0.1))
    report = {"meta": dict(meta), "n_pairs": len(pairs), "n_truncated": int(scores["n_truncated"]), "metrics": metrics}
    with open(os.path.join(out_dir, REPORT_JSON), "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    with open(os.path.join(out_dir, REPORT_MD), "w", encoding="utf-8") as fh:
        fh.write(render_markdown(report))
    with open(os.path.join(out_dir, PAIRS_FILE), "w", encoding="utf-8") as fh:
        for i, p in enumerate(pairs):
            row = {"where": p.where, "logp_chosen": float(scores["logp"][i, 0]),
                   "logp_rejected": float(scores["logp"][i, 1]), "tokens_chosen": int(scores["n_tokens"][i, 0]),
                   "tokens_rejected": int(scores["n_tokens"][i, 1])}
            if scores["ref_logp"] is not None:
                row.update(ref_logp_chosen=float(scores["ref_logp"][i, 0]),
                           ref_logp_rejected=float(scores["ref_logp"][i, 1]))
            fh.write(json.dumps(row) + "\n")
    return report
