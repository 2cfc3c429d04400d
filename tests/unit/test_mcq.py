"""The MCQ dataset strategy (``type: axolotl_calib_plugin.mcq``): exact token-level layout of both
prompt formats, the calibration columns, label masking, option token ids and every row error.

Strategies are built through Axolotl's own loader (``axolotl.prompt_strategies.load``) from a
validated config and applied with Axolotl's ``TokenizedPromptDataset`` (batched ``datasets.map``).
"""

from __future__ import annotations

import json

import pytest

from helpers import letter_ids

from axolotl_calib_plugin.train.mcq import (
    CALIB_COLUMNS,
    MCQRowError,
    option_token_ids,
    prompt_sample_id,
)
from axolotl_calib_plugin.prompts import format_mcq_prompt

SYSTEM = "Answer with one letter."


@pytest.fixture
def make_strategy(tiny_tokenizer, tiny_cfg, validate_cfg):
    """``make_strategy(path="mem.jsonl", **cfg_overrides) -> (strategy, cfg)`` via Axolotl's loader."""
    from axolotl.prompt_strategies import load

    def _make(path="mem.jsonl", **overrides):
        cfg = validate_cfg(tiny_cfg(**overrides))
        strategy = load("axolotl_calib_plugin.mcq", tiny_tokenizer, cfg, {"path": path, "type": "axolotl_calib_plugin.mcq"})
        assert strategy is not None, "Axolotl could not resolve the strategy module"
        return strategy, cfg

    return _make


@pytest.fixture
def build(make_strategy):
    """``build(rows, path="mem.jsonl", **cfg_overrides) -> (dataset, cfg)``: Axolotl's TokenizedPromptDataset."""
    from datasets import Dataset

    from axolotl.datasets import TokenizedPromptDataset

    def _build(rows, path="mem.jsonl", **overrides):
        strategy, cfg = make_strategy(path, **overrides)
        return TokenizedPromptDataset(strategy, Dataset.from_list(rows), process_count=1), cfg

    return _build


def _as_batch(rows):
    """rows -> the column dict ``datasets.map(batched=True)`` hands the strategy (no Arrow typing,
    so malformed rows of any type can be fed)."""
    keys = sorted({k for r in rows for k in r})
    return {k: [r.get(k) for r in rows] for k in keys}


def _marker(row) -> int:
    marked = [i for i, v in enumerate(row["calib_sample_id"]) if v != -1]
    assert len(marked) == 1, f"expected exactly one marked position, got {marked}"
    return marked[0]


ROWS = [  # one answer type per column: Arrow would reject a mixed int/str column
    {"question": "What colour is the sky?", "choices": ["red", "blue", "green", "cat"], "answer": "1"},
    {"question": "Which is a pet?", "choices": ["dog", "atom"], "answer": "A"},
    {"question": "Which organ pumps?", "choices": ["lung", "cell", "heart"], "answer": "heart"},
]
GOLD = [1, 0, 2]


# ------------------------------------------------------------------------------------------- plain
@pytest.mark.parametrize("mode, train_on_inputs", [("cft", False), ("rcft", True)])
def test_plain_format_exact_tokens_columns_and_labels(build, tiny_tokenizer, mode, train_on_inputs):
    tok = tiny_tokenizer
    ds, cfg = build(ROWS, calib_mode=mode)
    assert cfg.train_on_inputs is train_on_inputs
    assert set(ds.column_names) == {"input_ids", "attention_mask", "labels", *CALIB_COLUMNS}
    ids = letter_ids(tok, cfg, num_options=4)
    assert ids == [tok.convert_tokens_to_ids("Ġ" + c) for c in "ABCD"]
    for row, src, gold in zip(ds, ROWS, GOLD):
        prompt = format_mcq_prompt(src["question"], src["choices"])
        prompt_ids = tok(prompt)["input_ids"]
        expected = tok(prompt + " " + "ABCD"[gold])["input_ids"] + [tok.eos_token_id]
        assert row["input_ids"] == expected
        assert row["attention_mask"] == [1] * len(expected)
        t = _marker(row)
        assert t == len(prompt_ids) - 1
        assert row["input_ids"][: t + 1] == prompt_ids
        assert row["input_ids"][t + 1] == ids[gold]
        assert row["input_ids"][t + 2 :] == [tok.eos_token_id]
        assert row["calib_answer_idx"][t] == gold
        assert row["calib_num_options"][t] == len(src["choices"])
        assert row["calib_sample_id"][t] == prompt_sample_id(prompt_ids)
        for col, fill in CALIB_COLUMNS.items():
            assert len(row[col]) == len(expected)
            assert [v for i, v in enumerate(row[col]) if i != t] == [fill] * (len(expected) - 1)
        if train_on_inputs:
            assert row["labels"] == expected
        else:  # answer only: the letter and EOS
            assert row["labels"] == [-100] * (t + 1) + [ids[gold], tok.eos_token_id]


# ------------------------------------------------------------------------------------------- chat template
@pytest.mark.parametrize("train_on_inputs", [False, True])
@pytest.mark.parametrize("system", [None, SYSTEM])
def test_chat_template_exact_tokens_columns_and_labels(build, tiny_tokenizer, train_on_inputs, system):
    tok = tiny_tokenizer
    ds, cfg = build(ROWS, calib_mode="rcft" if train_on_inputs else "cft", calib_prompt_format="chat_template",
                    calib_system_prompt=system)
    ids = letter_ids(tok, cfg)  # bare letters A..J are single tokens in chat turns
    assert ids[:4] == [tok.convert_tokens_to_ids(c) for c in "ABCD"]
    for row, src, gold in zip(ds, ROWS, GOLD):
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": format_mcq_prompt(src["question"], src["choices"])}]
        prompt_ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "ABCD"[gold]}], tokenize=True,
                                       return_dict=False)
        assert row["input_ids"] == full
        assert tok.convert_ids_to_tokens(prompt_ids[-2:]) == ["<|assistant|>", "Ċ"]
        t = _marker(row)
        assert t == len(prompt_ids) - 1
        assert row["input_ids"][t + 1] == ids[gold]
        assert tok.convert_ids_to_tokens(row["input_ids"][t + 2 :]) == ["<|end|>", "Ċ"]
        assert (row["calib_answer_idx"][t], row["calib_num_options"][t]) == (gold, len(src["choices"]))
        if system:
            assert "<|system|>" in tok.convert_ids_to_tokens(row["input_ids"])
        expected_labels = full if train_on_inputs else [-100] * (t + 1) + full[t + 1 :]
        assert row["labels"] == expected_labels


def test_chat_template_from_config_overrides_tokenizer_template(build, tiny_tokenizer):
    """``chat_template: chatml`` in the config is used even though the tokenizer has its own."""
    ds, cfg = build(ROWS[:1], calib_prompt_format="chat_template", chat_template="chatml")
    toks = tiny_tokenizer.convert_ids_to_tokens(ds[0]["input_ids"])
    assert "<|assistant|>" not in toks  # the tiny tokenizer's own template is not used
    assert "".join(toks).replace("Ġ", " ").replace("Ċ", "\n").count("<|im_start|>") >= 2
    t = _marker(ds[0])
    assert ds[0]["input_ids"][t + 1] == letter_ids(tiny_tokenizer, cfg, num_options=4)[1]


# ------------------------------------------------------------------------------------------- answers / ids
@pytest.mark.parametrize("answer", [2, 2.0, "C", "2", "heart", " C "])
def test_answer_forms_normalize_to_the_same_gold(build, answer):
    ds, _ = build([{"question": "Which organ pumps?", "choices": ["lung", "cell", "heart", "atom"], "answer": answer}])
    t = _marker(ds[0])
    assert ds[0]["calib_answer_idx"][t] == 2


def test_sample_ids_identify_prompts(build):
    rows = [ROWS[0], dict(ROWS[0]), ROWS[1], {**ROWS[0], "choices": ["red", "blue", "green", "dog"]}]
    ds, _ = build(rows)
    ids = [r["calib_sample_id"][_marker(r)] for r in ds]
    assert ids[0] == ids[1]  # same prompt, same id
    assert len({ids[0], ids[2], ids[3]}) == 3
    assert all(0 <= i < 2**63 for i in ids)


def test_variable_k_rows_and_custom_fields(build):
    rows = [{"q": "Pick one", "opts": [f"o{j}" for j in range(k)], "gold": k - 1} for k in (2, 3, 5)]
    ds, _ = build(rows, calib_field_question="q", calib_field_choices="opts", calib_field_answer="gold")
    assert [r["calib_num_options"][_marker(r)] for r in ds] == [2, 3, 5]
    assert [r["calib_answer_idx"][_marker(r)] for r in ds] == [1, 2, 4]


def test_default_letters_are_a_to_j(build):
    ds, cfg = build(ROWS, calib_option_letters=None)
    assert cfg.calib_option_letters == list("ABCDEFGHIJ")
    assert len(ds) == 3


def test_letters_beyond_the_rows_k_are_never_checked(build):
    """'(E)' is several tokens for the tiny tokenizer, but 4-option data never needs it."""
    ds, cfg = build(ROWS, calib_option_letters=["A", "B", "C", "D", "(E)"])
    assert len(ds) == 3


def test_custom_letters(build, tiny_tokenizer):
    ds, cfg = build(ROWS[:1], calib_option_letters=["D", "C", "B", "A"])
    t = _marker(ds[0])
    assert ds[0]["input_ids"][t + 1] == tiny_tokenizer.convert_tokens_to_ids("ĠC")  # gold index 1 -> "C"


# ------------------------------------------------------------------------------------------- option ids
def test_option_token_ids_names_the_letter_that_is_not_one_token(tiny_tokenizer):
    letters = {"calib_option_letters": ["A", "B", "C", "D", "E", "(F)"]}
    with pytest.raises(ValueError, match=r"option letter '\(F\)' is not a single token"):
        letter_ids(tiny_tokenizer, letters)  # plain " (F)" is several tokens for the tiny tokenizer
    assert len(letter_ids(tiny_tokenizer, letters, num_options=5)) == 5
    assert len(letter_ids(tiny_tokenizer, {})) == 10  # the default A..J are single tokens
    with pytest.raises(ValueError, match="only 5"):
        letter_ids(tiny_tokenizer, {"calib_option_letters": "ABCDE"}, num_options=6)


# ------------------------------------------------------------------------------------------- bad rows
BAD = [
    ({"question": "Q one?", "choices": ["a", "b"]},
     "missing field 'answer' (absent or null; the row has 'choices', 'question')"),
    ({"question": "Q one?", "choices": ["a", "b"], "answer": None}, "missing field 'answer' (absent or null"),
    ({"question": "Q one?", "choices": ["a", "b"], "answer": "zebra"},
     "field 'answer': 'zebra' is not an option of these 2 choices: expected an index 0..1, a letter A/B"),
    ({"question": "Q one?", "choices": ["a", "b"], "answer": 2},
     "field 'answer': index 2 is out of range for 2 choices (valid 0..1); fix the row"),
    ({"question": "Q one?", "choices": ["a", "b"], "answer": "C"}, "field 'answer': 'C' is not an option"),
    ({"question": "Q one?", "choices": ["a"], "answer": 0}, "field 'choices' has 1 option(s); an MCQ needs at least 2"),
    ({"question": "Q one?", "choices": "a, b", "answer": 0}, "field 'choices' is a string but not a list literal"),
    ({"question": "Q one?", "choices": ["a", None], "answer": 0}, "field 'choices' item 1 is null"),
    ({"question": "Q one?", "choices": None, "answer": 0}, "missing field 'choices'"),
    ({"question": "", "choices": ["a", "b"], "answer": 0}, "field 'question' is empty"),
    ({"question": "Q one?", "choices": [f"c{i}" for i in range(11)], "answer": 0},
     "field 'choices' has 11 options but there are only 10 option letters (A..J)"),
]


@pytest.mark.parametrize("bad, fragment", BAD)
def test_bad_rows_raise_naming_dataset_row_and_problem(make_strategy, bad, fragment):
    strategy, _ = make_strategy("data/bad.jsonl", calib_option_letters=None)
    with pytest.raises(MCQRowError) as info:
        strategy.tokenize_prompt(_as_batch([ROWS[0], ROWS[1], bad]))
    msg = str(info.value)
    assert fragment in msg
    assert msg.startswith("data/bad.jsonl: row 2 ")
    if bad.get("question"):
        assert repr(bad["question"]) in msg


def test_row_numbers_count_across_batches(build):
    """Axolotl maps in batches of 1000; the reported row index is the dataset row (num_proc 1)."""
    rows = [dict(ROWS[0], question=f"q{i}?") for i in range(1003)] + [{**ROWS[0], "question": "bad?", "answer": "9"}]
    with pytest.raises(MCQRowError, match=r"^mem.jsonl: row 1003 \(question 'bad\?'\)"):
        build(rows)


def test_one_error_lists_every_bad_row_of_the_batch(make_strategy):
    """A batch is checked whole before tokenizing: the error gives the count and each bad row."""
    strategy, _ = make_strategy("data/bad.jsonl")
    rows = [ROWS[0], {**ROWS[0], "answer": 7}, ROWS[1], {**ROWS[1], "answer": 5}, {**ROWS[2], "choices": None}]
    with pytest.raises(MCQRowError) as info:
        strategy.tokenize_prompt(_as_batch(rows))
    lines = str(info.value).splitlines()
    assert lines[0] == "data/bad.jsonl: 3 bad rows among rows 0..4 (rows after these are checked once they are fixed):"
    assert lines[1].startswith("  data/bad.jsonl: row 1 (question 'What colour is the sky?'): field 'answer': index 7 is "
                               "out of range for 4 choices")
    assert lines[2].startswith("  data/bad.jsonl: row 3 (question 'Which is a pet?'): field 'answer': index 5")
    assert lines[3].startswith("  data/bad.jsonl: row 4 (question 'Which organ pumps?'): missing field 'choices'")
    assert len(lines) == 4


NUMERIC = ["3", "7", "12", "5"]  # choice texts that are also indices


@pytest.mark.parametrize("answer_format, answer, gold", [
    ("auto", 3, 3), ("auto", "12", 2), ("auto", "C", 2), ("auto", "7", 1), ("auto", "1", 1),
    ("index", "3", 3), ("index", 3, 3), ("text", "3", 0), ("text", 3, 0), ("letter", "A", 0),
])
def test_answer_format_reads_numeric_choices(build, answer_format, answer, gold):
    ds, cfg = build([{"question": "Which number?", "choices": NUMERIC, "answer": answer}],
                    calib_answer_format=answer_format)
    assert cfg.calib_answer_format == answer_format
    assert ds[0]["calib_answer_idx"][_marker(ds[0])] == gold


@pytest.mark.parametrize("answer_format, answer, fragment", [
    ("auto", "3", "field 'answer': '3' is ambiguous: as an index it is option D ('5'), as a choice text it is "
                  "option A ('3'); say how answers are written with calib_answer_format"),
    ("index", "C", "field 'answer' is 'C', not an index (answer_format: index expects 0..3)"),
    ("letter", 2, "field 'answer' is the number 2, but answer_format is letter"),
    ("text", "C", "field 'answer': 'C' is not the text of any of the 4 choices (answer_format: text)"),
])
def test_ambiguous_or_wrongly_formatted_answers_are_errors(make_strategy, answer_format, answer, fragment):
    strategy, _ = make_strategy("num.jsonl", calib_answer_format=answer_format)
    with pytest.raises(MCQRowError) as info:
        strategy.tokenize_prompt(_as_batch([{"question": "Which number?", "choices": NUMERIC, "answer": answer}]))
    assert str(info.value) == f"num.jsonl: row 0 (question 'Which number?'): {fragment}" or fragment in str(info.value)
    assert str(info.value).startswith("num.jsonl: row 0 (question 'Which number?'): ")


def test_mixed_answer_column_through_the_hf_json_loader(make_strategy, tmp_path):
    """datasets 4.x stores a JSON column mixing ints and strings as JSON text and hands the text "12"
    back as the int 12; the strategy reads ints of such a column by the string rules."""
    from datasets import load_dataset

    from axolotl.datasets import TokenizedPromptDataset

    def load_rows(rows, name):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        ds = load_dataset("json", data_files=str(path), split="train")
        return ds

    good = [{"question": "Which number?", "choices": NUMERIC, "answer": 1},
            {"question": "Which twelve?", "choices": NUMERIC, "answer": "12"},
            {"question": "Which pet?", "choices": ["dog", "atom"], "answer": "A"}]
    ds = load_rows(good, "mixed.jsonl")
    assert type(ds.features["answer"]).__name__ == "Json" and ds[1]["answer"] == 12  # the loader's coercion
    strategy, _ = make_strategy("mixed.jsonl")
    out = TokenizedPromptDataset(strategy, ds, process_count=1)
    assert [r["calib_answer_idx"][_marker(r)] for r in out] == [1, 2, 0]  # "12" is choice C, as lm-eval reads it
    bad = load_rows(good + [{"question": "Which three?", "choices": NUMERIC, "answer": 3}], "mixed_bad.jsonl")
    strategy, _ = make_strategy("mixed_bad.jsonl")
    with pytest.raises(MCQRowError, match=r"row 3 \(question 'Which three\?'\): field 'answer': '3' is ambiguous.*"
                                          r"the number 3 may have been the text \"3\""):
        TokenizedPromptDataset(strategy, bad, process_count=1)


def test_string_encoded_choices(build, tiny_tokenizer):
    """A choices column stored as the repr of a list (one Arrow type for all rows), apostrophes and quotes
    included (the regex "'([^']*)'" of the paper's loader splits O'Brien apart)."""
    rows = [{"question": "Whose pub?", "choices": "['O\\'Brien', \"Say \\\"hi\\\"\", 'plain']", "answer": 0},
            {"question": "Capital?", "choices": '["Paris", "Rome"]', "answer": 1}]
    ds, _ = build(rows)
    for row, q, choices, gold in zip(ds, ("Whose pub?", "Capital?"), (["O'Brien", 'Say "hi"', "plain"], ["Paris", "Rome"]),
                                     (0, 1)):
        t = _marker(row)
        assert row["input_ids"][: t + 1] == tiny_tokenizer(format_mcq_prompt(q, choices))["input_ids"]
        assert (row["calib_num_options"][t], row["calib_answer_idx"][t]) == (len(choices), gold)


def test_more_choices_than_letters(make_strategy):
    strategy, _ = make_strategy(calib_option_letters=["A", "B", "C"])
    rows = [{"question": "Many?", "choices": [f"c{i}" for i in range(4)], "answer": 0}]
    with pytest.raises(MCQRowError, match=r"row 0 .*has 4 options but there are only 3 option letters \(A\.\.C\)"):
        strategy.tokenize_prompt(_as_batch(rows))


# A template that renders the user turn differently once an assistant turn follows: t* is lost.
LOSING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' and messages|length > 1 %}<|user|>\nQ: {{ m['content'] }}"
    "<|end|>\n{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# The tiny template with a space before the assistant content: the letter becomes " A" (another token).
CHAT_SPACE_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['role'] == 'assistant' %} {% endif %}{{ m['content'] }}"
    "<|end|>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n {% endif %}"
)
# A template that changes the answer for some questions only (a stand-in for tokenizers whose merges
# depend on the preceding text): the token after t* is not the gold letter.
SWAPPING_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['role'] == 'assistant' and 'swap' in messages[0]['content'] %}"
    "{{ m['content'] | replace('B', 'A') }}{% else %}{{ m['content'] }}{% endif %}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def test_chat_template_that_loses_the_answer_position(build):
    with pytest.raises(ValueError, match="does not start with the tokenized prompt"):
        build(ROWS, calib_prompt_format="chat_template", chat_template="jinja", chat_template_jinja=LOSING_TEMPLATE)


def test_token_after_answer_position_must_be_the_gold_letter(build):
    rows = [ROWS[0], {"question": "Please swap?", "choices": ["a", "b"], "answer": "B"}]
    with pytest.raises(MCQRowError, match=r"row 1 .*not the gold letter 'B'"):
        build(rows, calib_prompt_format="chat_template", chat_template="jinja", chat_template_jinja=SWAPPING_TEMPLATE)


def test_dataset_template_must_tokenize_letters_like_the_trainers(make_strategy, tiny_tokenizer):
    """The trainer reads option logits with the config-level template's letter ids."""
    from axolotl.prompt_strategies import load

    plain_chat, cfg = make_strategy(calib_prompt_format="chat_template")
    assert plain_chat.trainer_chat_template is None  # no dataset-level template: nothing to compare
    ds_cfg = {"path": "ds.jsonl", "type": "axolotl_calib_plugin.mcq", "chat_template": "jinja",
              "chat_template_jinja": CHAT_SPACE_TEMPLATE}
    strategy = load("axolotl_calib_plugin.mcq", tiny_tokenizer, cfg, ds_cfg)
    with pytest.raises(MCQRowError, match=r"option letter 'A' is token 365 under this dataset's chat_template but 40"):
        strategy.tokenize_prompt(_as_batch(ROWS[:1]))


def test_chat_format_without_any_template(build, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(tiny_tokenizer, "chat_template", None)
    with pytest.raises(ValueError, match="calib_prompt_format: chat_template needs a chat template"):
        build(ROWS, calib_prompt_format="chat_template")


# ------------------------------------------------------------------------------------------- plugin checks
def test_strategy_without_the_plugin_lists_the_dropped_keys(tmp_path, tiny_tokenizer, tiny_cfg, validate_cfg):
    """Axolotl drops calib_* keys when the plugin is not listed; our strategy is what still runs."""
    from axolotl.prompt_strategies import load

    raw = tmp_path / "cfg.yml"
    raw.write_text("calib_mode: rcft\ncalib_lambda: 0.5\n")
    cfg = validate_cfg(tiny_cfg(plugins=None, calib_mode="rcft", axolotl_config_path=str(raw)))
    assert "calib_mode" not in cfg
    with pytest.raises(ValueError, match=r"does not list .*calib_lambda, calib_mode") as info:
        load("axolotl_calib_plugin.mcq", tiny_tokenizer, cfg, {"path": "x", "type": "axolotl_calib_plugin.mcq"})
    assert "axolotl_calib_plugin.CalibrationPlugin" in str(info.value)


def test_strategy_when_the_plugin_failed_to_register(tiny_tokenizer, tiny_cfg):
    from axolotl.prompt_strategies import load

    cfg = tiny_cfg()  # lists the plugin, but nothing registered it (as after an import error)
    with pytest.raises(ValueError, match="was not registered"):
        load("axolotl_calib_plugin.mcq", tiny_tokenizer, cfg, {"path": "x", "type": "axolotl_calib_plugin.mcq"})


# ------------------------------------------------------------------------------------------- Axolotl pipeline
def test_axolotl_prepare_datasets_keeps_columns_and_drops_too_long_rows(tiny_cfg, mcq_rows, tiny_tokenizer):
    """The real data path (load_cfg -> load_datasets): long rows are dropped whole, with their marker."""
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets

    rows = [
        {"question": "short one?", "choices": ["a", "b"], "answer": 0},
        {"question": "long " * 200, "choices": ["a", "b"], "answer": 1},
        {"question": "short two?", "choices": ["a", "b", "c"], "answer": "C"},
    ]
    cfg = load_cfg(tiny_cfg(datasets=[{"path": str(mcq_rows(rows=rows)), "type": "axolotl_calib_plugin.mcq"}],
                            sequence_len=64, shuffle_merged_datasets=False))
    ds = load_datasets(cfg=cfg).train_dataset
    assert len(ds) == 2
    for row in ds:
        t = _marker(row)
        assert all(len(row[c]) == len(row["input_ids"]) for c in CALIB_COLUMNS)
        assert row["input_ids"][t + 1] == letter_ids(tiny_tokenizer, cfg, num_options=3)[row["calib_answer_idx"][t]]
    assert sorted(r["calib_num_options"][_marker(r)] for r in ds) == [2, 3]


def test_rows_longer_than_sequence_len_are_counted_per_batch(make_strategy, caplog):
    strategy, _ = make_strategy("long.jsonl", sequence_len=64)
    rows = [ROWS[1], {**ROWS[1], "question": "long " * 80}, {**ROWS[1], "question": "longer " * 90}]
    with caplog.at_level("WARNING", logger="axolotl_calib_plugin.train.mcq"):
        out = strategy.tokenize_prompt(_as_batch(rows))
    longest = max(len(ids) for ids in out["input_ids"])
    assert [r.getMessage() for r in caplog.records if r.name == "axolotl_calib_plugin.train.mcq"] == [
        f"long.jsonl: 2 of rows 0..2 are longer than sequence_len 64 tokens (longest {longest}) and will be dropped "
        "by Axolotl (excess_length_strategy: drop); raise sequence_len to keep them"]


def test_no_rows_left_names_each_dataset_and_sequence_len(tiny_cfg, mcq_rows, tiny_tokenizer):
    """Every row longer than sequence_len: Axolotl drops them all and training would stop with
    "num_samples=0"; the plugin's post-trainer hook raises with the numbers instead."""
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets

    from axolotl_calib_plugin.train.mcq import check_rows_left
    from axolotl_calib_plugin.train.plugin import CalibrationPlugin

    long_rows = [{"question": "long " * (100 + 10 * i), "choices": ["a", "b"], "answer": i % 2} for i in range(3)]
    path = mcq_rows(rows=long_rows, name="long.jsonl")
    cfg = load_cfg(tiny_cfg(datasets=[{"path": str(path), "type": "axolotl_calib_plugin.mcq"}], sequence_len=64))
    train = load_datasets(cfg=cfg).train_dataset
    assert len(train) == 0
    expected = (r"no training rows are left after Axolotl dropped the rows longer than sequence_len 64 .*\n"
                rf"  datasets\[0\] {path}: 3 of its 3 rows are longer than sequence_len 64 tokens and were dropped "
                r"\(shortest of them (\d+), longest (\d+) tokens\)\nRaise sequence_len to at least \1 tokens")
    with pytest.raises(MCQRowError, match=expected):
        check_rows_left(cfg, tiny_tokenizer, train)
    check_rows_left(cfg, tiny_tokenizer, [{"input_ids": [1, 2]}])  # rows left: nothing to say

    class Trainer:  # what Axolotl's builder hands the hook
        processing_class, train_dataset, eval_dataset = tiny_tokenizer, train, None

        def attach_calibration(self, calib):  # pragma: no cover - never reached
            raise AssertionError("the check runs first")

    with pytest.raises(MCQRowError, match=expected):
        CalibrationPlugin().add_callbacks_post_trainer(cfg, Trainer())

