"""One seed of the offline reproduction: world -> base SFT -> two arms -> fixes -> lm-eval -> analysis.

Arms (the paper's two regimes, Sec. 4 and its take-aways):

* **aligned** (calibratable): base SFT -> DPO (over-confident: preference collapse) -> fixes;
* **overfit** (over-fine-tuned, non-calibratable): base SFT -> SFT on the fixes' training set for many epochs
  (20): it memorises those questions' golds, so it is calibrated on them and over-confident on new ones -> fixes.

Fixes from each arm's start model, on the same training set: temperature scaling (post hoc), label
smoothing, CFT and RCFT for each ``lambda`` of the plan (``lambda = 0`` is plain SFT through the same
plugin: the ablation of the ECE term), and CFT with the online E-step.

Every training step is a real ``python -m axolotl.cli.train <DIR>/configs/<name>.yml`` subprocess (logs in
``DIR/logs/``), every evaluation is lm-eval's ``simple_evaluate`` with the project's ``calib_jsonl`` tasks
(:mod:`axolotl_calib_plugin.demo.evaluate`). A run whose model exists and whose config is unchanged is
reused, so a killed run resumes where it stopped. Outputs: ``results.json``, ``results.md``, reliability
PNGs, the data (``data/``), the configs, the models (``models/``) and per-question eval dumps (``eval/``).

One module of ~500 lines, on purpose: it is the seed's plan and its one run, in order -- settings and plan, the
runs they imply, training (subprocesses, reuse), evaluation, analysis and the results files -- and the pieces share
the seed's paths and settings objects. The steps that stand alone already live beside it (``configs``, ``evaluate``,
``analysis``, ``seed_results``, ``orchestrate``); what is left is the sequence itself, which reads best in one place.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import numpy as np
from scipy.special import softmax

from .. import orchestrate
from ..offline import OFFLINE_ENV
from ..orchestrate import StepFailed  # noqa: F401 - the demo's error type (cli, study)
from ..rows import read_jsonl
from . import analysis, configs, seed_results
from .world import generate, make_world, preference_domain_for


@dataclass(frozen=True)
class DemoSettings:
    world: str = "topic"
    n_base: int = 3000
    n_train: int = 3000
    n_dpo: int = 2000
    n_ts: int = 500
    n_eval_in: int = 1500
    n_eval_out: int = 1000
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    vocab_size: int = 800
    seq_len: int = 64
    batch: int = 32
    base_epochs: float = 2
    base_lr: float = 3e-3
    dpo_epochs: float = 2
    dpo_lr: float = 5e-4
    dpo_beta: float = 0.1
    overfit_epochs: float = 20
    overfit_lr: float = 1e-3
    fix_epochs: float = 2
    fix_lr: float = 3e-4
    ls_factor: float = 0.1
    target_oracle_acc: float = 0.65
    #: the preference domain (:class:`.world.PreferenceDomain`): prompts in the base SFT (uniform replies),
    #: Bradley-Terry pairs added to DPO, held-out prompts for the exact alignment metrics (0: no domain)
    n_pref_base: int = 1000
    n_pref_dpo: int = 1000
    n_pref_eval: int = 500


FULL = DemoSettings()
FAST = DemoSettings(n_base=600, n_train=400, n_dpo=400, n_ts=200, n_eval_in=300, n_eval_out=200, hidden=64,
                    n_pref_base=200, n_pref_dpo=200, n_pref_eval=100, base_epochs=4, overfit_epochs=4, fix_epochs=1, fix_lr=1e-3)

ARMS = ("aligned", "overfit")
#: the lambda of the CFT / RCFT rows of the main table (both presets use 1.0).
DEFAULT_LAMBDA = 1.0


#: target variants of a CFT / RCFT run -> (calib_bin_accuracy, calib_targets, calib_ece_loss)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "train": ("train", "bin", "mse"),        # Algorithm 1: bin accuracies from the training rows
    "train_kl": ("train", "bin", "kl"),
    "heldout": ("heldout", "bin", "mse"),    # bin accuracies from the held-out split
    "heldout_kl": ("heldout", "bin", "kl"),
    "temp": ("train", "temperature", "kl"),  # per-row softmax(log pi / T), T fitted on the held-out split
}


@dataclass(frozen=True)
class Plan:
    """Which runs one seed trains: arms, the lambdas of CFT / RCFT, label smoothing, online E-step."""

    arms: tuple[str, ...] = ARMS
    lambdas: tuple[float, ...] = (0.0, DEFAULT_LAMBDA)
    label_smoothing: bool = True
    online: bool = False
    #: lambdas swept in the overfit arm too (else only 0 and the default there)
    sweep_overfit: bool = False
    #: target variants (``VARIANTS``) trained at every non-zero lambda (lambda 0 is one run: no targets)
    variants: tuple[str, ...] = ("train",)
    #: extra (mode, variant, lambda) runs beyond the grid
    extra_runs: tuple[tuple[str, str, float], ...] = ()
    #: arms whose start model gets fixes (None: every arm); the others are trained and evaluated only
    fix_arms: Optional[tuple[str, ...]] = None
    #: give every CFT / RCFT run the held-out TS-fit split as its eval split (``test_datasets``), evaluated each epoch
    heldout_eval: bool = False
    #: the calibration presets trained
    modes: tuple[str, ...] = ("cft", "rcft")


#: ``make demo`` (one seed, <= 10 min on 2 cores): the aligned arm with lambda 0 and 1; the over-fine-tuned arm
#: (its 20-epoch SFT alone takes ~6 min there) and the lambda sweep are in the multi-seed study (``--seeds``)
DEMO_PLAN = Plan(arms=("aligned",), lambdas=(0.0, DEFAULT_LAMBDA))
FAST_PLAN = Plan(arms=("aligned",), lambdas=(DEFAULT_LAMBDA,))


@dataclass(frozen=True)
class Run:
    """One training run: ``name`` is also the model folder and the results key."""

    name: str
    kind: str  # "sft" | "overfit" | "dpo" | "ls" | "calib"
    start: str  # "init" or the name of the run it starts from
    mode: Optional[str] = None
    lam: Optional[float] = None
    estep: str = "exact"
    variant: str = "train"


def calib_name(arm: str, mode: str, lam: float, estep: str = "exact", variant: str = "train") -> str:
    """Results key of a CFT / RCFT run: ``aligned.cft``, ``aligned.cft_lam0``, ``overfit.rcft_lam0.3``,
    ``aligned.cft_online``, ``overfit.cft_heldout_lam10``, ``overfit.rcft_temp`` (lambda 0 has no variant)."""
    tag = "" if variant == "train" or lam == 0 else f"_{variant}"
    name = f"{arm}.{mode}{tag}" + ("" if lam == DEFAULT_LAMBDA else f"_lam{lam:g}")
    return name + ("_online" if estep == "online" else "")


def plan_runs(plan: Plan) -> list[Run]:
    """Every training run of one seed, in dependency order (a run's start model comes before it)."""
    runs = [Run("base", "sft", "init")]
    for arm in sorted(plan.arms, key=lambda a: a != "overfit"):  # the longest run is submitted first
        runs.append(Run(arm, "dpo" if arm == "aligned" else "overfit", "base"))
    for arm in plan.arms:
        if plan.fix_arms is not None and arm not in plan.fix_arms:
            continue
        lams = plan.lambdas if (arm == "aligned" or plan.sweep_overfit) else tuple(
            lam for lam in plan.lambdas if lam in (0.0, DEFAULT_LAMBDA))
        if plan.label_smoothing and arm == "aligned":
            runs.append(Run(f"{arm}.ls", "ls", arm))
        for mode in plan.modes:
            if 0.0 in lams:
                runs.append(Run(calib_name(arm, mode, 0.0), "calib", arm, mode=mode, lam=0.0))
            for variant in plan.variants:
                for lam in (lam for lam in lams if lam != 0.0):
                    runs.append(Run(calib_name(arm, mode, lam, variant=variant), "calib", arm, mode=mode,
                                    lam=float(lam), variant=variant))
        for mode, variant, lam in (r for r in plan.extra_runs if r[0] in plan.modes):
            runs.append(Run(calib_name(arm, mode, lam, variant=variant), "calib", arm, mode=mode, lam=float(lam),
                            variant=variant))
        if plan.online and arm == "aligned":
            runs.append(Run(calib_name(arm, "cft", DEFAULT_LAMBDA, "online"), "calib", arm, mode="cft",
                            lam=DEFAULT_LAMBDA, estep="online"))
    return runs


def _env(threads: Optional[int] = None) -> dict:
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    # One intra-op thread per process: the tiny model's ops are too small to share, and on a busy
    # 2-core machine two threads per process made a training step ~5x slower (spin-waiting).
    threads = str(threads) if threads else os.environ.get("AXOLOTL_CALIB_DEMO_THREADS", "1")
    env["OMP_NUM_THREADS"] = threads
    env["MKL_NUM_THREADS"] = threads
    env.setdefault("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "axolotl_calib_demo_hf"))
    return env


def log_step(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_logged(cmd: list[str], log_path: str, what: str, threads: Optional[int] = None) -> float:
    """Run ``cmd`` with the offline env (``threads`` torch threads; default ``AXOLOTL_CALIB_DEMO_THREADS`` or 1),
    output to ``log_path``; raise :class:`StepFailed` with the log tail."""
    return orchestrate.run_logged(cmd, log_path, what, _env(threads))


def train_logged(cfg_path: str, log_path: str, what: str) -> float:
    """Axolotl's train CLI on ``cfg_path``: by default in a process forked from a server that imported Axolotl
    once (:mod:`.launcher`; ~20 s less per run); ``AXOLOTL_CALIB_DEMO_SUBPROCESS=1`` runs
    ``python -m axolotl.cli.train`` instead. Raises :class:`StepFailed` with the log's tail."""
    if os.environ.get("AXOLOTL_CALIB_DEMO_SUBPROCESS") == "1":
        return run_logged([sys.executable, "-m", "axolotl.cli.train", cfg_path], log_path, what)
    from .launcher import train_in_forked_process

    t0 = time.time()
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"# axolotl.cli.train.do_cli({cfg_path!r}) in a process forked from a preloaded server "
                  "(what `python -m axolotl.cli.train` runs)\n")
    return orchestrate.check_exit(train_in_forked_process(cfg_path, log_path, _env()), t0, log_path, what)




def _stale_evals(out: str, name: str) -> list[str]:
    return [os.path.join(out, "eval", f"{glob.escape(name)}__*.json")]  # evaluations of the old model


def axolotl_train(cfg: dict, name: str, out: str, reuse: bool = True) -> tuple[str, float, bool]:
    """Train ``cfg`` unless a finished model of the SAME config exists (``reuse``); returns (dir, seconds of its
    training -- the original run's when reused --, reused)."""
    return orchestrate.axolotl_train(cfg, name, out, train_logged, configs.write_config, reuse,
                                     _stale_evals(out, name), log=log_step)


def build_init_model(world, s: DemoSettings, path: str, seed: int, pref=None) -> str:
    """Tokenizer trained on the demo's text (every word, option and reply one token) + a fresh tiny Llama."""
    from ..testing import build_llama, build_tokenizer

    corpus, vocabulary = world.corpus(), world.vocabulary()
    if pref is not None:
        corpus, vocabulary = corpus + pref.corpus(), vocabulary + pref.vocabulary()
    tok = build_tokenizer(corpus, vocab_size=s.vocab_size)
    for w in vocabulary:
        ids = tok(" " + w, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise RuntimeError(f"demo tokenizer splits {w!r} into {len(ids)} tokens (raise vocab_size)")
    model = build_llama(tok, hidden_size=s.hidden, num_layers=s.layers, num_heads=s.heads, seed=seed)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _sft_jsonl(mcq_path: str, out_path: str, extra: str | None = None) -> str:
    """MCQ rows -> ``{prompt, completion}`` for the plain-Axolotl SFT runs (same prompt as the mcq strategy);
    ``extra``: ``{prompt, completion}`` rows appended as they are (the preference domain's base-SFT rows)."""
    from ..prompts import DEFAULT_LETTERS, format_mcq_prompt
    from ..rows import answer_to_index

    with open(out_path, "w", encoding="utf-8") as f:
        for r in read_jsonl(mcq_path):
            k = answer_to_index(r["answer"], r["choices"])
            f.write(json.dumps({"prompt": format_mcq_prompt(r["question"], r["choices"]),
                                "completion": " " + DEFAULT_LETTERS[k]}) + "\n")
        for r in read_jsonl(extra) if extra else ():
            f.write(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n")
    return out_path


def load_eval(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    d["logliks"] = np.asarray(d["logliks"], dtype=np.float64)
    d["labels"] = np.asarray(d["labels"], dtype=np.int64)
    return d


@dataclass
class _Paths:
    out: str
    data: object = None
    sft_base: str = ""
    sft_train: str = ""
    models: dict = field(default_factory=dict)
    heldout_eval: bool = False

    def model(self, name: str) -> str:
        return os.path.join(self.out, "models", name)

    def prepared(self, name: str) -> str:
        return os.path.join(self.out, "prepared", name)


def run_config(run: Run, p: _Paths, s: DemoSettings, seed: int) -> dict:
    start = os.path.join(p.out, "models", "init") if run.start == "init" else p.models[run.start]
    common = dict(seq_len=s.seq_len, batch=s.batch, seed=seed)
    out, prep = p.model(run.name), p.prepared(run.name)
    if run.kind == "sft":
        return configs.sft_config(start, p.sft_base, out, prep, epochs=s.base_epochs, lr=s.base_lr, **common)
    if run.kind == "overfit":
        return configs.sft_config(start, p.sft_train, out, prep, epochs=s.overfit_epochs, lr=s.overfit_lr, **common)
    if run.kind == "dpo":
        return configs.dpo_config(start, p.data.dpo, out, prep, beta=s.dpo_beta, epochs=s.dpo_epochs, lr=s.dpo_lr,
                                  **common)
    if run.kind == "ls":
        return configs.calib_config(start, p.data.train, out, prep, mode="cft", lam=0.0, label_smoothing=s.ls_factor,
                                    epochs=s.fix_epochs, lr=s.fix_lr, **common)
    if run.kind == "calib":
        bin_accuracy, targets, divergence = VARIANTS[run.variant]
        return configs.calib_config(start, p.data.train, out, prep, mode=run.mode, lam=run.lam, estep=run.estep,
                                    epochs=s.fix_epochs, lr=s.fix_lr, bin_accuracy=bin_accuracy, targets=targets,
                                    ece_loss=divergence, heldout=p.data.ts_fit if p.heldout_eval else None, **common)
    raise ValueError(f"unknown run kind {run.kind!r}")


def train_all(runs: list[Run], p: _Paths, s: DemoSettings, seed: int, parallel: int, reuse: bool,
              timings: dict, errors: dict, reused: set | None = None) -> None:
    """Train ``runs``, up to ``parallel`` at a time (1 thread each), each as soon as its start model exists."""
    orchestrate.train_all(runs, lambda run: run_config(run, p, s, seed), p.out, train_logged, configs.write_config,
                          parallel, reuse, _outcome(p, timings, errors, reused), lambda name: _stale_evals(p.out, name),
                          log_step)


def _outcome(p: _Paths, timings: dict, errors: dict, reused: set | None) -> orchestrate.Outcome:
    """The shared orchestration's record, written straight into the demo's own dicts."""
    return orchestrate.Outcome(models=p.models, timings=timings, errors=errors,
                               reused=reused if reused is not None else set())


def evaluate_all(p: _Paths, parallel: int) -> None:
    """lm-eval every model on the eval sets (+ the TS fit set and the training set for the arms' start
    models), split over ``parallel`` processes; writes ``eval/<model>__<set>.json``. With held-out evaluation
    (``Plan.heldout_eval``) every model is scored on the TS-fit split too: the rows that set the held-out
    variants' targets, so a study can compare a model's calibration there with its calibration on rows that set
    no target (the optimism of scoring on target rows)."""
    eval_dir = os.path.join(p.out, "eval")
    names = list(p.models)
    starts = ",".join(n for n in names if n in ("base",) + ARMS)
    fit_models = ",".join(names) if p.heldout_eval else starts
    sets = ["--set", f"in={p.data.eval_in}", "--set", f"out={p.data.eval_out}"]
    if fit_models:
        sets += ["--set", f"ts_fit={p.data.ts_fit}:{fit_models}"]
    if starts:
        sets += ["--set", f"train={p.data.train}:{starts}"]
    if p.data.pref_eval:
        sets += ["--replies", p.data.pref_eval]
    todo = [n for n in names if not all(os.path.exists(os.path.join(eval_dir, f"{n}__{d}.json")) for d in ("in", "out"))
            or (n in starts.split(",") and not os.path.exists(os.path.join(eval_dir, f"{n}__train.json")))
            or (n in fit_models.split(",") and not os.path.exists(os.path.join(eval_dir, f"{n}__ts_fit.json")))
            or (p.data.pref_eval and not os.path.exists(os.path.join(eval_dir, f"{n}__replies.json")))]
    if not todo:
        return
    chunks = [todo[i::max(1, parallel)] for i in range(max(1, parallel))]
    chunks = [c for c in chunks if c]

    def one(i_chunk):
        i, chunk = i_chunk
        cmd = [sys.executable, "-m", "axolotl_calib_plugin.demo.evaluate", "--out", eval_dir, "--only-missing"] + sets
        for n in chunk:
            cmd += ["--model", f"{n}={p.models[n]}"]
        return run_logged(cmd, os.path.join(p.out, "logs", f"lm_eval_{i}.log"), "lm-eval")

    log_step(f"lm-eval: {len(todo)} models x (in, out) with the calib_jsonl / calib_jsonl_ood tasks")
    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        list(pool.map(one, enumerate(chunks)))


def analyse(p: _Paths, world, with_probs: bool = False) -> tuple[dict, dict]:
    """Per-model scores (in/out-domain, preference pairs, regime) from the eval dumps; TS rows added."""
    from ..eval.regime import diagnose

    data = p.data
    eval_dir = os.path.join(p.out, "eval")
    in_rows, out_rows = read_jsonl(data.eval_in), read_jsonl(data.eval_out)
    pairs = read_jsonl(data.pairs_eval)
    ps_in = np.array([r["p_star"] for r in in_rows])
    ps_out = np.array([r["p_star"] for r in out_rows])
    y_in = np.array([r["answer"] for r in in_rows])
    y_out = np.array([r["answer"] for r in out_rows])
    y_train = np.array([r["answer"] for r in read_jsonl(data.train)])
    rows: dict[str, dict] = {}
    probs: dict[str, dict] = {}
    rows["oracle"] = {"in": analysis.scores(ps_in, y_in).as_dict(), "out": analysis.scores(ps_out, y_out).as_dict(),
                      "pairs": analysis.pair_stats(np.log(ps_in), pairs, ps_in).as_dict()}
    probs["oracle"] = {"in": {"probs": ps_in, "labels": y_in}, "out": {"probs": ps_out, "labels": y_out}}
    evals = {}
    for name in p.models:
        ev = {d: load_eval(os.path.join(eval_dir, f"{name}__{d}.json")) for d in ("in", "out")}
        for d, y in (("in", y_in), ("out", y_out)):
            if not np.array_equal(ev[d]["labels"], y):
                raise StepFailed(f"lm-eval's gold labels for {name}/{d} do not match the data file")
        evals[name] = ev
        row = {}
        for d in ("in", "out"):
            pr = softmax(ev[d]["logliks"], axis=1)
            sc = analysis.scores(pr, ev[d]["labels"]).as_dict()
            sc["lm_eval"] = ev[d]["metrics"]  # the task's own aggregates (same numbers, from lm-eval)
            row[d] = sc
            probs.setdefault(name, {})[d] = {"probs": pr, "labels": ev[d]["labels"]}
        row["pairs"] = analysis.pair_stats(ev["in"]["logliks"], pairs, ps_in).as_dict()
        train_path = os.path.join(eval_dir, f"{name}__train.json")
        if os.path.exists(train_path):
            tr = load_eval(train_path)
            row["train"] = analysis.scores(softmax(tr["logliks"], axis=1), y_train).as_dict()
            probs[name]["train"] = {"probs": softmax(tr["logliks"], axis=1), "labels": y_train}
        rows[name] = row
    for arm in ARMS:
        ts_path = os.path.join(eval_dir, f"{arm}__ts_fit.json")
        if arm not in evals or not os.path.exists(ts_path):
            continue
        ts = load_eval(ts_path)
        # the held-out M-step's pre-check: per-bin accuracy of the start model on its training rows vs on
        # held-out rows (the TS-fit split, which the held-out variants read)
        p_fit = softmax(ts["logliks"], axis=1)
        rows[arm]["heldout"] = analysis.scores(p_fit, ts["labels"]).as_dict()
        if "train" in probs.get(arm, {}):
            rows[arm]["bins"] = {"train": analysis.bin_table(probs[arm]["train"]["probs"], y_train),
                                 "heldout": analysis.bin_table(p_fit, ts["labels"])}
        t, (p_in, p_out), (z_in, _) = analysis.temperature_scale(ts["logliks"], ts["labels"], evals[arm]["in"]["logliks"],
                                                                 evals[arm]["out"]["logliks"])
        rows[f"{arm}.ts"] = {"in": analysis.scores(p_in, y_in).as_dict(), "out": analysis.scores(p_out, y_out).as_dict(),
                             "pairs": analysis.pair_stats(z_in, pairs, ps_in).as_dict(), "temperature": t}
        probs[f"{arm}.ts"] = {"in": {"probs": p_in, "labels": y_in}, "out": {"probs": p_out, "labels": y_out}}
    if data.pref_eval:
        _reward_rows(rows, p, read_jsonl(data.pref_eval))
    # regime diagnosis (axolotl_calib_plugin.eval.regime, our heuristic) of the start models: held-out in-domain
    # predictions, plus the predictions on the training set the fixes would train on
    for name in ("base",) + ARMS:
        if name in probs and "train" in probs[name]:
            d = diagnose(probs[name]["in"]["probs"], probs[name]["in"]["labels"],
                         train_probs=probs[name]["train"]["probs"], train_labels=probs[name]["train"]["labels"])
            rows[name]["regime"] = d.as_dict()
    return rows, (probs if with_probs else {})


def _reward_rows(rows: dict, p: _Paths, pref_rows: list[dict]) -> None:
    """``rows[name]["reward"]``: the exact alignment metrics on the preference domain (win rate against the
    DPO model when there is one); temperature scaling rescales only the MCQ letters, so a TS row keeps its
    start model's policy (marked ``policy_unchanged``). ``rows["oracle"]["reward"]``: the reference points."""
    rewards = np.array([r["reward"] for r in pref_rows], dtype=np.float64)
    eval_dir = os.path.join(p.out, "eval")
    logliks = {}
    for name in p.models:
        with open(os.path.join(eval_dir, f"{name}__replies.json"), encoding="utf-8") as f:
            logliks[name] = np.asarray(json.load(f)["logliks"], dtype=np.float64)
    ref = logliks.get("aligned")
    for name, z in logliks.items():
        rows[name]["reward"] = analysis.reward_stats(z, rewards, ref)
    for arm in ARMS:
        if f"{arm}.ts" in rows and arm in logliks:
            rows[f"{arm}.ts"]["reward"] = dict(rows[arm]["reward"], policy_unchanged=True)
    rows["oracle"]["reward"] = analysis.reward_bounds(rewards)


def run_seed(out: str, seed: int = 0, settings: DemoSettings = FULL, plan: Plan = DEMO_PLAN, parallel: int = 2,
             reuse: bool = True, plots: bool = True) -> dict:
    """Run (or resume) the whole pipeline of one seed into ``out``; returns the results dict (also
    written to ``results.json``)."""
    t_start = time.time()
    s = settings
    out = os.path.abspath(out)
    for sub in ("data", "configs", "logs", "models", "eval", "prepared"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    world = make_world(s.world, seed, s.target_oracle_acc)
    pref = preference_domain_for(world, seed) if (s.n_pref_base or s.n_pref_dpo or s.n_pref_eval) else None
    p = _Paths(out, heldout_eval=plan.heldout_eval)
    p.data = generate(os.path.join(out, "data"), world, s.n_base, s.n_train, s.n_dpo, s.n_ts, s.n_eval_in, s.n_eval_out,
                      pref, s.n_pref_base, s.n_pref_dpo, s.n_pref_eval)
    p.sft_base = _sft_jsonl(p.data.base_train, os.path.join(out, "data", "base_train_sft.jsonl"), p.data.pref_base)
    p.sft_train = _sft_jsonl(p.data.train, os.path.join(out, "data", "train_sft.jsonl"))
    log_step(f"seed {seed}: {s.world} world (tau {world.tau:.3f}); {s.n_base} base / {s.n_train} train / {s.n_dpo} DPO / "
         f"{s.n_eval_in} in- + {s.n_eval_out} out-domain eval questions -> {os.path.join(out, 'data')}")
    init = os.path.join(out, "models", "init")
    if not (reuse and os.path.exists(os.path.join(init, "model.safetensors"))):
        build_init_model(world, s, init, seed, pref)
    runs = plan_runs(plan)
    reused: set = set()
    orchestrate.execute(runs, lambda run: run_config(run, p, s, seed), out, launch=train_logged,
                        write_config=configs.write_config, evaluate=lambda _: evaluate_all(p, parallel),
                        parallel=parallel, reuse=reuse, stale=lambda name: _stale_evals(out, name), required=("base",),
                        eval_timing="lm_eval", log=log_step, outcome=_outcome(p, timings, errors, reused))
    rows, probs = analyse(p, world, with_probs=plots)
    results = {
        "meta": {"seed": seed, "settings": asdict(s), "plan": asdict(plan), "world": world.describe()["kind"],
                 "world_tau": world.tau, "timings_s": timings, "errors": errors,
                 "models": {k: os.path.relpath(v, out) for k, v in p.models.items()},
                 "runs": [asdict(r) for r in runs], "reused_runs": sorted(reused),
                 "train_seconds_total": round(sum(timings.get(r.name, 0.0) for r in runs), 1)},
        "true_pref": rows["oracle"]["pairs"]["true_pref"],
        "rows": rows,
    }
    results["checks"] = seed_results.checks(rows)
    if plots:
        results["meta"]["plots"] = [os.path.basename(x) for x in seed_results.plot_seed(probs, out)]
    results["meta"]["wall_time_s"] = round(time.time() - t_start, 1)
    seed_results.write_outputs(results, out)
    return results


def run_demo(out: str, fast: bool = False, seed: int = 0, reuse: bool = True, settings: DemoSettings | None = None,
             plan: Plan | None = None, parallel: int = 2, world: str | None = None) -> dict:
    """The single-seed demo (``axolotl-calib demo``): the aligned arm at lambda 0 and 1 (``--fast``: lambda 1 only)."""
    s = settings or (FAST if fast else FULL)
    if world:
        s = replace(s, world=world)
    results = run_seed(out, seed, s, plan or (FAST_PLAN if fast else DEMO_PLAN), parallel=parallel, reuse=reuse)
    results["meta"]["fast"] = fast
    seed_results.write_outputs(results, out)
    return results


def print_summary(results: dict, out: str) -> None:
    print()
    print(f"Results (seed {results['meta']['seed']}, {results['meta']['world']} world, "
          f"{results['meta']['wall_time_s']:.0f} s):")
    print(seed_results.render_text(results))
    print("\npref ratio (true) = mean pi(y_m)/(pi(y_m)+pi(y_o)) of the answer the model prefers in held-out pairs "
          "(true probability that it is preferred); ratio > true = preference collapse")
    for arm in ARMS:
        if f"{arm}.ts" in results["rows"]:
            print(f"temperature fitted on held-out in-domain data ({arm}): T = {results['rows'][f'{arm}.ts']['temperature']:.3f}")
    print("\nChecks (one seed; numbers vary by machine: see the multi-seed study for what is significant):")
    for c in results["checks"]:
        print(f"  [{'ok' if c['ok'] else '--'}] {c['name']}: {c['detail']}")
    for k, e in results["meta"]["errors"].items():
        print(f"  [FAILED] {k}: {e.splitlines()[0]}")
    print(f"\nWritten: {out}/results.md, results.json, " + ", ".join(results["meta"].get("plots", [])))
