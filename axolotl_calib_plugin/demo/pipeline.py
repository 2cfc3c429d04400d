"""The offline reproduction: world with known truth -> base SFT -> DPO (over-confident) -> fixes -> lm-eval.

``axolotl-calib demo --out DIR [--fast] [--seed N]`` runs :func:`run_demo`. Every training step is a real
``python -m axolotl.cli.train <DIR>/configs/<step>.yml`` subprocess (logs in ``DIR/logs/``), every
evaluation is lm-eval's ``simple_evaluate`` with the project's ``calib_jsonl`` tasks (one subprocess,
:mod:`axolotl_calib_plugin.demo.evaluate`). Outputs: ``results.json``, ``results.md``, reliability PNGs,
the data (``data/``), the configs, the models (``models/``) and the per-question eval dumps (``eval/``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import softmax

from . import analysis, configs, report
from ..offline import OFFLINE_ENV
from ..rows import read_jsonl
from .world import World, generate


@dataclass(frozen=True)
class DemoSettings:
    n_train: int = 3000
    n_dpo: int = 2000
    n_ts: int = 500
    n_eval_in: int = 1500
    n_eval_out: int = 1000
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    seq_len: int = 64
    batch: int = 32
    base_epochs: float = 3
    base_lr: float = 3e-3
    dpo_epochs: float = 2
    dpo_lr: float = 5e-4
    dpo_beta: float = 0.1
    fix_epochs: float = 2
    fix_lr: float = 3e-4
    ls_factor: float = 0.1
    cft_lambda: float = 1.0
    rcft_lambda: float = 1.0
    target_oracle_acc: float = 0.65


FULL = DemoSettings()
FAST = DemoSettings(n_train=600, n_dpo=400, n_ts=200, n_eval_in=300, n_eval_out=200, hidden=64, batch=32,
                    base_epochs=6, dpo_epochs=2, fix_epochs=1, fix_lr=1e-3)


FULL_STEPS = ("label_smoothing", "sft_only", "cft", "rcft")
FAST_STEPS = ("label_smoothing", "cft", "rcft")


class StepFailed(RuntimeError):
    pass


def _env() -> dict:
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    # One intra-op thread per process: the tiny model's ops are too small to share, and on a busy
    # 2-core machine two threads per process made a training step ~5x slower (spin-waiting).
    threads = os.environ.get("AXOLOTL_CALIB_DEMO_THREADS", "1")
    env["OMP_NUM_THREADS"] = threads
    env["MKL_NUM_THREADS"] = threads
    env.setdefault("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "axolotl_calib_demo_hf"))
    return env


def _log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_logged(cmd: list[str], log_path: str, what: str) -> float:
    """Run ``cmd`` with the offline env, output to ``log_path``; raise :class:`StepFailed` with the log tail."""
    t0 = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env())
    dt = time.time() - t0
    if rc != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = "".join(f.readlines()[-25:])
        raise StepFailed(f"{what} failed (exit {rc}, {dt:.0f} s); last lines of {log_path}:\n{tail}")
    return dt


def axolotl_train(cfg: dict, name: str, out: str, reuse: bool = False) -> str:
    cfg_path = configs.write_config(cfg, os.path.join(out, "configs", f"{name}.yml"))
    model_dir = cfg["output_dir"]
    if reuse and os.path.exists(os.path.join(model_dir, "model.safetensors")):
        _log(f"{name}: reusing {model_dir}")
        return model_dir
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.rmtree(cfg["dataset_prepared_path"], ignore_errors=True)  # the prepared cache ignores plugin settings
    _log(f"{name}: python -m axolotl.cli.train {cfg_path}")
    dt = run_logged([sys.executable, "-m", "axolotl.cli.train", cfg_path], os.path.join(out, "logs", f"{name}.log"),
                    f"axolotl train ({name})")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        raise StepFailed(f"axolotl train ({name}) wrote no model.safetensors to {model_dir}")
    _log(f"{name}: done in {dt:.0f} s")
    return model_dir


def build_init_model(world: World, s: DemoSettings, path: str, seed: int) -> str:
    """Tokenizer trained on the demo's text (every feature word and option one token) + a fresh tiny Llama."""
    from ..testing import build_llama, build_tokenizer

    tok = build_tokenizer(world.corpus(), vocab_size=400)
    for w in [w for slot in world.words for w in slot] + world.choices():
        ids = tok(" " + w, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise RuntimeError(f"demo tokenizer splits {w!r} into {len(ids)} tokens")
    model = build_llama(tok, hidden_size=s.hidden, num_layers=s.layers, num_heads=s.heads, seed=seed)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _sft_jsonl(mcq_path: str, out_path: str) -> str:
    """MCQ rows -> ``{prompt, completion}`` for the plain-Axolotl SFT runs (same prompt as the mcq strategy)."""
    from ..prompts import DEFAULT_LETTERS, answer_to_index, format_mcq_prompt

    with open(out_path, "w", encoding="utf-8") as f:
        for r in read_jsonl(mcq_path):
            k = answer_to_index(r["answer"], r["choices"])
            f.write(json.dumps({"prompt": format_mcq_prompt(r["question"], r["choices"]),
                                "completion": " " + DEFAULT_LETTERS[k]}) + "\n")
    return out_path


def _load_eval(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    d["logliks"] = np.asarray(d["logliks"], dtype=np.float64)
    d["labels"] = np.asarray(d["labels"], dtype=np.int64)
    return d


def _checks(rows: dict) -> list[dict]:
    out = []

    def add(name, ok, detail):
        out.append({"name": name, "ok": bool(ok), "detail": detail})

    def g(k, dom, m):
        return rows.get(k, {}).get(dom, {}).get(m)

    if g("base", "in", "conf_ece") is not None and g("aligned", "in", "conf_ece") is not None:
        b, a = g("base", "in", "conf_ece"), g("aligned", "in", "conf_ece")
        add("alignment raises in-domain conf-ECE", a > b, f"base {b:.4f} -> aligned {a:.4f}")
    if "aligned" in rows and rows["aligned"].get("pairs"):
        p = rows["aligned"]["pairs"]
        add("preference collapse (aligned pref ratio > true preference)", p["pref_ratio"] > p["true_pref"],
            f"{p['pref_ratio']:.4f} vs true {p['true_pref']:.4f}")
    a_ece, a_acc = g("aligned", "in", "conf_ece"), g("aligned", "in", "acc")
    if g("cft", "in", "conf_ece") is not None and a_ece is not None:
        c, ca = g("cft", "in", "conf_ece"), g("cft", "in", "acc")
        add("CFT cuts in-domain conf-ECE by >= half", c <= a_ece / 2, f"{a_ece:.4f} -> {c:.4f} ({1 - c / a_ece:.0%} cut)")
        add("CFT accuracy within 1 point of aligned", abs(ca - a_acc) <= 0.01 + 1e-12 or ca > a_acc,
            f"{a_acc:.4f} -> {ca:.4f}")
    if g("rcft", "in", "conf_ece") is not None and a_ece is not None:
        r, ra = g("rcft", "in", "conf_ece"), g("rcft", "in", "acc")
        add("RCFT better calibrated than aligned (in-domain conf-ECE)", r < a_ece, f"{a_ece:.4f} -> {r:.4f}")
        if g("cft", "in", "acc") is not None:
            add("RCFT accuracy above CFT (in-domain)", ra > g("cft", "in", "acc"),
                f"CFT {g('cft', 'in', 'acc'):.4f} vs RCFT {ra:.4f}")
    if g("temp_scaling", "in", "conf_ece") is not None and a_ece is not None:
        t, ta = g("temp_scaling", "in", "conf_ece"), g("temp_scaling", "in", "acc")
        add("temperature scaling improves conf-ECE, accuracy unchanged", t < a_ece and abs(ta - a_acc) < 1e-12,
            f"{a_ece:.4f} -> {t:.4f}, acc {a_acc:.4f} -> {ta:.4f}")
    for k in ("cft", "rcft", "label_smoothing", "sft_only"):
        if rows.get(k, {}).get("pairs") and rows.get("aligned", {}).get("pairs"):
            a, f = rows["aligned"]["pairs"]["rank_acc"], rows[k]["pairs"]["rank_acc"]
            add(f"{k}: pair ranking accuracy kept (>= aligned - 0.02)", f >= a - 0.02, f"{a:.4f} -> {f:.4f}")
    return out


def run_demo(out: str, fast: bool = False, seed: int = 0, reuse: bool = False, settings: DemoSettings | None = None,
             steps: tuple[str, ...] | None = None,
             parallel: int = 4) -> dict:
    """Run the whole pipeline into ``out``; returns the results dict (also written to results.json)."""
    t_start = time.time()
    s = settings or (FAST if fast else FULL)
    if steps is None:  # the fast variant skips the lambda=0 ablation (one Axolotl start-up less)
        steps = FAST_STEPS if fast else FULL_STEPS
    out = os.path.abspath(out)
    for sub in ("data", "configs", "logs", "models", "eval", "prepared"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}

    # 1. world + data
    world = World(seed=seed, target_oracle_acc=s.target_oracle_acc)
    data = generate(os.path.join(out, "data"), world, s.n_train, s.n_dpo, s.n_ts, s.n_eval_in, s.n_eval_out)
    sft_data = _sft_jsonl(data.train, os.path.join(out, "data", "train_sft.jsonl"))
    _log(f"world: seed {seed}, tau {world.tau:.3f}, {s.n_train} train / {s.n_dpo} DPO pairs / "
         f"{s.n_eval_in} in- + {s.n_eval_out} out-domain eval questions -> {os.path.join(out, 'data')}")
    init = os.path.join(out, "models", "init")
    if not (reuse and os.path.exists(os.path.join(init, "model.safetensors"))):
        build_init_model(world, s, init, seed)

    common = dict(seq_len=s.seq_len, batch=s.batch, seed=seed)
    m = lambda n: os.path.join(out, "models", n)  # noqa: E731
    prep = lambda n: os.path.join(out, "prepared", n)  # noqa: E731
    models: dict[str, str] = {}

    def step(name, cfg):
        t0 = time.time()
        try:
            models[name] = axolotl_train(cfg, name, out, reuse)
        except StepFailed as e:
            errors[name] = str(e)
            _log(f"{name}: FAILED\n{e}")
        timings[name] = time.time() - t0

    # 2. base SFT, 3. DPO
    step("base", configs.sft_config(init, sft_data, m("base"), prep("base"), epochs=s.base_epochs, lr=s.base_lr, **common))
    if "base" not in models:
        raise StepFailed(errors["base"])
    step("aligned", configs.dpo_config(models["base"], data.dpo, m("aligned"), prep("aligned"), beta=s.dpo_beta,
                                       epochs=s.dpo_epochs, lr=s.dpo_lr, **common))
    if "aligned" not in models:
        raise StepFailed(errors["aligned"])
    # 4. fixes from the aligned model: independent runs, launched side by side (they share nothing)
    aligned = models["aligned"]
    fixes = []
    if "label_smoothing" in steps:
        fixes.append(("label_smoothing", configs.sft_config(aligned, sft_data, m("label_smoothing"), prep("label_smoothing"),
                                                            label_smoothing=s.ls_factor, epochs=s.fix_epochs, lr=s.fix_lr,
                                                            **common)))
    if "cft" in steps:
        fixes.append(("cft", configs.calib_config(aligned, data.train, m("cft"), prep("cft"), mode="cft",
                                                  lam=s.cft_lambda, epochs=s.fix_epochs, lr=s.fix_lr, **common)))
    if "sft_only" in steps:  # ablation: the plugin with lambda = 0 (the CFT run without its ECE term)
        fixes.append(("sft_only", configs.calib_config(aligned, data.train, m("sft_only"), prep("sft_only"), mode="cft",
                                                       lam=0.0, epochs=s.fix_epochs, lr=s.fix_lr, **common)))
    if "rcft" in steps:
        fixes.append(("rcft", configs.calib_config(aligned, data.train, m("rcft"), prep("rcft"), mode="rcft",
                                                   lam=s.rcft_lambda, epochs=s.fix_epochs, lr=s.fix_lr, **common)))
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        list(pool.map(lambda nc: step(*nc), fixes))
    models = {k: models[k] for k in ("base", "aligned", "label_smoothing", "sft_only", "cft", "rcft") if k in models}

    # 5. evaluation (lm-eval, calib_jsonl tasks)
    t0 = time.time()
    eval_dir = os.path.join(out, "eval")
    cmd = [sys.executable, "-m", "axolotl_calib_plugin.demo.evaluate", "--out", eval_dir,
           "--set", f"in={data.eval_in}", "--set", f"out={data.eval_out}", "--set", f"ts_fit={data.ts_fit}:aligned"]
    for name, path in models.items():
        cmd += ["--model", f"{name}={path}"]
    _log(f"lm-eval: {len(models)} models x (in, out) with the calib_jsonl / calib_jsonl_ood tasks")
    run_logged(cmd, os.path.join(out, "logs", "lm_eval.log"), "lm-eval")
    timings["lm_eval"] = time.time() - t0

    # 6. analysis
    in_rows, out_rows = read_jsonl(data.eval_in), read_jsonl(data.eval_out)
    pairs = read_jsonl(data.pairs_eval)
    ps_in = np.array([r["p_star"] for r in in_rows])
    ps_out = np.array([r["p_star"] for r in out_rows])
    y_in = np.array([r["answer"] for r in in_rows])
    y_out = np.array([r["answer"] for r in out_rows])
    rows: dict[str, dict] = {}
    probs_for_plots: dict[str, dict] = {}
    rows["oracle"] = {"in": analysis.scores(ps_in, y_in).as_dict(), "out": analysis.scores(ps_out, y_out).as_dict(),
                      "pairs": analysis.pair_stats(np.log(ps_in), pairs, ps_in).as_dict()}
    evals = {}
    for name in models:
        ev = {d: _load_eval(os.path.join(eval_dir, f"{name}__{d}.json")) for d in ("in", "out")}
        for d, y in (("in", y_in), ("out", y_out)):
            if not np.array_equal(ev[d]["labels"], y):
                raise StepFailed(f"lm-eval's gold labels for {name}/{d} do not match the data file")
        evals[name] = ev
        row = {}
        for d in ("in", "out"):
            p = softmax(ev[d]["logliks"], axis=1)
            sc = analysis.scores(p, ev[d]["labels"]).as_dict()
            sc["lm_eval"] = ev[d]["metrics"]  # the task's own aggregates (same numbers, from lm-eval)
            row[d] = sc
            probs_for_plots.setdefault(name, {})[d] = {"probs": p, "labels": ev[d]["labels"]}
        row["pairs"] = analysis.pair_stats(ev["in"]["logliks"], pairs, ps_in).as_dict()
        rows[name] = row
    if "aligned" in evals:
        ts = _load_eval(os.path.join(eval_dir, "aligned__ts_fit.json"))
        t, (p_in, p_out), (z_in, _) = analysis.temperature_scale(ts["logliks"], ts["labels"], evals["aligned"]["in"]["logliks"],
                                                                 evals["aligned"]["out"]["logliks"])
        rows["temp_scaling"] = {"in": analysis.scores(p_in, y_in).as_dict(), "out": analysis.scores(p_out, y_out).as_dict(),
                                "pairs": analysis.pair_stats(z_in, pairs, ps_in).as_dict(), "temperature": t}
        probs_for_plots["temp_scaling"] = {"in": {"probs": p_in, "labels": y_in}, "out": {"probs": p_out, "labels": y_out}}

    # regime diagnosis (axolotl_calib_plugin.regime, our heuristic) of every model, in-domain, acc* = E[max p*]
    from ..regime import diagnose

    acc_star = float(ps_in.max(axis=1).mean())
    for name, pp in probs_for_plots.items():
        d = diagnose(pp["in"]["probs"], pp["in"]["labels"], acc_star=acc_star)
        rows[name]["regime"] = {"verdict": d.verdict, "advice": d.advice, "floor": d.floor,
                                "ts_conf_ece": d.ts_conf_ece, "acc_star": acc_star}

    results = {
        "meta": {"seed": seed, "fast": fast, "settings": asdict(s), "world_tau": world.tau,
                 "n_eval_in": s.n_eval_in, "n_eval_out": s.n_eval_out, "n_ts_fit": s.n_ts,
                 "timings_s": {k: round(v, 1) for k, v in timings.items()}, "errors": errors,
                 "models": models},
        "true_pref": rows["oracle"]["pairs"]["true_pref"],
        "rows": rows,
    }
    results["checks"] = _checks(rows)

    # plots
    png = []
    if "aligned" in probs_for_plots:
        for key in ("temp_scaling", "label_smoothing", "sft_only", "cft", "rcft"):
            if key in probs_for_plots:
                png.append(report.plot_fix(probs_for_plots["aligned"], probs_for_plots[key], report.ROW_LABEL[key].lstrip("+ "),
                                           os.path.join(out, f"reliability_{key}.png")))
    probs_for_plots["oracle"] = {"in": {"probs": ps_in, "labels": y_in}, "out": {"probs": ps_out, "labels": y_out}}
    png.append(report.plot_all(probs_for_plots, report.ROW_LABEL, os.path.join(out, "reliability_all.png")))
    results["meta"]["plots"] = [os.path.basename(p) for p in png]
    results["meta"]["wall_time_s"] = round(time.time() - t_start, 1)
    report.write_outputs(results, out)
    return results


def print_summary(results: dict, out: str) -> None:
    print()
    print(f"Results (seed {results['meta']['seed']}, {'fast' if results['meta']['fast'] else 'full'}, "
          f"{results['meta']['wall_time_s']:.0f} s):")
    print(report.render_text(results))
    print("\npref ratio (true) = mean pi(y_m)/(pi(y_m)+pi(y_o)) of the answer the model prefers in held-out pairs "
          "(true probability that it is preferred); ratio > true = preference collapse")
    if "temp_scaling" in results["rows"]:
        print(f"temperature fitted on held-out in-domain data: T = {results['rows']['temp_scaling']['temperature']:.3f}")
    print("\nChecks:")
    for c in results["checks"]:
        print(f"  [{'ok' if c['ok'] else '--'}] {c['name']}: {c['detail']}")
    for k, e in results["meta"]["errors"].items():
        print(f"  [FAILED] {k}: {e.splitlines()[0]}")
    print(f"\nWritten: {out}/results.md, results.json, " + ", ".join(results["meta"]["plots"]))
