"""The evaluation commands (``axolotl-calib eval`` / ``diagnose`` / ``temperature``) refuse bad input before any
model loads, with the file, key or flag at fault: a damaged or edited calib_settings.json, a merged model without
one, an output folder that is a file, hub tasks offline, overlapping held-out and training files, a prompt format
that contradicts training; a temperature fit that ended on its bound says so; known third-party noise is filtered
and real warnings pass. (Which token sequence every route scores: tests/unit/test_same_row.py.)"""

from __future__ import annotations

import json
import logging

import pytest

from axolotl_calib_plugin.cli import main
from axolotl_calib_plugin.row_settings import SETTINGS_FILE, SettingsError, check_trained_row_settings

ROWS = [{"question": "Which is red?", "choices": ["red cat", "blue dog", "green"], "answer": 0},
        {"question": "What is true?", "choices": ["alpha", "beta"], "answer": 1}]


def _jsonl(path, rows=ROWS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _settings(folder, **kw):
    doc = {"option_letters": list("ABCDEFGHIJ"), "answer_format": "auto", "question_field": "question",
           "choices_field": "choices", "answer_field": "answer", "prompt_format": "plain", "system_prompt": None,
           "add_bos_token": True, **kw}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SETTINGS_FILE).write_text(json.dumps(doc), encoding="utf-8")
    return folder




# ------------------------------------------------------------------------------------------ calib_settings.json
@pytest.mark.parametrize("text, want", [
    ("{not json", r"calib_settings.json: not valid JSON \("),
    ('{"option_letters": "ABCD"}', r"calib_settings.json: option_letters must be a list of option letters, got str"),
    ('{"option_letters": ["A"]}', r"calib_settings.json: option_letters needs at least 2 letters"),
    ('{"prompt_format": "chat"}', r"calib_settings.json: prompt_format must be plain or chat_template"),
    ('{"add_bos_token": "yes"}', r"calib_settings.json: add_bos_token must be true or false, got str"),
    ('[1, 2]', r"calib_settings.json: expected a JSON object, got list"),
])
def test_damaged_settings_file_names_file_key_and_remedy(tmp_path, text, want):
    (tmp_path / SETTINGS_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError, match=want) as e:
        check_trained_row_settings(str(tmp_path))
    assert str(tmp_path) in str(e.value) and "restore it from the training output_dir" in str(e.value)


def test_settings_path_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / SETTINGS_FILE).mkdir()
    with pytest.raises(SettingsError, match=r"calib_settings.json: cannot be read \("):
        check_trained_row_settings(str(tmp_path))


def test_edited_letters_that_the_data_cannot_use_name_the_settings_file(tmp_path, capsys):
    """Letters A,B from calib_settings.json against a 3-option row: the error names the data row AND where the
    letters came from, before any model loads (the model folder holds no weights at all)."""
    model = _settings(tmp_path / "model", option_letters=["A", "B"])
    data = _jsonl(tmp_path / "d.jsonl")
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", str(model), "--tasks", "calib_jsonl", "--data-files", data,
              "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 1
    assert "--data-files:" in err and f"from {model / SETTINGS_FILE}" in err and "['A', 'B']" in err


def test_merged_folder_without_settings_points_at_settings_from(tmp_path, capsys):
    """`axolotl merge-lora` writes <output_dir>/merged without calib_settings.json: refused, naming --settings-from;
    with it the training letters are used."""
    run = _settings(tmp_path / "out", option_letters=list("EDCBA"))
    merged = run / "merged"
    merged.mkdir()
    with pytest.raises(SettingsError, match=rf"{merged} has no {SETTINGS_FILE}, but {run} .* Pass --settings-from {run}"):
        check_trained_row_settings(str(merged))
    found = check_trained_row_settings(str(merged), settings_from=str(run))
    assert found.task_metadata["option_letters"] == list("EDCBA") and found.add_bos_token is True
    assert found.settings_file == str(run / SETTINGS_FILE)


# ------------------------------------------------------------------------------------------ early usage errors
@pytest.mark.parametrize("argv", [["eval", "--model", "{model}", "--tasks", "calib_jsonl", "--data-files", "{data}",
                                   "--output-dir", "{file}"],
                                  ["make-tiny", "--output-dir", "{file}"]])
def test_output_dir_that_is_a_file_is_a_usage_error(tmp_path, capsys, argv):
    model = tmp_path / "model"
    model.mkdir()
    blocker = tmp_path / "report.txt"
    blocker.write_text("x")
    fill = {"model": str(model), "data": _jsonl(tmp_path / "d.jsonl"), "file": str(blocker)}
    with pytest.raises(SystemExit) as e:
        main([a.format(**fill) for a in argv])
    assert e.value.code == 2
    assert f"--output-dir {blocker}: {blocker} is a file, not a folder" in capsys.readouterr().err


def test_offline_hub_tasks_fail_before_the_model_and_name_the_flags(tmp_path, capsys):
    """Default tasks read the hub; offline with no cache: a usage error naming --data-dir and --tasks calib_jsonl
    --data-files, before the (empty, unloadable) model folder is touched."""
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", str(model), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "pass --data-dir DIR with calib_mmlu.jsonl" in err
    assert "--tasks calib_jsonl --data-files FILE.jsonl" in err and "CALIB_LM_EVAL_DATA_DIR" not in err


def test_diagnose_refuses_overlapping_held_out_and_training_files(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    held = _jsonl(tmp_path / "held.jsonl")
    train = _jsonl(tmp_path / "train.jsonl", ROWS[1:] + [{"question": "Other?", "choices": ["x", "y"], "answer": 0}])
    with pytest.raises(SystemExit) as e:
        main(["diagnose", "--model", str(model), "--data-files", held, "--train-data-files", train])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "1 of the 2 held-out questions" in err and "'what is true?'" in err
    spaced = _jsonl(tmp_path / "spaced.jsonl", [dict(ROWS[0], question="  Which is  RED? ")])
    with pytest.raises(SystemExit):  # the same question up to case and spacing
        main(["diagnose", "--model", str(model), "--data-files", held, "--train-data-files", spaced])
    assert "1 of the 2 held-out questions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["diagnose", "--model", str(model), "--data-files", held, "--train-data-files", held])
    assert "2 of the 2 held-out questions" in capsys.readouterr().err


def test_diagnose_has_the_prompt_flags_and_refuses_a_contradiction(tmp_path):
    """diagnose --apply-chat-template exists; against a run trained with plain prompts (or without it against a
    chat-trained run) it is refused before the model loads."""
    held = _jsonl(tmp_path / "held.jsonl")
    plain = _settings(tmp_path / "plain")
    chat = _settings(tmp_path / "chat", prompt_format="chat_template", add_bos_token=False)
    with pytest.raises(SystemExit, match="trained with calib_prompt_format: plain but this evaluation applies the chat "
                                         r"template \(drop --apply-chat-template\)"):
        main(["diagnose", "--model", str(plain), "--data-files", held, "--apply-chat-template"])
    with pytest.raises(SystemExit, match=r"trained with calib_prompt_format: chat_template .*add --apply-chat-template"):
        main(["diagnose", "--model", str(chat), "--data-files", held])
    with pytest.raises(SystemExit, match=r"--option-letters E,D but it was trained with calib_option_letters"):
        main(["diagnose", "--model", str(plain), "--data-files", held, "--option-letters", "ED"])


def test_bad_option_letters_flag_is_an_error_naming_the_flag(tmp_path, capsys):
    """--option-letters with one letter, on a model without calib_settings.json: a command error, not a traceback."""
    held = _jsonl(tmp_path / "held.jsonl")
    (tmp_path / "m").mkdir()
    with pytest.raises(SystemExit, match=r"^axolotl-calib diagnose: error: --option-letters needs at least 2 letters"):
        main(["diagnose", "--model", str(tmp_path / "m"), "--data-files", held, "--option-letters", "A"])


# ------------------------------------------------------------------------------------------ temperature
def test_temperature_fit_on_one_question_says_it_hit_its_bound(tmp_path, capsys):
    """--fit-fraction 0.01 of 50 questions fits one: T lands on a bound (here the upper, the question is wrong) and
    the command says so, in the output and the report."""
    from scipy.special import softmax

    path = tmp_path / "samples_calib_jsonl_2026-01-01T00-00-00.000001.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(50):
            z = [2.0, 0.0, -1.0]
            fh.write(json.dumps({"doc_id": i, "conf_ece": {"probs": softmax(z).tolist(), "gold": 1, "logliks": z}})
                     + "\n")
    assert main(["temperature", "--fit", str(path), "--apply", str(path), "--fit-fraction", "0.01",
                 "--output-dir", str(tmp_path / "ts")]) == 0
    out = capsys.readouterr().out
    assert "T = 100.0000" in out and "WARNING:" in out and "bound" in out
    rep = json.loads((tmp_path / "ts" / "calibration_report.json").read_text())
    assert rep["meta"]["temperature_at_bound"] is True
    assert "WARNING:" in (tmp_path / "ts" / "calibration_report.md").read_text()


def test_temperature_bound_warning_only_on_a_bound():
    from axolotl_calib_plugin.eval.temperature import TemperatureFit, temperature_bound_warning

    assert temperature_bound_warning(TemperatureFit(1.3, None, 100)) is None
    assert "near uniform" in temperature_bound_warning(TemperatureFit(100.0, "upper", 1))
    assert "near one-hot" in temperature_bound_warning(TemperatureFit(0.01, "lower", 5))


# ------------------------------------------------------------------------------------------ quiet logs
def test_noise_filter_drops_exactly_the_known_lines():
    from axolotl_calib_plugin.eval.evaluation import quiet_third_party_logs

    quiet_third_party_logs()
    quiet_third_party_logs()  # idempotent

    def passes(logger, msg):
        lg = logging.getLogger(logger)
        return all(f.filter(logging.LogRecord(logger, logging.WARNING, __file__, 1, msg, None, None))
                   for f in lg.filters)

    assert not passes("torchao", "Failed to load /x/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: Could not load")
    assert passes("torchao", "Failed to load config.json")  # not a kernel library: a real warning
    assert passes("torchao", "Skipping import of cpp extensions due to incompatible torch version")
    assert not passes("lm_eval.api.task", "calib_jsonl: Custom kwargs can be passed to `--metadata` in console")
    assert passes("lm_eval.api.task", "calib_jsonl: num_fewshot > 0 but fewshot_split is None")
    assert len([f for f in logging.getLogger("torchao").filters if type(f).__name__ == "NoiseFilter"]) == 1


def test_git_probe_is_quiet_outside_a_repository(tmp_path, monkeypatch, capfd):
    import lm_eval.evaluator as ev

    from axolotl_calib_plugin.eval.evaluation import quiet_git_probe

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    original = ev.get_git_commit_hash
    with quiet_git_probe():
        assert ev.get_git_commit_hash() is None
    assert ev.get_git_commit_hash is original
    assert "fatal" not in capfd.readouterr().err


def test_questions_longer_than_the_context_are_counted_not_silently_cut():
    """lm-eval keeps the last max_length + 1 tokens of prompt + answer: a longer question is scored with its beginning
    cut off (training drops such rows), so the report must say which (hand-made samples, a whitespace tokenizer)."""
    from axolotl_calib_plugin.eval.evaluation import truncated_prompts

    class WordLM:
        max_length = 8

        def tok_encode(self, text, add_special_tokens=None):
            return text.split()

    def sample(doc_id, words):
        q = " ".join(["w"] * words) + " Answer:"
        return {"doc_id": doc_id, "arguments": [[q, " A"], [q, " B"]]}

    logged = sample(3, 20)  # the form lm-eval 0.4 writes into its samples
    logged["arguments"] = {f"gen_args_{i}": {"arg_0": c, "arg_1": x} for i, (c, x) in enumerate(logged["arguments"])}
    samples = {"calib_jsonl": [sample(0, 3), sample(1, 7), sample(2, 8), logged], "calib_jsonl_ood": [sample(0, 2)]}
    # prompt words + "Answer:" + the letter: 3+1+1 = 5, 7+1+1 = 9 (fits: max_length + 1), 10 and 22 do not
    assert truncated_prompts(WordLM(), samples) == {"calib_jsonl": [2, 3]}
    assert truncated_prompts(type("NoLength", (), {"max_length": None})(), samples) == {}
