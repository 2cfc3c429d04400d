"""One seed of the real-model study (study/real_model_plan.md): SmolLM2-135M-Instruct as shipped (the DPO row) ->
LS, SFT lambda=0, CFT (training-row bins, held-out bins, temperature targets) and RCFT, each a real ``axolotl train``
from the shipped model -> lm-eval on test_in / test_out -> temperature scaling of the shipped model (T fitted on the
``target`` rows).

A seed k is the pair (training seed k, split seed k): the fact sets of :func:`.real_world.build_fact_sets` with seed
k go to ``<seed dir>/data/``, and every run of the seed trains with ``seed: k``. The model folder is built once per
output folder (``<output dir>/real``, :func:`.real_world.prepare`) and shared by the seeds.

The configs are the demo's (:func:`.configs.calib_config`) with the plan's budget (:data:`REAL`): full fine-tune,
plain format, lr 5e-5, batch 8, 3 epochs, ``sequence_len: 64``, the online E-step for every CFT / RCFT run. A run
whose config, data and code are unchanged is reused (:func:`axolotl_calib_plugin.orchestrate.execute`), and so is
every evaluation dump of a reused model, so a killed seed resumes where it stopped.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from scipy.special import softmax

from .. import orchestrate
from ..orchestrate import StepFailed
from ..rows import read_jsonl
from . import analysis, configs
from .pipeline import DEFAULT_LAMBDA, VARIANTS, load_eval, log_step, run_logged, train_logged

__all__ = ["REAL", "ROWS", "RUNS", "RealRun", "RealSettings", "TRAINED", "analyse", "evaluate", "run_config",
           "run_real_seed", "write_split"]


@dataclass(frozen=True)
class RealSettings:
    """The fine-tune budget of study/real_model_precheck.md, the same for every trained row."""

    epochs: float = 3
    lr: float = 5e-5
    batch: int = 8
    seq_len: int = 64
    ls_factor: float = 0.1
    #: the E-step of every CFT / RCFT run (study/real_model_plan.md: online, level with exact on the synthetic world)
    estep: str = "online"
    bins: int = 10
    prompt_format: str = "plain"
    #: lm-eval batch size
    eval_batch: int = 32
    #: cap on training steps (a smoke run); None: the epochs decide
    max_steps: Optional[int] = None


REAL = RealSettings()


@dataclass(frozen=True)
class RealRun:
    """One trained row: ``name`` is its model folder and results key; every run starts from the shipped model."""

    name: str
    kind: str  # "ls" | "calib"
    mode: str = "cft"
    lam: float = 0.0
    variant: str = "train"  # a key of pipeline.VARIANTS
    start: str = "dpo"


#: the trained rows of the plan, in its order. RCFT uses held-out bins: the plan's cost table gives it the target
#: pass of the held-out variants, and it is the pre-named CFT variant with the loss on prompt and answer.
RUNS = (
    RealRun("ls", "ls"),
    RealRun("sft", "calib", lam=0.0),
    RealRun("cft_train", "calib", lam=DEFAULT_LAMBDA, variant="train"),
    RealRun("cft_heldout", "calib", lam=DEFAULT_LAMBDA, variant="heldout"),
    RealRun("cft_temp", "calib", lam=DEFAULT_LAMBDA, variant="temp"),
    RealRun("rcft", "calib", mode="rcft", lam=DEFAULT_LAMBDA, variant="heldout"),
)
TRAINED = tuple(r.name for r in RUNS)
#: every row of the table, in order, with its label
ROWS = {
    "dpo": "DPO (as shipped)",
    "ts": "TS (T fitted on target)",
    "ls": "LS (0.1)",
    "sft": "SFT λ=0",
    "cft_train": "CFT, training-row bins",
    "cft_heldout": "CFT, held-out bins (target)",
    "cft_temp": "CFT, temperature targets (target)",
    "rcft": "RCFT, held-out bins (target)",
}


def write_split(data_dir: str, split_seed: int) -> dict:
    """The fact sets of ``split_seed`` as ``data_dir/<split>.jsonl`` (a file whose content is unchanged is left as it
    is); returns ``{split: path}``."""
    from .real_world import build_fact_sets

    os.makedirs(data_dir, exist_ok=True)
    paths = {}
    for split, rows in build_fact_sets(split_seed).items():
        path = os.path.join(data_dir, f"{split}.jsonl")
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if not (os.path.isfile(path) and open(path, encoding="utf-8").read() == text):
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
        paths[split] = path
    return paths


def run_config(run: RealRun, model: str, data: dict, out: str, s: RealSettings, seed: int) -> dict:
    """The Axolotl config of ``run``: the demo's calibration config with the plan's budget. The held-out variants
    read the ``target`` rows as their eval split (every row sets targets); the others get the ``report`` rows as
    their eval split (``eval_calib`` each epoch)."""
    common = dict(seq_len=s.seq_len, batch=s.batch, seed=seed, epochs=s.epochs, lr=s.lr, bins=s.bins)
    dirs = (os.path.join(out, "models", run.name), os.path.join(out, "prepared", run.name))
    if run.kind == "ls":
        cfg = configs.calib_config(model, data["train"], *dirs, mode="cft", lam=0.0, label_smoothing=s.ls_factor,
                                   heldout=data["report"], **common)
    elif run.kind == "calib":
        bin_accuracy, targets, divergence = VARIANTS[run.variant]
        heldout = bin_accuracy == "heldout" or targets == "temperature"
        cfg = configs.calib_config(model, data["train"], *dirs, mode=run.mode, lam=run.lam,
                                   estep=s.estep if run.lam > 0 else "exact", bin_accuracy=bin_accuracy,
                                   targets=targets, ece_loss=divergence,
                                   heldout=data["target"] if heldout else data["report"], **common)
    else:
        raise ValueError(f"unknown run kind {run.kind!r}")
    cfg["calib_prompt_format"] = s.prompt_format
    cfg["per_device_eval_batch_size"] = s.eval_batch
    # Axolotl pads every batch to a multiple of 64 unless told otherwise: 64 tokens for rows of 36 on average, ~1.5x
    # the compute of padding to the batch's longest row (the plan's cost table assumes the latter)
    cfg["pad_to_sequence_len"] = False
    if s.max_steps:
        cfg["max_steps"] = int(s.max_steps)
    return cfg


def _eval_key(model: str, data: dict) -> str:
    """What the shipped model's evaluation depends on: its folder's manifest, the evaluated files, the code."""
    manifest = os.path.join(os.path.dirname(os.path.abspath(model)), "manifest.json")
    return orchestrate.files_digest([manifest, data["test_in"], data["test_out"], data["target"]]) + \
        orchestrate.code_fingerprint()


def evaluate(out: str, models: dict, data: dict, s: RealSettings, threads: int = 1) -> None:
    """lm-eval (the demo's evaluate CLI, one process with ``threads`` torch threads: it runs once a seed's training
    is over, so the training processes' cores are free) of every model on test_in / test_out, and of the shipped
    model on ``target`` (the TS fit); a dump that exists is kept (``--only-missing``), the shipped model's only while
    its inputs are unchanged."""
    eval_dir = os.path.join(out, "eval")
    os.makedirs(eval_dir, exist_ok=True)
    key_path, key = os.path.join(eval_dir, "dpo_inputs.key"), _eval_key(models["dpo"], data)
    if not (os.path.isfile(key_path) and open(key_path).read() == key):
        for path in glob.glob(os.path.join(eval_dir, "dpo__*.json")):
            os.remove(path)
    cmd = [sys.executable, "-m", "axolotl_calib_plugin.demo.evaluate", "--out", eval_dir, "--only-missing",
           "--batch-size", str(s.eval_batch), "--set", f"in={data['test_in']}", "--set", f"out={data['test_out']}",
           "--set", f"target={data['target']}:dpo"]
    for name, path in models.items():
        cmd += ["--model", f"{name}={path}"]
    log_step(f"lm-eval: {len(models)} models x (test_in, test_out)")
    run_logged(cmd, os.path.join(out, "logs", "lm_eval.log"), "lm-eval", threads=threads)
    with open(key_path, "w") as f:
        f.write(key)


def analyse(eval_dir: str, names, data: dict) -> dict:
    """Per-row scores (``in`` = test_in, ``out`` = test_out) from the dumps in ``eval_dir``; the TS row from the
    shipped model's logits with T fitted on its ``target`` dump. A dump whose gold labels differ from the data file
    is an error (it scored other rows)."""
    labels = {d: np.array([r["answer"] for r in read_jsonl(data[f])]) for d, f in (("in", "test_in"), ("out", "test_out"))}
    rows, evals = {}, {}
    for name in names:
        ev = {d: load_eval(os.path.join(eval_dir, f"{name}__{d}.json")) for d in ("in", "out")}
        for d in ("in", "out"):
            if not np.array_equal(ev[d]["labels"], labels[d]):
                raise StepFailed(f"lm-eval's gold labels for {name}/{d} do not match {data['test_' + d]}")
        evals[name] = ev
        rows[name] = {d: analysis.scores(softmax(ev[d]["logliks"], axis=1), ev[d]["labels"]).as_dict()
                      for d in ("in", "out")}
    if "dpo" in evals:
        fit = load_eval(os.path.join(eval_dir, "dpo__target.json"))
        t, (p_in, p_out), _ = analysis.temperature_scale(fit["logliks"], fit["labels"], evals["dpo"]["in"]["logliks"],
                                                         evals["dpo"]["out"]["logliks"])
        rows["dpo"]["heldout"] = analysis.scores(softmax(fit["logliks"], axis=1), fit["labels"]).as_dict()
        rows["ts"] = {"in": analysis.scores(p_in, labels["in"]).as_dict(),
                      "out": analysis.scores(p_out, labels["out"]).as_dict(), "temperature": t}
    return rows


def run_real_seed(out: str, seed: int, real_dir: str, settings: RealSettings = REAL, parallel: int = 1,
                  reuse: bool = True, runs=RUNS) -> dict:
    """Run (or resume) one seed (training seed = split seed = ``seed``) into ``out``; the shipped model comes from
    ``real_dir`` (built there once). Returns ``{"meta", "rows"}``, also written to ``out/results.json``."""
    from .real_world import MODEL_DIR, prepare

    t0 = time.time()
    out = os.path.abspath(out)
    for sub in ("configs", "logs", "models", "eval", "prepared"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    prepare(real_dir, seed=0, log=log_step)
    model = os.path.join(os.path.abspath(real_dir), MODEL_DIR)
    data = write_split(os.path.join(out, "data"), seed)
    log_step(f"seed {seed}: {model}, fact sets of split seed {seed} -> {os.path.join(out, 'data')}")
    outcome = orchestrate.Outcome(models={"dpo": model})
    orchestrate.execute(list(runs), lambda run: run_config(run, model, data, out, settings, seed), out,
                        launch=train_logged, write_config=configs.write_config,
                        evaluate=lambda o: evaluate(out, o.models, data, settings, threads=max(1, parallel)), parallel=parallel, reuse=reuse,
                        stale=lambda name: [os.path.join(out, "eval", f"{glob.escape(name)}__*.json")],
                        eval_timing="lm_eval", log=log_step, outcome=outcome)
    rows = analyse(os.path.join(out, "eval"), list(outcome.models), data)
    results = {"meta": {"seed": seed, "split_seed": seed, "training_seed": seed, "settings": asdict(settings),
                        "model": model, "timings_s": outcome.timings, "errors": outcome.errors,
                        "reused_runs": sorted(outcome.reused), "runs": [asdict(r) for r in runs],
                        "wall_time_s": round(time.time() - t0, 1)},
               "rows": rows}
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    return results
