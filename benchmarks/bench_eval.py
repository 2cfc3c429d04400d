"""calib_mmlu evaluation vs the stock lm-eval MMLU task, same model and questions.

Both tasks run through ``lm_eval.simple_evaluate`` on the same HFLM wrapping one local tiny Llama, over
the same N synthetic MMLU-schema questions (written to a temp dir):

* stock:  lm-eval's own ``tasks/mmlu/default/_default_template_yaml`` (built-in multiple_choice scorer,
          metric ``acc``), included as-is; only the dataset is pointed at the local JSONL;
* calib:  ``calib_mmlu`` from ``lm_eval_tasks/`` (custom_dataset loader + ``process_results`` + conf/cw-ECE
          aggregation by the metrics core), reading the same JSONL through ``CALIB_LM_EVAL_DATA_DIR``.

Each run covers everything ``simple_evaluate`` does: building the task (data loading), the requests,
the model forwards and the metrics. Runs are interleaved (A B A B ...) after one warm-up each, and the
median is compared (target: calib / stock <= 1.05). A forward pre-hook counts model calls and rows to
check that HFLM's one-token-continuation cache gives ONE forward row per question for both tasks (K=4
requests per question), and both tasks must report the same accuracy (identical prompts and logits).

Then ``axolotl-calib eval`` against its floor (:func:`cli_vs_floor`): the whole command as a user runs it (model
load, lm-eval, report, diagrams; in this process) on the same questions as ``calib_jsonl``, per question, against a
bare batched forward over the same prompts (one row per question, logits at the answer position only), with the
forward counted inside the command. Reported, no target. ``--model DIR`` runs both parts on a model folder (e.g. the
real model of ``axolotl-calib real-model``), ``--data-files`` names the questions of the second (default with
``--model``: data/test_in.jsonl beside it).

Usage: python benchmarks/bench_eval.py [--n 400] [--repeats 5] [--hidden 128] [--layers 2] [--batch-size 16] [--threads 1]
       [--model DIR] [--data-files FILE.jsonl] [--cli-repeats 3] [--skip-stock]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "lm_eval_tasks"


def _fixture_generator():
    spec = importlib.util.spec_from_file_location("calib_make_fixtures", TASKS / "calib" / "data" / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_questions(path: Path, n: int, seed: int = 0) -> list[dict]:
    import random

    gen = _fixture_generator()
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q, c, g = gen.make_question(rng, i, 4)
        rows.append({"question": f"[{i}] {q}", "subject": gen.SUBJECTS[i % len(gen.SUBJECTS)], "choices": c, "answer": g})
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return rows


def stock_task_yaml(data_file: Path) -> str:
    import lm_eval

    template = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / "_default_template_yaml"
    if not template.exists():
        sys.exit(f"lm-eval's MMLU template not found at {template}")
    return (
        f"include: {template}\n"
        "task: bench_stock_mmlu\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data_file}\n    dev: {data_file}\n"
    )


def build_model(hidden: int, layers: int, seed: int = 0):
    from axolotl_calib_plugin.testing import build_llama, build_tokenizer

    tok = build_tokenizer()
    heads = max(2, hidden // 64)
    model = build_llama(tok, hidden_size=hidden, num_layers=layers, num_heads=heads, seed=seed).eval()
    return tok, model


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        self.rows = 0
        self.seconds = 0.0
        self._t0 = None
        self._pre = model.register_forward_pre_hook(self._on_pre, with_kwargs=True)
        self._post = model.register_forward_hook(self._on_post)

    def _on_pre(self, mod, args, kwargs):
        x = args[0] if args else kwargs["input_ids"]
        self.calls += 1
        self.rows += int(x.shape[0])
        self._t0 = time.perf_counter()

    def _on_post(self, mod, args, out):
        self.seconds += time.perf_counter() - self._t0

    def reset(self):
        self.calls = self.rows = 0
        self.seconds = 0.0


# ----------------------------------------------------------------------------- axolotl-calib eval vs its floor
def cli_vs_floor(model_dir: str, questions: list[dict], batch_size: int, repeats: int, workdir: Path) -> dict:
    """``axolotl-calib eval --tasks calib_jsonl`` (in this process, as a user runs it: model load, lm-eval, report,
    diagrams) on ``questions`` against the floor of any evaluation: a bare batched ``inference_mode`` forward over
    the same prompts (the training token sequence up to the answer position, one row per question, batched alike,
    logits at that position only), and the same forward with every position's logits (what lm-eval's HFLM
    computes). Interleaved rounds after one warm-up of each. Returns the medians."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import axolotl_calib_plugin.eval.evaluation as evaluation
    from axolotl_calib_plugin.cli import main as cli_main
    from axolotl_calib_plugin.prompts import DEFAULT_LETTERS, format_mcq_prompt
    from axolotl_calib_plugin.train.mcq import encode_mcq

    qfile = workdir / "questions.jsonl"
    with open(qfile, "w", encoding="utf-8") as fh:
        for r in questions:
            fh.write(json.dumps({k: r[k] for k in ("question", "choices", "answer")}) + "\n")
    n = len(questions)
    seen = {}
    make_hflm = evaluation.make_hflm

    def counted_make_hflm(*a, **kw):  # the CLI's model load, timed, and a forward counter on the model it scores
        t0 = time.perf_counter()
        lm = make_hflm(*a, **kw)
        seen["load_s"] = time.perf_counter() - t0
        seen["counter"] = ForwardCounter(lm.model)
        return lm

    def run_cli():
        out = workdir / "eval"
        shutil.rmtree(out, ignore_errors=True)
        evaluation.make_hflm = counted_make_hflm
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                rc = cli_main(["eval", "--model", model_dir, "--tasks", "calib_jsonl", "--data-files", str(qfile),
                               "--output-dir", str(out), "--device", "cpu", "--batch-size", str(batch_size)])
        finally:
            evaluation.make_hflm = make_hflm
        if rc:
            raise RuntimeError(f"axolotl-calib eval exited {rc}")
        c = seen["counter"]
        return {"load_s": seen["load_s"], "fwd_s": c.seconds, "rows": c.rows}

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = sorted((encode_mcq(tok, format_mcq_prompt(r["question"], r["choices"], DEFAULT_LETTERS),
                                 DEFAULT_LETTERS[0], "plain")[0] for r in questions), key=len, reverse=True)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = []
    for i in range(0, n, batch_size):
        chunk = prompts[i:i + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, p in enumerate(chunk):
            ids[j, :len(p)] = torch.tensor(p)
            mask[j, :len(p)] = 1
        batches.append((ids, mask))

    def bare(keep):
        with torch.inference_mode():
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep)

    fns = {"cli": run_cli, "floor": lambda: bare(1), "all_logits": lambda: bare(0)}
    times = {k: [] for k in fns}
    info = []
    for k, fn in fns.items():  # warm-up: imports, lm-eval's task index, allocator
        fn()
    for r in range(repeats):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            out = fns[k]()
            times[k].append(time.perf_counter() - t0)
            if k == "cli":
                info.append(out)
    med = statistics.median
    res = {"n": n, "batch_size": batch_size, "tokens_mean": statistics.mean(len(p) for p in prompts),
           "cli_s": med(times["cli"]), "floor_s": med(times["floor"]), "all_logits_s": med(times["all_logits"]),
           "load_s": med(i["load_s"] for i in info), "fwd_s": med(i["fwd_s"] for i in info),
           "rows_per_question": info[-1]["rows"] / n,
           "ratio": med(c / f for c, f in zip(times["cli"], times["floor"])),
           "ratio_no_load": med((c - i["load_s"]) / f for c, i, f in zip(times["cli"], info, times["floor"])),
           "ratio_fwd": med(i["fwd_s"] / f for i, f in zip(info, times["floor"]))}
    ms = lambda x: f"{x / n * 1e3:.2f} ms"  # noqa: E731
    print(f"\naxolotl-calib eval vs a bare batched forward (the floor: one forward row per question): {n} questions "
          f"(mean {res['tokens_mean']:.0f} prompt tokens), batch {batch_size}, {repeats} interleaved rounds after one "
          f"warm-up each; per question:")
    print(f"   axolotl-calib eval --tasks calib_jsonl, whole command    {ms(res['cli_s'])}   (runs: "
          f"{', '.join(f'{t:.1f}' for t in times['cli'])} s)")
    print(f"     of which loading the model (make_hflm)                 {ms(res['load_s'])}")
    print(f"     of which inside model.forward                          {ms(res['fwd_s'])}   "
          f"({res['rows_per_question']:.3f} forward rows per question)")
    print(f"   bare forward, logits at the answer position only (floor) {ms(res['floor_s'])}")
    print(f"   bare forward, every position's logits (as lm-eval)       {ms(res['all_logits_s'])}")
    print(f"   ratio eval / floor: {res['ratio']:.2f}x whole command, {res['ratio_no_load']:.2f}x without the model "
          f"load, {res['ratio_fwd']:.2f}x inside model.forward (median of the per-round ratios; reported, no target)")
    return res


def stock_vs_calib(args, tok, model, what: str, rows: list[dict], tmp: Path) -> bool:
    """calib_mmlu vs the stock lm-eval MMLU task on ``rows`` (written to ``tmp``/data/calib_mmlu.jsonl); prints the
    table and the verdict; returns whether both correctness checks held (same accuracy, one forward row per
    question)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    counter = ForwardCounter(model)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)

    (tmp / "tasks" / "bench_stock_mmlu.yaml").write_text(stock_task_yaml(tmp / "data" / "calib_mmlu.jsonl"))
    os.environ["CALIB_LM_EVAL_DATA_DIR"] = str(tmp / "data")
    tm = TaskManager(include_path=[str(TASKS), str(tmp / "tasks")], include_defaults=False)

    tasks = {"stock": "bench_stock_mmlu", "calib": "calib_mmlu"}
    times = {k: [] for k in tasks}
    fwd = {k: [] for k in tasks}
    results = {}

    def run(kind):
        counter.reset()
        with contextlib.redirect_stderr(io.StringIO()):  # HFLM's progress bars ignore TQDM_DISABLE
            t0 = time.perf_counter()
            res = lm_eval.simple_evaluate(model=lm, tasks=[tasks[kind]], task_manager=tm, bootstrap_iters=0,
                                          log_samples=False, verbosity="ERROR")
            dt = time.perf_counter() - t0
        results[kind] = res["results"][tasks[kind]]
        return dt, (counter.calls, counter.rows, counter.seconds)

    for kind in tasks:  # warm-up (HF json cache for the stock task, lazy imports, allocator)
        run(kind)
    for _ in range(args.repeats):
        for kind in tasks:
            dt, f = run(kind)
            times[kind].append(dt)
            fwd[kind].append(f)

    n_prompts = len({(r["question"], tuple(r["choices"])) for r in rows})
    med = {k: statistics.median(v) for k, v in times.items()}
    fwd_s = {k: statistics.median(f[2] for f in fwd[k]) for k in tasks}
    rest = {k: statistics.median(t - f[2] for t, f in zip(times[k], fwd[k])) for k in tasks}
    paired = statistics.median(c / s for c, s in zip(times["calib"], times["stock"]))
    ratio = med["calib"] / med["stock"]
    print()
    print(f"calib_mmlu vs stock lm-eval MMLU task: {args.n} questions (K=4, {4 * args.n} loglikelihood requests), "
          f"{what}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch thread(s), lm_eval {getattr(lm_eval, '__version__', '?')}")
    print(f"{args.repeats} interleaved timed runs per task after 1 warm-up each; wall time of simple_evaluate "
          "(task build + requests + forwards + metrics); 'outside forward' = total - time inside model.forward")
    print()
    cols = ["task", "median s", "min s", "max s", "in forward s", "outside fwd s", "fwd calls", "fwd rows/question",
            "acc", "conf_ece", "cw_ece"]
    table = []
    for kind, name in tasks.items():
        calls, frows, _ = fwd[kind][-1]
        r = results[kind]
        fmt = lambda v: "-" if v is None else f"{v:.4f}"
        table.append([name, f"{med[kind]:.3f}", f"{min(times[kind]):.3f}", f"{max(times[kind]):.3f}", f"{fwd_s[kind]:.3f}",
                      f"{rest[kind]:.3f}", str(calls), f"{frows / n_prompts:.3f}", fmt(r["acc,none"]),
                      fmt(r.get("conf_ece,none")), fmt(r.get("cw_ece,none"))])
    w = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(cols)) + " |")
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for row in table:
        print("| " + " | ".join(v.ljust(w[i]) if i == 0 else v.rjust(w[i]) for i, v in enumerate(row)) + " |")
    print()
    verdict = "PASS" if ratio <= 1.05 else "FAIL"  # FAIL: run_all.py reports a missed target
    print(f"ratio calib / stock, median wall time:        {ratio:.3f}x   (target <= 1.05x: {verdict})")
    print(f"ratio calib / stock, median of paired runs:   {paired:.3f}x")
    print(f"harness time outside the model, calib - stock: {rest['calib'] - rest['stock']:+.3f} s "
          f"({(rest['calib'] - rest['stock']) / args.n * 1e3:+.3f} ms per question)")
    same_acc = abs(results["calib"]["acc,none"] - results["stock"]["acc,none"]) < 1e-12
    one_fwd = all(f[1] == n_prompts for k in tasks for f in fwd[k])
    print(f"same accuracy from both tasks (same prompts, same logits): {same_acc}")
    print(f"one forward row per question for both tasks ({n_prompts} distinct questions, 4 requests each): {one_fwd}")
    return same_acc and one_fwd



def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="number of questions (default 400)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per task, interleaved (default 5)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared CPU; 0 = torch default)")
    ap.add_argument("--model", default=None, metavar="DIR",
                    help="a model folder (tokenizer included) instead of the tiny Llama, e.g. the real model of "
                         "`axolotl-calib real-model` (its model/ folder)")
    ap.add_argument("--data-files", default=None, metavar="FILE.jsonl",
                    help="MCQ rows (question, choices, answer) for the axolotl-calib eval comparison, its first --n "
                         "(default: the synthetic questions; with --model, data/test_in.jsonl beside it when there)")
    ap.add_argument("--cli-repeats", type=int, default=3,
                    help="interleaved rounds of axolotl-calib eval vs the bare forward (0: skip that comparison)")
    ap.add_argument("--skip-stock", action="store_true", help="only the axolotl-calib eval comparison")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.skip_stock and not args.cli_repeats:
        ap.error("--skip-stock with --cli-repeats 0 leaves nothing to measure")

    from lm_eval.utils import setup_logging

    setup_logging("ERROR")
    from axolotl_calib_plugin.rows import read_jsonl

    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        what = f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, float32)"
    else:
        tok, model = build_model(args.hidden, args.layers)
        what = f"tiny Llama hidden={args.hidden} layers={args.layers}"
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        (tmp / "tasks").mkdir()
        rows = write_questions(tmp / "data" / "calib_mmlu.jsonl", args.n)
        if not args.skip_stock:
            ok = stock_vs_calib(args, tok, model, what, rows, tmp)
        if args.cli_repeats:
            model_dir = args.model
            if not model_dir:  # the same tiny model as a folder, as a user would pass it
                model_dir = str(tmp / "tiny_model")
                model.save_pretrained(model_dir)
                tok.save_pretrained(model_dir)
            qfile = args.data_files
            if not qfile and args.model:
                beside = Path(args.model).resolve().parent / "data" / "test_in.jsonl"
                qfile = str(beside) if beside.is_file() else None
            questions = read_jsonl(qfile)[:args.n] if qfile else rows
            print(f"\n{what}; questions: " + (f"the first {len(questions)} of {qfile}" if qfile else
                                              f"the {len(questions)} synthetic ones above"))
            del model  # the comparison loads the folder itself
            cli_vs_floor(model_dir, questions, args.batch_size, args.cli_repeats, tmp)
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
