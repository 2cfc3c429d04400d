"""lm-eval calib_* tasks: real `lm_eval` CLI + Python API on a tiny local Llama, checked against an
independent direct forward pass (letter logits at the last prompt position, softmax over K letters,
shared metrics core). Offline: local fixtures via CALIB_LM_EVAL_DATA_DIR, never the hub.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from axolotl_calib_plugin import metrics
from axolotl_calib_plugin.prompts import DEFAULT_LETTERS, format_mcq_prompt
from axolotl_calib_plugin.rows import answer_to_index
from axolotl_calib_plugin.testing import build_llama, build_tokenizer
from helpers import load_task_utils

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "lm_eval_tasks"
CALIB = TASKS / "calib"
DATA = CALIB / "data"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true", "AXOLOTL_DO_NOT_TRACK": "1"}
for _k, _v in OFFLINE.items():
    os.environ.setdefault(_k, _v)

IN_DOMAIN = ["calib_mmlu", "calib_medmcqa", "calib_openbookqa"]
OUT_DOMAIN = ["calib_arc_challenge", "calib_commonsense_qa", "calib_sciq"]
TOL = 1e-6
#: per-probability tolerance: the harness runs float32 forwards in padded batches of 8, the reference one
#: prompt at a time; logits of magnitude ~10 then differ by ~1e-6 relative.
PROB_TOL = 2e-5


U = load_task_utils("calib_task_utils")


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _labelled(r, qkey):
    return r[qkey], r["choices"]["text"], [str(x) for x in r["choices"]["label"]].index(r["answerKey"])


def _sciq(r):
    raw = [r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]]
    order = U.sciq_order(r["question"])
    return r["question"], [raw[i] for i in order], order.index(3)


# Independent reading of each hub schema (not utils' normalisers) -> (question, choices, gold).
RAW = {
    "calib_mmlu": lambda r: (r["question"], r["choices"], r["answer"]),
    "calib_medmcqa": lambda r: (r["question"], [r["opa"], r["opb"], r["opc"], r["opd"]], r["cop"]),
    "calib_openbookqa": lambda r: _labelled(r, "question_stem"),
    "calib_arc_challenge": lambda r: _labelled(r, "question"),
    "calib_commonsense_qa": lambda r: _labelled(r, "question"),
    "calib_sciq": _sciq,
}


def expected_docs(suite):
    if suite in RAW:
        return [RAW[suite](r) for r in _rows(DATA / f"{suite}.jsonl")]
    return [(r["question"], r["choices"], answer_to_index(r["answer"], r["choices"])) for r in _rows(suite)]


# ---------------------------------------------------------------------------------------------
# tiny model + the independent reference
# ---------------------------------------------------------------------------------------------


def _tiny_model():
    """Tiny random Llama whose letter distribution really depends on the prompt (std 0.2 weights,
    lm_head x2: confidences spread over 0.4..1.0, all four letters predicted), so a wrong prompt
    or position gives different numbers."""
    tok = build_tokenizer()
    model = build_llama(tok, seed=0)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.2)
        model.lm_head.weight.mul_(2.0)
    return tok, model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok, model = _tiny_model()
    d = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return {"dir": str(d), "tok": tok, "model": model}


@torch.no_grad()
def reference_probs(tok, model, docs, prompt=format_mcq_prompt):
    """softmax over the K letter logits (" A", " B", ...) at the last prompt token."""
    letter_ids = []
    for lab in DEFAULT_LETTERS[:5]:
        ids = tok(" " + lab, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1
        letter_ids.append(ids[0])
    out = []
    for q, choices, _ in docs:
        enc = tok(prompt(q, choices), return_tensors="pt")
        logits = model(**enc).logits[0, -1].double()
        out.append(torch.softmax(logits[letter_ids[: len(choices)]], dim=0).tolist())
    return out


def pad(probs):
    k = max(len(p) for p in probs)
    return np.array([list(p) + [0.0] * (k - len(p)) for p in probs])


def ref_metrics(probs, golds):
    """The three metrics of zero-padded probs with each row's K (cw-ECE for mixed K: metrics docstring)."""
    P, y, k = pad(probs), np.asarray(golds), np.array([len(p) for p in probs])
    return {"acc": metrics.accuracy(P, y), "conf_ece": metrics.conf_ece(P, y, 10),
            "cw_ece": metrics.cw_ece(P, y, 10, num_options=k)}


@pytest.fixture(scope="module")
def ref(tiny):
    """suite -> {docs, probs, metrics} from the direct forward pass."""
    out = {}
    for s in IN_DOMAIN + OUT_DOMAIN + [str(DATA / "mcq_sample.jsonl")]:
        docs = expected_docs(s)
        probs = reference_probs(tiny["tok"], tiny["model"], docs)
        out[s] = {"docs": docs, "probs": probs, "gold": [d[2] for d in docs],
                  "metrics": ref_metrics(probs, [d[2] for d in docs])}
    for pooled, parts in (("calib_in_domain_pooled", IN_DOMAIN), ("calib_out_domain_pooled", OUT_DOMAIN)):
        probs = sum((out[p]["probs"] for p in parts), [])
        gold = sum((out[p]["gold"] for p in parts), [])
        out[pooled] = {"probs": probs, "gold": gold, "metrics": ref_metrics(probs, gold)}
    return out


def assert_metrics(res, task, expected):
    r = res["results"][task]
    for m in ("acc", "conf_ece", "cw_ece"):
        assert r[f"{m},none"] == pytest.approx(expected[m], abs=TOL), (task, m, r[f"{m},none"], expected[m])


# ---------------------------------------------------------------------------------------------
# the real CLI: one run, many assertions
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_eval_out")
    ood = tmp_path_factory.mktemp("ood") / "ood.jsonl"
    # calib_jsonl_ood gets the ARC fixture converted to the project schema (answer as a letter).
    with open(ood, "w") as f:
        for q, c, g in expected_docs("calib_arc_challenge"):
            f.write(json.dumps({"question": q, "choices": c, "answer": "ABCDE"[g]}) + "\n")
    env = dict(os.environ, **OFFLINE, CALIB_LM_EVAL_DATA_DIR=str(DATA), CALIB_JSONL=str(DATA / "mcq_sample.jsonl"))
    env.pop("CALIB_JSONL_OOD", None)
    tasks = "calib_in_domain,calib_out_domain,calib_in_domain_pooled,calib_out_domain_pooled,calib_jsonl,calib_jsonl_ood"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={tiny['dir']},dtype=float32", "--device", "cpu",
           "--include_path", "lm_eval_tasks", "--tasks", tasks, "--batch_size", "8",
           "--metadata", json.dumps({"ood_data_files": str(ood)}),
           "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (results_file,) = glob.glob(str(out / "*" / "results_*.json"))
    samples = {}
    for f in glob.glob(str(out / "*" / "samples_*.jsonl")):
        task = os.path.basename(f)[len("samples_"):].rsplit("_", 1)[0]
        samples[task] = sorted(_rows(f), key=lambda s: s["doc_id"])
    return {"res": json.loads(Path(results_file).read_text()), "samples": samples, "stdout": proc.stdout,
            "ood_ref_key": "calib_arc_challenge"}


@pytest.mark.slow
def test_cli_metrics_equal_direct_forward(cli_run, ref):
    res = cli_run["res"]
    for s in IN_DOMAIN + OUT_DOMAIN + ["calib_in_domain_pooled", "calib_out_domain_pooled"]:
        assert_metrics(res, s, ref[s]["metrics"])
        assert res["n-samples"][s]["effective"] == len(ref[s]["gold"])
    assert_metrics(res, "calib_jsonl", ref[str(DATA / "mcq_sample.jsonl")]["metrics"])  # via $CALIB_JSONL
    assert_metrics(res, "calib_jsonl_ood", ref["calib_arc_challenge"]["metrics"])  # via --metadata
    # the printed table carries the three metrics
    for m in ("conf_ece", "cw_ece", "acc"):
        assert m in cli_run["stdout"]


@pytest.mark.slow
def test_cli_reference_is_discriminative(cli_run, tiny):
    """Negative control: the same comparison with the stock-MMLU subject header in the prompt gives
    different numbers, so the equality above really pins down the prompt and the position."""
    docs = expected_docs("calib_mmlu")
    header = lambda q, c: "The following are multiple choice questions (with answers).\n\n" + format_mcq_prompt(q, c)
    wrong = ref_metrics(reference_probs(tiny["tok"], tiny["model"], docs, prompt=header), [d[2] for d in docs])
    got = cli_run["res"]["results"]["calib_mmlu"]
    assert max(abs(got[f"{m},none"] - wrong[m]) for m in ("conf_ece", "cw_ece")) > 1e-3


@pytest.mark.slow
def test_cli_samples_carry_option_probs_and_prompt(cli_run, ref):
    for s in IN_DOMAIN + OUT_DOMAIN + ["calib_in_domain_pooled"]:
        rows = cli_run["samples"][s]
        assert len(rows) == len(ref[s]["gold"])
        for row, probs, gold in zip(rows, ref[s]["probs"], ref[s]["gold"]):
            for key in ("conf_ece", "cw_ece"):
                item = row[key]
                assert isinstance(item["probs"], list) and all(isinstance(p, float) for p in item["probs"])
                assert item["probs"] == pytest.approx(probs, abs=PROB_TOL)
                assert item["gold"] == gold and isinstance(item["gold"], int)
                # logliks = letter logits up to a constant: their softmax is the probs
                ll = np.array(item["logliks"])
                assert np.exp(ll - ll.max()) / np.exp(ll - ll.max()).sum() == pytest.approx(item["probs"], abs=1e-12)
            assert row["acc"] == float(int(np.argmax(probs)) == gold)
    # the request arguments are exactly the plugin's prompt + " A".." K" (prompt equality end to end)
    for s in IN_DOMAIN + OUT_DOMAIN:
        for row, (q, choices, _) in zip(cli_run["samples"][s], ref[s]["docs"]):
            args = [row["arguments"][f"gen_args_{j}"] for j in range(len(choices))]
            assert [a["arg_0"] for a in args] == [format_mcq_prompt(q, choices)] * len(choices)
            assert [a["arg_1"] for a in args] == [" " + lab for lab in DEFAULT_LETTERS[: len(choices)]]
            assert len(row["arguments"]) == len(choices)


@pytest.mark.slow
def test_cli_variable_k_arc(cli_run, ref):
    ks = [len(r["conf_ece"]["probs"]) for r in cli_run["samples"]["calib_arc_challenge"]]
    assert {3, 4, 5} <= set(ks)
    assert ks == [len(d[1]) for d in ref["calib_arc_challenge"]["docs"]]
    # the aggregation zero-pads to Kmax = 5 and hands each row's K with the padded matrix to the metrics core
    P, y = pad(ref["calib_arc_challenge"]["probs"]), ref["calib_arc_challenge"]["gold"]
    assert P.shape[1] == 5
    got = cli_run["res"]["results"]["calib_arc_challenge"]["cw_ece,none"]
    assert got == pytest.approx(metrics.cw_ece(P, y, num_options=ks), abs=TOL)
    assert abs(got - metrics.cw_ece(P, y)) > 1e-4  # padded zeros are not taken for real classes


@pytest.mark.slow
def test_cli_groups_vs_pooled(cli_run, ref):
    res = cli_run["res"]
    for group, parts, pooled in (("calib_in_domain", IN_DOMAIN, "calib_in_domain_pooled"),
                                 ("calib_out_domain", OUT_DOMAIN, "calib_out_domain_pooled")):
        g = res["groups"][group]
        sizes = np.array([len(ref[p]["gold"]) for p in parts], dtype=float)
        for m in ("acc", "conf_ece", "cw_ece"):
            weighted = float(np.dot(sizes, [ref[p]["metrics"][m] for p in parts]) / sizes.sum())
            assert g[f"{m},none"] == pytest.approx(weighted, abs=TOL), (group, m)
        # acc: the size-weighted mean IS the pooled accuracy; the ECEs are not
        assert g["acc,none"] == pytest.approx(res["results"][pooled]["acc,none"], abs=TOL)
        assert res["results"][pooled]["conf_ece,none"] == pytest.approx(ref[pooled]["metrics"]["conf_ece"], abs=TOL)
        assert abs(res["results"][pooled]["conf_ece,none"] - g["conf_ece,none"]) > 1e-3
        assert sorted(res["group_subtasks"][group]) == sorted(parts)


# ---------------------------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hflm(tiny):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=tiny["model"], tokenizer=tiny["tok"], batch_size=8)


def _evaluate(hflm, tasks, metadata=None):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS), include_defaults=False, metadata=metadata)
    return lm_eval.simple_evaluate(model=hflm, tasks=tasks, task_manager=tm, bootstrap_iters=0, log_samples=True)


def test_api_metrics_and_one_forward_per_question(hflm, tiny, ref, monkeypatch):
    monkeypatch.setenv("CALIB_LM_EVAL_DATA_DIR", str(DATA))
    rows = []
    hook = tiny["model"].register_forward_pre_hook(
        lambda mod, args, kwargs: rows.append((args[0] if args else kwargs["input_ids"]).shape[0]), with_kwargs=True)
    try:
        res = _evaluate(hflm, ["calib_mmlu", "calib_arc_challenge"])
    finally:
        hook.remove()
    for s in ("calib_mmlu", "calib_arc_challenge"):
        assert_metrics(res, s, ref[s]["metrics"])
        got = [smp["conf_ece"]["probs"] for smp in sorted(res["samples"][s], key=lambda x: x["doc_id"])]
        assert all(a == pytest.approx(b, abs=PROB_TOL) for a, b in zip(got, ref[s]["probs"]))
    docs = [d for s in ("calib_mmlu", "calib_arc_challenge") for d in ref[s]["docs"]]
    n_prompts = len({format_mcq_prompt(q, c) for q, c, _ in docs})  # identical prompts share one forward
    n_requests = sum(len(c) for _, c, _ in docs)
    assert n_requests >= 3 * n_prompts
    assert sum(rows) == n_prompts, f"{sum(rows)} forward rows for {n_prompts} distinct questions ({n_requests} requests)"
    # a group and its pooled task in one run: identical prompts share the forward across tasks
    rows.clear()
    hook = tiny["model"].register_forward_pre_hook(
        lambda mod, args, kwargs: rows.append((args[0] if args else kwargs["input_ids"]).shape[0]), with_kwargs=True)
    try:
        res = _evaluate(hflm, ["calib_in_domain", "calib_in_domain_pooled"])
    finally:
        hook.remove()
    assert_metrics(res, "calib_in_domain_pooled", ref["calib_in_domain_pooled"]["metrics"])
    in_docs = [d for s in IN_DOMAIN for d in ref[s]["docs"]]
    assert sum(rows) == len({format_mcq_prompt(q, c) for q, c, _ in in_docs})


@torch.no_grad()
def test_api_chat_template_matches_plugin_chat_format(hflm, tiny, monkeypatch):
    """--apply_chat_template: user turn = the same prompt, generation prompt, continuation = the bare
    letter (lm-eval drops target_delimiter), i.e. the plugin's calib_prompt_format: chat_template."""
    monkeypatch.setenv("CALIB_LM_EVAL_DATA_DIR", str(DATA))
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS), include_defaults=False)
    res = lm_eval.simple_evaluate(model=hflm, tasks=["calib_arc_challenge"], task_manager=tm, bootstrap_iters=0,
                                  log_samples=True, apply_chat_template=True)
    tok, model = tiny["tok"], tiny["model"]
    docs = expected_docs("calib_arc_challenge")
    bare = [tok(lab, add_special_tokens=False)["input_ids"] for lab in DEFAULT_LETTERS[:5]]
    assert all(len(b) == 1 for b in bare)
    probs = []
    for q, c, _ in docs:
        text = tok.apply_chat_template([{"role": "user", "content": format_mcq_prompt(q, c)}],
                                       add_generation_prompt=True, tokenize=False)
        logits = model(**tok(text, return_tensors="pt")).logits[0, -1].double()
        probs.append(torch.softmax(logits[[b[0] for b in bare[: len(c)]]], dim=0).tolist())
    assert_metrics(res, "calib_arc_challenge", ref_metrics(probs, [d[2] for d in docs]))
    smp = sorted(res["samples"]["calib_arc_challenge"], key=lambda x: x["doc_id"])[0]
    assert [a[1] for a in smp["arguments"]] == ["A", "B", "C"][: len(docs[0][1])]


def test_api_calib_jsonl_two_files_one_process(hflm, ref, tmp_path, monkeypatch):
    """What the demo does: in- and out-domain JSONL in one run (metadata), then again with other
    files via the environment, in the same process."""
    monkeypatch.delenv("CALIB_JSONL", raising=False)
    monkeypatch.delenv("CALIB_JSONL_OOD", raising=False)
    sample = DATA / "mcq_sample.jsonl"
    ood = tmp_path / "ood.jsonl"
    docs = ref["calib_mmlu"]["docs"][:12]
    ood.write_text("".join(json.dumps({"question": q, "choices": c, "answer": c[g]}) + "\n" for q, c, g in docs))
    res = _evaluate(hflm, ["calib_jsonl", "calib_jsonl_ood"], metadata={"data_files": str(sample), "ood_data_files": str(ood)})
    assert_metrics(res, "calib_jsonl", ref[str(sample)]["metrics"])
    assert_metrics(res, "calib_jsonl_ood", ref_metrics(ref["calib_mmlu"]["probs"][:12], ref["calib_mmlu"]["gold"][:12]))
    assert res["n-samples"]["calib_jsonl_ood"]["effective"] == 12
    # second evaluation in the same process, files swapped through the environment
    monkeypatch.setenv("CALIB_JSONL", str(ood))
    monkeypatch.setenv("CALIB_JSONL_OOD", str(sample))
    res2 = _evaluate(hflm, ["calib_jsonl", "calib_jsonl_ood"])
    assert res2["results"]["calib_jsonl"]["conf_ece,none"] == pytest.approx(res["results"]["calib_jsonl_ood"]["conf_ece,none"], abs=TOL)
    assert res2["results"]["calib_jsonl_ood"]["cw_ece,none"] == pytest.approx(res["results"]["calib_jsonl"]["cw_ece,none"], abs=TOL)


def test_api_malformed_data_names_file_and_row(hflm, tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?", "choices": ["a", "b"], "answer": 0}\n\n'
                   '{"question": "bad?", "choices": ["a", "b"], "answer": "C"}\n')
    monkeypatch.setenv("CALIB_JSONL", str(bad))
    with pytest.raises(ValueError, match=r"bad\.jsonl line 3: field 'answer'.*'C'"):
        _evaluate(hflm, ["calib_jsonl"])
    monkeypatch.delenv("CALIB_JSONL")
    with pytest.raises(ValueError, match=r"calib_jsonl needs an MCQ JSONL file.*CALIB_JSONL"):
        _evaluate(hflm, ["calib_jsonl"])


# ---------------------------------------------------------------------------------------------
# loaders / adapters (fast, no model)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suite, line, match",
    [
        ("calib_jsonl", '{"question": "q", "choices": ["a"], "answer": 0}', r"line 2: field 'choices' has 1 option"),
        ("calib_jsonl", '{"question": "q", "choices": ["a", "b"], "answer": 5}', r"line 2: field 'answer'.*out of range"),
        ("calib_jsonl", '{"question": "q", "choices": ["a", "b"]}', r"line 2: missing field 'answer'"),
        ("calib_jsonl", '{"question": "", "choices": ["a", "b"], "answer": 0}', r"line 2: field 'question' is empty"),
        ("calib_jsonl", '{"question": "q", "choices": "a,b", "answer": 0}', r"line 2: field 'choices' is a string but not a list"),
        ("calib_jsonl", '{"question": "q", "choices": ["a", "b"], "answer": 0', r"line 2: not valid JSON"),
        ("calib_jsonl", '["q", ["a", "b"], 0]', r"line 2: expected a JSON object"),
        ("calib_jsonl", '{"question": "q", "choices": ["a", null], "answer": 0}', r"line 2: field 'choices' item 1 is null"),
        ("calib_jsonl", '{"question": "q", "choices": ["3", "7", "12", "5"], "answer": "3"}', r"line 2: field 'answer': '3' is ambiguous"),
        ("calib_arc_challenge", '{"question": "q", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}, "answerKey": "D"}',
         r"calib_arc_challenge\.jsonl line 2: answerKey 'D' is not one of the labels"),
        ("calib_arc_challenge", '{"question": "q", "choices": {"text": ["a", null], "label": ["A", "B"]}, "answerKey": "A"}',
         r"calib_arc_challenge\.jsonl line 2: field 'choices.text' item 1 is null"),
        ("calib_medmcqa", '{"question": "q", "opa": "a", "opb": "b", "opc": "c", "cop": 1}', r"calib_medmcqa\.jsonl line 2: missing field 'opd'"),
        ("calib_medmcqa", '{"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": "B"}',
         r"calib_medmcqa\.jsonl line 2: field 'cop' is 'B', not an index"),
        ("calib_mmlu", '{"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4}', r"calib_mmlu\.jsonl line 2: field 'answer'"),
        ("calib_mmlu", '{"question": "q", "choices": ["3", "7", "12", "5"], "answer": "3"}', None),  # MMLU answers are indices
        ("calib_sciq", '{"question": "q", "distractor1": "a", "distractor2": "b", "distractor3": "c"}', r"calib_sciq\.jsonl line 2: missing field 'correct_answer'"),
    ],
)
def test_malformed_rows(tmp_path, suite, line, match):
    good = {"calib_jsonl": '{"question": "q", "choices": ["a", "b"], "answer": 1}'}
    first = good.get(suite) or (DATA / f"{suite}.jsonl").read_text().splitlines()[0]
    if suite == "calib_jsonl":
        f = tmp_path / "x.jsonl"
        f.write_text(first + "\n" + line + "\n")
        kw = {"data_files": str(f)}
    else:
        (tmp_path / f"{suite}.jsonl").write_text(first + "\n" + line + "\n")
        kw = {"calib_data_dir": str(tmp_path)}
    if match is None:
        assert U.load_suite(suite, **kw)["test"]["gold"][-1] == 3
        return
    with pytest.raises(U.CalibDataError, match=match):
        U.load_suite(suite, **kw)


def test_missing_local_file_and_unknown_suite(tmp_path):
    with pytest.raises(ValueError, match=r"has no calib_mmlu\.jsonl.*cais/mmlu schema"):
        U.load_suite("calib_mmlu", calib_data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"no such file"):
        U.load_suite("calib_jsonl", data_files=str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no rows"):
        U.load_suite("calib_jsonl", data_files=str(tmp_path / "empty.jsonl"))


def test_hub_unreachable_points_to_local_override(monkeypatch):
    monkeypatch.delenv("CALIB_LM_EVAL_DATA_DIR", raising=False)
    assert os.environ["HF_DATASETS_OFFLINE"] == "1" and os.environ["HF_HUB_OFFLINE"] == "1"  # never the network
    with pytest.raises(ValueError, match=r"calib_openbookqa: could not load hub allenai/openbookqa \(main\) split test.*"
                                         r"CALIB_LM_EVAL_DATA_DIR=<dir> with calib_openbookqa\.jsonl"):
        U.load_suite("calib_openbookqa")


def test_local_override_matches_fixtures_and_env(monkeypatch):
    monkeypatch.setenv("CALIB_LM_EVAL_DATA_DIR", str(DATA))
    for s in IN_DOMAIN + OUT_DOMAIN:
        split = U.SUITES[s].split
        ds = U.load_suite(s, split=split)[split]
        exp = expected_docs(s)
        assert [(d["question"], list(d["choices"]), d["gold"]) for d in ds] == [(q, list(c), g) for q, c, g in exp]
        for d in ds:
            assert U.doc_to_text(d) == format_mcq_prompt(d["question"], d["choices"])
            assert U.doc_to_choice(d) == list(DEFAULT_LETTERS[: len(d["choices"])])
    pooled = U.load_suite(list(IN_DOMAIN))["test"]
    assert len(pooled) == sum(len(expected_docs(s)) for s in IN_DOMAIN)
    assert pooled["source"][0] == "calib_mmlu" and pooled["source"][-1] == "calib_openbookqa"


def test_calib_jsonl_answer_forms_and_multiple_files():
    f = str(DATA / "mcq_sample.jsonl")
    raw = _rows(f)
    assert {type(r["answer"]) for r in raw} == {int, str}  # indices, letters and choice texts
    ds = U.load_suite("calib_jsonl", data_files=f)["test"]
    assert list(ds["gold"]) == [answer_to_index(r["answer"], r["choices"]) for r in raw]
    assert {len(c) for c in ds["choices"]} == {2, 3, 4, 5}
    two = U.load_suite("calib_jsonl", data_files=f"{f},{f}")["test"]
    assert len(two) == 2 * len(raw)


def test_sciq_shuffle_deterministic_and_spread():
    rows = _rows(DATA / "calib_sciq.jsonl")
    ds = U.load_suite("calib_sciq", calib_data_dir=str(DATA))["test"]
    golds = list(ds["gold"])
    assert len(set(golds)) >= 3  # the shuffle spreads the gold over positions (the source file lists it separately)
    for r, d in zip(rows, ds):
        assert d["choices"][d["gold"]] == r["correct_answer"]
        assert sorted(d["choices"]) == sorted([r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]])
    assert U.sciq_order("same question") == U.sciq_order("same question")
    # stable across processes (no Python hash randomisation)
    out = subprocess.run([sys.executable, "-c", "import importlib.util as u;"
                          f"s=u.spec_from_file_location('m', {str(CALIB / 'utils.py')!r});m=u.module_from_spec(s);"
                          "s.loader.exec_module(m);print(m.sciq_order('same question'))"],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="123"), check=True)
    assert out.stdout.strip().splitlines()[-1] == str(U.sciq_order("same question"))


def test_adapters_use_metrics_core():
    rng = np.random.default_rng(0)
    items = []
    for i in range(40):
        k = 3 + i % 3
        p = rng.dirichlet(np.ones(k)).tolist()
        items.append({"probs": p, "gold": int(rng.integers(k))})
    P, y, k = U.stack_items(items)
    assert P.shape == (40, 5) and P[0, 3:].tolist() == [0.0, 0.0]
    assert k.tolist() == [3 + i % 3 for i in range(40)]
    assert U.conf_ece(items) == metrics.conf_ece(P, y, n_bins=10)
    assert U.cw_ece(items) == metrics.cw_ece(P, y, n_bins=10, num_options=k)
    assert U.cw_ece(items) != metrics.cw_ece(P, y, n_bins=10)  # the padded columns are not classes of every row
    lls = [-1.5, -0.2, -3.0]
    r = U.process_results({"choices": ["a", "b", "c"], "gold": 1}, [(x, False) for x in lls])
    assert r["acc"] == 1.0 and r["conf_ece"] is r["cw_ece"] and r["conf_ece"]["logliks"] == lls
    assert r["conf_ece"]["probs"] == pytest.approx(torch.softmax(torch.tensor(lls, dtype=torch.float64), 0).tolist(), abs=1e-12)
    json.dumps(r)  # plain Python types
    with pytest.raises(ValueError, match="zero samples"):
        U.conf_ece([])


def _yaml(path):
    class L(yaml.SafeLoader):
        pass

    L.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix} {loader.construct_scalar(node)}")
    return yaml.load(Path(path).read_text(), Loader=L)


def test_yaml_files_consistent_with_suites():
    tmpl = _yaml(CALIB / "_calib_template_yaml")
    assert tmpl["doc_to_text"] == "!function utils.doc_to_text" and tmpl["target_delimiter"] == " "
    assert tmpl["num_fewshot"] == 0 and "description" not in tmpl
    assert {m["metric"]: m["aggregation"] for m in tmpl["metric_list"]} == {
        "acc": "mean", "conf_ece": "!function utils.conf_ece", "cw_ece": "!function utils.cw_ece"}
    for name in U.SUITES:  # hub coordinates live in utils.SUITES alone: a YAML names only its suite
        y = _yaml(CALIB / f"{name}.yaml")
        assert y["task"] == name and y["dataset_kwargs"] == {"suite": name}
        assert not {"dataset_path", "dataset_name", "test_split"} & set(y), name
    for group, parts in (("calib_in_domain", IN_DOMAIN), ("calib_out_domain", OUT_DOMAIN)):
        g = _yaml(CALIB / f"{group}.yaml")
        assert g["group"] == group and g["task"] == parts
        assert {a["metric"] for a in g["aggregate_metric_list"]} == {"acc", "conf_ece", "cw_ece"}
        assert all(a["weight_by_size"] is True for a in g["aggregate_metric_list"])
        assert _yaml(CALIB / f"{group}_pooled.yaml")["dataset_kwargs"]["suite"] == parts
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS), include_defaults=False)
    names = set(tm.all_tasks)
    assert set(U.SUITES) | {"calib_in_domain", "calib_out_domain", "calib_in_domain_pooled", "calib_out_domain_pooled",
                            "calib_jsonl", "calib_jsonl_ood"} <= names
