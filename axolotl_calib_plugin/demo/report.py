"""Results table (terminal / Markdown / JSON, laid out like the paper's Table 2) and reliability diagrams."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from .analysis import reliability_curve

#: rows in the paper's order (+ the oracle and the base model the paper has no row for).
ROW_ORDER = ("oracle", "base", "aligned", "temp_scaling", "label_smoothing", "sft_only", "cft", "rcft")
ROW_LABEL = {
    "oracle": "oracle p* (truth)",
    "base": "base (SFT)",
    "aligned": "aligned (DPO)",
    "temp_scaling": "+ temp. scaling",
    "label_smoothing": "+ label smoothing",
    "sft_only": "+ SFT only (CFT, λ=0)",
    "cft": "+ CFT",
    "rcft": "+ RCFT",
}
COLUMNS = (
    ("conf_ece", "in", "conf-ECE in"), ("conf_ece", "out", "conf-ECE out"),
    ("cw_ece", "in", "cw-ECE in"), ("cw_ece", "out", "cw-ECE out"),
    ("acc", "in", "acc in"), ("acc", "out", "acc out"),
)


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4f}"


def table_rows(results: dict) -> list[list[str]]:
    header = ["model"] + [c[2] for c in COLUMNS] + ["pref ratio (true)", "pair rank acc"]
    rows = [header]
    for key in ROW_ORDER:
        r = results["rows"].get(key)
        if r is None:
            continue
        cells = [ROW_LABEL[key]]
        for metric, dom, _ in COLUMNS:
            cells.append(_fmt(r[dom][metric]) if r.get(dom) else "-")
        pairs = r.get("pairs") or {}
        cells.append(f"{_fmt(pairs.get('pref_ratio'))} ({_fmt(pairs.get('true_pref'))})" if pairs else "-")
        cells.append(_fmt(pairs.get("rank_acc")))
        rows.append(cells)
    return rows


def render_text(results: dict) -> str:
    rows = table_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(results: dict) -> str:
    rows = table_rows(results)
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join(["---"] + ["---:"] * (len(rows[0]) - 1)) + "|"]
    for r in rows[1:]:
        out.append("| " + " | ".join(r) + " |")
    return "\n".join(out)


def markdown_report(results: dict) -> str:
    m = results["meta"]
    lines = [
        "# axolotl-calib demo results",
        "",
        f"Seed {m['seed']}, {'fast' if m['fast'] else 'full'} settings, wall time {m.get('wall_time_s', 0):.0f} s. "
        f"In-domain eval: {m['n_eval_in']} questions, out-domain: {m['n_eval_out']}; 10 equal-width bins.",
        "",
        render_markdown(results),
        "",
        "* **oracle p\\***: the true answer distribution of the synthetic world (perfectly calibrated: its ECE is "
        "sampling noise; its accuracy E[max p\\*] is the best any model can reach).",
        "* **temp. scaling**: one temperature T = "
        f"{_fmt(results['rows'].get('temp_scaling', {}).get('temperature'))} fitted by NLL on "
        f"{m['n_ts_fit']} held-out in-domain questions (aligned model), applied to both domains; accuracy unchanged.",
        "* **pref ratio (true)**: on held-out preference pairs (two options of an in-domain question), the mean "
        "preference ratio pi(y_m)/(pi(y_m)+pi(y_o)) of the answer y_m the model prefers, and in brackets the true "
        "probability p\\*_m/(p\\*_m+p\\*_o) that y_m is preferred. A ratio above the true value is the paper's "
        "preference collapse; the oracle has equality.",
        "* **pair rank acc**: share of held-out (sampled) preference labels ranked correctly "
        "(stand-in for the paper's Table 3: alignment is kept). The oracle value is the ceiling.",
        "",
        "## Checks (the expected direction)",
        "",
    ]
    for c in results.get("checks", []):
        lines.append(f"* [{'x' if c['ok'] else ' '}] {c['name']}: {c['detail']}")
    reg = [(k, results["rows"][k]["regime"]) for k in ROW_ORDER if k in results["rows"] and "regime" in results["rows"][k]]
    if reg:
        lines += ["", "## Regime diagnosis (`axolotl-calib diagnose`, our heuristic; in-domain, acc* = E[max p*])", ""]
        lines += [f"* {ROW_LABEL[k]}: {r['verdict']} -> {r['advice']} (accuracy-preserving floor {r['floor']:.4f}, "
                  f"2-fold temperature-scaled conf-ECE {r['ts_conf_ece']:.4f})" for k, r in reg]
    lines += ["", "Reliability diagrams: `reliability_<fix>.png` (aligned vs each fix, in-domain), "
              "`reliability_all.png` (every model, both domains).", ""]
    return "\n".join(lines)


def write_outputs(results: dict, out_dir: str) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"), "md": os.path.join(out_dir, "results.md")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(markdown_report(results))
    return paths


# -------------------------------------------------------------------------------------------- plots
_COLORS = {"aligned": "#d62728", "fix": "#1f77b4"}


def _diagram(ax, ax_d, curves: list[tuple[str, dict, str]], title: str):
    """Reliability bars (accuracy per bin) for up to two models + the sample density strip below."""
    import matplotlib.colors as mcolors

    width = 1.0 / len(curves[0][1]["count"])
    n = len(curves)
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
    for j, (label, cur, color) in enumerate(curves):
        edges = np.array(cur["edges"])
        centers = (edges[:-1] + edges[1:]) / 2
        dens = np.array(cur["density"])
        acc = np.array([np.nan if a is None else a for a in cur["accuracy"]])
        shift = (j - (n - 1) / 2) * width / n
        rgba = [mcolors.to_rgba(color, 0.25 + 0.75 * min(1.0, d / max(dens.max(), 1e-9))) for d in dens]
        ax.bar(centers + shift, np.nan_to_num(acc), width=width / n, color=rgba, edgecolor=color, lw=0.8,
               label=f"{label} (ECE {cur['ece']:.3f})")
        conf = np.array([np.nan if c is None else c for c in cur["confidence"]])
        ax.plot(conf, acc, marker="o", ms=3, color=color, lw=1)
        ax_d.bar(centers + shift, dens, width=width / n, color=color, alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("accuracy / frequency", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    ax_d.set_xlim(0, 1)
    ax_d.set_ylabel("density", fontsize=8)
    ax_d.set_xlabel("confidence", fontsize=8)


def plot_fix(aligned: dict, fix: dict, fix_label: str, path: str, domain: str = "in") -> str:
    """2 panels (confidence, class-wise), aligned vs a fix; ``aligned``/``fix`` = {"probs", "labels"} per domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 5), gridspec_kw={"height_ratios": [3, 1]}, sharex="col")
    for col, kind in enumerate(("conf", "class")):
        curves = [("aligned (DPO)", reliability_curve(aligned[domain]["probs"], aligned[domain]["labels"], kind),
                   _COLORS["aligned"]),
                  (fix_label, reliability_curve(fix[domain]["probs"], fix[domain]["labels"], kind), _COLORS["fix"])]
        name = "confidence (max prob)" if kind == "conf" else "class-wise (every option's prob)"
        _diagram(axes[0, col], axes[1, col], curves, f"{name}, {domain}-domain, 10 bins")
    fig.suptitle(f"Reliability: aligned (DPO) vs {fix_label}  (bar shade = share of samples in the bin)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(models: dict, labels: dict, path: str) -> str:
    """Grid: one row per model, columns conf/class-wise x in/out-domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ROW_ORDER if k in models]
    fig, axes = plt.subplots(len(keys), 4, figsize=(12, 2.3 * len(keys)), squeeze=False)
    for i, key in enumerate(keys):
        for j, (dom, kind) in enumerate((("in", "conf"), ("in", "class"), ("out", "conf"), ("out", "class"))):
            ax = axes[i, j]
            cur = reliability_curve(models[key][dom]["probs"], models[key][dom]["labels"], kind)
            edges = np.array(cur["edges"])
            centers = (edges[:-1] + edges[1:]) / 2
            dens = np.array(cur["density"])
            acc = np.array([np.nan if a is None else a for a in cur["accuracy"]])
            ax.bar(centers, np.nan_to_num(acc), width=0.1, color=plt.cm.Blues(0.25 + 0.75 * dens / max(dens.max(), 1e-9)),
                   edgecolor="k", lw=0.4)
            ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=0.8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.tick_params(labelsize=6)
            ax.set_title(f"{labels[key]} | {dom} | {'conf' if kind == 'conf' else 'class-wise'} ECE {cur['ece']:.3f}",
                         fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
