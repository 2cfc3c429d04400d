"""An exploratory follow-up of the real-model study: CFT in the regime the paper assumes (``--study real_staged``).

The pre-registered study (:mod:`.real`) trains every row from the model as shipped, which is at chance with option
letters: there the ECE term's targets (bin accuracies near 0.25 at the first E-step) pull every answer toward 1/K
while the letters are still being learnt. The paper applies CFT to aligned models that already answer MCQ above
chance. Here that model is the seed's SFT λ=0 run of the main study (3 epochs from the shipped model, letters
learnt): from it, one more epoch of SFT λ=0, of CFT with held-out bins (the main study's primary variant) and of CFT
with training-row bins (Algorithm 1), and temperature scaling of it (T fitted on ``target``). Same data, split,
budget per epoch and margins as the main study; seed k reads the main study's seed k (its ``sft`` model and fact
sets) and writes into ``<seed dir>/staged/``. Named after seed 0 of the main study was read, so exploratory.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace

from ..real_pipeline import REAL, RealRun, analyse, evaluate, run_config
from .base import Study
from .real import DOMAINS, PRIMARY, Design, RealStudy, check_runs, real_dir_of, run_problem, seed_data, seed_reliability

__all__ = ["RUNS", "STAGED", "SETTINGS", "RealStagedStudy", "run_staged_seed", "start_model"]

#: the runs, each one epoch from the start model (the main study's ``sft`` run of the same seed)
RUNS = (
    RealRun("sft", "calib", lam=0.0, start="start"),
    RealRun("cft_heldout", "calib", lam=1.0, variant="heldout", start="start"),
    RealRun("cft_train", "calib", lam=1.0, variant="train", start="start"),
)
#: the main study's budget per epoch, one epoch
SETTINGS = replace(REAL, epochs=1)
STAGED = Design(
    rows={"start": "SFT λ=0, 3 epochs (the start)", "ts": "TS of the start (T fitted on target)",
          "sft": "SFT λ=0, +1 epoch", "cft_heldout": "CFT, held-out bins, +1 epoch",
          "cft_train": "CFT, training-row bins, +1 epoch"},
    # the start model's dumps are named dpo__* in the staged eval folder: the main pipeline's evaluate() and
    # analyse() score and temperature-scale the model they call "dpo"
    dumps={"start": "dpo", "ts": "dpo"},
    secondary=("cft_train",), figure_rows=("start", "ts", "sft", PRIMARY), delta_rows=(PRIMARY, "cft_train"),
    title="CFT from a model that answers in letters (SmolLM2-135M-Instruct after SFT, real facts; exploratory)",
    lead="Start: each seed's SFT λ=0 model of the main study ([`real_model.md`](real_model.md)); module "
         "`demo/studies/real_staged.py`",
    ts_text="TS: T fitted on the start model's `target` logits",
    question_heading="Primary question (exploratory: named after seed 0 of the main study had been read)")


def start_model(seed_dir: str) -> str:
    return os.path.join(seed_dir, "models", "sft")


def _check_start(seed_dir: str, seed: int) -> None:
    """The staged runs are only ever trained from the main study's own ``sft`` run, finished under this code."""
    from ... import orchestrate
    from ..real_pipeline import RUNS as MAIN_RUNS
    from ..real_world import MODEL_DIR

    sft = next(r for r in MAIN_RUNS if r.name == "sft")
    cfg = run_config(sft, os.path.join(real_dir_of(seed_dir), MODEL_DIR), seed_data(seed_dir), seed_dir, REAL, seed)
    problem = run_problem("sft", cfg)
    if problem:
        raise orchestrate.StepFailed(f"seed {seed}: the main study's sft run is not finished under this code "
                                     f"({problem}); run `--study real` for this seed first")


def _configs(seed_dir: str, seed: int, settings=SETTINGS) -> dict:
    out = os.path.join(seed_dir, "staged")
    return {r.name: run_config(r, start_model(seed_dir), seed_data(seed_dir), out, settings, seed) for r in RUNS}


def run_staged_seed(seed_dir: str, seed: int, settings=SETTINGS, parallel: int = 1, reuse: bool = True) -> dict:
    """Run (or resume) the staged runs of main-study seed ``seed_dir`` into ``seed_dir/staged``; returns
    ``{"meta", "rows"}`` (also ``staged/results.json``). A start model retrained since clears the staged runs."""
    import glob
    import time

    from ... import orchestrate
    from .. import configs
    from ..pipeline import log_step, train_logged

    t0 = time.time()
    _check_start(seed_dir, seed)
    with open(os.path.join(start_model(seed_dir), orchestrate.DONE_FILE), encoding="utf-8") as f:
        key = json.load(f)["config_hash"]
    out = os.path.join(seed_dir, "staged")
    key_path = os.path.join(out, "start.key")
    if os.path.isfile(key_path) and open(key_path).read() != key:
        for sub in ("models", "eval", "prepared"):
            shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    for sub in ("configs", "logs", "models", "eval", "prepared"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    with open(key_path, "w") as f:
        f.write(key)
    data, cfgs = seed_data(seed_dir), _configs(seed_dir, seed, settings)
    log_step(f"seed {seed} (staged): start {start_model(seed_dir)} -> {out}")
    outcome = orchestrate.Outcome(models={"dpo": start_model(seed_dir)})
    orchestrate.execute(list(RUNS), lambda run: cfgs[run.name], out, launch=train_logged,
                        write_config=configs.write_config,
                        evaluate=lambda o: evaluate(out, o.models, data, settings, threads=max(1, parallel)),
                        parallel=parallel, reuse=reuse,
                        stale=lambda name: [os.path.join(out, "eval", f"{glob.escape(name)}__*.json")],
                        eval_timing="lm_eval", log=log_step, outcome=outcome)
    rows = analyse(os.path.join(out, "eval"), list(outcome.models), data)
    rows["start"] = rows.pop("dpo")
    outcome.timings.pop("dpo", None)
    results = {"meta": {"seed": seed, "settings": asdict(settings), "start": start_model(seed_dir),
                        "timings_s": outcome.timings, "errors": outcome.errors, "reused_runs": sorted(outcome.reused),
                        "runs": [asdict(r) for r in RUNS], "wall_time_s": round(time.time() - t0, 1)},
               "rows": rows}
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    return results


class RealStagedStudy(RealStudy):
    """``--study real_staged`` (same ``--output-dir`` as ``--study real``): ``real_model_staged.json`` / ``.md`` /
    ``_reliability_{in,out}.png`` / ``_deltas.png``."""

    name = "real_staged"
    stem = "real_model_staged"
    design = STAGED

    def run_seed(self, seed_dir, seed, settings, plan, parallel, reuse) -> dict:
        return run_staged_seed(seed_dir, seed, SETTINGS, parallel=parallel, reuse=reuse)

    def finished_seed(self, seed_dir: str, seed: int) -> dict:
        _check_start(seed_dir, seed)
        out = os.path.join(seed_dir, "staged")
        check_runs(seed, out, _configs(seed_dir, seed),
                   [f"{n}__{d}.json" for n in ("dpo",) + tuple(r.name for r in RUNS) for d in DOMAINS]
                   + ["dpo__target.json"])
        return Study.finished_seed(self, out, seed)  # the results.json reader, not RealStudy's main-study check

    def seed_extras(self, seed_dir: str) -> dict:
        return {"reliability": seed_reliability(os.path.join(seed_dir, "staged"), self.design)}

    def describe(self, settings, plan) -> dict:
        return {"settings": asdict(SETTINGS), "runs": [asdict(r) for r in RUNS], "primary": PRIMARY,
                "start": "the main study's sft run of the same seed"}
