"""Run the project's lm-eval tasks in-process and keep every question's option log-likelihoods.

One place that knows where the task folder is, which tasks and data suites it defines, how to load a
model (or a peft adapter) for lm-eval and how to run and save an evaluation: ``axolotl-calib eval`` /
``diagnose``, the post-training report (:mod:`.report`) and the demo use it. It calls lm-eval's own
evaluator (``simple_evaluate``, ``HFLM`` backend) with a ``TaskManager`` whose include path is our task
folder, and returns, next to the tasks' own aggregate ``acc`` / ``conf_ece`` / ``cw_ece``, the K
option-letter log-likelihoods lm-eval computed for every question (for temperature scaling,
reliability diagrams and paired comparisons).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Mapping, Sequence

from ..encoding import training_add_bos_token

#: in-domain files go to calib_jsonl, out-domain to calib_jsonl_ood: two tasks run in one evaluator call.
TASK_ENV = (("calib_jsonl", "CALIB_JSONL"), ("calib_jsonl_ood", "CALIB_JSONL_OOD"))
#: overrides where the ``lm_eval_tasks`` folder is looked for.
TASKS_ENV = "AXOLOTL_CALIB_TASKS"
#: the task folder installed with the package (setuptools maps the subpackage onto the top-level
#: ``lm_eval_tasks/`` of the source tree, so a wheel carries it and the checkout keeps one copy).
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # axolotl_calib_plugin/
PACKAGED_TASK_DIR = os.path.join(_PACKAGE, "lm_eval_tasks")
#: tasks reading local MCQ files, and the lm-eval metadata key that names the files.
JSONL_TASK_METADATA = {"calib_jsonl": "data_files", "calib_jsonl_ood": "ood_data_files"}

__all__ = ["truncated_prompts", "quiet_git_probe", "JSONL_TASK_METADATA", "PACKAGED_TASK_DIR", "TASK_ENV", "TASKS_ENV", "as_list", "check_limit",
           "evaluate_files", "find_task_dir", "is_adapter_dir", "load_lm", "load_tokenizer", "make_hflm", "hflm_for_model",
           "NOISE", "NoiseFilter", "quiet_third_party_logs", "run_tasks", "task_utils", "samples_to_arrays", "task_index", "task_suites",
           "unknown_task_message"]


def as_list(value) -> list[str]:
    """A YAML list or a comma-separated string (task names, data files) -> list of stripped, non-empty strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value]


def check_limit(value, key: str = "calib_eval_limit"):
    """lm-eval's ``limit``: ``None``, an integer >= 1 (questions per task) or a fraction in (0, 1); else a
    ``ValueError`` naming ``key``. The one rule for the training key and ``axolotl-calib eval --limit``."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    if isinstance(value, float) and 0 < value < 1:
        return value
    raise ValueError(f"{key} must be an integer >= 1 (questions per task) or a fraction in (0, 1), got {value!r}")


def find_task_dir() -> str:
    """The folder to pass as lm-eval's ``--include_path``.

    ``$AXOLOTL_CALIB_TASKS`` if set; else the folder installed with the package (any ``pip install``
    of a wheel); else the top-level ``lm_eval_tasks/`` of the source checkout (an editable install
    maps the packaged folder onto it without a copy).
    """
    env = os.environ.get(TASKS_ENV)
    if env:
        if not os.path.isdir(env):
            raise FileNotFoundError(f"${TASKS_ENV}={env} is not a directory; unset it to use the installed tasks")
        return os.path.abspath(env)
    checkout = os.path.join(os.path.dirname(_PACKAGE), "lm_eval_tasks")
    for cand in (PACKAGED_TASK_DIR, checkout):
        if os.path.isfile(os.path.join(cand, "calib", "_calib_template_yaml")):
            return cand
    raise FileNotFoundError(
        f"the calib_* lm-eval tasks are missing from this installation (looked in {PACKAGED_TASK_DIR} and {checkout}); "
        f"reinstall axolotl-calib or set {TASKS_ENV}=/path/to/lm_eval_tasks"
    )


def _yaml_loader():
    import yaml

    class _TagTolerantLoader(yaml.SafeLoader):
        """Reads task YAMLs without resolving lm-eval's ``!function`` tags (they import code)."""

    _TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return _TagTolerantLoader


def task_utils():
    """The task folder's ``calib/utils.py`` (the tasks' own readers and row checks), loaded by path as lm-eval
    loads it: data can be read and checked before any model is loaded."""
    import importlib.util

    path = os.path.join(find_task_dir(), "calib", "utils.py")
    spec = importlib.util.spec_from_file_location("_axolotl_calib_task_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def task_index(task_dir: str | None = None) -> dict[str, dict]:
    """Every task and group our folder defines: ``{name: {"kind": "task"|"group", "suite": ..., "members": [...]}}``.

    Read from the YAML files themselves (cheap, no lm-eval import), so configs can be checked at
    validation time. ``suite`` is the task's ``dataset_kwargs.suite`` (a suite name or a list for pooled
    tasks); ``members`` the tasks of a group.
    """
    import yaml

    loader = _yaml_loader()
    index: dict[str, dict] = {}
    for path in sorted(glob.glob(os.path.join(task_dir or find_task_dir(), "**", "*.yaml"), recursive=True)):
        with open(path, encoding="utf-8") as fh:
            doc = yaml.load(fh, Loader=loader) or {}
        if "group" in doc:
            index[str(doc["group"])] = {"kind": "group", "members": [str(t) for t in doc.get("task") or []], "file": path}
        elif isinstance(doc.get("task"), str):
            suite = (doc.get("dataset_kwargs") or {}).get("suite")
            index[doc["task"]] = {"kind": "task", "suite": suite, "file": path}
    return index


def unknown_task_message(names: Sequence[str], index: dict[str, dict] | None = None) -> str | None:
    """None when every name is a task or group of our folder, else what to tell the user: the unknown names,
    the closest known ones and the full list (a cheap check from the YAMLs, before any model is loaded)."""
    import difflib

    index = index if index is not None else task_index()
    unknown = [n for n in names if n not in index]
    if not unknown:
        return None
    hints = []
    for n in unknown:
        close = [k for k in sorted(index) if k.startswith(n)] + difflib.get_close_matches(n, list(index), n=2)
        close = list(dict.fromkeys(close))[:2]  # a prefix ("calib_arc") first, then spelling neighbours
        hints.append(f"{n!r}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    return (f"unknown task {', '.join(hints)}; the task folder {find_task_dir()} defines: "
            f"{', '.join(sorted(index))}")


def task_suites(name: str, index: dict[str, dict] | None = None) -> list[str]:
    """The data suites (``utils.SUITES`` names, or ``calib_jsonl`` / ``calib_jsonl_ood``) a task or group reads."""
    index = index if index is not None else task_index()
    if name not in index:
        raise ValueError(unknown_task_message([name], index))
    entry = index[name]
    if entry["kind"] == "group":
        out: list[str] = []
        for member in entry["members"]:
            out += [s for s in task_suites(member, index) if s not in out]
        return out
    suite = entry.get("suite")
    return [str(s) for s in suite] if isinstance(suite, (list, tuple)) else [str(suite)]


def samples_to_arrays(task_samples: list[dict]) -> dict:
    """lm-eval's logged samples of one task -> ``{logliks (n, K) lists, labels (n,), ids (n,)}`` in doc order."""
    samples = sorted(task_samples, key=lambda s: s["doc_id"])
    logliks, labels, ids = [], [], []
    for s in samples:
        resps = s["filtered_resps"]
        logliks.append([float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in resps])
        labels.append(int(s["doc"]["gold"]))
        ids.append(str(s["doc"].get("id", s["doc_id"])))
    return {"logliks": logliks, "labels": labels, "ids": ids}


def evaluate_files(lm, files: Sequence[str], task_dir: str, batch_size: int = 64, *, apply_chat_template: bool = False,
                   system_instruction: str | None = None, task_metadata: dict | None = None) -> list[dict]:
    """Evaluate one loaded ``HFLM`` on up to two MCQ JSONL files in ONE ``simple_evaluate`` call.

    ``apply_chat_template`` / ``system_instruction`` / ``task_metadata`` (the training row settings: letters,
    answer format, fields) as in :func:`run_tasks`. Returns, per file, ``{"metrics": {acc, conf_ece, cw_ece}
    (lm-eval's aggregates), "logliks": (n, K) full-vocabulary log-likelihoods of the option letters,
    "labels": (n,), "ids": (n,)}``.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    if not 1 <= len(files) <= len(TASK_ENV):
        raise ValueError(f"one or two files per call, got {len(files)}")
    tasks = []
    for (task, env), path in zip(TASK_ENV, files):
        os.environ[env] = os.path.abspath(path)
        tasks.append(task)
    quiet_third_party_logs()
    tm = TaskManager(include_path=task_dir, include_defaults=False, metadata=dict(task_metadata or {}) or None)
    with quiet_git_probe():
        res = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=tm, log_samples=True, batch_size=batch_size,
                                      num_fewshot=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                      fewshot_random_seed=0, apply_chat_template=apply_chat_template,
                                      system_instruction=system_instruction)
    out = []
    for task in tasks:
        r = res["results"][task]
        entry = {"metrics": {m: float(r[f"{m},none"]) for m in ("acc", "conf_ece", "cw_ece")}}
        entry.update(samples_to_arrays(res["samples"][task]))
        out.append(entry)
    return out


# ----------------------------------------------------------------------------------- known third-party noise
#: (logger, message start) of third-party log lines that say nothing to a user of these tasks: torchao's
#: optional CUDA kernels that a CPU or other-arch install cannot load, and lm-eval's per-task notice that a
#: ``custom_dataset`` task takes metadata (ours are passed by the caller).
NOISE = (("torchao", "Failed to load "), ("lm_eval.api.task", None))
_NOISE_TEXT = "Custom kwargs can be passed to `--metadata`"


class NoiseFilter:
    """``logging`` filter dropping exactly the :data:`NOISE` lines of one logger; every other record passes."""

    def __init__(self, prefix: str | None) -> None:
        self.prefix = prefix

    def filter(self, record) -> bool:
        msg = record.getMessage()
        if self.prefix is not None:
            return not (msg.startswith(self.prefix) and "_C" in msg)
        return _NOISE_TEXT not in msg


def quiet_third_party_logs() -> None:
    """Install :class:`NoiseFilter` on the loggers of :data:`NOISE` (idempotent; works before the libraries are
    imported, as ``logging.getLogger`` creates the logger they will use)."""
    import logging

    for name, prefix in NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, NoiseFilter) for f in logger.filters):
            logger.addFilter(NoiseFilter(prefix))


class quiet_git_probe:
    """lm-eval records ``git describe`` of the working directory and lets git print ``fatal: not a git
    repository`` when there is none: run that probe with git's stderr discarded while our call runs."""

    def __enter__(self):
        import subprocess

        import lm_eval.evaluator as ev

        self._ev, self._orig = ev, getattr(ev, "get_git_commit_hash", None)

        def quiet():
            try:
                out = subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL)
                return out.strip().decode()
            except (subprocess.CalledProcessError, FileNotFoundError, OSError):
                return None

        if self._orig is not None:
            ev.get_git_commit_hash = quiet
        return self

    def __exit__(self, *exc):
        if self._orig is not None:
            self._ev.get_git_commit_hash = self._orig
        return False


def load_lm(path: str, batch_size: int = 64, tokenizer: str | None = None):
    """lm-eval's ``HFLM`` for a local model directory on CPU in float32, scoring plain prompts with the token
    sequence training used (:func:`training_add_bos_token`)."""
    return make_hflm(path, tokenizer=tokenizer, device="cpu", dtype="float32", batch_size=batch_size)


def is_adapter_dir(path: str) -> bool:
    """True for a peft adapter folder (``adapter_config.json``, as Axolotl saves LoRA/QLoRA runs)."""
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def _has_tokenizer(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def looks_local(name: str) -> bool:
    """A path, not a hub id (``name`` or ``owner/name``): starts with ``.``, ``/`` or ``~``, or has two ``/``."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def adapter_base_problem(model: str) -> str | None:
    """Why the base model named in an adapter folder's ``adapter_config.json`` cannot load from here (a local
    path that does not exist: Axolotl writes the config's ``base_model`` as given, relative to where training
    ran), or None."""
    if not (os.path.isdir(model) and is_adapter_dir(model)):
        return None
    try:
        with open(os.path.join(model, "adapter_config.json"), encoding="utf-8") as fh:
            base = json.load(fh).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        return f"{model}/adapter_config.json cannot be read ({e}); pass the base model explicitly (--base-model)"
    if isinstance(base, str) and base and looks_local(base) and not os.path.isdir(os.path.expanduser(base)):
        return (f"{model}/adapter_config.json: its base model {base!r} is a local path that does not exist from here "
                f"({os.getcwd()}); a relative path is relative to where training ran: run from there, or pass the base "
                "model explicitly (--base-model PATH)")
    return None


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The tokenizer saved in ``path`` exactly as saved (no ``add_bos_token`` override: passing one to
    ``from_pretrained`` rewrites what a fast tokenizer adds)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def make_hflm(model: str, *, base_model: str | None = None, tokenizer: str | None = None, device: str | None = None,
              dtype: str = "auto", batch_size: int = 8, trust_remote_code: bool = False, chat: bool = False,
              add_bos_token: bool | None = None):
    """lm-eval's ``HFLM`` for a model folder (or hub id), or for a peft adapter folder on its base model.

    An adapter folder (``adapter_config.json``) is loaded on ``base_model`` (default: the adapter's
    ``base_model_name_or_path``) through HFLM's own ``peft=`` argument; its tokenizer is the adapter
    folder's when it has one (Axolotl saves it there), else the base model's. ``device`` defaults to
    ``cuda`` when available, else ``cpu``. ``add_bos_token``: the run's recorded rule
    (``calib_settings.json``), else :func:`training_add_bos_token` of the tokenizer for ``chat`` (the
    token sequence training used). The tokenizer is loaded here and handed to ``HFLM`` as an object, so the
    flag only says whether each request gets the tokenizer's special tokens.
    """
    import torch
    from lm_eval.models.huggingface import HFLM

    kw = {}
    pretrained = model
    if os.path.isdir(model) and is_adapter_dir(model):
        with open(os.path.join(model, "adapter_config.json"), encoding="utf-8") as fh:
            base = base_model or json.load(fh).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{model}/adapter_config.json names no base_model_name_or_path; pass the base model explicitly")
        problem = None if base_model else adapter_base_problem(model)
        if problem:
            raise ValueError(problem)
        pretrained, kw["peft"] = base, model
        tokenizer = tokenizer or (model if _has_tokenizer(model) else base)
    tok = load_tokenizer(tokenizer or pretrained, trust_remote_code)
    rule = training_add_bos_token(tok, chat)
    if add_bos_token is not None and bool(add_bos_token) != rule:
        if add_bos_token and not rule:
            raise ValueError(
                f"training prompts began with the tokenizer's BOS (calib_settings.json add_bos_token: true), but the "
                f"tokenizer {tokenizer or pretrained} adds none: evaluate with the tokenizer the model was trained "
                "with (--tokenizer)")
        rule = False  # recorded: nothing added (a template or tokenizer that writes no BOS in training)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return HFLM(pretrained=pretrained, tokenizer=tok, device=device, dtype=dtype, batch_size=batch_size,
                add_bos_token=rule, trust_remote_code=trust_remote_code, **kw)


def hflm_for_model(model, tokenizer, *, chat: bool = False, batch_size: int = 8):
    """lm-eval's ``HFLM`` around a model already in memory (the post-training report's trained model) and its
    training tokenizer, scoring the token sequence training used (:func:`training_add_bos_token`)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                add_bos_token=training_add_bos_token(tokenizer, chat))


def run_tasks(lm, tasks: Sequence[str], *, task_dir: str | None = None, data_dir: str | None = None,
              data_files: Sequence[str] | None = None, ood_data_files: Sequence[str] | None = None,
              limit: int | float | None = None, output_dir: str | None = None, apply_chat_template: bool = False,
              system_instruction: str | None = None, model_name: str | None = None,
              task_metadata: dict | None = None) -> dict:
    """Evaluate a loaded lm-eval model on our tasks in one ``simple_evaluate`` call; returns its result dict.

    ``data_dir`` (local ``<task>.jsonl`` files in each hub schema) and ``data_files`` /
    ``ood_data_files`` (project-schema MCQ files for ``calib_jsonl`` / ``calib_jsonl_ood``) are passed as
    the tasks' metadata, so nothing is read from the environment. Samples are always logged (they
    carry each question's option log-likelihoods). With ``output_dir`` the results and the samples are
    written there by lm-eval's own ``EvaluationTracker``, in the layout of ``lm_eval --output_path
    --log_samples`` (``<output_dir>/<model name>/results_<time>.json`` + ``samples_<task>_<time>.jsonl``;
    ``model_name`` names that folder, lm-eval's default is the model path). ``task_metadata``: the row
    settings the model was trained with (:func:`axolotl_calib_plugin.row_settings.row_metadata`: option letters,
    answer format, field names), passed to the tasks so they build the training prompts and golds.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    quiet_third_party_logs()
    metadata: dict = dict(task_metadata or {})
    if data_dir:
        metadata["calib_data_dir"] = os.path.abspath(data_dir)
    for key, files in (("data_files", data_files), ("ood_data_files", ood_data_files)):
        if files:
            metadata[key] = [os.path.abspath(f) for f in files]
    tm = TaskManager(include_path=task_dir or find_task_dir(), include_defaults=False, metadata=metadata or None)
    tracker = None
    if output_dir:
        from lm_eval.loggers import EvaluationTracker

        tracker = EvaluationTracker(output_path=os.path.abspath(output_dir))
    with quiet_git_probe():
        res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, limit=limit, log_samples=True,
                                      bootstrap_iters=0, apply_chat_template=apply_chat_template,
                                      system_instruction=system_instruction, evaluation_tracker=tracker,
                                      random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    if tracker is not None:
        if model_name:
            from lm_eval.utils import sanitize_model_name

            tracker.general_config_tracker.model_name = model_name
            tracker.general_config_tracker.model_name_sanitized = sanitize_model_name(model_name)
        _save_lm_eval_outputs(tracker, res, output_dir)
    return res


def truncated_prompts(lm, samples: Mapping[str, Sequence[Mapping]]) -> dict[str, list]:
    """``{task: [doc_id, ...]}`` of the questions whose prompt plus answer is longer than the model's context:
    lm-eval scores them with the beginning of the prompt cut off (HFLM keeps the last ``max_length + 1`` tokens),
    where training drops such rows. Empty when every question fits."""
    max_len = getattr(lm, "max_length", None)
    if not max_len:
        return {}
    out = {}
    for task, rows in samples.items():
        cut = []
        for row in rows:
            args = row.get("arguments") or []
            if isinstance(args, Mapping):  # lm-eval logs {"gen_args_0": {"arg_0": context, "arg_1": continuation}, ...}
                args = [list(a.values()) if isinstance(a, Mapping) else a for a in args.values()]
            first = args[0] if args else None
            ctx, cont = (first[0], first[1]) if isinstance(first, (list, tuple)) and len(first) >= 2 else (None, None)
            if not isinstance(ctx, str) or not isinstance(cont, str):
                continue
            if len(lm.tok_encode(ctx)) + len(lm.tok_encode(cont, add_special_tokens=False)) > max_len + 1:
                cut.append(row.get("doc_id"))
        if cut:
            out[task] = cut
    return out


def _save_lm_eval_outputs(tracker, res: dict, output_dir: str) -> None:
    """Write results + samples as the ``lm_eval`` CLI does (its tracker only logs failures: check)."""
    from lm_eval.utils import handle_non_serializable

    results = {k: v for k, v in res.items() if k != "samples"}
    results = json.loads(json.dumps(results, default=handle_non_serializable))
    before = set(glob.glob(os.path.join(output_dir, "**", "*.json*"), recursive=True))
    tracker.save_results_aggregated(results=results, samples=res["samples"])
    for task in res["configs"]:
        tracker.save_results_samples(task_name=task, samples=res["samples"][task])
    written = set(glob.glob(os.path.join(output_dir, "**", "*.json*"), recursive=True)) - before
    if not any(os.path.basename(p).startswith("results_") for p in written):
        raise OSError(f"lm-eval could not write its results into {output_dir} (see the warning above)")
