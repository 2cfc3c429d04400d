"""``axolotl-calib`` console script: every command and flag documented, make-tiny, diagnose, eval (model and
peft adapter), temperature, table, tasks-path (lm-eval on tiny local models, offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from axolotl_calib_plugin.cli import main
from axolotl_calib_plugin.cli.parser import build_parser


def test_parser_subcommands():
    p = build_parser()
    a = p.parse_args(["demo", "--output-dir", "x", "--fast", "--seed", "3"])
    assert a.fast and a.seed == 3 and a.output_dir == "x"
    assert p.parse_args(["demo", "--out", "x"]).output_dir == "x"  # the spelling the Makefile and docs used
    a = p.parse_args(["diagnose", "--model", "m", "--data", "d.jsonl", "--acc-star", "0.6"])
    assert a.acc_star == 0.6
    with pytest.raises(SystemExit):
        p.parse_args([])


def test_entry_point_declared():
    import configparser
    import pathlib

    cfg = configparser.ConfigParser()
    cfg.read(pathlib.Path(__file__).resolve().parents[2] / "setup.cfg")
    assert "axolotl-calib = axolotl_calib_plugin.cli:main" in cfg["options.entry_points"]["console_scripts"]


@pytest.mark.slow
def test_make_tiny_and_diagnose(tmp_path, mcq_rows, capsys):
    """One real ``python -m axolotl_calib_plugin.cli diagnose`` process; the text verdict and the LoRA folder go
    through the same ``main`` in this process (no second and third import of lm-eval)."""
    data = str(mcq_rows(60, num_options=(4, 3, 5), seed=1, name="eval_in.jsonl"))
    assert main(["make-tiny", "--output-dir", str(tmp_path / "m"), "--data-files", data]) == 0
    proc = subprocess.run([sys.executable, "-m", "axolotl_calib_plugin.cli", "diagnose", "--model", str(tmp_path / "m"),
                           "--data-files", data, "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == 60 and out["advice"] in ("CFT", "RCFT")
    assert abs(out["conf_ece"] - out["lm_eval"]["conf_ece"]) < 1e-6
    capsys.readouterr()
    assert main(["diagnose", "--model", str(tmp_path / "m"), "--data-files", data]) == 0
    text = capsys.readouterr().out
    assert "Verdict:" in text and "not from the paper" in text

    # a LoRA output folder (adapter_config.json, no model.safetensors) is loaded on its base model, and the
    # training data feeds the decisive memorisation check
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = str(tmp_path / "m")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=True))
    adapter = tmp_path / "lora_out"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    assert not (adapter / "model.safetensors").exists()
    from helpers import make_mcq_rows

    # other questions than the held-out file's (diagnose refuses files that share questions)
    train = str(mcq_rows(rows=[dict(r, question="Train: " + r["question"]) for r in make_mcq_rows(40, seed=2)],
                         name="train.jsonl"))
    capsys.readouterr()
    assert main(["diagnose", "--model", str(adapter), "--data-files", data, "--train-data-files", train, "--json"]) == 0
    lora = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert lora["train_n"] == 40 and lora["gap"] is not None
    assert abs(lora["conf_ece"] - out["conf_ece"]) < 1e-6  # a zero-initialised adapter: the base model's numbers


# ---------------------------------------------------------------------------------- every flag explains itself
def _subparsers():
    import argparse

    p = build_parser()
    (sub,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return p, sub.choices


def test_every_command_and_flag_has_help_and_shows_its_default():
    import re

    p, commands = _subparsers()
    assert set(commands) == {"eval", "tasks-path", "temperature", "table", "diagnose", "make-tiny", "demo",
                             "preference", "reproduce", "real-model"}
    top = p.format_help()
    for name, sub in commands.items():
        assert re.search(rf"^\s+{re.escape(name)}\s*\n?\s+\S", top, re.M), f"{name} has no help in `axolotl-calib --help`"
        text = sub.format_help()
        assert sub.description, name
        options = text.split("options:", 1)[1]
        # one block per option: its line(s) up to the next line that starts with "  -"
        blocks = re.split(r"\n(?=  -)", options.strip("\n"))
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            opt = re.compile(rf"{re.escape(action.option_strings[0])}([ ,\n]|$)")
            (block,) = [b for b in blocks if opt.match(b.lstrip())]
            assert action.help and len(action.help) > 10, (name, action.option_strings)
            if not action.required:
                assert "(default" in " ".join(block.split()), (name, block)


def test_cli_help_runs_as_a_console_script():
    for cmd in ([], ["eval"], ["temperature"], ["table"], ["tasks-path"]):
        proc = subprocess.run([sys.executable, "-m", "axolotl_calib_plugin.cli", *cmd, "--help"], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and "usage: axolotl-calib" in proc.stdout, proc.stderr


def test_tasks_path_prints_the_task_folder(capsys):
    from axolotl_calib_plugin.eval.evaluation import find_task_dir

    assert main(["tasks-path"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == find_task_dir() and os.path.isfile(os.path.join(path, "calib", "calib_mmlu.yaml"))


# ---------------------------------------------------------------------------------- temperature / eval / table
def _write_samples(path, logits, labels):
    """An lm-eval samples file of a calib task: the per-question item under conf_ece."""
    from scipy.special import softmax

    with open(path, "w", encoding="utf-8") as fh:
        for i, (z, y) in enumerate(zip(logits, labels)):
            fh.write(json.dumps({"doc_id": i, "conf_ece": {"probs": softmax(z).tolist(), "gold": int(y),
                                                           "logliks": [float(v) for v in z]}}) + "\n")


def test_temperature_recovers_a_known_temperature_with_mixed_option_counts(tmp_path, capsys):
    import numpy as np

    from axolotl_calib_plugin import metrics
    from axolotl_calib_plugin.eval.samples import read_samples, stack_items

    rng = np.random.default_rng(0)
    logits, labels = [], []
    for i in range(3000):
        z = rng.normal(scale=1.5, size=3 + i % 3)  # K = 3, 4, 5
        p = np.exp(z - z.max())
        labels.append(int(rng.choice(len(z), p=p / p.sum())))
        logits.append(z * 3.0)  # the model reports logits 3x too sharp: over-confident
    fit = tmp_path / "samples_calib_arc_challenge_2026-01-01T00-00-00.000001.jsonl"
    _write_samples(fit, logits, labels)
    assert main(["temperature", "--fit", str(fit), "--apply", str(fit), "--fit-fraction", "0.5", "--fit-tasks",
                 "calib_arc_challenge", "--output-dir", str(tmp_path / "ts")]) == 0
    out = capsys.readouterr().out
    with open(tmp_path / "ts" / "calibration_report.json", encoding="utf-8") as fh:
        rep = json.load(fh)
    assert abs(rep["meta"]["temperature"] - 3.0) < 0.15, rep["meta"]
    assert rep["meta"]["nll_after"] < rep["meta"]["nll_before"]
    task = rep["tasks"]["calib_arc_challenge"]
    assert task["n"] == 1500 and "scored on the 1500 questions not used to fit T" in out
    assert task["conf_ece"] < 0.5 * task["before"]["conf_ece"] and task["acc"] == task["before"]["acc"]
    (scaled,) = (tmp_path / "ts").glob("samples_calib_arc_challenge_*.jsonl")
    p, y, _ = stack_items(read_samples(str(scaled)))
    assert metrics.conf_ece(p, y) == pytest.approx(task["conf_ece"], abs=1e-12)
    assert (tmp_path / "ts" / "reliability_before_after_calib_arc_challenge.png").stat().st_size > 10_000


@pytest.mark.slow
def test_eval_of_an_adapter_temperature_and_table(tmp_path, tiny_model_dir, mcq_rows, capsys):
    """``eval`` loads a peft adapter on its base (auto-detected) and reports what a direct lm-eval run of the
    merged model gives; ``temperature`` and ``table`` read its folder."""
    from helpers import make_lora_adapter

    from axolotl_calib_plugin.eval.evaluation import evaluate_files, find_task_dir, load_lm

    adapter, merged = make_lora_adapter(tiny_model_dir, tmp_path)

    heldout = mcq_rows(12, num_options=(4, 3, 5), seed=6, name="heldout.jsonl")
    fixtures = os.path.join(find_task_dir(), "calib", "data")
    ev = tmp_path / "eval_adapter"
    assert main(["eval", "--model", str(adapter), "--tasks", "calib_jsonl,calib_arc_challenge", "--data-files",
                 str(heldout), "--data-dir", fixtures, "--output-dir", str(ev), "--device", "cpu", "--dtype", "float32",
                 "--batch-size", "4"]) == 0
    with open(ev / "calibration_report.json", encoding="utf-8") as fh:
        rep = json.load(fh)
    assert rep["meta"]["adapter"] is True
    direct = evaluate_files(load_lm(str(merged), 4), [str(heldout)], find_task_dir(), 4)[0]["metrics"]
    plain = evaluate_files(load_lm(tiny_model_dir, 4), [str(heldout)], find_task_dir(), 4)[0]["metrics"]
    for m in ("acc", "conf_ece", "cw_ece"):
        assert rep["tasks"]["calib_jsonl"][m] == pytest.approx(direct[m], abs=1e-5), m
    assert abs(rep["tasks"]["calib_jsonl"]["conf_ece"] - plain["conf_ece"]) > 1e-4  # the adapter was applied

    ts = tmp_path / "ts"
    assert main(["temperature", "--fit", str(ev), "--apply", str(ev), "--output-dir", str(ts)]) == 0
    capsys.readouterr()
    ts_rep = json.loads((ts / "calibration_report.json").read_text())
    assert ts_rep["meta"]["fit_tasks"] == ["calib_jsonl"]  # the out-of-domain ARC samples in ev were not fitted on
    assert ts_rep["tasks"]["calib_jsonl"]["held_out"] is False and ts_rep["tasks"]["calib_jsonl"]["n_fitted"] == 12
    assert ts_rep["tasks"]["calib_arc_challenge"]["held_out"] is True
    assert ts_rep["tasks"]["calib_arc_challenge"]["n_fitted"] == 0
    table_json = tmp_path / "cmp" / "calibration_table.json"
    assert main(["table", "--run", f"adapter={ev}", "--run", f"TS={ts}", "--in-task", "calib_jsonl",
                 "--out-task", "calib_arc_challenge", "--output-dir", str(tmp_path / "cmp")]) == 0
    md = capsys.readouterr().out
    table = json.loads(table_json.read_text())
    assert [r["name"] for r in table["rows"]] == ["adapter", "TS"]
    assert table["rows"][0]["in"]["conf_ece"] == rep["tasks"]["calib_jsonl"]["conf_ece"]
    assert f"| adapter | {rep['tasks']['calib_jsonl']['conf_ece']:.4f} |" in md
    assert table["rows"][1]["in"]["acc"] == pytest.approx(rep["tasks"]["calib_jsonl"]["acc"])  # T keeps the argmax
    assert (tmp_path / "cmp" / "reliability_compare_calib_jsonl.png").stat().st_size > 10_000
    assert table["rows"][1]["in"]["held_out"] is False and "TS: calib_jsonl is IN-SAMPLE" in md
    assert f"{table['rows'][1]['in']['conf_ece']:.4f}*" in md  # the fitted cell is marked, not passed off as held-out
    assert table["shared"]["in"]["n"] == 12 and table["rows"][1]["paired"]["in"]["vs"] == "adapter"
    # lm-eval's samples (and the temperature-scaled ones written from them) carry the question and prompt
    # identities: paired by content, prompts compared, chance level on every cell
    assert "question hashes" not in md and "no recorded prompt" not in md
    assert table["rows"][1]["in"]["chance"]["chance"] == pytest.approx(sum(1 / k for k in (4, 3, 5) * 4) / 12)
    with pytest.raises(SystemExit, match="has neither calib_mmlu nor calib_sciq"):
        main(["table", "--run", f"adapter={ev}", "--in-task", "calib_mmlu", "--out-task", "calib_sciq"])


@pytest.mark.parametrize("argv, message", [
    (["demo", "--seeds", "0"], "argument --seeds: needs a count >= 1"),
    (["demo", "--seeds", "abc"], "argument --seeds: needs a count >= 1"),
    (["demo", "--seeds", "2,2"], "distinct seeds >= 0, got '2,2'"),
    (["demo", "--seeds", "1,-3"], "got '1,-3'"),
    (["demo", "--parallel", "0"], "argument --parallel: needs an integer >= 1, got '0'"),
    (["demo", "--parallel", "two"], "argument --parallel: needs an integer >= 1, got 'two'"),
    (["diagnose", "--model", "/no/such/model", "--data", "x.jsonl"],
     "--model /no/such/model: this command runs offline, so it needs a local model or adapter folder"),
    (["diagnose", "--model", "org/model", "--data", "x.jsonl"], "--model org/model: this command runs offline"),
    (["eval", "--model", "./no_such_dir", "--output-dir", "ev"], "--model ./no_such_dir: no such folder"),
    (["temperature", "--fit", "a", "--apply", "a", "--fit-fraction", "2"], "argument --fit-fraction: needs a fraction"),
    (["temperature", "--fit", "a", "--apply", "a", "--fit-fraction", "nan"], "needs a fraction in (0, 1], got 'nan'"),
])
def test_bad_arguments_are_usage_errors_naming_the_flag(argv, message, capsys, tmp_path, monkeypatch):
    """Hostile input stops at argument parsing (exit 2, the flag and value named), never a traceback or a run
    that starts with a silently corrected value (``--parallel 0`` must not train with 1)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv + (["--out", str(tmp_path / "out")] if argv[0] == "demo" else []))
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_data_file_is_named_before_the_model_loads(tmp_path, tiny_model_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["diagnose", "--model", str(tiny_model_dir), "--data-files", str(tmp_path / "held.jsonl"),
              "--train-data-files", str(tmp_path / "train.jsonl")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--data-files {tmp_path / 'held.jsonl'}: no such file" in err
    assert "usage: axolotl-calib diagnose" in err  # the command's usage, not the top-level one


def test_seed_lists_parse():
    from axolotl_calib_plugin.cli.parser import parse_seeds

    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,4, 7") == [0, 4, 7] and parse_seeds("5,") == [5]
    import argparse

    # "0" is a count, not seed 0: the message says how to ask for seed 0 alone
    with pytest.raises(argparse.ArgumentTypeError, match="needs a count >= 1 .* got '0' \\(a count: seed 0 alone is '0,'\\)"):
        parse_seeds("0")
    for bad in ("-2", "x", "1,1", ","):
        with pytest.raises(argparse.ArgumentTypeError, match="needs a count >= 1"):
            parse_seeds(bad)


@pytest.mark.parametrize("content, message", [
    ("", "empty.jsonl: no rows"),
    ('{"question": "q", "choices": "[\\"a\\", \\"b\\"]", "answer": "7"}\n',
     "line 1: field 'answer': index 7 is out of range for 2 choices"),
])
def test_bad_rows_end_with_the_row_error_not_a_traceback(content, message, tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "empty.jsonl"
    data.write_text(content)
    with pytest.raises(SystemExit) as exc:
        main(["diagnose", "--model", str(tiny_model_dir), "--data", str(data)])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "axolotl-calib diagnose: error: " in err and message in err and "Traceback" not in err


def test_temperature_fits_on_in_domain_samples_only_unless_told(tmp_path, capsys):
    """``--fit eval/base`` fits T on the in-domain task only: fitting on every task in the folder would leak the
    out-of-domain ARC into the fit."""
    import numpy as np

    rng = np.random.default_rng(1)
    ev = tmp_path / "ev"
    ev.mkdir()
    for task, sharpen in (("calib_in_domain_pooled", 3.0), ("calib_arc_challenge", 0.5)):
        z = rng.normal(scale=1.5, size=(400, 4))
        labels = [int(rng.choice(4, p=np.exp(r) / np.exp(r).sum())) for r in z]
        _write_samples(ev / f"samples_{task}_2026-01-01T00-00-00.000001.jsonl", z * sharpen, labels)
    ts = tmp_path / "ts"
    assert main(["temperature", "--fit", str(ev), "--fit-fraction", "0.1", "--apply", str(ev),
                 "--output-dir", str(ts)]) == 0
    out = capsys.readouterr().out
    assert "fitted by NLL on 40 questions of 1 file(s), tasks calib_in_domain_pooled;" in out
    rep = json.loads((ts / "calibration_report.json").read_text())
    assert rep["meta"]["fit_tasks"] == ["calib_in_domain_pooled"] and abs(rep["meta"]["temperature"] - 3.0) < 0.6
    ind, arc = rep["tasks"]["calib_in_domain_pooled"], rep["tasks"]["calib_arc_challenge"]
    assert (ind["n"], ind["n_fitted"], ind["held_out"]) == (360, 40, True)
    assert (arc["n"], arc["n_fitted"], arc["held_out"]) == (400, 0, True)

    arc_file = str(next(ev.glob("samples_calib_arc_challenge_*")))
    with pytest.raises(SystemExit) as exc:  # naming an out-of-domain file is not enough: say so with --fit-tasks
        main(["temperature", "--fit", arc_file, "--apply", arc_file])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "usage: axolotl-calib temperature" in err
    assert "task calib_arc_challenge is not one T is fitted on" in err and "--fit-tasks calib_arc_challenge" in err
    assert main(["temperature", "--fit", arc_file, "--apply", arc_file, "--fit-tasks", "calib_arc_challenge"]) == 0
    assert "| calib_arc_challenge | 400 | FITTED (in-sample) |" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- one vocabulary of flags
def _flag_actions():
    """``{flag: [(command, action)]}`` over every subcommand's parser (help excluded)."""
    _, commands = _subparsers()
    flags: dict[str, list] = {}
    for name, sub in commands.items():
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    flags.setdefault(flag, []).append((name, action))
    return flags


def test_every_flag_means_the_same_in_every_command():
    """Same flag -> same dest, type, nargs, choices, metavar, default and meaning (the registry's help text, a
    command adding only its role after it); one flag per dest; every flag used by two commands comes from the
    registry; task flags take task names, data-file flags MCQ files; model loaders share device/dtype/batch."""
    import argparse

    from axolotl_calib_plugin.cli.parser import SHARED_FLAGS

    flags = _flag_actions()
    for flag, uses in flags.items():
        if len({cmd for cmd, _ in uses}) > 1:
            assert flag in SHARED_FLAGS, f"{flag} is used by {sorted(c for c, _ in uses)} but not defined once"
        if flag not in SHARED_FLAGS:
            continue
        spec = SHARED_FLAGS[flag]
        ref = argparse.ArgumentParser().add_argument(flag, **spec)  # what the registry's definition builds
        for cmd, action in uses:
            where = f"{cmd} {flag}"
            assert action.option_strings == [flag], where  # no second spelling beside it
            assert action.dest == flag[2:].replace("-", "_"), where
            assert type(action) is type(ref), where  # same action (store, store_true, ...)
            for attr in ("type", "nargs", "choices", "metavar", "const"):
                assert getattr(action, attr) == getattr(ref, attr), (where, attr)
            if not action.required:
                assert action.default == ref.default, (where, action.default)
            assert action.help == spec["help"] or action.help.startswith(spec["help"] + ": "), where
    dests: dict[str, set] = {}
    for flag, uses in flags.items():
        for _, action in uses:
            dests.setdefault(action.dest, set()).add(tuple(action.option_strings))
    assert all(len(v) == 1 for v in dests.values()), {k: v for k, v in dests.items() if len(v) > 1}
    task_flags = [f for f in flags if f.endswith("-tasks")]
    file_flags = [f for f in flags if f.endswith("-data-files")]
    assert task_flags == ["--tasks", "--fit-tasks"]
    assert file_flags == ["--data-files", "--ood-data-files", "--train-data-files"]
    for f in task_flags:
        assert all(a.type is SHARED_FLAGS["--tasks"]["type"] for _, a in flags[f])
    for f in file_flags:
        assert all(a.nargs == "+" and a.help.startswith(SHARED_FLAGS["--data-files"]["help"]) for _, a in flags[f])
    assert not {"--out", "--data", "--plots", "--json-file"} & set(flags)  # old spellings are not flags any more
    _, commands = _subparsers()
    loaders = {cmd for cmd, _ in flags["--model"]}
    assert loaders == {"eval", "diagnose", "preference", "reproduce"}
    for flag in ("--device", "--dtype", "--batch-size"):
        assert {cmd for cmd, _ in flags[flag]} == loaders, flag
    for flag in ("--base-model", "--tokenizer"):  # reproduce trains from a full model (an adapter is refused)
        assert {cmd for cmd, _ in flags[flag]} == loaders - {"reproduce"}, flag
    assert SHARED_FLAGS["--batch-size"]["default"] == 8 and SHARED_FLAGS["--device"]["default"] is None
    for name, sub in commands.items():
        assert not sub.allow_abbrev, name  # `table --out X` must not silently mean --out-task
        assert isinstance(sub, argparse.ArgumentParser)
        for old, new in sub.deprecated.items():
            assert new in sub._option_string_actions, (name, old, new)


def test_old_spellings_the_docs_used_still_work_with_a_deprecation_note(capsys):
    p = build_parser()
    a = p.parse_args(["temperature", "--fit", "f", "--apply", "f", "--out", "ts"])
    assert a.output_dir == "ts" and "--out is deprecated, use --output-dir" in capsys.readouterr().err
    a = p.parse_args(["diagnose", "--model", "m", "--data", "d.jsonl", "--train-data=t.jsonl"])
    assert a.data_files == ["d.jsonl"] and a.train_data_files == ["t.jsonl"]
    assert p.parse_args(["table", "--run", "A=x", "--plots", "cmp"]).output_dir == "cmp"
    with pytest.raises(SystemExit):
        p.parse_args(["table", "--run", "A=x", "--out", "calib_sciq"])  # neither a task flag --out nor an abbreviation
    assert "unrecognized arguments: --out calib_sciq" in capsys.readouterr().err


EARLY = '''
import json, sys, time
from axolotl_calib_plugin.cli import main
t0 = time.perf_counter()
try:
    main(json.loads(sys.argv[1]))
    code = 0
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "seconds": time.perf_counter() - t0,
                  "loaded": sorted(m for m in ("torch", "lm_eval", "transformers") if m in sys.modules)}))
'''


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "{model}", "--tasks", "calib_mmlu_typo", "--output-dir", "{tmp}/ev"],
     "--tasks: unknown task 'calib_mmlu_typo' (did you mean calib_mmlu?)"),
    (["eval", "--model", "{model}", "--tasks", "calib_jsonl", "--data-files", "{tmp}/none.jsonl", "--output-dir", "x"],
     "--data-files {tmp}/none.jsonl: no such file"),
    (["eval", "--model", "{model}", "--data-dir", "{tmp}/nodir", "--output-dir", "{tmp}/ev"], "--data-dir {tmp}/nodir: no such folder"),
    (["diagnose", "--model", "{model}", "--data-files", "{tmp}/none.jsonl"], "--data-files {tmp}/none.jsonl: no such file"),
    (["diagnose", "--model", "{model}", "--data-files", "{data}", "--tokenizer", "{tmp}/tok"],
     "--tokenizer {tmp}/tok: this command runs offline, so it needs a local tokenizer folder"),
    (["temperature", "--fit", "{tmp}/nothing", "--apply", "{tmp}"], "--fit {tmp}/nothing: no such file or folder"),
    (["temperature", "--fit", "{tmp}", "--apply", "{tmp}"], "--fit {tmp}: no lm-eval samples_<task>_<time>.jsonl files"),
    (["temperature", "--fit", "{tmp}", "--apply", "{tmp}", "--fit-tasks", "calib_mmlu,calib_arc"],
     "--fit-tasks: unknown task 'calib_arc' (did you mean calib_arc_challenge or "),
    (["table", "--run", "A={tmp}/nothing"], "--run A={tmp}/nothing: no such file or folder"),
    (["preference", "--model", "{model}", "--pairs", "{tmp}/none.jsonl", "--output-dir", "{tmp}/p"],
     "--pairs {tmp}/none.jsonl: no such file (a preference file: prompt, chosen, rejected per row)"),
    (["preference", "--model", "{model}", "--pairs", "{data}", "--reference", "{tmp}/ref", "--output-dir", "{tmp}/p"],
     "--reference {tmp}/ref: no such folder"),
    (["table", "--run", "A={tmp}", "--run", "A={tmp}"], "--run A: two runs named 'A'"),
    (["table", "--run", "A={tmp}"], "--run A={tmp}: {tmp}: no calibration_report.json"),
    (["table", "--run", "A={tmp}", "--out-task", "calib_arc_chalenge"], "--out-task: unknown task 'calib_arc_chalenge'"),
    (["eval", "--model", "{tmp}/adapter", "--tasks", "calib_mmlu", "--output-dir", "{tmp}/ev"],
     "--model {tmp}/adapter/adapter_config.json: its base model './outputs/tiny-model' is a local path that does not "
     "exist from here"),
])
def test_unknown_tasks_and_bad_paths_fail_fast_with_the_commands_usage(argv, message, tmp_path, tiny_model_dir, mcq_rows):
    """Before any model (torch, lm-eval) is loaded, with the subcommand's usage: no traceback, no bare KeyError,
    no top-level usage."""
    data = mcq_rows(4, num_options=4, seed=0, name="d.jsonl")
    (tmp_path / "adapter").mkdir()  # as Axolotl saves a LoRA run whose config said base_model: ./outputs/tiny-model
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "./outputs/tiny-model"}))
    fill = {"model": tiny_model_dir, "tmp": str(tmp_path), "data": str(data)}
    argv = [a.format(**fill) for a in argv]
    proc = subprocess.run([sys.executable, "-c", EARLY, json.dumps(argv)], capture_output=True, text=True, timeout=120)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # "fails fast" is asserted structurally: nothing heavy (torch, lm-eval, transformers) was imported before the
    # error; the wall time (result["seconds"], ~0.3 s on an idle core) is load-dependent and no unit test times it.
    assert result["code"] == 2 and result["loaded"] == [], result
    assert f"usage: axolotl-calib {argv[0]}" in proc.stderr and f"axolotl-calib {argv[0]}: error: " in proc.stderr
    assert message.format(**fill) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "KeyError" not in proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["make-tiny", "--output-dir", "{tmp}/m", "--hidden", "0"], "--hidden: needs an integer >= 1"),
    (["make-tiny", "--output-dir", "{tmp}/m", "--hidden", "6"], "--hidden must be a multiple of 4"),
    (["make-tiny", "--output-dir", "{tmp}/m", "--layers", "-1"], "--layers: needs an integer >= 1"),
    (["diagnose", "--model", "{tmp}", "--data-files", "{tmp}/ok.jsonl", "--acc-star", "65"],
     "needs an accuracy in [0, 1] (0.65, not 65)"),
    (["diagnose", "--model", "{tmp}", "--data-files", "{tmp}/ok.jsonl", "--acc-star", "nan"], "needs an accuracy"),
    (["temperature", "--fit", "{tmp}/cut", "--apply", "{tmp}/cut"], "the file is damaged"),
    (["table", "--run", "A={tmp}/badrun"], "is not valid JSON"),
])
def test_hostile_values_are_usage_errors_naming_the_flag_or_file(argv, message, tmp_path, capsys):
    """A tiny model of zero width or no layers, a percentage as an oracle accuracy, a samples file or a run report
    cut mid-write: each a usage error that says what is wrong, never a traceback or a silently wrong model/verdict."""
    (tmp_path / "ok.jsonl").write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "samples_calib_jsonl_2026-01-01T00-00-00.jsonl").write_text('{"doc_id": 0, "conf_ece": {"probs": [0.5')
    bad = tmp_path / "badrun"
    bad.mkdir()
    (bad / "calibration_report.json").write_text('{"tasks": {"calib_jsonl": {"acc": 0.5,')
    with pytest.raises(SystemExit) as e:
        main([x.replace("{tmp}", str(tmp_path)) for x in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "m").exists()


def test_make_tiny_names_a_bad_row_of_its_corpus(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"choices": ["a", "b"], "answer": 1}\n')
    with pytest.raises(SystemExit) as e:
        main(["make-tiny", "--output-dir", str(tmp_path / "m"), "--data-files", str(bad)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "line 2" in err and "question" in err and "Traceback" not in err, err
