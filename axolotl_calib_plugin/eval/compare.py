"""``axolotl-calib table``: a comparison laid out like the paper's Table 2 (conf-ECE, cw-ECE, accuracy;
in-domain and out-of-domain) from several evaluated models.

A run is a folder written by ``axolotl-calib eval``, the post-training report (``calib_eval_tasks``:
the training ``output_dir``), ``axolotl-calib temperature --out``, or plain ``lm_eval --output_path``
(``results_*.json``); :func:`axolotl_calib_plugin.eval.samples.load_results` reads all of them. The paper's
columns are the pooled in-domain suite and ARC-Challenge (Sec. 6.1 of the paper): the defaults.

Runs are compared on the questions they share: where runs have lm-eval samples of a column's task, every
cell of that column is computed on the questions all of them scored (a temperature-scaled run is scored on
the 90 % left over from its fit, the others on all questions), the count is printed, and each run is paired
with the first one on those questions (difference and a 95 % paired-bootstrap interval). A run with
results but no samples keeps its own numbers and is named in a note. A cell fitted on its own questions
(``temperature --fit-tasks``) is marked in-sample.

"The same question" is its content (text, options, gold: :func:`axolotl_calib_plugin.eval.samples.question_hash`
of the document lm-eval logs with every sample), never its row number alone. Runs over different question files
(a doc id holding another question, or nothing in common) are refused, and so are runs that asked the same
questions with different prompts (lm-eval's ``prompt_hash``: chat template vs plain text, other option letters or
system prompt) unless ``--allow-different-prompts`` turns that into a note. Every cell also carries its chance
level and predicted letters (:mod:`.chance`), with a warning where the accuracy is within noise of chance or one
letter takes most answers. The comparison diagrams are drawn on the same shared questions as the table.
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping, Sequence

import numpy as np

from ..defaults import IN_TASK as DEFAULT_IN
from ..defaults import OUT_TASK as DEFAULT_OUT
from .report import fmt_signed, fmt_value
from .samples import find_samples, load_results, read_samples, stack_items

__all__ = ["COLUMNS", "build_table", "check_same_questions", "column_items", "comparison_models", "metrics_of_items", "paired_differences",
           "plot_runs", "question_keys", "render_markdown", "shared_questions", "write_json"]

#: (metric, domain, header) in the paper's order.
COLUMNS = (
    ("conf_ece", "in", "conf-ECE in"), ("conf_ece", "out", "conf-ECE out"),
    ("cw_ece", "in", "cw-ECE in"), ("cw_ece", "out", "cw-ECE out"),
    ("acc", "in", "acc in"), ("acc", "out", "acc out"),
)


#: metric name in the table -> key of :func:`axolotl_calib_plugin.metrics.calibration_metrics`.
_METRIC_KEYS = {"conf_ece": "conf_ece", "cw_ece": "cw_ece", "acc": "accuracy"}


def metrics_of_items(items: Sequence[Mapping]) -> dict:
    """conf-ECE / cw-ECE / accuracy of per-question items (mixed option counts), as the calib tasks aggregate them."""
    from ..metrics import calibration_metrics

    probs, labels, ks = stack_items(items)
    return calibration_metrics(probs, labels, num_options=ks)


def _position_key(item: Mapping) -> tuple:
    """A question's identity when samples carry no question hash: lm-eval's doc id, the gold answer and the
    option count. Two runs of the same task on the same data agree on all three, but so do rows of two other
    files that happen to share them: used only as a fallback, with a note."""
    return int(item["doc_id"]), int(item["gold"]), len(item["probs"])


def question_keys(items: Sequence[Mapping], by_content: bool = True) -> list[tuple]:
    """Each item's identity across runs, in ``items``' order. ``by_content``: the question hash
    (:func:`axolotl_calib_plugin.eval.samples.question_hash`: text, options and gold) with its occurrence
    number, so a question that appears twice in a file stays two questions; else :func:`_position_key`."""
    if not by_content:
        return [_position_key(it) for it in items]
    seen: dict[str, int] = {}
    out: list[tuple] = [()] * len(items)
    for i in sorted(range(len(items)), key=lambda j: items[j]["doc_id"]):
        h = items[i]["question_hash"]
        out[i] = (h, seen.get(h, 0))
        seen[h] = seen.get(h, 0) + 1
    return out


def _keyed(items: Sequence[Mapping], by_content: bool) -> dict[tuple, Mapping]:
    return dict(zip(question_keys(items, by_content), items))


def shared_questions(items_by_run: Mapping[str, Sequence[Mapping]], by_content: bool = True) -> list[tuple]:
    """The questions every run scored (sorted keys of :func:`question_keys`)."""
    sets = [set(question_keys(items, by_content)) for items in items_by_run.values()]
    return sorted(set.intersection(*sets)) if sets else []


def _stack_on(keyed: Mapping[tuple, Mapping], keys: Sequence[tuple]):
    return stack_items([keyed[k] for k in keys])


def _snippet(a: str, b: str, width: int = 60) -> tuple[str, str]:
    """The two prompts around their first differing character (``repr``, so newlines and spaces show)."""
    i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, i - 20)
    cut = (lambda t: ("..." if lo else "") + repr(t[lo:i + width])[1:-1] + ("..." if len(t) > i + width else ""))
    return cut(a), cut(b)


def check_same_questions(task: str, items_by_run: Mapping[str, Sequence[Mapping]], ref: str,
                         allow_other_prompts: bool = False) -> tuple[bool, list[str]]:
    """Refuse (``ValueError``) to pair runs of ``task`` that scored different questions or asked the same
    questions with different prompts; returns ``(by_content, notes)``.

    * Questions are identified by their content hash where every run's samples carry it (lm-eval samples of
      the calib tasks do), else by position (doc id, gold, option count) with a note.
    * Runs over different question files: a doc id that holds another question in another run, or no
      question in common at all, is an error naming the first such doc id.
    * Prompts: lm-eval's ``prompt_hash`` of every shared question must agree (chat template vs plain text,
      other option letters or system prompt all change it); with ``allow_other_prompts`` the difference is
      a note instead, for a deliberate comparison of prompt formats.
    """
    notes: list[str] = []
    no_hash = [name for name, its in items_by_run.items() if any(it.get("question_hash") is None for it in its)]
    by_content = not no_hash
    if no_hash:
        notes.append(f"{task}: {', '.join(no_hash)}: samples without question hashes (not written by lm-eval "
                     "0.4's --log_samples?): questions paired by doc id, gold and option count, NOT checked to be "
                     "the same questions")
    ref_items = items_by_run[ref]
    for name, its in items_by_run.items():
        if name == ref:
            continue
        if by_content:
            ref_by_id = {int(it["doc_id"]): it["question_hash"] for it in ref_items}
            clash = [int(it["doc_id"]) for it in its if ref_by_id.get(int(it["doc_id"]), it["question_hash"])
                     != it["question_hash"]]
            if clash:
                common = sum(int(it["doc_id"]) in ref_by_id for it in its)
                raise ValueError(
                    f"{task}: runs {ref!r} and {name!r} were scored on different question files: doc {clash[0]} is "
                    f"another question in each ({len(clash)} of the {common} doc ids both scored differ). Pairing "
                    "them would compare different questions; evaluate both on the same data files (in the same "
                    "order), or make one table per run")
    keys = shared_questions(items_by_run, by_content)
    if not keys:
        counts = ", ".join(f"{k} {len(v)}" for k, v in items_by_run.items())
        raise ValueError(f"{task}: the runs share no question ({counts} questions): different data files? "
                         "Evaluate both on the same data, or make one table per run")
    if not by_content:
        return by_content, notes
    ref_keyed = _keyed(ref_items, True)
    for name, its in items_by_run.items():
        if name == ref:
            continue
        keyed = _keyed(its, True)
        pairs = [(ref_keyed[k], keyed[k]) for k in keys]
        known = [(a, b) for a, b in pairs if a.get("prompt_hash") and b.get("prompt_hash")]
        if len(known) < len(pairs):
            notes.append(f"{task}: {len(pairs) - len(known)} of {len(pairs)} questions of {ref} / {name} have no "
                         "recorded prompt (samples without prompt_hash): their prompts were not compared")
        differ = sorted(((a, b) for a, b in known if a["prompt_hash"] != b["prompt_hash"]), key=lambda ab: ab[0]["doc_id"])
        if not differ:
            continue
        a, b = differ[0]
        what = (f"{task}: runs {ref!r} and {name!r} asked the same questions with different prompts "
                f"({len(differ)} of {len(known)} differ")
        if a.get("prompt") and b.get("prompt"):
            sa, sb = _snippet(a["prompt"], b["prompt"])
            what += f"; doc {a['doc_id']}: {ref} has \"{sa}\", {name} has \"{sb}\""
        what += ("): a chat template against plain text, other option letters or another system prompt. The "
                 "numbers then compare prompt formats as much as models")
        if not allow_other_prompts:
            raise ValueError(what + "; evaluate both with the same prompt settings (the run's calib_settings.json), "
                             "or pass --allow-different-prompts to compare them anyway")
        notes.append("DIFFERENT PROMPTS: " + what + " (--allow-different-prompts)")
    return by_content, notes


def column_items(runs: Sequence[tuple[str, str]], task: str,
                 allow_other_prompts: bool = False) -> tuple[dict[str, list], list[tuple], dict[str, dict], list[str]]:
    """The runs' samples of ``task``: ``(items by run, shared keys, {run: {key: item}}, notes)`` after
    :func:`check_same_questions` (runs without samples of the task are left out; with fewer than two runs
    with samples, no keys)."""
    items: dict[str, list] = {}
    for name, path in runs:
        found = find_samples(path)
        if task in found:
            items[name] = read_samples(found[task])
    if len(items) < 2:
        return items, [], {}, []
    by_content, notes = check_same_questions(task, items, next(iter(items)), allow_other_prompts)
    keys = shared_questions(items, by_content)
    return items, keys, {name: _keyed(its, by_content) for name, its in items.items()}, notes


def _metrics_of_arrays(probs, labels, ks) -> dict:
    from ..metrics import calibration_metrics

    same_k = bool((ks == probs.shape[1]).all())  # no padding: skip the per-row option counts (and their checks)
    m = calibration_metrics(probs, labels, num_options=None if same_k else ks)
    return {name: m[key] for name, key in _METRIC_KEYS.items()}


def paired_differences(run: Mapping[tuple, Mapping], ref: Mapping[tuple, Mapping], keys: Sequence[tuple],
                       n_boot: int = 1000, seed: int = 0) -> dict:
    """``run - ref`` of each metric on the questions ``keys`` (``run`` / ``ref``: items by question key) and a
    95 % percentile interval from a paired bootstrap (the same resampled questions for both runs, so question
    difficulty cancels)."""
    a, b = _stack_on(run, keys), _stack_on(ref, keys)
    base = {m: _metrics_of_arrays(*a)[m] - _metrics_of_arrays(*b)[m] for m in _METRIC_KEYS}
    rng = np.random.default_rng(seed)
    draws = {m: [] for m in _METRIC_KEYS}
    for _ in range(n_boot):
        idx = rng.integers(0, len(keys), size=len(keys))
        ma = _metrics_of_arrays(*(x[idx] for x in a))
        mb = _metrics_of_arrays(*(x[idx] for x in b))
        for m in _METRIC_KEYS:
            draws[m].append(ma[m] - mb[m])
    return {m: {"diff": base[m], "lo": float(np.percentile(draws[m], 2.5)), "hi": float(np.percentile(draws[m], 97.5))}
            for m in _METRIC_KEYS}


def build_table(runs: Sequence[tuple[str, str]], in_task: str = DEFAULT_IN, out_task: str = DEFAULT_OUT,
                n_boot: int = 1000, seed: int = 0, allow_different_prompts: bool = False) -> dict:
    """``runs``: ``(name, folder)`` in row order. Returns ``{"in_task", "out_task", "rows", "shared", "notes"}``:
    each row's ``in`` / ``out`` cell on the questions the runs share (``n``; ``n_own`` = the run's own count),
    its ``chance`` check on those questions (:mod:`.chance`) and its ``paired`` differences from the reference
    run (the first with samples). Errors (``ValueError``): the same task for both columns, a run that has
    neither task (naming the tasks it has), runs over different questions or with different prompts
    (:func:`check_same_questions`; ``allow_different_prompts`` makes the latter a note)."""
    from .chance import chance_of_items

    if in_task == out_task:
        raise ValueError(f"--in-task and --out-task are both {in_task}: the two columns would repeat the same numbers; "
                         "pick the out-of-domain task with --out-task")
    if not runs:
        raise ValueError("no runs to compare (give --run NAME=FOLDER, once per row)")
    names = [name for name, _ in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"run name {dup[0]!r} is given twice: each --run needs its own name (the table's row label)")
    rows, notes, shared_info = [], [], {}
    for name, path in runs:
        results = load_results(path)
        row = {"name": name, "source": os.path.abspath(path),
               "in": results.get(in_task), "out": results.get(out_task), "paired": {}}
        if row["in"] is None and row["out"] is None:
            raise ValueError(f"run {name!r} ({path}) has neither {in_task} nor {out_task}; its tasks: "
                             f"{', '.join(sorted(results)) or 'none'} (pick them with --in-task / --out-task)")
        for dom, task in (("in", in_task), ("out", out_task)):
            if row[dom] is None:
                notes.append(f"{name}: no {task} results")
            else:
                row[dom] = dict(row[dom])
        rows.append(row)
    for dom, task in (("in", in_task), ("out", out_task)):
        have = [r for r in rows if r[dom] is not None]
        with_results = [(r["name"], path) for r, (_, path) in zip(rows, runs) if r[dom] is not None]
        items, keys, keyed, col_notes = column_items(with_results, task, allow_different_prompts)
        notes += col_notes
        unpaired = [r["name"] for r in have if r["name"] not in items]
        if unpaired and len(have) > 1:
            notes.append(f"{task}: {', '.join(unpaired)} without lm-eval samples: own questions, not paired")
        for r in have:  # chance level and predicted letters on the questions the cell is computed on
            if r["name"] in items:
                its = [keyed[r["name"]][k] for k in keys] if keys else items[r["name"]]
                r[dom]["chance"] = chance_of_items(its).as_dict()
        if keys:
            ref = next(r["name"] for r in have if r["name"] in items)
            for r in have:
                if r["name"] not in items:
                    continue
                cell = r[dom]
                own = len(items[r["name"]])
                cell["n_own"] = own
                if own != len(keys):  # restrict to the shared questions (else keep the run's own aggregates)
                    cell.update(_metrics_of_arrays(*_stack_on(keyed[r["name"]], keys)))
                cell["n"] = len(keys)
                if r["name"] != ref:
                    r["paired"][dom] = {"vs": ref, "n": len(keys),
                                        **paired_differences(keyed[r["name"]], keyed[ref], keys, n_boot, seed)}
            counts = {name: len(its) for name, its in items.items()}
            shared_info[dom] = {"n": len(keys), "reference": ref, "own_n": counts}
            if len(set(counts.values())) > 1:
                notes.append(f"{task}: compared on the {len(keys)} questions all runs scored ("
                             + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")")
        else:
            counts = {r["name"]: r[dom].get("n") for r in have}
            if len(set(counts.values())) > 1:
                notes.append(f"{task} was scored on different numbers of questions and cannot be paired: "
                             + ", ".join(f"{k} n={v}" for k, v in counts.items()))
        for r in have:
            if r[dom].get("held_out") is False:
                notes.append(f"{r['name']}: {task} is IN-SAMPLE (marked *): T was fitted on these questions")
            if not all(isinstance(r[dom].get(m), (int, float)) and math.isfinite(r[dom][m])
                       for m in ("acc", "conf_ece", "cw_ece") if r[dom].get(m) is not None):
                notes.append(f"{r['name']}: {task} has a NaN or infinite metric in its results file: shown as -")
    return {"in_task": in_task, "out_task": out_task, "columns": [c[2] for c in COLUMNS], "rows": rows,
            "shared": shared_info, "notes": notes}


def _fmt_diff(d: Mapping | None) -> str:
    if not d:
        return "-"
    return f"{fmt_signed(d['diff'])} [{fmt_signed(d['lo'])}, {fmt_signed(d['hi'])}]"


def render_markdown(table: dict) -> str:
    """The table as Markdown, with the tasks and question counts under it; the paired differences from the
    reference run follow where runs share questions."""
    lines = ["| model | " + " | ".join(table["columns"]) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for r in table["rows"]:
        cells = []
        for metric, dom, _ in COLUMNS:
            cell = r[dom] or {}
            mark = "*" if cell.get("held_out") is False and cell.get(metric) is not None else ""
            ch = cell.get("chance") or {}
            if metric == "acc" and (ch.get("near_chance") or ch.get("below_chance") or ch.get("one_letter")):
                mark += " (!)"
            cells.append(fmt_value(cell.get(metric)) + mark)
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    n_in = sorted({(r["in"] or {}).get("n") for r in table["rows"] if r["in"]} - {None})
    n_out = sorted({(r["out"] or {}).get("n") for r in table["rows"] if r["out"]} - {None})
    lines += ["", f"in = `{table['in_task']}` (n = {', '.join(map(str, n_in)) or '-'}), "
                  f"out = `{table['out_task']}` (n = {', '.join(map(str, n_out)) or '-'}); 10 equal-width bins, "
                  "ECE lower is better."]
    paired = [r for r in table["rows"] if r["paired"]]
    if paired:
        shared = table.get("shared", {})
        refs = {d: shared[d]["reference"] for d in ("in", "out") if d in shared}
        lines += ["", "Paired differences (run − " + ", ".join(
            f"{refs[d]} ({d})" for d in refs) + ") on the shared questions, with 95 % paired-bootstrap intervals:", "",
                  "| model | " + " | ".join(f"Δ {h}" for h in table["columns"]) + " |",
                  "|---|" + "---:|" * len(COLUMNS)]
        for r in paired:
            lines.append(f"| {r['name']} | " + " | ".join(_fmt_diff((r["paired"].get(dom) or {}).get(metric))
                                                        for metric, dom, _ in COLUMNS) + " |")
    chance = [(r["name"], table[f"{dom}_task"], r[dom]["chance"]) for dom in ("in", "out") for r in table["rows"]
              if r[dom] and r[dom].get("chance")]
    if chance:
        from .chance import ChanceCheck

        lines += ["", "Chance level and predicted letters, on the questions of each cell ((!) = warned: the 95 % "
                  "interval of the accuracy contains chance, or one letter is the answer on at least max(50 %, "
                  "1.5 x chance) of the questions and 10 points more often than it is the gold one):", ""]
        for name, task, ch in chance:
            lines += [f"* {x}" for x in ChanceCheck(**ch).lines(f"{name} / {task}")]
    lines += [f"* note: {n}" for n in table["notes"]]
    return "\n".join(lines)


def write_json(table: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(table, fh, indent=1)
    return path


def comparison_models(runs: Sequence[tuple[str, str]], task: str,
                      allow_different_prompts: bool = False) -> tuple[dict[str, tuple], str]:
    """What the comparison diagram of ``task`` draws: ``({run: (probs, labels, K per row)}, scope)`` on the
    questions all runs with samples scored (the table's ``n``), and the scope in words for the title."""
    items, keys, keyed, _ = column_items(runs, task, allow_different_prompts)
    if not keys:
        return {name: stack_items(its) for name, its in items.items()}, "its own questions"
    own = {name: len(its) for name, its in items.items()}
    scope = f"the {len(keys)} questions all runs scored"
    if any(v != len(keys) for v in own.values()):
        scope += " (of " + ", ".join(f"{k} {v}" for k, v in own.items()) + ")"
    return {name: stack_items([keyed[name][k] for k in keys]) for name in items}, scope


def plot_runs(runs: Sequence[tuple[str, str]], tasks: Sequence[str], out_dir: str, plot_format: str = "png",
              allow_different_prompts: bool = False) -> list[str]:
    """One comparison diagram per task (``reliability_compare_<task>.<plot_format>``) from the runs' logged
    samples, drawn on the questions all of them scored (:func:`comparison_models`: the table's ``n``, named in
    the title and in every legend entry); runs without samples for a task are left out of that diagram."""
    from .plots import plot_comparison

    written = []
    for task in tasks:
        models, scope = comparison_models(runs, task, allow_different_prompts)
        if models:
            path = os.path.join(out_dir, f"reliability_compare_{task}.{plot_format}")
            plot_comparison(models, path, title=f"{task} on {scope}")
            written.append(path)
    return written
