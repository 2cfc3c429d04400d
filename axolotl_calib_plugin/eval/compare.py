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
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from ..defaults import IN_TASK as DEFAULT_IN
from ..defaults import OUT_TASK as DEFAULT_OUT
from .report import fmt_signed, fmt_value
from .samples import find_samples, load_results, read_samples, stack_items

__all__ = ["COLUMNS", "build_table", "metrics_of_items", "paired_differences", "plot_runs", "render_markdown",
           "shared_questions", "write_json"]

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


def _question(item: Mapping) -> tuple:
    """A question's identity across runs of one task: lm-eval's doc id, the gold answer and the option count
    (two runs of the same task on the same data agree on all three; other data files do not)."""
    return int(item["doc_id"]), int(item["gold"]), len(item["probs"])


def shared_questions(items_by_run: Mapping[str, Sequence[Mapping]]) -> list[tuple]:
    """The questions every run scored (sorted keys of :func:`_question`)."""
    sets = [{_question(it) for it in items} for items in items_by_run.values()]
    return sorted(set.intersection(*sets)) if sets else []


def _stack_on(items: Sequence[Mapping], keys: Sequence[tuple]):
    by_key = {_question(it): it for it in items}
    return stack_items([by_key[k] for k in keys])


def _metrics_of_arrays(probs, labels, ks) -> dict:
    from ..metrics import calibration_metrics

    m = calibration_metrics(probs, labels, num_options=ks)
    return {name: m[key] for name, key in _METRIC_KEYS.items()}


def paired_differences(run: Sequence[Mapping], ref: Sequence[Mapping], keys: Sequence[tuple], n_boot: int = 1000,
                       seed: int = 0) -> dict:
    """``run - ref`` of each metric on the questions ``keys`` and a 95 % percentile interval from a paired
    bootstrap (the same resampled questions for both runs, so question difficulty cancels)."""
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
                n_boot: int = 1000, seed: int = 0) -> dict:
    """``runs``: ``(name, folder)`` in row order. Returns ``{"in_task", "out_task", "rows", "shared", "notes"}``:
    each row's ``in`` / ``out`` cell on the questions the runs share (``n``; ``n_own`` = the run's own count)
    and its ``paired`` differences from the reference run (the first with samples); a run that has neither
    task is an error naming the tasks it does have."""
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
        items = {}
        for r, (_, path) in zip(rows, runs):
            found = find_samples(path) if r[dom] is not None else {}
            if task in found:
                items[r["name"]] = read_samples(found[task])
        unpaired = [r["name"] for r in have if r["name"] not in items]
        if unpaired and len(have) > 1:
            notes.append(f"{task}: {', '.join(unpaired)} without lm-eval samples: own questions, not paired")
        keys = shared_questions(items) if len(items) > 1 else []
        if len(items) > 1 and not keys:
            notes.append(f"{task}: the runs share no question (different data?): numbers on each run's own questions")
        if keys:
            ref = next(r["name"] for r in have if r["name"] in items)
            for r in have:
                if r["name"] not in items:
                    continue
                cell = r[dom]
                own = len(items[r["name"]])
                cell["n_own"] = own
                if own != len(keys):  # restrict to the shared questions (else keep the run's own aggregates)
                    cell.update(_metrics_of_arrays(*_stack_on(items[r["name"]], keys)))
                cell["n"] = len(keys)
                if r["name"] != ref:
                    r["paired"][dom] = {"vs": ref, "n": len(keys),
                                        **paired_differences(items[r["name"]], items[ref], keys, n_boot, seed)}
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
    lines += [f"* note: {n}" for n in table["notes"]]
    return "\n".join(lines)


def write_json(table: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(table, fh, indent=1)
    return path


def plot_runs(runs: Sequence[tuple[str, str]], tasks: Sequence[str], out_dir: str, plot_format: str = "png") -> list[str]:
    """One comparison diagram per task (``reliability_compare_<task>.<plot_format>``) from the runs' logged
    samples; runs without samples for a task are left out of that diagram."""
    from .plots import plot_comparison

    written = []
    for task in tasks:
        models = {}
        for name, path in runs:
            found = find_samples(path)
            if task in found:
                models[name] = stack_items(read_samples(found[task]))
        if models:
            path = os.path.join(out_dir, f"reliability_compare_{task}.{plot_format}")
            plot_comparison(models, path, title=task)
            written.append(path)
    return written
