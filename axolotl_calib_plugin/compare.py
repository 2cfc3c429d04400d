"""``axolotl-calib table``: a comparison laid out like the paper's Table 2 (conf-ECE, cw-ECE, accuracy;
in-domain and out-of-domain) from several evaluated models.

A run is a folder written by ``axolotl-calib eval``, the post-training report (``calib_eval_tasks``:
the training ``output_dir``), ``axolotl-calib temperature --out``, or plain ``lm_eval --output_path``
(``results_*.json``); :func:`axolotl_calib_plugin.report.load_results` reads all of them. The paper's
columns are the pooled in-domain suite and ARC-Challenge (Sec. 6.1 of the paper): the defaults.
Question counts are carried along and a note is printed when runs were scored on different numbers of
questions (e.g. a temperature-scaled run scored on the 90 % left over from its fit).
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

from .report import find_samples, load_results, read_samples, stack_items

__all__ = ["COLUMNS", "build_table", "plot_runs", "render_markdown", "write_json"]

#: (metric, domain, header) in the paper's order.
COLUMNS = (
    ("conf_ece", "in", "conf-ECE in"), ("conf_ece", "out", "conf-ECE out"),
    ("cw_ece", "in", "cw-ECE in"), ("cw_ece", "out", "cw-ECE out"),
    ("acc", "in", "acc in"), ("acc", "out", "acc out"),
)
DEFAULT_IN = "calib_in_domain_pooled"
DEFAULT_OUT = "calib_arc_challenge"


def build_table(runs: Sequence[tuple[str, str]], in_task: str = DEFAULT_IN, out_task: str = DEFAULT_OUT) -> dict:
    """``runs``: ``(name, folder)`` in row order. Returns ``{"in_task", "out_task", "rows": [...], "notes": [...]}``;
    a run that has neither task is an error naming the tasks it does have."""
    rows, notes = [], []
    for name, path in runs:
        results = load_results(path)
        row = {"name": name, "source": os.path.abspath(path),
               "in": results.get(in_task), "out": results.get(out_task)}
        if row["in"] is None and row["out"] is None:
            raise ValueError(f"run {name!r} ({path}) has neither {in_task} nor {out_task}; its tasks: "
                             f"{', '.join(sorted(results)) or 'none'} (pick them with --in / --out)")
        for dom, task in (("in", in_task), ("out", out_task)):
            if row[dom] is None:
                notes.append(f"{name}: no {task} results")
        rows.append(row)
    for dom, task in (("in", in_task), ("out", out_task)):
        counts = {r["name"]: r[dom].get("n") for r in rows if r[dom] is not None}
        if len(set(counts.values())) > 1:
            notes.append(f"{task} was scored on different numbers of questions: "
                         + ", ".join(f"{k} n={v}" for k, v in counts.items()))
    return {"in_task": in_task, "out_task": out_task, "columns": [c[2] for c in COLUMNS], "rows": rows, "notes": notes}


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def render_markdown(table: dict) -> str:
    """The table as Markdown, with the tasks and question counts under it."""
    lines = ["| model | " + " | ".join(table["columns"]) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for r in table["rows"]:
        cells = [_fmt((r[dom] or {}).get(metric)) for metric, dom, _ in COLUMNS]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    n_in = sorted({(r["in"] or {}).get("n") for r in table["rows"] if r["in"]} - {None})
    n_out = sorted({(r["out"] or {}).get("n") for r in table["rows"] if r["out"]} - {None})
    lines += ["", f"in = `{table['in_task']}` (n = {', '.join(map(str, n_in)) or '-'}), "
                  f"out = `{table['out_task']}` (n = {', '.join(map(str, n_out)) or '-'}); 10 equal-width bins, "
                  "ECE lower is better."]
    lines += [f"* note: {n}" for n in table["notes"]]
    return "\n".join(lines)


def write_json(table: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(table, fh, indent=1)
    return path


def plot_runs(runs: Sequence[tuple[str, str]], tasks: Sequence[str], out_dir: str) -> list[str]:
    """One comparison diagram per task (``reliability_compare_<task>.png``) from the runs' logged
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
            path = os.path.join(out_dir, f"reliability_compare_{task}.png")
            plot_comparison(models, path, title=task)
            written.append(path)
    return written
