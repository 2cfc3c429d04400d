"""``axolotl-calib preference`` and the exact win rate: enumeration vs brute force and hand values; the command vs
a direct forward of the tiny model (summed and per-token log-probs, plain and chat template, the binarized
message-list layout, the reference model's implicit reward, a LoRA folder); bad rows named by file and line."""

from __future__ import annotations

import copy
import itertools
import json
import math
import re

import numpy as np
import pytest

from axolotl_calib_plugin.cli import main
from axolotl_calib_plugin.eval.preference import encode_pairs, expected_reward, read_pairs, win_rate
from axolotl_calib_plugin.rows import CalibDataError


# ------------------------------------------------------------------------------------------- win rate
def brute_win_rate(a, b, r) -> float:
    """Python loops over prompts and response pairs: the definition, written out."""
    total = 0.0
    for pa, pb, rr in zip(a, b, r):
        s = 0.0
        for j, k in itertools.product(range(len(rr)), repeat=2):
            s += pa[j] * pb[k] * (1.0 if rr[j] > rr[k] else 0.5 if rr[j] == rr[k] else 0.0)
        total += s
    return total / len(r)


def test_win_rate_hand_computed():
    # a: y0 (reward 0) or y1 (reward 1) half each; b: always y2 (reward 1). a loses with y0, ties with y1.
    assert win_rate([0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0]) == 0.25
    assert win_rate([0.0, 0.0, 1.0], [0.5, 0.5, 0.0], [0.0, 1.0, 1.0]) == 0.75
    # two prompts, equal weight: 1.0 (a always best) and 0.5 (same policy)
    a = [[0.0, 1.0], [0.3, 0.7]]
    b = [[1.0, 0.0], [0.3, 0.7]]
    r = [[0.0, 2.0], [5.0, -1.0]]
    # prompt 2: P[a wins] = 0.3*0.7 = 0.21, P[tie] = 0.09 + 0.49 = 0.58 -> 0.21 + 0.29 = 0.5
    assert win_rate(a, b, r) == pytest.approx(0.75, abs=1e-15)
    assert win_rate(a, b, r, per_prompt=True).tolist() == pytest.approx([1.0, 0.5], abs=1e-15)
    assert expected_reward([0.5, 0.5, 0.0], [0.0, 1.0, 1.0]) == 0.5
    assert expected_reward(a, r, per_prompt=True).tolist() == pytest.approx([2.0, 0.3 * 5 - 0.7], abs=1e-15)


def test_win_rate_equals_brute_force_enumeration():
    rng = np.random.default_rng(0)
    n, m = 6, 5
    a, b = rng.dirichlet(np.ones(m), size=n), rng.dirichlet(np.ones(m) * 0.3, size=n)
    a[0] = [0, 0, 1, 0, 0]  # a point mass
    r = rng.integers(0, 3, size=(n, m)).astype(float)  # integer rewards: many ties
    assert win_rate(a, b, r) == pytest.approx(brute_win_rate(a, b, r), abs=1e-12)
    assert win_rate(a, b, r) + win_rate(b, a, r) == pytest.approx(1.0, abs=1e-12)
    assert win_rate(a, a, r) == pytest.approx(0.5, abs=1e-12)
    assert expected_reward(a, r) == pytest.approx(float(np.mean([sum(p * x for p, x in zip(pa, ra))
                                                                 for pa, ra in zip(a, r)])), abs=1e-12)


@pytest.mark.parametrize("a, b, r, message", [
    ([[0.5, 0.4]], [[0.5, 0.5]], [[0, 1]], "policy_a row 0 sums to 0.9"),
    ([[0.5, 0.5]], [[1.5, -0.5]], [[0, 1]], "policy_b has negative or non-finite"),
    ([[0.5, 0.5]], [[0.5, 0.5]], [[0, 1, 2]], "must both be (n_prompts, n_responses)"),
    ([[0.5, 0.5]], [[0.5, 0.5]], [[0, float("nan")]], "reward has non-finite"),
])
def test_win_rate_rejects_what_is_not_a_distribution(a, b, r, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        win_rate(a, b, r)


# ------------------------------------------------------------------------------------------- the command
ROWS = [
    {"prompt": "Question: what is red?\nAnswer:", "chosen": " the heart", "rejected": " a blue cat"},
    {"prompt": "Which is true?\nAnswer:", "chosen": " water is energy", "rejected": " false"},
    {"prompt": "What of light?\nAnswer:", "chosen": " atom", "rejected": " the force of mass and cell"},
    {"prompt": "Is the dog green?\nAnswer:", "chosen": " no", "rejected": " yes it is green"},
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def direct_scores(model_dir: str, rows, chat: bool):
    """(n, 2) summed log-probs and token counts by one plain forward per sequence (no lm-eval, no batching)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    logp, n_tok = [], []
    for row in rows:
        user = [{"role": "user", "content": row["prompt"]}]
        if chat:
            prompt = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False)
        else:
            prompt = tok(row["prompt"])["input_ids"]
        pair_lp, pair_n = [], []
        for y in (row["chosen"], row["rejected"]):
            if chat:
                full = tok.apply_chat_template(user + [{"role": "assistant", "content": y}], tokenize=True,
                                               return_dict=False)
            else:
                full = tok(row["prompt"] + y)["input_ids"] + [tok.eos_token_id]
            assert full[:len(prompt)] == prompt and len(full) > len(prompt)
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), -1)
            pair_lp.append(sum(float(lp[t - 1, full[t]]) for t in range(len(prompt), len(full))))
            pair_n.append(len(full) - len(prompt))
        logp.append(pair_lp)
        n_tok.append(pair_n)
    return np.array(logp), np.array(n_tok)


def run_preference(tmp_path, model, pairs, *extra, name="out"):
    out = tmp_path / name
    assert main(["preference", "--model", str(model), "--pairs", str(pairs), "--output-dir", str(out),
                 "--device", "cpu", "--dtype", "float32", "--batch-size", "3", *extra]) == 0
    report = json.loads((out / "preference_report.json").read_text())
    per_pair = [json.loads(x) for x in (out / "preference_pairs.jsonl").read_text().splitlines()]
    return report, per_pair, (out / "preference_report.md").read_text()


def shares(lp, n):
    win = lambda w, l: np.mean((w > l) + 0.5 * (w == l))  # noqa: E731
    return win(lp[:, 0], lp[:, 1]), win(lp[:, 0] / n[:, 0], lp[:, 1] / n[:, 1])


@pytest.mark.parametrize("chat", [False, True])
def test_preference_equals_a_direct_forward(tmp_path, tiny_model_dir, chat, capsys):
    pairs = write_jsonl(tmp_path / "prefs.jsonl", ROWS)
    report, per_pair, md = run_preference(tmp_path, tiny_model_dir, pairs, *(["--apply-chat-template"] if chat else []))
    lp, n = direct_scores(tiny_model_dir, ROWS, chat)
    got = np.array([[p["logp_chosen"], p["logp_rejected"]] for p in per_pair])
    assert got == pytest.approx(lp, abs=1e-4)
    assert [[p["tokens_chosen"], p["tokens_rejected"]] for p in per_pair] == n.tolist()
    assert [p["where"] for p in per_pair] == [f"{pairs} line {i}" for i in range(1, 5)]
    m = report["metrics"]
    by_sum, by_mean = shares(lp, n)
    assert m["chosen_preferred_sum"]["mean"] == by_sum and m["chosen_preferred_mean"]["mean"] == by_mean
    assert by_sum != by_mean  # the rows were written so that length normalisation changes the verdict
    ratio = np.mean([1 / (1 + math.exp(l - w)) for w, l in lp])
    assert m["preference_ratio"]["mean"] == pytest.approx(ratio, abs=1e-5)
    assert report["n_pairs"] == 4 and report["meta"]["apply_chat_template"] is chat
    assert "implicit_reward_accuracy" not in m
    assert f"| prefers chosen (summed log-prob) | {by_sum:.4f} |" in md
    assert md in capsys.readouterr().out


def test_binarized_message_lists_score_like_the_string_rows(tmp_path, tiny_model_dir):
    """The common binarized layout (chosen / rejected = the whole conversation) and TRL's (prompt as messages,
    responses as one assistant turn) give the string rows' numbers."""
    msgs = []
    for i, r in enumerate(ROWS):
        user = [{"role": "user", "content": r["prompt"]}]
        if i % 2:
            msgs.append({"prompt": r["prompt"], "chosen": user + [{"role": "assistant", "content": r["chosen"]}],
                         "rejected": user + [{"role": "assistant", "content": r["rejected"]}]})
        else:
            msgs.append({"prompt": user, "chosen": [{"role": "assistant", "content": r["chosen"]}],
                         "rejected": [{"role": "assistant", "content": r["rejected"]}]})
    _, strings, _ = run_preference(tmp_path, tiny_model_dir, write_jsonl(tmp_path / "s.jsonl", ROWS),
                                   "--apply-chat-template", name="s")
    _, lists, _ = run_preference(tmp_path, tiny_model_dir, write_jsonl(tmp_path / "m.jsonl", msgs),
                                 "--apply-chat-template", name="m")
    for field in ("logp_chosen", "logp_rejected", "tokens_chosen", "tokens_rejected"):
        assert [p[field] for p in lists] == pytest.approx([p[field] for p in strings], abs=1e-6), field


def test_reference_model_gives_the_dpo_implicit_reward(tmp_path, tiny_model_dir, capsys):
    from axolotl_calib_plugin.testing import make_tiny_model_dir

    ref = make_tiny_model_dir(tmp_path / "ref", seed=1)  # same tokenizer, other weights
    pairs = write_jsonl(tmp_path / "prefs.jsonl", ROWS)
    report, per_pair, md = run_preference(tmp_path, tiny_model_dir, pairs, "--reference", ref, "--beta", "0.5")
    lp, n = direct_scores(tiny_model_dir, ROWS, False)
    lr, _ = direct_scores(ref, ROWS, False)
    assert np.array([[p["ref_logp_chosen"], p["ref_logp_rejected"]] for p in per_pair]) == pytest.approx(lr, abs=1e-4)
    rw, rl = lp[:, 0] - lr[:, 0], lp[:, 1] - lr[:, 1]
    m = report["metrics"]
    assert m["implicit_reward_accuracy"]["mean"] == np.mean(rw > rl)
    assert 0 < np.mean(rw > rl) < 1  # both outcomes occur: the accuracy is not trivially 0 or 1
    assert m["implicit_reward_margin"]["mean"] == pytest.approx(0.5 * np.mean(rw - rl), abs=1e-4)
    assert m["implicit_reward_chosen"]["mean"] == pytest.approx(0.5 * np.mean(rw), abs=1e-4)
    assert m["dpo_loss"]["mean"] == pytest.approx(np.mean(np.log1p(np.exp(-0.5 * (rw - rl)))), abs=1e-4)
    assert m["reference_chosen_preferred_sum"]["mean"] == shares(lr, n)[0]
    assert report["meta"]["reference"] == ref and report["meta"]["beta"] == 0.5
    assert "DPO implicit-reward accuracy" in md

    other = make_tiny_model_dir(tmp_path / "other", corpus=["a completely different corpus of words"] * 20)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_preference(tmp_path, tiny_model_dir, pairs, "--reference", other, name="x")
    assert exc.value.code == 1
    assert f"--reference {other}: its tokenizer differs from the model's" in capsys.readouterr().err


def test_a_lora_folder_scores_like_its_merged_model(tmp_path, tiny_model_dir):
    from helpers import make_lora_adapter

    adapter, merged = make_lora_adapter(tiny_model_dir, tmp_path)
    pairs = write_jsonl(tmp_path / "prefs.jsonl", ROWS)
    _, via_adapter, _ = run_preference(tmp_path, adapter, pairs, name="a")
    lp, _ = direct_scores(str(merged), ROWS, False)
    base_lp, _ = direct_scores(tiny_model_dir, ROWS, False)
    got = np.array([[p["logp_chosen"], p["logp_rejected"]] for p in via_adapter])
    assert got == pytest.approx(lp, abs=1e-4)
    assert np.abs(got - base_lp).max() > 1e-2  # the adapter was applied


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("row, message", [
    ({"prompt": "Q?", "chosen": " a"}, "line 2: missing field 'rejected' (absent or null; the row has 'chosen', "
                                       "'prompt')"),
    ({"prompt": "Q?", "chosen": " a", "rejected": "  "}, "line 2: field 'rejected' is empty"),
    ({"prompt": "Q?", "chosen": " a", "rejected": " a"}, "line 2: 'chosen' and 'rejected' are the same response"),
    ({"prompt": 3, "chosen": " a", "rejected": " b"}, "line 2: field 'prompt' must be a string, got int 3"),
    ({"prompt": "Q?", "chosen": " a", "rejected": ["b"]}, "line 2: 'chosen' is str ' a' but 'rejected' is list"),
    ({"prompt": "Q?", "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "line 2: 'chosen' and 'rejected' are chat message "
                                                            "lists: pass --apply-chat-template"),
])
def test_bad_rows_name_file_line_and_field_before_the_model_loads(row, message, tmp_path, capsys):
    pairs = write_jsonl(tmp_path / "prefs.jsonl", [ROWS[0], row, ROWS[1]])
    with pytest.raises(SystemExit) as exc:  # the model folder does not even exist: rows are checked first
        main(["preference", "--model", str(tmp_path), "--pairs", pairs, "--output-dir", str(tmp_path / "o")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert f"axolotl-calib preference: error: {pairs} {message}" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Q?", "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": ""}],
      "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "b"}]},
     "field 'chosen': the assistant response is empty"),
    ({"chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "R?"}, {"role": "assistant", "content": "b"}]},
     "'chosen' and 'rejected' have different turns before the response"),
    ({"chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "Q?"}, {"role": "user", "content": "b"}]},
     "field 'rejected': the last message is a 'user' turn; it must be the assistant response"),
    ({"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "missing field 'prompt'"),
    ({"prompt": "Q", "chosen": [{"role": "assistant", "text": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]},
     "field 'chosen' message 0 must be {'role': str, 'content': str}"),
])
def test_bad_message_list_rows(row, message, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [row])
    with pytest.raises(CalibDataError) as exc:
        read_pairs([path], chat=True)
    assert str(exc.value).startswith(f"{path} line 1: {message}"), str(exc.value)


def test_every_bad_row_is_listed_at_once_and_csv_rows_are_counted_from_1(tmp_path):
    bad = write_jsonl(tmp_path / "p.jsonl", [ROWS[0], {"prompt": "Q"}, ROWS[1], {"chosen": "a", "rejected": "a",
                                                                                   "prompt": "Q"}])
    with pytest.raises(CalibDataError) as exc:
        read_pairs([bad])
    text = str(exc.value)
    assert text.startswith(f"{bad}: 2 bad rows") and f"{bad} line 2: missing field 'chosen'" in text
    assert f"{bad} line 4: 'chosen' and 'rejected' are the same response" in text
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,chosen,rejected\nQ?,a,b\nR?,c,c\n", encoding="utf-8")
    with pytest.raises(CalibDataError, match=r"p\.csv row 2: 'chosen' and 'rejected' are the same response"):
        read_pairs([str(csv)])
    csv.write_text("prompt,chosen,rejected\nQ?,a,b\nR?,c,d\n", encoding="utf-8")
    assert [p.where for p in read_pairs([str(csv)])] == [f"{csv} row 1", f"{csv} row 2"]


LOSING_TEMPLATE = (  # the generation prompt ends in a newline the rendered answer turn does not have
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|end|>"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def test_a_template_that_breaks_the_prefix_is_refused(tmp_path, tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = LOSING_TEMPLATE
    pairs = read_pairs([write_jsonl(tmp_path / "p.jsonl", ROWS[:1])], chat=True)
    with pytest.raises(CalibDataError, match=r"p\.jsonl line 1: .*field 'chosen': prompt\+response does not "
                                             r"tokenize to the prompt's tokens followed by the response's .*chat "
                                             r"template renders"):
        encode_pairs(tok, pairs, chat=True)
    tok.chat_template = tiny_tokenizer.chat_template.replace("message['content']", "message['content'] | trim")
    trimmed = read_pairs([write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Q?", "chosen": " no", "rejected": "no"}])],
                         chat=True)
    with pytest.raises(CalibDataError, match=r"t\.jsonl line 1: 'chosen' and 'rejected' tokenize to the same response"):
        encode_pairs(tok, trimmed, chat=True)
    tok.chat_template = None
    with pytest.raises(CalibDataError, match="the tokenizer has no chat template"):
        encode_pairs(tok, pairs, chat=True)
    prompt, chosen, rejected = encode_pairs(tiny_tokenizer, pairs)[0]  # plain: BOS + prompt, then response + EOS
    assert prompt[0] == tiny_tokenizer.bos_token_id and chosen[-1] == rejected[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(chosen[:-1]) == ROWS[0]["chosen"]


def test_bad_beta_and_paths_are_usage_errors(tmp_path, tiny_model_dir, capsys):
    pairs = write_jsonl(tmp_path / "p.jsonl", ROWS)
    none = tmp_path / "none.jsonl"
    for argv, message in ((["--pairs", str(none)], f"--pairs {none}: no such file"),
                          (["--pairs", pairs, "--reference", str(tmp_path / "noref")],
                           f"--reference {tmp_path / 'noref'}: no such folder"),
                          (["--pairs", pairs, "--beta", "0"], "--beta 0.0: needs a positive number")):
        with pytest.raises(SystemExit) as exc:
            main(["preference", "--model", tiny_model_dir, "--output-dir", str(tmp_path / "o"), *argv])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "usage: axolotl-calib preference" in err and message in err, err


def test_parquet_message_lists_read_like_jsonl(tmp_path):
    import pandas as pd

    rows = [{"prompt": r["prompt"], "chosen": [{"role": "user", "content": r["prompt"]},
                                               {"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["rejected"]}]}
            for r in ROWS]
    path = tmp_path / "p.parquet"
    pd.DataFrame(rows).to_parquet(path)
    got = read_pairs([str(path)], chat=True)
    want = read_pairs([write_jsonl(tmp_path / "p.jsonl", rows)], chat=True)
    assert [p[1:] for p in got] == [p[1:] for p in want]
    assert [p.where for p in got] == [f"{path} row {i}" for i in range(1, 5)]
    assert got[0].prompt == [{"role": "user", "content": ROWS[0]["prompt"]}] and got[0].chosen == ROWS[0]["chosen"]


def test_long_pairs_cut_the_prompt_from_the_left_and_refuse_a_response_beyond_the_context(tmp_path, tiny_model_dir,
                                                                                           capsys):
    """The tiny model's context is 512 tokens: a 600-token prompt is cut from the left (and counted) and scored
    as a direct forward over the last 512 inputs; a 600-token response cannot be scored at all."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    long_prompt = {"prompt": "the dog" * 300 + "\nAnswer:", "chosen": " yes", "rejected": " no"}
    report, per_pair, md = run_preference(tmp_path, tiny_model_dir, write_jsonl(tmp_path / "p.jsonl", [long_prompt]))
    assert report["n_truncated"] == 1 and "1 pair(s) longer than the model's context" in md
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    n_prompt = len(tok(long_prompt["prompt"])["input_ids"])
    assert n_prompt > 512
    for side in ("chosen", "rejected"):
        full = tok(long_prompt["prompt"] + long_prompt[side])["input_ids"] + [tok.eos_token_id]
        window = full[-513:]  # 512 inputs predict the last 512 tokens
        n_cont = len(full) - n_prompt
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([window[:-1]])).logits[0].double(), -1)
        direct = sum(float(lp[t - 1, window[t]]) for t in range(len(window) - n_cont, len(window)))
        assert per_pair[0][f"logp_{side}"] == pytest.approx(direct, abs=1e-4)

    long_response = {"prompt": "Q?\nAnswer:", "chosen": " cat" * 600, "rejected": " no"}
    pairs = write_jsonl(tmp_path / "r.jsonl", [ROWS[0], long_response])
    with pytest.raises(SystemExit) as exc:
        run_preference(tmp_path, tiny_model_dir, pairs, name="r")
    assert exc.value.code == 1
    assert (f"{pairs} line 2: field 'chosen': the response has 601 tokens, more than the model's context of 512"
            in capsys.readouterr().err)
