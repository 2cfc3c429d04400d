"""``axolotl-calib table`` compares runs on the questions they share, with paired differences (hand-computed
cases: two options, 10 equal-width bins)."""

from __future__ import annotations

import json

import pytest

from axolotl_calib_plugin.cli import main
from axolotl_calib_plugin.eval.compare import build_table, render_markdown

TASK = "calib_in_domain_pooled"
OOD = "calib_arc_challenge"


def _sample(doc_id, probs, gold, *, question: str | None = None, letters="ABCDEFGHIJ", chat: bool = False,
            lm_eval: bool = True) -> dict:
    """One line of a calib task's samples file as lm-eval 0.4.11's evaluator logs it (``doc``, ``arguments``,
    ``doc_hash``, ``prompt_hash``, ``target_hash`` and the task's per-question item); ``lm_eval=False``: only the
    doc id and the item (what older files and hand-made ones hold)."""
    from lm_eval.utils import hash_string

    from axolotl_calib_plugin.prompts import format_mcq_prompt

    item = {"probs": probs, "gold": g if (g := gold) is not None else 0, "logliks": []}
    if not lm_eval:
        return {"doc_id": doc_id, "conf_ece": item}
    choices = [f"option {j} of question {doc_id}" for j in range(len(probs))]
    doc = {"id": str(doc_id), "question": question or f"question {doc_id}?", "choices": choices, "gold": gold,
           "source": "data.jsonl", "letters": list(letters)}
    ctx = format_mcq_prompt(doc["question"], choices, list(letters))
    if chat:
        ctx = f"<|im_start|>user\n{ctx}<|im_end|>\n<|im_start|>assistant\n"
    return {"doc_id": doc_id, "doc": doc, "target": gold,
            "arguments": [[ctx, f" {letters[j]}"] for j in range(len(probs))],
            "doc_hash": hash_string(json.dumps(doc, indent=2, ensure_ascii=False)), "prompt_hash": hash_string(ctx),
            "target_hash": hash_string(str(gold)), "acc": float(probs.index(max(probs)) == gold),
            "conf_ece": item, "cw_ece": item}


def _run(folder, tasks: dict, samples: bool = True, held_out: dict | None = None, **sample_kw):
    """A run folder: calibration_report.json with the tasks' metrics (as the report writes them) and, if
    ``samples``, lm-eval samples files of the items. ``tasks``: {task: [(doc_id, probs, gold), ...]};
    ``sample_kw``: how the questions were asked (:func:`_sample`)."""
    from axolotl_calib_plugin.eval.compare import metrics_of_items

    folder.mkdir()
    report = {}
    for task, rows in tasks.items():
        items = [{"doc_id": d, "probs": p, "gold": g, "logliks": []} for d, p, g in rows]
        m = metrics_of_items(items)
        report[task] = {"kind": "task", "acc": m["accuracy"], "conf_ece": m["conf_ece"], "cw_ece": m["cw_ece"],
                        "n": len(items)}
        if held_out and task in held_out:
            report[task]["held_out"] = held_out[task]
        if samples:
            with open(folder / f"samples_{task}_2026-01-01T00-00-00.000001.jsonl", "w", encoding="utf-8") as fh:
                for d, p, g in rows:
                    fh.write(json.dumps(_sample(d, p, g, **sample_kw)) + "\n")
    (folder / "calibration_report.json").write_text(json.dumps({"tasks": report}))
    return str(folder)


# BASE scored 4 questions; TS (fitted on doc 0) the other 3. On docs 1-3, BASE: confidences 0.9 (wrong), 0.7,
# 0.7 (right) -> conf-ECE 1/3*0.9 + 2/3*0.3 = 0.5, cw-ECE 0.5, acc 2/3; on all 4 (doc 0: 0.9, right) conf-ECE is
# 2/4*|0.5-0.9| + 2/4*0.3 = 0.35. TS: 0.6 everywhere, 2 of 3 right -> conf-ECE = cw-ECE = |2/3 - 0.6| = 1/15.
BASE = [(0, [0.9, 0.1], 0), (1, [0.9, 0.1], 1), (2, [0.7, 0.3], 0), (3, [0.7, 0.3], 0)]
TS = [(1, [0.6, 0.4], 1), (2, [0.6, 0.4], 0), (3, [0.6, 0.4], 0)]


def test_table_pairs_the_questions_runs_share(tmp_path):
    base = _run(tmp_path / "base", {TASK: BASE})
    ts = _run(tmp_path / "ts", {TASK: TS})
    unpaired = _run(tmp_path / "lm_eval_only", {TASK: BASE}, samples=False)
    table = build_table([("BASE", base), ("TS", ts), ("OTHER", unpaired)], TASK, OOD, n_boot=200)
    b, t, o = table["rows"]
    assert b["in"]["conf_ece"] == pytest.approx(0.5, abs=1e-12) and b["in"]["acc"] == pytest.approx(2 / 3)
    assert b["in"]["cw_ece"] == pytest.approx(0.5, abs=1e-12)
    assert (b["in"]["n"], b["in"]["n_own"]) == (3, 4)  # not the 0.35 of its own 4 questions
    assert t["in"]["conf_ece"] == pytest.approx(1 / 15, abs=1e-12) and (t["in"]["n"], t["in"]["n_own"]) == (3, 3)
    assert o["in"]["conf_ece"] == pytest.approx(0.35, abs=1e-12) and "n_own" not in o["in"]  # no samples: its own
    assert table["shared"]["in"] == {"n": 3, "reference": "BASE", "own_n": {"BASE": 4, "TS": 3}}
    d = t["paired"]["in"]
    assert d["vs"] == "BASE" and d["n"] == 3
    assert d["conf_ece"]["diff"] == pytest.approx(1 / 15 - 0.5, abs=1e-12)
    assert d["cw_ece"]["diff"] == pytest.approx(1 / 15 - 0.5, abs=1e-12)
    # both runs are right on the same questions, so every paired resample has the same accuracy
    assert (d["acc"]["diff"], d["acc"]["lo"], d["acc"]["hi"]) == (0.0, 0.0, 0.0)
    assert d["conf_ece"]["lo"] <= d["conf_ece"]["diff"] <= d["conf_ece"]["hi"] < 0.2
    assert not b["paired"] and not o["paired"]

    md = render_markdown(table)
    # 2 of 3 right with 2 options: the accuracy's interval contains chance 0.5, so the cell is flagged
    assert "| BASE | 0.5000 | - | 0.5000 | - | 0.6667 (!) | - |" in md
    assert b["in"]["chance"]["chance"] == 0.5 and b["in"]["chance"]["n"] == 3 and b["in"]["chance"]["near_chance"]
    assert "BASE / calib_in_domain_pooled: WARNING: accuracy 0.6667 is within noise of chance 0.5000 (1/K)" in md
    assert "chance" not in o["in"]  # no samples: no predicted letters to count
    assert "question hashes" not in md  # lm-eval samples: paired by content, no fallback note
    assert "| TS | -0.4333 [" in md and "compared on the 3 questions all runs scored (BASE 4, TS 3)" in md
    assert "OTHER without lm-eval samples: own questions, not paired" in md


def test_table_marks_in_sample_cells_and_refuses_to_pair_other_data(tmp_path, capsys):
    base = _run(tmp_path / "base", {TASK: BASE, OOD: BASE})
    ts = _run(tmp_path / "ts", {TASK: TS, OOD: TS}, held_out={TASK: False, OOD: True})
    other = [(d, p, 1 - g) for d, p, g in BASE]  # same doc ids, other answers: other questions
    diff = _run(tmp_path / "other_data", {TASK: other})
    assert main(["table", "--run", f"BASE={base}", "--run", f"TS={ts}", "--output-dir", str(tmp_path / "cmp")]) == 0
    md = capsys.readouterr().out
    assert "| TS | 0.0667* | 0.0667 |" in md and "TS: calib_in_domain_pooled is IN-SAMPLE" in md
    saved = json.loads((tmp_path / "cmp" / "calibration_table.json").read_text())
    assert saved["shared"]["out"]["n"] == 3
    assert (tmp_path / "cmp" / "calibration_table.md").read_text().strip() == md.split("\nJSON:")[0].strip()
    with pytest.raises(ValueError, match="'BASE' and 'X' were scored on different question files: doc 0 is another "
                                         r"question in each \(4 of the 4 doc ids both scored differ\)"):
        build_table([("BASE", base), ("X", diff)], TASK, OOD, n_boot=10)


def test_table_writes_its_diagrams_in_the_requested_format(tmp_path):
    base = _run(tmp_path / "base", {TASK: BASE, OOD: BASE})
    ts = _run(tmp_path / "ts", {TASK: TS, OOD: TS})
    out = tmp_path / "cmp"
    assert main(["table", "--run", f"BASE={base}", "--run", f"TS={ts}", "--output-dir", str(out),
                 "--plot-format", "svg"]) == 0
    svgs = sorted(p.name for p in out.glob("reliability_compare_*"))
    assert svgs == [f"reliability_compare_{OOD}.svg", f"reliability_compare_{TASK}.svg"]
    assert (out / svgs[0]).read_bytes().startswith(b"<?xml")


def test_lm_eval_files_are_found_by_lm_eval_names(tmp_path):
    """Samples and results files as lm-eval's EvaluationTracker names them (``<model>/samples_<task>_<time>.jsonl``,
    ``results_<time>.json``; folder names with ``_``): per task the newest samples file; results merged oldest
    first so the newest file wins a task; other ``*.jsonl`` files are not samples files."""
    from axolotl_calib_plugin.eval.samples import find_samples, load_results, samples_task

    model = tmp_path / "my_model__dir"
    model.mkdir()
    old, new = "2025-01-02T03-04-05.000001", "2025-01-02T10-00-00.5"
    for task, stamp in (("calib_jsonl", old), ("calib_jsonl", new), ("calib_arc_challenge", old)):
        (model / f"samples_{task}_{stamp}.jsonl").write_text("")
    (model / "samples_notes.jsonl").write_text("")  # no time stamp: not lm-eval's
    assert find_samples(str(tmp_path)) == {"calib_arc_challenge": str(model / f"samples_calib_arc_challenge_{old}.jsonl"),
                                           "calib_jsonl": str(model / f"samples_calib_jsonl_{new}.jsonl")}
    assert samples_task(str(model / f"samples_calib_jsonl_{new}.jsonl")) == "calib_jsonl"
    with pytest.raises(ValueError, match="samples_notes.jsonl: not an lm-eval samples file"):
        samples_task(str(model / "samples_notes.jsonl"))
    assert find_samples(str(tmp_path / "none")) == {}

    def results(acc_a, acc_b=None):
        res = {"results": {"calib_jsonl": {"acc,none": acc_a}}, "n-samples": {"calib_jsonl": {"effective": 4}}}
        if acc_b is not None:
            res["results"]["calib_sciq"] = {"acc,none": acc_b}
        return json.dumps(res)

    (model / f"results_{new}.json").write_text(results(0.75))
    (model / f"results_{old}.json").write_text(results(0.25, 0.5))
    got = load_results(str(tmp_path))
    assert (got["calib_jsonl"]["acc"], got["calib_jsonl"]["n"], got["calib_sciq"]["acc"]) == (0.75, 4, 0.5)


def test_signed_differences_that_round_to_zero_print_plus_zero():
    from axolotl_calib_plugin.eval.compare import _fmt_diff
    from axolotl_calib_plugin.eval.report import fmt_signed

    assert fmt_signed(-0.00004) == "+0.0000" and fmt_signed(-0.0) == "+0.0000" and fmt_signed(0.0) == "+0.0000"
    assert fmt_signed(-0.00005001) == "-0.0001" and fmt_signed(0.01234) == "+0.0123"
    assert fmt_signed(-0.004, digits=2) == "+0.00"
    assert _fmt_diff({"diff": -0.00001, "lo": -0.0123, "hi": 0.00002}) == "+0.0000 [-0.0123, +0.0000]"
    assert _fmt_diff(None) == "-"


def test_table_refuses_runs_over_different_question_files(tmp_path, capsys):
    """Two files of equal length, same golds and option counts row by row: by doc id they look like the same
    questions; their contents differ, so the table refuses instead of pairing them (and so for a file that
    shares only some rows at the same positions)."""
    a = _run(tmp_path / "heldout", {TASK: BASE})
    b = _run(tmp_path / "train", {TASK: BASE}, question="a training question")
    with pytest.raises(ValueError, match=r"'A' and 'B' were scored on different question files: doc 0 is another "
                                         r"question in each \(4 of the 4 doc ids"):
        build_table([("A", a), ("B", b)], TASK, OOD, n_boot=10)
    with pytest.raises(SystemExit, match="different question files"):
        main(["table", "--run", f"A={a}", "--run", f"B={b}"])
    # the same questions at other positions (another file order) pair by content, not by doc id
    moved = _run(tmp_path / "moved", {TASK: [(d + 10, p, g) for d, p, g in BASE]})
    with pytest.raises(ValueError, match="the runs share no question"):
        build_table([("A", a), ("M", moved)], TASK, OOD, n_boot=10)  # question text names its doc id: other questions


def test_table_pairs_the_same_questions_by_content_and_refuses_other_prompts(tmp_path):
    """Plain vs chat-template prompts (or other letters) of the same questions: refused by default, naming where the
    prompts differ; with allow_different_prompts compared and noted. Keys are question contents."""
    from axolotl_calib_plugin.eval.compare import question_keys
    from axolotl_calib_plugin.eval.samples import read_samples

    plain = _run(tmp_path / "plain", {TASK: BASE})
    chat = _run(tmp_path / "chat", {TASK: TS}, chat=True)
    letters = _run(tmp_path / "letters", {TASK: TS}, letters="EDCBA")
    with pytest.raises(ValueError, match=r"'P' and 'C' asked the same questions with different prompts \(3 of 3 "
                                         r"differ; doc 1: P has \"question 1\?.*\", C has \"<\|im_start\|>user"):
        build_table([("P", plain), ("C", chat)], TASK, OOD, n_boot=10)
    with pytest.raises(ValueError, match=r"doc 1: P has .*A\. option 0.*L has .*E\. option 0"):
        build_table([("P", plain), ("L", letters)], TASK, OOD, n_boot=10)
    table = build_table([("P", plain), ("C", chat)], TASK, OOD, n_boot=10, allow_different_prompts=True)
    assert table["rows"][1]["paired"]["in"]["n"] == 3
    assert any(n.startswith("DIFFERENT PROMPTS: calib_in_domain_pooled: runs 'P' and 'C'") for n in table["notes"])
    with pytest.raises(SystemExit, match="--allow-different-prompts"):
        main(["table", "--run", f"P={plain}", "--run", f"C={chat}"])
    assert main(["table", "--run", f"P={plain}", "--run", f"C={chat}", "--allow-different-prompts"]) == 0
    # a question that occurs twice in a file stays two questions
    items = read_samples(next((tmp_path / "plain").glob("samples_*")))
    twice = [dict(items[1]), dict(items[1], doc_id=7)]
    assert [k[1] for k in question_keys(twice)] == [0, 1]


def test_table_refuses_the_same_task_in_both_columns_and_notes_unverified_pairs(tmp_path, capsys):
    base = _run(tmp_path / "base", {TASK: BASE})
    with pytest.raises(ValueError, match="--in-task and --out-task are both calib_in_domain_pooled"):
        build_table([("BASE", base)], TASK, TASK)
    with pytest.raises(SystemExit, match="--in-task and --out-task are both"):
        main(["table", "--run", f"BASE={base}", "--in-task", TASK, "--out-task", TASK])
    old_a = _run(tmp_path / "old_a", {TASK: BASE}, lm_eval=False)
    old_b = _run(tmp_path / "old_b", {TASK: TS}, lm_eval=False)
    table = build_table([("A", old_a), ("B", old_b)], TASK, OOD, n_boot=10)
    assert table["shared"]["in"]["n"] == 3
    assert any("A, B: samples without question hashes" in n and "NOT checked" in n for n in table["notes"])


def test_table_flags_a_run_that_answers_one_letter(tmp_path):
    """A run with the argmax on option A for all 40 questions (golds spread over A-D): accuracy 10/40 is chance,
    and A takes 100 % of the answers (25 % of golds); a spread-out run of the same questions is not flagged."""
    rows_a = [(i, [0.4, 0.2, 0.2, 0.2], i % 4) for i in range(40)]
    rows_b = [(i, [0.7 if j == i % 4 else 0.1 for j in range(4)], i % 4)
              for i in range(40)]
    one = _run(tmp_path / "one", {TASK: rows_a})
    good = _run(tmp_path / "good", {TASK: rows_b})
    table = build_table([("ONE", one), ("GOOD", good)], TASK, OOD, n_boot=10)
    ch = table["rows"][0]["in"]["chance"]
    assert (ch["accuracy"], ch["chance"], ch["predicted"], ch["gold"]) == (0.25, 0.25, [40, 0, 0, 0], [10, 10, 10, 10])
    assert ch["near_chance"] and ch["one_letter"] and ch["one_letter_threshold"] == 0.5
    assert not table["rows"][1]["in"]["chance"]["warnings"]
    md = render_markdown(table)
    assert "| ONE |" in md and "0.2500 (!)" in md and "| GOOD | " in md and "1.0000 (!)" not in md
    assert "ONE / calib_in_domain_pooled: WARNING: one letter takes most answers: A is the model's answer on 40 of 40" in md


def test_comparison_diagram_draws_the_tables_questions(tmp_path):
    """The diagram of a column shows the same n and numbers as the table: BASE scored 4 questions, TS 3; both
    are drawn on the 3 shared ones (BASE's legend: conf-ECE 0.5000, acc 0.6667, n = 3, as its table cell; not
    the 0.35 of its own 4), and the title says which questions."""
    from axolotl_calib_plugin.eval.compare import comparison_models
    from axolotl_calib_plugin.eval.plots import plot_comparison

    base = _run(tmp_path / "base", {TASK: BASE})
    ts = _run(tmp_path / "ts", {TASK: TS})
    runs = [("BASE", base), ("TS", ts)]
    table = build_table(runs, TASK, OOD, n_boot=10)
    models, scope = comparison_models(runs, TASK)
    assert scope == "the 3 questions all runs scored (of BASE 4, TS 3)"
    assert [len(m[1]) for m in models.values()] == [3, 3]
    fig = plot_comparison(models, title=f"{TASK} on {scope}")
    entries = [t.get_text() for t in fig.legends[0].get_texts()]
    cell = table["rows"][0]["in"]
    assert entries[1] == f"BASE: conf-ECE {cell['conf_ece']:.4f}, acc {cell['acc']:.4f}, n = {cell['n']} questions"
    assert entries[1] == "BASE: conf-ECE 0.5000, acc 0.6667, n = 3 questions"
