"""Results table (terminal / Markdown / JSON, laid out like the paper's Table 2) and reliability diagrams."""

from __future__ import annotations

import json
import os

from ..eval.report import fmt_value as _fmt

ARM_LABEL = {"aligned": "aligned (DPO)", "overfit": "over-fine-tuned (long SFT)"}
FIX_LABEL = {"ts": "temp. scaling", "ls": "label smoothing"}


def _fix_label(method: str) -> str:
    """``cft`` -> "CFT", ``cft_lam0`` -> "SFT only (CFT, λ=0)", ``rcft_lam0.3`` -> "RCFT, λ=0.3", ``cft_online`` -> ..."""
    if method in FIX_LABEL:
        return FIX_LABEL[method]
    online = method.endswith("_online")
    base = method.removesuffix("_online")
    mode, _, lam = base.partition("_lam")
    name = mode.upper()
    if lam == "0":
        label = "SFT only (CFT, λ=0)" if mode == "cft" else "SFT q+a only (RCFT, λ=0)"
    elif lam:
        label = f"{name}, λ={lam}"
    else:
        label = name
    return label + (" (online E-step)" if online else "")


def row_label(key: str) -> str:
    """Table label of a results key (``oracle``, ``base``, an arm, or ``<arm>.<method>``)."""
    if key == "oracle":
        return "oracle p* (truth)"
    if key == "base":
        return "base (SFT)"
    if key in ARM_LABEL:
        return ARM_LABEL[key]
    arm, _, method = key.partition(".")
    return "+ " + _fix_label(method)


def _method_rank(method: str) -> tuple:
    order = {"ts": 0, "ls": 1}
    if method in order:
        return (order[method], 0.0, 0)
    base = method.removesuffix("_online")
    mode, _, lam = base.partition("_lam")
    lam_v = float(lam) if lam else 1.0
    return (2 if mode == "cft" else 3, lam_v, int(method.endswith("_online")))


def ordered_keys(keys) -> list[str]:
    """Results keys in table order: oracle, base, then each arm followed by its fixes (TS, LS, CFT by lambda,
    online, RCFT by lambda)."""
    keys = list(keys)
    out = [k for k in ("oracle", "base") if k in keys]
    arms = [a for a in ARM_LABEL if a in keys or any(k.startswith(a + ".") for k in keys)]
    for arm in arms:
        if arm in keys:
            out.append(arm)
        fixes = [k for k in keys if k.startswith(arm + ".")]
        out += sorted(fixes, key=lambda k: _method_rank(k.partition(".")[2]))
    return out + [k for k in keys if k not in out]


COLUMNS = (
    ("conf_ece", "in", "conf-ECE in"), ("conf_ece", "out", "conf-ECE out"),
    ("cw_ece", "in", "cw-ECE in"), ("cw_ece", "out", "cw-ECE out"),
    ("acc", "in", "acc in"), ("acc", "out", "acc out"),
)


def table_rows(results: dict) -> list[list[str]]:
    header = ["model"] + [c[2] for c in COLUMNS] + ["pref ratio (true)", "pair rank acc"]
    rows = [header]
    for key in ordered_keys(results["rows"]):
        r = results["rows"][key]
        cells = [row_label(key)]
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


def checks(rows: dict) -> list[dict]:
    """The expected directions on ONE seed (a smoke check of the pipeline; which differences are real is
    decided by the multi-seed study's confidence intervals, never by one seed)."""
    out = []

    def add(name, ok, detail):
        out.append({"name": name, "ok": bool(ok), "detail": detail})

    def g(k, dom, m):
        return rows.get(k, {}).get(dom, {}).get(m)

    b = g("base", "in", "conf_ece")
    if b is not None and g("aligned", "in", "conf_ece") is not None:
        a = g("aligned", "in", "conf_ece")
        add("alignment raises in-domain conf-ECE", a > b, f"base {b:.4f} -> aligned {a:.4f}")
    if rows.get("aligned", {}).get("pairs"):
        p = rows["aligned"]["pairs"]
        add("preference collapse (aligned pref ratio > true preference)", p["pref_ratio"] > p["true_pref"],
            f"{p['pref_ratio']:.4f} vs true {p['true_pref']:.4f}")
    for arm in ("aligned", "overfit"):
        a_ece, a_acc = g(arm, "in", "conf_ece"), g(arm, "in", "acc")
        if a_ece is None:
            continue
        c, ca = g(f"{arm}.cft", "in", "conf_ece"), g(f"{arm}.cft", "in", "acc")
        if c is not None:
            add(f"{arm}: CFT cuts in-domain conf-ECE by >= half", c <= a_ece / 2, f"{a_ece:.4f} -> {c:.4f}")
            add(f"{arm}: CFT accuracy not more than 1 point below the start model", ca >= a_acc - 0.01,
                f"{a_acc:.4f} -> {ca:.4f}")
        r, ra = g(f"{arm}.rcft", "in", "conf_ece"), g(f"{arm}.rcft", "in", "acc")
        if r is not None:
            add(f"{arm}: RCFT better calibrated than its start model", r < a_ece, f"{a_ece:.4f} -> {r:.4f}")
            if ca is not None:
                add(f"{arm}: RCFT accuracy above CFT", ra > ca, f"CFT {ca:.4f} vs RCFT {ra:.4f}")
        t, ta = g(f"{arm}.ts", "in", "conf_ece"), g(f"{arm}.ts", "in", "acc")
        if t is not None:
            add(f"{arm}: temperature scaling improves conf-ECE, accuracy unchanged", t < a_ece and abs(ta - a_acc) < 1e-12,
                f"{a_ece:.4f} -> {t:.4f}")
        reg = rows.get(arm, {}).get("regime")
        if reg:
            want = "calibratable" if arm == "aligned" else "non-calibratable"
            why = (f"train acc {reg['train_acc']:.4f} vs held-out {reg['acc']:.4f}" if reg.get("train_acc") is not None
                   else reg["reasons"][0][:90])
            add(f"{arm}: diagnose says {want}", reg["verdict"] == want, f"{reg['verdict']} ({why})")
    base_r, dpo_r = rows.get("base", {}).get("reward"), rows.get("aligned", {}).get("reward")
    if base_r and dpo_r:
        add("DPO raises the expected true reward on held-out preference prompts",
            dpo_r["expected_reward"] > base_r["expected_reward"],
            f"base {base_r['expected_reward']:.4f} -> aligned {dpo_r['expected_reward']:.4f}")
        for fix in ("cft", "rcft"):
            fr = rows.get(f"aligned.{fix}", {}).get("reward")
            if fr:
                keep = base_r["expected_reward"] + 0.9 * (dpo_r["expected_reward"] - base_r["expected_reward"])
                add(f"aligned: {fix.upper()} keeps >= 90% of DPO's expected-reward gain", fr["expected_reward"] >= keep,
                    f"{dpo_r['expected_reward']:.4f} -> {fr['expected_reward']:.4f} (win rate vs DPO "
                    f"{fr['win_rate']:.3f})")
    if g("overfit", "in", "conf_ece") is not None and b is not None:
        add("over-fine-tuning raises in-domain conf-ECE", g("overfit", "in", "conf_ece") > b,
            f"base {b:.4f} -> overfit {g('overfit', 'in', 'conf_ece'):.4f}")
    return out


def reuse_note(meta: dict) -> str:
    """Says when the wall time is a resumed invocation's: reused runs keep their original training seconds."""
    reused = meta.get("reused_runs") or []
    if not reused:
        return ""
    return (f" ({len(reused)} of {len(meta.get('runs', []))} training runs reused from an earlier invocation; "
            f"training time of all runs, summed: {meta.get('train_seconds_total', 0):.0f} s)")


def markdown_report(results: dict) -> str:
    m = results["meta"]
    s = m["settings"]
    lines = [
        "# axolotl-calib demo results",
        "",
        f"Seed {m['seed']}, {m['world']} world, wall time {m.get('wall_time_s', 0):.0f} s{reuse_note(m)}. In-domain eval: "
        f"{s['n_eval_in']} questions, out-domain: {s['n_eval_out']}; 10 equal-width bins. One seed: the numbers vary "
        "by machine and seed; the multi-seed study says which differences are significant.",
        "",
        render_markdown(results),
        "",
        "* **oracle p\\***: the true answer distribution of the synthetic world (perfectly calibrated: its ECE is "
        "sampling noise; its accuracy E[max p\\*] is the best any model can reach).",
        f"* **temp. scaling**: one temperature fitted by NLL on {s['n_ts']} held-out in-domain questions (per arm's start "
        "model), applied to both domains; accuracy unchanged.",
        "* **pref ratio (true)**: on held-out preference pairs (two options of an in-domain question), the mean "
        "preference ratio pi(y_m)/(pi(y_m)+pi(y_o)) of the answer y_m the model prefers, and in brackets the true "
        "probability p\\*_m/(p\\*_m+p\\*_o) that y_m is preferred. A ratio above the true value is the paper's "
        "preference collapse; the oracle has equality.",
        "* **pair rank acc**: share of held-out (sampled) preference labels ranked correctly "
        "(stand-in for the paper's Table 3: alignment is kept). The oracle value is the ceiling.",
        "",
        "## Checks (expected directions on this one seed)",
        "",
    ]
    for c in results.get("checks", []):
        lines.append(f"* [{'x' if c['ok'] else ' '}] {c['name']}: {c['detail']}")
    lines += reward_table(results["rows"])
    reg = [(k, results["rows"][k]["regime"]) for k in ordered_keys(results["rows"]) if "regime" in results["rows"][k]]
    if reg:
        lines += ["", "## Regime diagnosis (`axolotl-calib diagnose` with the training set, our heuristic)", ""]
        for k, r in reg:
            gap = "" if r.get("gap") is None else f"; train acc {r['train_acc']:.4f} vs held-out {r['acc']:.4f}"
            lines.append(f"* {row_label(k)}: {r['verdict']} -> {r['advice']} (2-fold temperature-scaled conf-ECE "
                         f"{r['ts_conf_ece']:.4f}{gap})")
    if m.get("plots"):
        lines += ["", "Reliability diagrams: " + ", ".join(f"`{x}`" for x in m["plots"]) + ".", ""]
    return "\n".join(lines)


def reward_table(rows: dict) -> list[str]:
    """The preference domain's exact alignment metrics per model (empty without the domain)."""
    keys = [k for k in ordered_keys(rows) if "expected_reward" in rows[k].get("reward", {})]
    if not keys:
        return []
    bounds = rows.get("oracle", {}).get("reward", {})
    out = ["", "## Alignment on held-out preference prompts (known reward r*, exact)", "",
           f"Expected true reward E[r*] of the model's reply (uniform policy {bounds.get('uniform', float('nan')):.3f}, "
           f"best reply every time {bounds.get('best', float('nan')):.3f}); win rate vs DPO = P[r*(y) > r*(y_DPO)] + "
           "1/2 P[tie], replies drawn from each policy; pref ratio (true) as above, over every pair of replies. "
           "Temperature scaling rescales only the MCQ letters: its policy here is its start model's.", "",
           "| model | E[r*] | win rate vs DPO | P(best reply) | pref ratio (true) |", "|---|---:|---:|---:|---:|"]
    for k in keys:
        r = rows[k]["reward"]
        win = f"{r['win_rate']:.3f}" if "win_rate" in r else "-"
        out.append(f"| {row_label(k)} | {r['expected_reward']:.3f} | {win} | {r['best_reply']:.3f} | "
                   f"{r['pref_ratio']:.3f} ({r['true_pref']:.3f}) |")
    return out


def write_outputs(results: dict, out_dir: str) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"), "md": os.path.join(out_dir, "results.md")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(markdown_report(results))
    return paths


# -------------------------------------------------------------------------------------------- plots
#: the fixes that get a reliability figure in a single-seed run
MAIN_FIXES = ("ts", "ls", "cft_lam0", "cft", "rcft", "cft_online")


def plot_seed(probs: dict, out_dir: str, domain: str = "in") -> list[str]:
    """Reliability diagrams of one seed (:mod:`axolotl_calib_plugin.plots`): one figure per main model and,
    per arm, one comparison panel of the start model and its fixes; ``domain`` is the eval set drawn."""
    from ..eval.plots import plot_comparison, plot_reliability

    paths = []
    keys = [k for k in ordered_keys(probs) if k in ("oracle", "base") + tuple(ARM_LABEL) or
            k.partition(".")[2] in MAIN_FIXES]
    for key in keys:
        if domain not in probs[key]:
            continue
        d = probs[key][domain]
        label = row_label(key) if "." not in key else f"{row_label(key.partition('.')[0])} {row_label(key)}"
        path = os.path.join(out_dir, f"reliability_{key}.png")
        plot_reliability(d["probs"], d["labels"], path, title=f"{label}, {domain}-domain eval")
        paths.append(path)
    for arm in ARM_LABEL:
        if arm not in probs:
            continue
        models = {row_label(arm): (probs[arm][domain]["probs"], probs[arm][domain]["labels"])}
        for fix in MAIN_FIXES:
            key = f"{arm}.{fix}"
            if key in probs:
                models[row_label(key).lstrip("+ ")] = (probs[key][domain]["probs"], probs[key][domain]["labels"])
        path = os.path.join(out_dir, f"comparison_{arm}.png")
        plot_comparison(models, path, title=f"{row_label(arm)} and its fixes, {domain}-domain eval")
        paths.append(path)
    return paths
