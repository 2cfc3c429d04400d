"""Calibration report of one model: our lm-eval tasks -> ``calibration_report.{md,json}`` + reliability PNGs.

Three producers write the same folder layout, so ``axolotl-calib table`` and ``axolotl-calib
temperature`` read any of them (through :mod:`.samples`):

* after training, when the config sets ``calib_eval_tasks``
  (:class:`axolotl_calib_plugin.train.report_hook.PostTrainingReport`), into ``output_dir``;
* ``axolotl-calib eval`` (any model folder or peft adapter), into ``--output-dir``;
* ``axolotl-calib temperature --out``, the temperature-scaled probabilities.

Layout: ``calibration_report.json`` / ``.md``, ``reliability_<task>.png`` and, under
``calibration_eval/`` (eval and post-training), lm-eval's own ``results_<time>.json`` and
``samples_<task>_<time>.jsonl`` (each question's option probabilities and log-likelihoods).

The diagrams are drawn from the same per-question items as the numbers. The row metadata
(:func:`axolotl_calib_plugin.row_settings.row_metadata`) makes the tasks build rows as training did.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
from typing import Any, Mapping, Sequence

from .samples import EVAL_SUBDIR, REPORT_JSON, REPORT_MD, items_from_samples, stack_items, summarize

__all__ = ["add_chance", "chance_lines", "evaluate_to_report", "fmt_signed", "fmt_value", "markdown_table",
           "write_report"]


def fmt_value(v) -> str:
    """A metric as the tables print it: 4 decimals, ``-`` for a missing or NaN value."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def fmt_signed(v: float, digits: int = 4) -> str:
    """A difference with its sign, 4 decimals; one that rounds to zero prints ``+0.0000``, never ``-0.0000``."""
    text = f"{v:+.{digits}f}"
    return f"{0.0:+.{digits}f}" if float(text) == 0.0 else text


def add_chance(tasks: Mapping[str, Mapping], items: Mapping[str, Sequence[Mapping]]) -> dict[str, dict]:
    """``tasks`` with a ``chance`` entry (:class:`axolotl_calib_plugin.eval.chance.ChanceCheck` as a dict: chance
    level, accuracy interval, predicted letters, warnings) for every task whose per-question items are at hand."""
    from .chance import chance_of_items

    out = {k: dict(v) for k, v in tasks.items()}
    for task, its in items.items():
        if task in out and its and "chance" not in out[task]:
            out[task]["chance"] = chance_of_items(its).as_dict()
    return out


def chance_lines(tasks: Mapping[str, Mapping]) -> list[str]:
    """Per task with a ``chance`` entry: accuracy interval vs chance and the predicted letters, then its warnings."""
    from .chance import ChanceCheck

    lines = []
    for name, t in tasks.items():
        if isinstance(t.get("chance"), Mapping):
            lines += ChanceCheck(**t["chance"]).lines(name)
    return lines


def markdown_table(tasks: Mapping[str, Mapping]) -> str:
    """The per-task numbers with the chance level (1/K; mean over the questions for mixed K) where the
    questions' items were at hand, followed by each task's predicted letters and chance warnings."""
    lines = ["| task | n | acc | chance (1/K) | conf-ECE | cw-ECE |", "|---|---:|---:|---:|---:|---:|"]
    for name, t in tasks.items():
        label = f"{name} (group: mean of its tasks)" if t.get("kind") == "group" else name
        ch = t.get("chance") if isinstance(t.get("chance"), Mapping) else {}
        flag = " (!)" if ch.get("near_chance") or ch.get("below_chance") or ch.get("one_letter") else ""
        lines.append(f"| {label} | {t.get('n', '-')} | {fmt_value(t.get('acc'))}{flag} | {fmt_value(ch.get('chance'))} | "
                     f"{fmt_value(t.get('conf_ece'))} | {fmt_value(t.get('cw_ece'))} |")
    extra = chance_lines(tasks)
    if extra:
        lines += ["", "Chance level and predicted letters ((!) = warned below: the 95 % interval of the accuracy "
                  "contains chance, or one letter is the answer on at least max(50 %, 1.5 x chance) of the questions "
                  "and 10 points more often than it is the gold one):", ""]
        lines += [f"* {x}" for x in extra]
    return "\n".join(lines)


def write_report(out_dir: str, tasks: Mapping[str, Mapping], items: Mapping[str, Sequence[Mapping]], *,
                 title: str, meta: Mapping | None = None, notes: Sequence[str] = (), plot_format: str = "png") -> dict:
    """Write ``calibration_report.json`` / ``.md`` and one ``reliability_<task>.png`` per task with items.

    ``tasks``: :func:`summarize` output; ``items``: per-question items by task (diagrams, chance level and
    predicted letters: :func:`add_chance`); ``meta``: what was evaluated (model, data, settings), stored in the
    JSON and listed in the Markdown. A task at chance or answering one letter gets its warning at the top of
    the Markdown (and in the JSON's ``warnings``) as well as under the table. Returns the written paths.
    """
    from . import plots

    os.makedirs(out_dir, exist_ok=True)
    tasks = add_chance(tasks, items)
    paths: dict[str, Any] = {"plots": {}}
    for task, its in items.items():
        if not its:
            continue
        probs, labels, ks = stack_items(its)
        name = f"reliability_{task}.{plot_format}"
        plots.plot_reliability(probs, labels, os.path.join(out_dir, name), title=f"{title}: {task}", num_options=ks)
        paths["plots"][task] = name
    warnings = [f"{task}: {w}" for task, t in tasks.items() for w in (t.get("chance") or {}).get("warnings", [])]
    doc = {"title": title, "created": _dt.datetime.now().isoformat(timespec="seconds"), "n_bins": 10,
           "meta": dict(meta or {}), "tasks": tasks, "warnings": warnings, "plots": paths["plots"]}
    paths["json"] = os.path.join(out_dir, REPORT_JSON)
    with open(paths["json"], "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    md = [f"# Calibration report: {title}", ""]
    if warnings:
        md += [f"> **{w}**\n>" for w in warnings] + [""]
    md += [f"* {k}: `{v}`" for k, v in (meta or {}).items() if v not in (None, "", [], {})]
    md += ["", markdown_table(tasks), "",
           "conf-ECE: confidence (max option probability) vs accuracy; cw-ECE: every option's probability vs "
           "its empirical frequency, averaged over the options; both over 10 equal-width bins, lower is better "
           "(`axolotl_calib_plugin.metrics`). A group row averages its tasks' ECEs; the `*_pooled` tasks give "
           "the ECE of the pooled predictions.", ""]
    md += [f"* {n}" for n in notes]
    if paths["plots"]:
        md += ["", "## Reliability diagrams", ""]
        md += [f"### {task}\n\n![{task}]({png})\n" for task, png in paths["plots"].items()]
    paths["md"] = os.path.join(out_dir, REPORT_MD)
    with open(paths["md"], "w", encoding="utf-8") as fh:
        fh.write("\n".join(md) + "\n")
    return paths


def evaluate_to_report(lm, tasks: Sequence[str], out_dir: str, *, title: str, meta: Mapping | None = None,
                       model_name: str = "model", plot_format: str = "png", **run_kw) -> tuple[dict, dict]:
    """Run our tasks on a loaded lm-eval model and write the full report into ``out_dir``.

    ``run_kw`` goes to :func:`axolotl_calib_plugin.eval.evaluation.run_tasks` (data, limit, chat template).
    Returns ``(per-task summary, written paths)``.
    """
    from .evaluation import run_tasks, truncated_prompts

    res = run_tasks(lm, tasks, output_dir=os.path.join(out_dir, EVAL_SUBDIR), model_name=model_name, **run_kw)
    summary = summarize(res)
    order: list[str] = []
    for name in tasks:  # the requested order, each group followed by its tasks
        order += [n for n in [name, *(res.get("group_subtasks") or {}).get(name, [])] if n in summary and n not in order]
    summary = {n: summary[n] for n in order + [n for n in summary if n not in order]}
    samples = res.get("samples") or {}
    items = {task: items_from_samples(samples[task]) for task in summary if task in samples}
    summary = add_chance(summary, items)  # the caller prints markdown_table(summary): chance level and warnings
    meta = {**dict(meta or {}), "tasks": list(tasks), "lm_eval_outputs": EVAL_SUBDIR,
            **{k: v for k, v in run_kw.items() if k in ("data_dir", "data_files", "ood_data_files", "limit",
                                                         "task_metadata") and v}}
    notes = []
    for task, ids in truncated_prompts(lm, samples).items():
        notes.append(f"WARNING: {task}: {len(ids)} of {len(samples[task])} questions are longer than the model's context "
                     f"({lm.max_length} tokens) and were scored with the beginning of the prompt cut off (doc_id "
                     f"{', '.join(map(str, ids[:5]))}{', ...' if len(ids) > 5 else ''}); training drops such rows: "
                     "shorten them or use a model with a longer context")
        if task in summary:
            summary[task]["truncated_prompts"] = len(ids)
    for n in notes:
        print(n, file=sys.stderr)
    paths = write_report(out_dir, summary, items, title=title, meta=meta, notes=notes, plot_format=plot_format)
    return summary, paths
