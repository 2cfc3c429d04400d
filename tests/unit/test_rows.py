"""The one MCQ row normalizer (``axolotl_calib_plugin.rows``): answer-reading rules, string-encoded
choices, row errors, and that the dataset strategy (training) and the lm-eval loader (evaluation)
accept the same rows with the same gold option and reject the same rows with the same message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from axolotl_calib_plugin.rows import (
    CalibDataError,
    check_data_file,
    normalize_mcq_row,
    parse_choices,
    raise_row_errors,
    read_answer,
)
from helpers import load_task_utils

CALIB = Path(__file__).resolve().parents[2] / "lm_eval_tasks" / "calib"
NUMERIC = ["3", "7", "12", "5"]  # choice texts that are also valid indices


U = load_task_utils("calib_task_utils_rows")


# ------------------------------------------------------------------------------------------- answers
@pytest.mark.parametrize("answer, gold", [
    (3, 3),        # a real int is an index, even where "3" is also a choice's text
    ("12", 2),     # only the text reading names an option (index 12 does not exist)
    ("7", 1),      # text "7" is B; index 7 does not exist
    ("1", 1),      # index 1; no choice has the text "1"
    ("C", 2),      # a letter
    (" C ", 2),    # stripped
    (2.0, 2),      # a whole-number float is an index
])
def test_auto_reads_each_answer_one_way(answer, gold):
    assert read_answer(answer, NUMERIC) == gold


def test_numpy_values():
    import numpy as np

    assert read_answer(np.int64(2), NUMERIC) == 2
    assert parse_choices(np.array(["a", "b"])) == ["a", "b"]


def test_auto_agreeing_readings_are_not_ambiguous():
    # "B" is the letter of option B and option B's text: one option, no ambiguity
    assert read_answer("B", ["x", "B"]) == 1
    assert read_answer("0", ["0", "1"]) == 0  # index 0 is the choice "0"


@pytest.mark.parametrize("answer, choices, message", [
    ("3", NUMERIC, "field 'answer': '3' is ambiguous: as an index it is option D ('5'), as a choice text it is option "
                   "A ('3'); say how answers are written with calib_answer_format (training) or the lm-eval metadata "
                   "answer_format / $CALIB_ANSWER_FORMAT: index, letter or text"),
    ("A", ["B", "A"], "field 'answer': 'A' is ambiguous: as a letter it is option A ('B'), as a choice text it is "
                      "option B ('A'); say how answers are written"),
    ("x", ["x", "y", "x"], "field 'answer': the text 'x' is options A ('x') and C ('x'); make the choices distinct or "
                           "give the answer as an index or a letter"),
    (4, NUMERIC, "field 'answer': index 4 is out of range for 4 choices (valid 0..3); fix the row (an index is never "
                 "wrapped around)"),
    (-1, NUMERIC, "field 'answer': index -1 is out of range for 4 choices"),
    ("9", NUMERIC, "field 'answer': index 9 is out of range for 4 choices (valid 0..3) and no choice has the text '9'"),
    ("E", NUMERIC, "field 'answer': 'E' is not an option of these 4 choices: expected an index 0..3, a letter A..D or "
                   "the text of one choice"),
    ("b", ["a", "b2"], "field 'answer': 'b' is not an option"),  # letters are case-sensitive
    (True, NUMERIC, "field 'answer' is the boolean True, not an option"),
    (1.5, NUMERIC, "field 'answer' is 1.5, not a whole-number option index"),
    ("  ", NUMERIC, "field 'answer' is empty"),
    ([1], NUMERIC, "field 'answer' must be an index, a letter or a choice's text, got list [1]"),
    ("\u0663", NUMERIC, "field 'answer': '\u0663' is not an option"),  # an Arabic-Indic digit is not an ASCII index
    ("9" * 5000, NUMERIC, "field 'answer': '99999"),  # longer than int() accepts: no ValueError escapes
    (0, ["only"], "1 choices: an MCQ here has 2 to 10 options"),
])
def test_auto_rejects_and_explains(answer, choices, message):
    with pytest.raises(CalibDataError) as info:
        read_answer(answer, choices)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("answer_format, answer, gold", [
    ("index", "3", 3), ("index", 3, 3), ("index", " 2 ", 2),
    ("letter", "A", 0), ("letter", "D", 3),
    ("text", "3", 0), ("text", 3, 0), ("text", 12, 2), ("text", " 5 ", 3),
])
def test_explicit_formats(answer_format, answer, gold):
    assert read_answer(answer, NUMERIC, answer_format=answer_format) == gold


@pytest.mark.parametrize("answer_format, answer, message", [
    ("index", "C", "field 'answer' is 'C', not an index (answer_format: index expects 0..3)"),
    ("index", "4", "field 'answer': index 4 is out of range for 4 choices"),
    ("letter", "E", "field 'answer' is 'E', not one of the letters ['A', 'B', 'C', 'D'] of these 4 choices"),
    ("letter", 0, "field 'answer' is the number 0, but answer_format is letter"),
    ("text", "C", "field 'answer': 'C' is not the text of any of the 4 choices (answer_format: text)"),
    ("text", "x", "field 'answer': the text 'x' is options A ('x') and B ('x')"),
])
def test_explicit_formats_reject(answer_format, answer, message):
    choices = ["x", "x", "y", "z"] if answer == "x" else NUMERIC
    with pytest.raises(CalibDataError) as info:
        read_answer(answer, choices, answer_format=answer_format)
    assert str(info.value).startswith(message)
    with pytest.raises(ValueError, match="answer_format must be one of"):
        read_answer(0, NUMERIC, answer_format="number")


def test_int_from_a_json_column_is_read_as_its_text():
    """HF datasets hands back the text "12" of a mixed column as the int 12: read it by the string rules."""
    assert read_answer(12, NUMERIC, answer_from_json_column=True) == 2
    assert read_answer(1, NUMERIC, answer_from_json_column=True) == 1
    with pytest.raises(CalibDataError, match=r"'3' is ambiguous.*the number 3 may have been the text \"3\""):
        read_answer(3, NUMERIC, answer_from_json_column=True)
    assert read_answer(3, NUMERIC, answer_format="index", answer_from_json_column=True) == 3


# ------------------------------------------------------------------------------------------- choices
@pytest.mark.parametrize("value, expected", [
    (["a", "b"], ["a", "b"]),
    (("a", "b"), ["a", "b"]),
    ("['Paris', 'Rome', 'Oslo', 'Bern']", ["Paris", "Rome", "Oslo", "Bern"]),
    ('["O\'Brien", "it\'s"]', ["O'Brien", "it's"]),            # apostrophes (the authors' regex splits these)
    ("['say \"hi\"', 'x']", ['say "hi"', "x"]),                # quotes
    ("['a, b', 'c']", ["a, b", "c"]),                          # commas inside an option
    ('  ["a", "b"]  ', ["a", "b"]),                            # JSON, surrounding blanks
    ("('a', 'b')", ["a", "b"]),                                # a tuple literal
    ([1, 2.5, "c"], ["1", "2.5", "c"]),                        # numbers become their text
    (["", "b"], ["", "b"]),                                    # an empty option is allowed
])
def test_parse_choices(value, expected):
    assert parse_choices(value) == expected


@pytest.mark.parametrize("value, message", [
    ("a, b", "field 'choices' is a string but not a list literal such as \"['Paris', 'Rome']\": str 'a, b'"),
    ("['a', 'b'", "field 'choices' is a string but not a list literal"),
    ("'ab'", "field 'choices' is a string that holds a str, not a list of strings"),
    ("{'a', 'b'}", "field 'choices' is a string that holds a set"),
    ("[" * 10000, "field 'choices' is a string but not a list literal"),  # no RecursionError escapes
    (["a", None], "field 'choices' item 1 is null; every option needs its text (write \"\" for an empty option)"),
    ('["a", null]', "field 'choices' item 1 is null"),
    ("['a', None]", "field 'choices' item 1 is null"),
    (["a", True], "field 'choices' item 1 must be a string, got bool True"),
    ("[['a'], 'b']", "field 'choices' item 0 must be a string, got list ['a']"),
    (["a"], "field 'choices' has 1 option(s); an MCQ needs at least 2"),
    ("[]", "field 'choices' has 0 option(s)"),
    ([f"c{i}" for i in range(11)], "field 'choices' has 11 options but there are only 10 option letters (A..J)"),
    (5, "field 'choices' must be a list of strings (or a string holding one"),
    ({"text": ["a"]}, "field 'choices' must be a list of strings"),
])
def test_parse_choices_rejects(value, message):
    with pytest.raises(CalibDataError) as info:
        parse_choices(value)
    assert str(info.value).startswith(message)


# ------------------------------------------------------------------------------------------- rows
def test_normalize_row_and_custom_fields():
    row = {"q": "Pick?", "opts": "['x', 'y', 'z']", "gold": "z", "id": 7}
    got = normalize_mcq_row(row, question_field="q", choices_field="opts", answer_field="gold")
    assert got == ("Pick?", ["x", "y", "z"], 2)
    assert normalize_mcq_row({"question": "Q", "choices": ["a", "b"], "answer": "b"}, letters="XY").gold == 1


@pytest.mark.parametrize("row, message", [
    ({"choices": ["a", "b"], "answer": 0}, "missing field 'question' (absent or null; the row has 'answer', 'choices')"),
    ({"question": None, "choices": ["a", "b"], "answer": 0}, "missing field 'question' (absent or null"),
    ({"question": 5, "choices": ["a", "b"], "answer": 0}, "field 'question' must be a string, got int 5"),
    ({"question": " ", "choices": ["a", "b"], "answer": 0}, "field 'question' is empty"),
    ({"question": "Q", "answer": 0}, "missing field 'choices'"),
    ({"question": "Q", "choices": ["a", "b"]}, "missing field 'answer'"),
    (["Q", ["a", "b"], 0], "expected a JSON object with 'question', 'choices' and 'answer', got list"),
])
def test_normalize_row_rejects(row, message):
    with pytest.raises(CalibDataError) as info:
        normalize_mcq_row(row)
    assert str(info.value).startswith(message)


def test_raise_row_errors_one_and_many():
    raise_row_errors([], "f.jsonl")  # nothing to report
    with pytest.raises(CalibDataError) as info:
        raise_row_errors([("f.jsonl line 2", "bad")], "f.jsonl")
    assert str(info.value) == "f.jsonl line 2: bad"
    with pytest.raises(CalibDataError) as info:
        raise_row_errors([(f"f.jsonl line {i}", "bad") for i in range(12)], "f.jsonl")
    lines = str(info.value).splitlines()
    assert lines[0] == "f.jsonl: 12 bad rows:" and lines[1] == "  f.jsonl line 0: bad"
    assert len(lines) == 12 and lines[-1] == "  ... and 2 more"


# ------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("name, text", [("e.jsonl", ""), ("b.jsonl", "\n  \n\t\n"), ("l.json", " [ ]\n")])
def test_empty_data_files(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CalibDataError, match=rf"^{path}: the dataset file is empty \(no rows\); add MCQ rows"):
        check_data_file(str(path))


def test_non_empty_data_files_pass(tmp_path):
    for name, text in (("a.jsonl", "\n\n" + " " * 70000 + '{"q": 1}'), ("b.json", '[{"q": 1}]'), ("c.jsonl", "[]")):
        (tmp_path / name).write_text(text)
        check_data_file(str(tmp_path / name))  # c.jsonl holds one (bad) row: the strategy reports it


def test_empty_dataset_file_is_named_at_config_validation(tmp_path, tiny_cfg, validate_cfg, mcq_rows):
    """HF datasets would fail on it later with a bare StopIteration and no path."""
    import pydantic

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cfg = tiny_cfg(datasets=[{"path": str(mcq_rows()), "type": "axolotl_calib_plugin.mcq"},
                             {"path": str(empty), "type": "axolotl_calib_plugin.mcq"}])
    with pytest.raises(pydantic.ValidationError, match=rf"{empty}: the dataset file is empty"):
        validate_cfg(cfg)
    folder = tmp_path / "folder"
    folder.mkdir()
    cfg = tiny_cfg(test_datasets=[{"path": str(folder), "data_files": [str(empty)], "type": "axolotl_calib_plugin.mcq",
                                   "split": "train"}])
    with pytest.raises(pydantic.ValidationError, match=rf"{empty}: the dataset file is empty"):
        validate_cfg(cfg)
    validate_cfg(tiny_cfg(datasets=[{"path": "some/hub_dataset", "type": "axolotl_calib_plugin.mcq"}]))  # not local


def test_answer_format_key_is_validated(tiny_cfg, validate_cfg):
    import pydantic

    assert validate_cfg(tiny_cfg()).calib_answer_format == "auto"
    assert validate_cfg(tiny_cfg(calib_answer_format="text")).calib_answer_format == "text"
    with pytest.raises(pydantic.ValidationError, match="calib_answer_format"):
        validate_cfg(tiny_cfg(calib_answer_format="number"))


# ------------------------------------------------------------------------------------------- one rule set, two paths
@pytest.fixture
def strategy_for(tiny_tokenizer, tiny_cfg, validate_cfg):
    """``strategy_for(**cfg) -> MCQStrategy`` built by Axolotl's loader (letters A..J, like lm-eval)."""
    from axolotl.prompt_strategies import load

    def _make(**overrides):
        cfg = validate_cfg(tiny_cfg(calib_option_letters=None, **overrides))
        ds_cfg = {"path": "d.jsonl", "type": "axolotl_calib_plugin.mcq"}
        return load("axolotl_calib_plugin.mcq", tiny_tokenizer, cfg, ds_cfg)

    return _make


def _batch(rows):
    keys = sorted({k for r in rows for k in r})
    return {k: [r.get(k) for r in rows] for k in keys}


def _train_gold(strategy, rows):
    out = strategy.tokenize_prompt(_batch(rows))
    return [next(v for v in col if v >= 0) for col in out["calib_answer_idx"]]


GOOD = [
    {"question": "Q1", "choices": NUMERIC, "answer": 3},
    {"question": "Q2", "choices": NUMERIC, "answer": "12"},
    {"question": "Q3", "choices": "['O\\'Brien', 'Rome']", "answer": "Rome"},
    {"question": "Q4", "choices": ["x", "B"], "answer": "B"},
    {"question": "Q5", "choices": [1, 2, 3], "answer": "C"},
]
BAD = [
    {"question": "Q", "choices": NUMERIC, "answer": "3"},
    {"question": "Q", "choices": NUMERIC, "answer": 7},
    {"question": "Q", "choices": ["a", None], "answer": 0},
    {"question": "Q", "choices": "a, b", "answer": 0},
    {"question": "Q", "choices": "['a', 'b'", "answer": 0},
    {"question": "Q", "choices": ["a", "b"]},
    {"question": "", "choices": ["a", "b"], "answer": 0},
    {"question": "Q", "choices": ["a"], "answer": 0},
]


def test_training_and_evaluation_agree_on_good_rows(strategy_for, tmp_path):
    path = tmp_path / "good.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GOOD))
    docs = U.load_suite("calib_jsonl", data_files=str(path))["test"]
    assert list(docs["gold"]) == [3, 2, 1, 1, 2]
    assert _train_gold(strategy_for(), GOOD) == [3, 2, 1, 1, 2]
    assert list(docs["choices"])[2] == ["O'Brien", "Rome"]


@pytest.mark.parametrize("bad", BAD, ids=range(len(BAD)))
def test_training_and_evaluation_reject_a_bad_row_with_the_same_message(strategy_for, tmp_path, bad):
    good = {"question": "Fine?", "choices": ["a", "b"], "answer": 1}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(CalibDataError) as lm_eval_error:
        U.load_suite("calib_jsonl", data_files=str(path))
    with pytest.raises(CalibDataError) as train_error:
        strategy_for().tokenize_prompt(_batch([good, bad]))
    eval_prefix = f"{path} line 2: "
    train_prefix = f"d.jsonl: row 1 (question {bad['question']!r}): "
    assert str(lm_eval_error.value).startswith(eval_prefix)
    assert str(train_error.value).startswith(train_prefix)
    assert str(lm_eval_error.value)[len(eval_prefix):] == str(train_error.value)[len(train_prefix):]


@pytest.mark.parametrize("answer_format, gold", [("index", 3), ("text", 0)])
def test_answer_format_key_metadata_and_env_agree(strategy_for, tmp_path, monkeypatch, answer_format, gold):
    rows = [{"question": "Which?", "choices": NUMERIC, "answer": "3"}]
    path = tmp_path / "num.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n")
    assert _train_gold(strategy_for(calib_answer_format=answer_format), rows) == [gold]
    meta = U.load_suite("calib_jsonl", data_files=str(path), answer_format=answer_format)["test"]
    monkeypatch.setenv("CALIB_ANSWER_FORMAT", answer_format)
    env = U.load_suite("calib_jsonl", data_files=str(path))["test"]
    assert list(meta["gold"]) == list(env["gold"]) == [gold]
    with pytest.raises(CalibDataError, match=r"must be one of \['auto', 'index', 'letter', 'text'\], got 'idx'"):
        U.load_suite("calib_jsonl", data_files=str(path), answer_format="idx")


def test_evaluation_lists_every_bad_row_of_a_file(tmp_path):
    path = tmp_path / "many.jsonl"
    rows = [{"question": f"Q{i}", "choices": ["a", "b"], "answer": i} for i in range(5)]  # answers 2, 3, 4 out of range
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(CalibDataError) as info:
        U.load_suite("calib_jsonl", data_files=str(path))
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}: 3 bad rows:"
    assert [ln.split(": ", 1)[0].strip() for ln in lines[1:]] == [f"{path} line {i}" for i in (3, 4, 5)]
    assert all("out of range for 2 choices" in ln for ln in lines[1:])
