"""The same row gives the same prompt, answer position and gold in training (Axolotl's loader +
the strategy) and evaluation (the lm-eval tasks, the post-training report, ``axolotl-calib eval``), whatever
the file format; the prepared-data cache and resume notice every change that alters a row or a target."""

from __future__ import annotations

import json
import logging
import os
import types

import pytest
import torch

from helpers import PLUGIN, load_task_utils

U = load_task_utils("calib_task_utils_same_row")
CALIB = "axolotl_calib_plugin.mcq"


# ------------------------------------------------------------------------------------------ both sides
def write(path, rows, fmt):
    """``rows`` as a file of format ``fmt`` (jsonl, json, csv: choices as a list literal, parquet)."""
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif fmt == "csv":
        import csv

        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["question", "choices", "answer"])
            for r in rows:
                w.writerow([r["question"], repr(list(r["choices"])), r["answer"]])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), str(path))
    return path


def train_side(tokenizer, path, **cfg):
    """Axolotl's own loader + the strategy: [(prompt ids, gold)] or the CalibDataError message."""
    from axolotl.datasets import TokenizedPromptDataset
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.data.shared import load_dataset_with_config
    from axolotl.utils.dict import DictDefault

    from axolotl_calib_plugin.train import mcq

    PluginManager.get_instance().register(PLUGIN)
    full = DictDefault({"plugins": [PLUGIN], "sequence_len": 512, **cfg})
    ds_cfg = DictDefault({"path": str(path), "type": CALIB, "split": "train"})
    ds = load_dataset_with_config(ds_cfg, None)
    strategy = mcq.load(tokenizer, full, ds_cfg)
    try:
        out = TokenizedPromptDataset(strategy, ds, process_count=1, keep_in_memory=True)
    except mcq.CalibDataError as e:
        return str(e)
    rows = []
    for ids, marks, golds in zip(out["input_ids"], out["calib_sample_id"], out["calib_answer_idx"]):
        t = next(i for i, v in enumerate(marks) if v != -1)
        rows.append((ids[: t + 1], golds[t]))
    return rows


def eval_side(tokenizer, path, letters="ABCDEFGHIJ", prompt_format="plain", template=None, **meta):
    """The lm-eval task's docs: [(prompt ids as the model sees them, gold)] or the CalibDataError message."""
    from axolotl_calib_plugin.train.mcq import encode_mcq

    try:
        docs = U.load_suite("calib_jsonl", data_files=[str(path)], option_letters=list(letters), **meta)["test"]
    except U.CalibDataError as e:
        return str(e)
    out = []
    for d in docs:
        assert U.doc_to_choice(d) == list(letters[: len(d["choices"])])
        prompt_ids, _ = encode_mcq(tokenizer, U.doc_to_text(d), U.doc_to_choice(d)[d["gold"]], prompt_format, template)
        out.append((prompt_ids, d["gold"]))
    return out


def _msg(side):
    return side if isinstance(side, str) else None


# ------------------------------------------------------------------------------------------ S1 letters
def test_custom_letters_train_and_eval_agree(tmp_path, tiny_tokenizer):
    """S1: with calib_option_letters B..F the task prompts B..F and an answer "B" is gold 0 on both sides."""
    rows = [{"question": "Pick?", "choices": ["x", "y", "z"], "answer": "B"},
            {"question": "Two?", "choices": ["p", "q"], "answer": "C"}]
    path = write(tmp_path / "d.jsonl", rows, "jsonl")
    train = train_side(tiny_tokenizer, path, calib_option_letters=list("BCDEF"))
    ev = eval_side(tiny_tokenizer, path, letters="BCDEF")
    assert [g for _, g in train] == [g for _, g in ev] == [0, 1]
    assert [p for p, _ in train] == [p for p, _ in ev]
    docs = U.load_suite("calib_jsonl", data_files=[str(path)], option_letters="BCDEF")["test"]
    assert U.doc_to_text(docs[0]) == "Pick?\nB. x\nC. y\nD. z\nAnswer:" and U.doc_to_choice(docs[0]) == ["B", "C", "D"]


def test_report_passes_training_row_settings(validate_cfg, tiny_cfg, tmp_path, mcq_rows):
    """S1: the post-training report's tasks get the training letters, answer format and fields, and the config
    check reads the report's files with them (a row only those letters make valid passes validation)."""
    from axolotl_calib_plugin.eval.report import row_metadata

    ev = mcq_rows(rows=[{"question": "Q?", "choices": ["a", "b"], "answer": "C"}], name="ev.jsonl")
    cfg = validate_cfg(tiny_cfg(calib_option_letters=list("BCDEF"), calib_answer_format="letter",
                                calib_eval_tasks=["calib_jsonl"], calib_eval_data_files=[str(ev)]))
    assert row_metadata(cfg) == {"option_letters": list("BCDEF"), "answer_format": "letter",
                                 "question_field": "question", "choices_field": "choices", "answer_field": "answer"}
    with pytest.raises(ValueError, match=r"calib_eval_data_files: .*'C', not one of the letters \['A', 'B'\]"):
        validate_cfg(tiny_cfg(calib_answer_format="letter", calib_eval_tasks=["calib_jsonl"],
                              calib_eval_data_files=[str(ev)]))


def test_cli_eval_uses_or_refuses_against_the_training_settings(tmp_path):
    """S1: ``axolotl-calib eval`` reads the model's calib_settings.json; contradicting flags are refused."""
    from axolotl_calib_plugin.train.args import CalibrationArgs
    from axolotl_calib_plugin.cli import _trained_row_settings
    from axolotl_calib_plugin.eval.report import SETTINGS_FILE, training_settings

    settings = CalibrationArgs.from_cfg({"calib_option_letters": "BCDEF", "calib_prompt_format": "chat_template",
                                         "calib_system_prompt": "Be brief."})
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(training_settings(settings)))
    args = dict(model=str(tmp_path), option_letters=None, apply_chat_template=True, system_instruction="Be brief.")
    assert _trained_row_settings(types.SimpleNamespace(**args))["option_letters"] == list("BCDEF")
    with pytest.raises(SystemExit, match=r"--option-letters A,B,C,D,E but it was trained with calib_option_letters "
                                         r"\['B', 'C', 'D', 'E', 'F'\]"):
        _trained_row_settings(types.SimpleNamespace(**{**args, "option_letters": "ABCDE"}))
    with pytest.raises(SystemExit, match="trained with calib_prompt_format: chat_template but this evaluation scores "
                                         "plain prompts"):
        _trained_row_settings(types.SimpleNamespace(**{**args, "apply_chat_template": False}))
    with pytest.raises(SystemExit, match="trained with calib_system_prompt 'Be brief.'"):
        _trained_row_settings(types.SimpleNamespace(**{**args, "system_instruction": None}))


# ------------------------------------------------------------------------------------------ S2 numbers
@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_numeric_choices_show_the_same_text(tmp_path, tiny_tokenizer, fmt):
    """S2: [0.5, 1, 2, 4] is "0.5 / 1 / 2 / 4" on both sides (the JSON loader reads doubles), answer "4" is D."""
    rows = [{"question": "Pick?", "choices": [0.5, 1, 2, 4], "answer": "4"},
            {"question": "Again?", "choices": [0.5, 1.5, 3, 8], "answer": "D"}]
    path = write(tmp_path / f"d.{fmt}", rows, fmt)
    train, ev = train_side(tiny_tokenizer, path), eval_side(tiny_tokenizer, path)
    assert not isinstance(train, str), train
    assert train == ev
    assert [g for _, g in train] == [3, 3]
    assert "A. 0.5\nB. 1\nC. 2\nD. 4\nAnswer:" in tiny_tokenizer.decode(train[0][0])


def test_numbers_a_double_cannot_hold_are_refused_on_both_sides(tmp_path, tiny_tokenizer):
    """S2: 12345678901234567890 would be 1.2345678901234567e+19 in training: an error on both sides."""
    path = write(tmp_path / "d.jsonl", [{"question": "Big?", "choices": [12345678901234567890, 2], "answer": 1}], "jsonl")
    train, ev = train_side(tiny_tokenizer, path), eval_side(tiny_tokenizer, path)
    want = "field 'choices' item 0 is a number that a data loader cannot keep exactly ("
    assert want in _msg(train) and want in _msg(ev)
    assert "12345678901234567890 here" in _msg(ev) and "write the option as a string" in _msg(train)


# ------------------------------------------------------------------------------------------ S3 CSV
def test_csv_answer_is_read_as_text_like_jsonl(tmp_path, tiny_tokenizer):
    """S3: the CSV cell 3 with choices ['3','7','12','5'] is ambiguous, as the JSONL "3"; not gold D."""
    rows = [{"question": "How many sides has a triangle?", "choices": ["3", "7", "12", "5"], "answer": "3"}]
    csv_path, jsonl_path = write(tmp_path / "d.csv", rows, "csv"), write(tmp_path / "d.jsonl", rows, "jsonl")
    want = "field 'answer': '3' is ambiguous: as an index it is option D ('5'), as a choice text it is option A ('3')"
    for side in (train_side(tiny_tokenizer, csv_path), eval_side(tiny_tokenizer, csv_path),
                 train_side(tiny_tokenizer, jsonl_path), eval_side(tiny_tokenizer, jsonl_path)):
        assert want in _msg(side)
    assert "a CSV cell has no type" in train_side(tiny_tokenizer, csv_path)
    # an explicit index format gives D on both sides
    assert [g for _, g in train_side(tiny_tokenizer, csv_path, calib_answer_format="index")] == [3]
    assert [g for _, g in eval_side(tiny_tokenizer, csv_path, answer_format="index")] == [3]


# ------------------------------------------------------------------------------------------ property
def test_property_train_and_eval_agree(tmp_path_factory, tiny_tokenizer):
    """For any row both sides accept (formats, letter sets, plain / chat prompts), prompt, position and gold agree;
    a row one side refuses is refused by the other."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from axolotl_calib_plugin.train.mcq import resolve_chat_template

    template = resolve_chat_template(tiny_tokenizer, {"chat_template": "chatml"})
    text = st.text(alphabet=st.sampled_from(list("abc 123.,'\"\u2028")), min_size=1, max_size=6)
    choice = st.one_of(text, st.integers(-5, 20), st.sampled_from([0.5, 2.0, 1e-3]))

    @st.composite
    def case(draw):
        k = draw(st.integers(2, 4))
        letters = draw(st.sampled_from(["ABCDE", "BCDEF", "EDCBA"]))  # single tokens for the tiny tokenizer
        choices = draw(st.lists(choice, min_size=k, max_size=k))
        answer = draw(st.one_of(st.integers(0, k), st.sampled_from(list(letters[:k])), st.sampled_from(
            [str(c) for c in choices]), st.integers(0, k - 1).map(str)))
        row = {"question": "Q " + draw(text), "choices": choices, "answer": answer}
        return draw(st.sampled_from(["jsonl", "json", "csv", "parquet"])), letters, draw(
            st.sampled_from(["plain", "chat_template"])), row

    counter = iter(range(10**6))

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(case())
    def check(c):
        fmt, letters, prompt_format, row = c
        if fmt in ("csv", "parquet") and len({type(x) for x in row["choices"]}) > 1:
            row = dict(row, choices=[str(x) for x in row["choices"]])  # one Arrow column type per list
        path = write(tmp_path_factory.mktemp(f"p{next(counter)}") / f"d.{fmt}", [row], fmt)
        cfg = {"calib_option_letters": list(letters), "calib_prompt_format": prompt_format}
        if prompt_format == "chat_template":
            cfg["chat_template"] = "chatml"
        train = train_side(tiny_tokenizer, path, **cfg)
        ev = eval_side(tiny_tokenizer, path, letters, prompt_format, template if prompt_format != "plain" else None)
        if isinstance(train, str) or isinstance(ev, str):
            assert isinstance(train, str) and isinstance(ev, str), (train, ev)
            assert train.split(": ", 1)[-1].split("field", 1)[-1][:40] in ev, (train, ev)
        else:
            assert train == ev

    check()


# ------------------------------------------------------------------------------------------ S4 cache
def test_prepared_data_hash_covers_calib_keys_and_file_contents(validate_cfg, tiny_cfg, mcq_rows, tiny_model_dir):
    """S4: the plugin's load_datasets hook puts the calib keys and the data file's digest into Axolotl's hash."""
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.data.shared import generate_dataset_hash_from_config

    path = mcq_rows(n=4, name="cache.jsonl")

    def digest(**kw):
        cfg = validate_cfg(tiny_cfg(datasets=[{"path": str(path), "type": CALIB}], **kw))
        assert PluginManager.get_instance().load_datasets(cfg, preprocess=True) is None
        return generate_dataset_hash_from_config(cfg, cfg.datasets, tiny_model_dir)

    base = digest()
    assert digest() == base  # stable: the same config reuses its prepared data
    assert digest(calib_option_letters=list("BCDEF")) != base
    assert digest(calib_answer_format="index") != base
    path.write_text(path.read_text().replace("number 0", "number zero"))  # an in-place data edit
    assert digest() != base


# ------------------------------------------------------------------------------------------ S5 / S6 resume
def _estep_dataset(golds, ks):
    from datasets import Dataset

    rows = []
    for i, (g, k) in enumerate(zip(golds, ks)):
        rows.append({"input_ids": [1, 2, 3], "calib_sample_id": [-1, 100 + i, -1], "calib_answer_idx": [-1, g, -1],
                     "calib_num_options": [0, k, 0]})
    return Dataset.from_list(rows)


def _state(settings, golds, ks, n_bins=5):
    from axolotl_calib_plugin.train.em import EMState
    from axolotl_calib_plugin.train.resume_check import record

    n = len(golds)
    ids, g, k = torch.arange(100, 100 + n), torch.tensor(golds), torch.tensor(ks)
    probs = torch.full((n, 4), 0.25)
    state = EMState.from_estep(ids, probs, g, k, n_bins=n_bins)
    record(state.extra, settings, ids, g, k)
    return state


def _check_same_data(settings, ds, state, path):
    from axolotl_calib_plugin.train.estep import EStepData
    from axolotl_calib_plugin.train.resume_check import check_same_data

    check_same_data(state, path, settings, EStepData(ds))


def test_resume_refuses_changed_golds(tmp_path):
    """S5: 2 of 6 golds changed (same prompts): the restored bin accuracies came from the old golds -> refused."""
    from axolotl_calib_plugin.train.args import CalibrationArgs

    s = CalibrationArgs.from_cfg({"calib_bins": 5})
    golds, ks = [0, 1, 2, 3, 0, 1], [4] * 6
    state = _state(s, golds, ks)
    _check_same_data(s, _estep_dataset(golds, ks), state, "ck/calib_state.pt")  # same golds: fine
    with pytest.raises(ValueError, match=r"ck/calib_state.pt holds calibration targets made under other settings or "
                                         r"answers than this run's: 2 of 6 training prompts have a different gold option"):
        _check_same_data(s, _estep_dataset([0, 1, 2, 3, 1, 0], ks), state, "ck/calib_state.pt")
    with pytest.raises(ValueError, match="1 of 6 training prompts have a different number of options"):
        _check_same_data(s, _estep_dataset(golds, [4, 4, 4, 4, 4, 3]), state, "ck/calib_state.pt")


def test_resume_refuses_changed_bins_before_the_model_loads(tmp_path, tiny_cfg):
    """S6: calib_bins 5 -> 10 (and other target settings) on resume: refused early, naming old and new values."""
    from axolotl_calib_plugin.train.args import CalibrationArgs
    from axolotl_calib_plugin.train.resume_check import check_resume_state_early

    ckpt = tmp_path / "out" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    cfg5 = tiny_cfg(calib_bins=5, resume_from_checkpoint=str(ckpt))
    _state(CalibrationArgs.from_cfg(cfg5), [0, 1], [4, 4]).save(ckpt / "calib_state.pt")
    check_resume_state_early(cfg5)  # unchanged: fine
    with pytest.raises(ValueError, match=r"calib_bins: 5 -> 10.*delete that calib_state.pt to recompute"):
        check_resume_state_early(tiny_cfg(calib_bins=10, resume_from_checkpoint=str(ckpt)))
    with pytest.raises(ValueError, match=r"calib_option_letters: \['A', 'B', 'C', 'D', 'E'\] -> \['B', 'C', 'D', 'E', "
                                         r"'F'\]; calib_nonmax_split: 'proportional' -> 'uniform'"):
        check_resume_state_early(tiny_cfg(calib_bins=5, calib_option_letters=list("BCDEF"),
                                          calib_nonmax_split="uniform", resume_from_checkpoint=str(ckpt)))


# ------------------------------------------------------------------------------------------ U1-U4, minor
def test_jsonl_with_unicode_line_separators_reads_on_both_sides(tmp_path, tiny_tokenizer):
    """U1: U+2028 / U+0085 inside a JSON string are not line breaks for the lm-eval loader either."""
    path = tmp_path / "d.jsonl"
    row = {"question": "A\u2028B\u0085C?", "choices": ["x\u2028y", "z"], "answer": 1}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    train, ev = train_side(tiny_tokenizer, path), eval_side(tiny_tokenizer, path)
    assert not isinstance(ev, str), ev
    assert train == ev and ev[0][1] == 1


def test_plugin_under_both_names_is_a_clear_error(tiny_cfg, validate_cfg):
    """U2: both documented spellings listed: a message saying so, not 'TypeError: duplicate base class'."""
    with pytest.raises(ValueError, match=r"plugins: lists the calibration plugin 2 times \(axolotl_calib_plugin."
                                         r"CalibrationPlugin, axolotl_calib_plugin.plugin.CalibrationPlugin\); list it once"):
        validate_cfg(tiny_cfg(plugins=[PLUGIN, "axolotl_calib_plugin.plugin.CalibrationPlugin"]))


def test_plugin_spelling_left_over_from_an_earlier_config_is_dropped(tiny_cfg, validate_cfg):
    """U2: one process validating a config with one spelling, then one with the other (notebooks, tests)."""
    validate_cfg(tiny_cfg())
    cfg = validate_cfg(tiny_cfg(plugins=["axolotl_calib_plugin.plugin.CalibrationPlugin"]))
    assert cfg.calib_bins == 10


def test_malformed_jsonl_line_is_named_at_validation(tiny_cfg, validate_cfg, tmp_path):
    """U3: file and 1-based line at config validation, not DatasetGenerationError during preprocess."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "Q?", "choices": ["a", "b"], "answer": 0}\n\n{"question": "R?", "choices": [\n')
    with pytest.raises(ValueError, match=rf"{path} line 3: not valid JSON"):
        validate_cfg(tiny_cfg(datasets=[{"path": str(path), "type": CALIB}]))


def test_huge_lambda_is_refused_naming_lambda(tiny_cfg, validate_cfg):
    """U4: calib_lambda 1e300 is refused at validation with the key's name and bound."""
    with pytest.raises(ValueError, match=r"calib_lambda\s+Input should be less than or equal to 1000"):
        validate_cfg(tiny_cfg(calib_lambda=1e300))
    assert validate_cfg(tiny_cfg(calib_lambda=1000)).calib_lambda == 1000


def test_upper_case_calib_key_is_reported(tiny_cfg, validate_cfg):
    """Minor: CALIB_LAMBDA is not silently ignored."""
    with pytest.raises(ValueError, match=r"'CALIB_LAMBDA' \(did you mean 'calib_lambda'\?\)"):
        validate_cfg(tiny_cfg(CALIB_LAMBDA=0.5))


def test_non_calib_test_dataset_says_why_it_has_no_calib_metrics(tiny_cfg, validate_cfg, tmp_path, caplog):
    """Minor: an alpaca test dataset gets a warning that explains the missing eval_calib/* metrics."""
    path = tmp_path / "alpaca.jsonl"
    path.write_text(json.dumps({"instruction": "hi", "input": "", "output": "hello"}) + "\n")
    with caplog.at_level(logging.WARNING):
        validate_cfg(tiny_cfg(test_datasets=[{"path": str(path), "type": "alpaca", "split": "train"}]))
    assert "test_datasets[0] is not type: axolotl_calib_plugin.mcq, so evaluation reports no eval_calib/*" in caplog.text


# ------------------------------------------------------------------------------------------ S7 every evaluation route
ROUTE_ROWS = [{"question": "Which is red?", "choices": ["red cat", "blue dog", "green"], "answer": 0},
              {"question": "What is true?", "choices": ["alpha", "beta"], "answer": 1},
              {"question": "Pick the atom?", "choices": ["atom", "cell", "light", "mass"], "answer": 0}]


@pytest.fixture(scope="module")
def bos_and_plain_dirs(tmp_path_factory):
    """Two tiny models: a tokenizer that adds a BOS to plain text (Llama style) and one that adds none (SmolLM2
    style, BOS token still named)."""
    from axolotl_calib_plugin.testing.tiny import make_tiny_model_dir

    root = tmp_path_factory.mktemp("routes")
    return {bos: make_tiny_model_dir(root / f"bos{int(bos)}", add_bos=bos) for bos in (True, False)}


def _route_lms(model_dir, chat):
    """The lm-eval model of every evaluation route: ``axolotl-calib eval`` / ``diagnose`` / ``reproduce`` with the
    run's calib_settings.json and without one (a base model), the post-training report (model in memory) and the
    README's ``lm_eval --model hf --model_args ...`` command."""
    from lm_eval.api.registry import get_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_calib_plugin.eval.evaluation import hflm_for_model, make_hflm
    from axolotl_calib_plugin.eval.report import training_settings
    from axolotl_calib_plugin.train.args import CalibrationArgs

    tok = AutoTokenizer.from_pretrained(model_dir)
    settings = CalibrationArgs.from_cfg({"calib_prompt_format": "chat_template" if chat else "plain"})
    recorded = training_settings(settings, tok)["add_bos_token"]
    readme_args = f"pretrained={model_dir},dtype=float32,device=cpu" + (",add_bos_token=False" if chat else "")
    return {"cli (calib_settings.json)": make_hflm(model_dir, device="cpu", dtype="float32", batch_size=4, chat=chat,
                                                   add_bos_token=recorded),
            "cli (no settings)": make_hflm(model_dir, device="cpu", dtype="float32", batch_size=4, chat=chat),
            "post-training report": hflm_for_model(AutoModelForCausalLM.from_pretrained(model_dir), tok, chat=chat,
                                                   batch_size=4),
            "README lm_eval": get_model("hf").create_from_arg_string(readme_args, {"batch_size": 4})}


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
@pytest.mark.parametrize("bos", [True, False], ids=["bos-tokenizer", "no-bos-tokenizer"])
def test_every_route_scores_the_training_token_sequence(tmp_path, bos_and_plain_dirs, bos, chat):
    """Each route's lm-eval request (context, continuation), tokenized as lm-eval does, is exactly the training
    prompt up to the answer position followed by the gold letter's token; nothing added, nothing missing. (lm-eval
    moves a context's trailing whitespace, e.g. the chat generation prompt's newline, into the continuation: the
    sequence is the same, and that shared token's log-likelihood cancels in the softmax over the options.)"""
    from transformers import AutoTokenizer

    model_dir = bos_and_plain_dirs[bos]
    tok = AutoTokenizer.from_pretrained(model_dir)
    path = write(tmp_path / "d.jsonl", ROUTE_ROWS, "jsonl")
    fmt = "chat_template" if chat else "plain"
    train = train_side(tok, path, calib_prompt_format=fmt)
    assert (train[0][0][0] == tok.bos_token_id) == (bos and not chat)  # the two cases really differ
    docs = U.load_suite("calib_jsonl", data_files=[str(path)])["test"]
    for route, lm in _route_lms(model_dir, chat).items():
        for (prompt_ids, gold), doc in zip(train, docs):
            letter = U.doc_to_choice(doc)[gold]
            context = U.doc_to_text(doc)
            if chat:  # lm-eval renders the user turn + generation prompt and scores the bare letter
                context, cont = lm.apply_chat_template([{"role": "user", "content": context}]), letter
            else:
                cont = " " + letter
            ctx_ids, cont_ids = lm._encode_pair(context, cont)
            scored = ctx_ids + cont_ids
            assert scored[:-1] == prompt_ids, (route, tok.convert_ids_to_tokens(scored[:3]),
                                               tok.convert_ids_to_tokens(prompt_ids[:3]))
            assert tok.decode(scored[-1:]).strip() == letter, route


def _training_probs(model_dir, path, fmt):
    """Option probabilities as training computes them (the strategy's tokens, softmax over the K letter logits at
    the answer position): what eval_calib/* and the E-step see."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_calib_plugin.train.args import CalibrationArgs
    from axolotl_calib_plugin.train.mcq import option_token_ids

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    letters = option_token_ids(tok, CalibrationArgs.from_cfg({"calib_prompt_format": fmt}))
    out = []
    for (prompt_ids, _), row in zip(train_side(tok, path, calib_prompt_format=fmt), ROUTE_ROWS):
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids])).logits[0, -1, letters[: len(row["choices"])]]
        out.append(torch.softmax(logits.double(), 0).tolist())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
@pytest.mark.parametrize("bos", [True, False], ids=["bos-tokenizer", "no-bos-tokenizer"])
def test_every_route_gives_the_training_option_probabilities(tmp_path, bos_and_plain_dirs, bos, chat):
    """Real lm-eval runs through every route give the option probabilities training computes, to 1e-6."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from scipy.special import softmax

    from axolotl_calib_plugin.cli import main
    from axolotl_calib_plugin.eval.evaluation import evaluate_files, find_task_dir, run_tasks
    from axolotl_calib_plugin.eval.samples import find_samples, read_samples

    model_dir = bos_and_plain_dirs[bos]
    path = write(tmp_path / "d.jsonl", ROUTE_ROWS, "jsonl")
    want = _training_probs(model_dir, path, "chat_template" if chat else "plain")
    got = {}
    out = tmp_path / "cli"
    assert main(["eval", "--model", model_dir, "--tasks", "calib_jsonl", "--data-files", str(path), "--output-dir",
                 str(out), "--device", "cpu", "--dtype", "float32", "--batch-size", "4"]
                + (["--apply-chat-template"] if chat else [])) == 0
    got["axolotl-calib eval"] = [it["probs"] for it in read_samples(find_samples(str(out))["calib_jsonl"])]
    lms = _route_lms(model_dir, chat)
    res = evaluate_files(lms["cli (no settings)"], [str(path)], find_task_dir(), 4, apply_chat_template=chat)
    got["diagnose"] = [softmax(r).tolist() for r in res[0]["logliks"]]
    res = run_tasks(lms["post-training report"], ["calib_jsonl"], data_files=[str(path)], apply_chat_template=chat)
    got["post-training report"] = [s["conf_ece"]["probs"] for s in sorted(res["samples"]["calib_jsonl"],
                                                                           key=lambda s: s["doc_id"])]
    tm = TaskManager(include_path=find_task_dir(), include_defaults=False, metadata={"data_files": [str(path)]})
    readme = f"pretrained={model_dir},dtype=float32,device=cpu" + (",add_bos_token=False" if chat else "")
    res = lm_eval.simple_evaluate(model="hf", model_args=readme, tasks=["calib_jsonl"], task_manager=tm,
                                  log_samples=True, apply_chat_template=chat, batch_size=4)
    got["README lm_eval"] = [s["conf_ece"]["probs"] for s in sorted(res["samples"]["calib_jsonl"],
                                                                     key=lambda s: s["doc_id"])]
    for route, probs in got.items():
        assert len(probs) == len(want), route
        for p, w in zip(probs, want):
            assert p == pytest.approx(w, abs=1e-6), route
