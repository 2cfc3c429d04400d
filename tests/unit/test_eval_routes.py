"""The evaluation commands (``axolotl-calib eval`` / ``diagnose`` / ``temperature``) refuse bad input before any
model loads, with the file, key or flag at fault: a damaged or edited calib_settings.json, a merged model without
one, an output folder that is a file, hub tasks offline, overlapping held-out and training files, a prompt format
that contradicts training; a temperature fit that ended on its bound says so; known third-party noise is filtered
and real warnings pass. (Which token sequence every route scores: tests/unit/test_same_row.py.)"""

from __future__ import annotations

import json
import logging
import types

import pytest

from axolotl_calib_plugin.cli import main
from axolotl_calib_plugin.eval.report import SETTINGS_FILE

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


def _ns(model, **kw):
    return types.SimpleNamespace(model=str(model), option_letters=None, apply_chat_template=False,
                                 system_instruction=None, settings_from=None, cmd="eval", **kw)


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
    from axolotl_calib_plugin.cli import _trained_row_settings

    (tmp_path / SETTINGS_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit, match=want) as e:
        _trained_row_settings(_ns(tmp_path))
    assert str(tmp_path) in str(e.value) and "restore it from the training output_dir" in str(e.value)


def test_settings_path_that_is_a_folder_is_refused(tmp_path):
    from axolotl_calib_plugin.cli import _trained_row_settings

    (tmp_path / SETTINGS_FILE).mkdir()
    with pytest.raises(SystemExit, match=r"calib_settings.json: cannot be read \("):
        _trained_row_settings(_ns(tmp_path))


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
    from axolotl_calib_plugin.cli import _trained_row_settings

    run = _settings(tmp_path / "out", option_letters=list("EDCBA"))
    merged = run / "merged"
    merged.mkdir()
    with pytest.raises(SystemExit, match=rf"{merged} has no {SETTINGS_FILE}, but {run} .* Pass --settings-from {run}"):
        _trained_row_settings(_ns(merged))
    a = _ns(merged)
    a.settings_from = str(run)
    assert _trained_row_settings(a)["option_letters"] == list("EDCBA")


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


def test_temperature_bound_note_only_on_a_bound():
    from axolotl_calib_plugin.eval.temperature import temperature_bound_note

    assert temperature_bound_note(1.3, 100) is None
    assert "near uniform" in temperature_bound_note(100.0, 1)
    assert "near one-hot" in temperature_bound_note(0.01, 5)


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

    from axolotl_calib_plugin.eval.evaluation import _quiet_git_probe

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    original = ev.get_git_commit_hash
    with _quiet_git_probe():
        assert ev.get_git_commit_hash() is None
    assert ev.get_git_commit_hash is original
    assert "fatal" not in capfd.readouterr().err
