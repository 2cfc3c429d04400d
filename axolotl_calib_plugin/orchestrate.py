"""The one orchestration of a reproduction: a list of training runs -> real ``axolotl train`` per run (reused when
its config and code are unchanged) -> evaluation -> summary. ``axolotl-calib reproduce`` (a user's DPO model and
data, :mod:`axolotl_calib_plugin.reproduce`) and the offline demo (its synthetic world,
``axolotl_calib_plugin.demo.pipeline``) both run :func:`execute`; each supplies its runs, their configs, how a run
is launched and how the models are evaluated and summarised.

A run is anything with ``name`` (its model folder and results key) and ``start`` (the name of the run it starts
from; a name that is not a run, e.g. the demo's ``init`` or the user's model, is an existing model).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

__all__ = ["DONE_FILE", "Outcome", "StepFailed", "axolotl_train", "check_exit", "code_files", "code_fingerprint",
           "config_hash", "data_files", "execute", "files_digest", "fingerprint_files", "has_weights", "run_logged",
           "train_all"]


class StepFailed(RuntimeError):
    pass


#: source files that cannot change a trained model or an evaluation dump: the CLI's text, plots, and the summaries
#: that are recomputed from the dumps on every invocation (tables, statistics, the studies' reports)
#: (a folder: every file in it)
_RESULT_NEUTRAL = ("cli.py", os.path.join("eval", "plots.py"), os.path.join("eval", "compare.py"),
                   os.path.join("demo", "report.py"), os.path.join("demo", "study.py"), os.path.join("demo", "stats.py"),
                   os.path.join("demo", "analysis.py"), os.path.join("demo", "studies"))
_PKG = os.path.dirname(os.path.abspath(__file__))


def code_files() -> list[str]:
    """Every file whose change can change a trained model or an evaluation: the package's Python sources at any
    depth (training, data, evaluation, the demo's world, the tiny-model builders) and the lm-eval task folder (task
    YAMLs, utils.py), minus ``_RESULT_NEUTRAL``. Sorted, relative to the package's parent."""
    from .eval.evaluation import find_task_dir

    roots = [(_PKG, (".py",)), (find_task_dir(), (".py", ".yaml", "_yaml"))]
    base = os.path.dirname(_PKG)
    out = []
    for root, exts in roots:
        for d, dirs, files in os.walk(root):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            for name in files:
                path = os.path.join(d, name)
                rel = os.path.relpath(path, _PKG)
                if name.endswith(exts) and not any(rel == n or rel.startswith(n + os.sep) for n in _RESULT_NEUTRAL):
                    out.append(os.path.relpath(path, base))
    return sorted(set(out))


def fingerprint_files(base: str, files: list[str]) -> str:
    """Hash of ``files`` (paths relative to ``base``): their names and contents."""
    h = hashlib.sha256()
    for rel in files:
        with open(os.path.join(base, rel), "rb") as f:
            h.update(rel.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()[:16]


def code_fingerprint() -> str:
    """Hash of :func:`code_files`: a run trained or scored by other code is never reused."""
    return fingerprint_files(os.path.dirname(_PKG), code_files())


def files_digest(paths: Sequence[str]) -> str:
    """Hash of the contents of ``paths`` (a folder: every file under it, by relative name); a path that is not on
    this machine (a hub id) contributes its name only."""
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path).encode() + b"\0")
        if os.path.isdir(path):
            for d, dirs, files in sorted(os.walk(path)):
                dirs.sort()
                for name in sorted(files):
                    with open(os.path.join(d, name), "rb") as f:
                        h.update(os.path.relpath(os.path.join(d, name), path).encode() + b"\0" + f.read())
        elif os.path.isfile(path):
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def data_files(cfg) -> list[str]:
    """The local data an Axolotl config reads: ``datasets`` / ``test_datasets`` paths and the calib_eval files."""
    if not isinstance(cfg, Mapping):
        return []
    out = [d.get("path") for key in ("datasets", "test_datasets") for d in (cfg.get(key) or [])
           if isinstance(d, Mapping) and isinstance(d.get("path"), str)]
    for key in ("calib_eval_data_files", "calib_eval_ood_data_files"):
        value = cfg.get(key) or []
        out += [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]
    return [p for p in out if os.path.exists(p)]


def config_hash(cfg) -> str:
    """The config (any JSON-able value), the contents of the local data files it names (:func:`data_files`) and the
    code that runs it: reusing a result needs all three unchanged."""
    blob = json.dumps(cfg, sort_keys=True, default=str) + files_digest(data_files(cfg)) + code_fingerprint()
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: the marker a finished run leaves in its model folder (config hash + training seconds)
DONE_FILE = "calib_run_done.json"
#: what a finished ``axolotl train`` leaves: full weights (one file or shards) or a peft adapter
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
            "adapter_model.bin")


def has_weights(model_dir: str) -> bool:
    return any(os.path.exists(os.path.join(model_dir, f)) for f in _WEIGHTS)


def check_exit(rc: int, t0: float, log_path: str, what: str) -> float:
    """Seconds since ``t0``; :class:`StepFailed` with the last lines of ``log_path`` when ``rc`` is not 0."""
    dt = time.time() - t0
    if rc != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = "".join(f.readlines()[-25:])
        raise StepFailed(f"{what} failed (exit {rc}, {dt:.0f} s); last lines of {log_path}:\n{tail}")
    return dt


def run_logged(cmd: list[str], log_path: str, what: str, env: Optional[Mapping[str, str]] = None) -> float:
    """Run ``cmd`` (environment ``env``), output to ``log_path``; raise :class:`StepFailed` with the log tail."""
    t0 = time.time()
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(env) if env is not None else None)
    return check_exit(rc, t0, log_path, what)


#: ``launch(cfg_path, log_path, what) -> seconds``: runs Axolotl's train CLI on a written config
Launch = Callable[[str, str, str], float]


def axolotl_train(cfg: dict, name: str, out: str, launch: Launch, write_config: Callable[[dict, str], str],
                  reuse: bool = True, stale: Sequence[str] = (), log: Callable[[str], None] = print,
                  ) -> tuple[str, float, bool]:
    """Train ``cfg`` unless a finished model of the SAME config and code exists (``reuse``); returns (dir, seconds
    of its training -- the original run's when reused --, reused). Retraining first removes the old model, the
    prepared-data cache (it ignores plugin settings) and the ``stale`` paths/globs (evaluations of the old model)."""
    cfg_path = write_config(cfg, os.path.join(out, "configs", f"{name}.yml"))
    model_dir = cfg["output_dir"]
    done = os.path.join(model_dir, DONE_FILE)
    digest = config_hash(cfg)
    if reuse and os.path.exists(done):
        with open(done, encoding="utf-8") as f:
            mark = json.load(f)
        if mark.get("config_hash") == digest and has_weights(model_dir):
            log(f"{name}: reusing {model_dir} (config and code unchanged)")
            return model_dir, float(mark.get("seconds", 0.0)), True
    shutil.rmtree(model_dir, ignore_errors=True)
    if cfg.get("dataset_prepared_path"):
        shutil.rmtree(cfg["dataset_prepared_path"], ignore_errors=True)
    for pattern in stale:
        for path in glob.glob(pattern):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    log(f"{name}: axolotl train {cfg_path}")
    dt = launch(cfg_path, os.path.join(out, "logs", f"{name}.log"), f"axolotl train ({name})")
    if not has_weights(model_dir):
        raise StepFailed(f"axolotl train ({name}) wrote no weights ({' / '.join(_WEIGHTS[:3])}) to {model_dir}")
    with open(done, "w", encoding="utf-8") as f:
        json.dump({"config_hash": digest, "seconds": round(dt, 1)}, f)
    log(f"{name}: done in {dt:.0f} s")
    return model_dir, dt, False


@dataclass
class Outcome:
    """What :func:`train_all` / :func:`execute` did: model folders of the finished runs, seconds per run (and per
    stage), error messages of failed runs, names of the reused runs."""

    models: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    reused: set = field(default_factory=set)


def train_all(runs: Sequence, config_of: Callable, out: str, launch: Launch, write_config: Callable[[dict, str], str],
              parallel: int = 1, reuse: bool = True, outcome: Optional[Outcome] = None,
              stale: Callable[[str], Sequence[str]] = lambda name: (), log: Callable[[str], None] = print) -> Outcome:
    """Train ``runs``, up to ``parallel`` at a time, each as soon as its start model exists; a run whose start
    failed is not trained (its error says why). Progress: one line per run start / reuse / finish."""
    outcome = outcome if outcome is not None else Outcome()
    names = {r.name for r in runs}
    pending = list(runs)
    order = {r.name: i + 1 for i, r in enumerate(runs)}
    finished: set[str] = set()

    def one(run):
        tag = f"[{order[run.name]}/{len(runs)}] {run.name}"
        try:
            path, dt, was_reused = axolotl_train(config_of(run), run.name, out, launch, write_config, reuse,
                                                 stale(run.name), log=lambda m: log(m.replace(run.name, tag, 1)))
            return path, dt, was_reused, None
        except StepFailed as e:
            return None, 0.0, False, str(e)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        running: dict = {}
        while pending or running:
            for r in [r for r in pending if r.start in outcome.errors]:
                outcome.errors[r.name] = f"not trained: its start model {r.start} failed"
                pending.remove(r)
            for r in [r for r in pending if r.start not in names or r.start in finished]:
                pending.remove(r)
                running[pool.submit(one, r)] = r
            if not running:
                if pending:
                    raise StepFailed(f"runs {[r.name for r in pending]} wait for start models that never finish")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                run = running.pop(fut)
                path, dt, was_reused, err = fut.result()
                outcome.timings[run.name] = round(dt, 1)
                if err is None:
                    outcome.models[run.name] = path
                    finished.add(run.name)
                    if was_reused:
                        outcome.reused.add(run.name)
                else:
                    outcome.errors[run.name] = err
                    log(f"{run.name}: FAILED\n{err}")
    return outcome


def execute(runs: Sequence, config_of: Callable, out: str, *, launch: Launch, write_config: Callable[[dict, str], str],
            evaluate: Callable[[Outcome], None], parallel: int = 1, reuse: bool = True,
            stale: Callable[[str], Sequence[str]] = lambda name: (), required: Sequence[str] = (),
            eval_timing: str = "eval", log: Callable[[str], None] = print,
            outcome: Optional[Outcome] = None) -> Outcome:
    """The pipeline: :func:`train_all` ``runs``, then ``evaluate(outcome)`` (every finished model; seconds in
    ``timings[eval_timing]``). A ``required`` run that failed stops it before evaluation (:class:`StepFailed`)."""
    outcome = train_all(runs, config_of, out, launch, write_config, parallel, reuse, outcome, stale, log)
    for name in required:
        if name not in outcome.models:
            raise StepFailed(outcome.errors.get(name, f"{name} model missing"))
    t0 = time.time()
    evaluate(outcome)
    outcome.timings[eval_timing] = round(time.time() - t0, 1)
    return outcome
