"""Checks of the whole raw Axolotl config that the calibration plugin runs before anything is trained.

:class:`~axolotl_calib_plugin.train.args.CalibrationArgs` (the schema) runs them from its ``mode="before"``
validator, which sees the WHOLE raw config dict because Axolotl merges the model into its own: a misspelled
``calib_*`` key (which Axolotl would drop silently), the ``cft`` / ``rcft`` presets and ``train_on_inputs``, Axolotl
settings that would make the calibration columns wrong, a held-out M-step without an eval split, the post-training
report's tasks and empty or malformed local data files are all reported here, naming the key, instead of hours later.
Each function reads a raw dict (or an Axolotl ``DictDefault``) and either raises a ``ValueError`` saying what to
change, logs a warning, or fills in a resolved value.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

__all__ = [
    "DATASET_TYPE",
    "DEFAULT_BIN_ACCURACY",
    "MODE_PRESETS",
    "PLUGIN_NAME",
    "SCOPE_TO_TRAIN_ON_INPUTS",
    "check_eval_report",
    "check_first_estep",
    "check_heldout_prior",
    "check_heldout_source",
    "check_incompatible",
    "check_listed_config",
    "check_local_data_files",
    "check_plugin_registered",
    "check_unknown_keys",
    "config_value",
    "expand_presets",
    "is_calib_dataset_type",
    "is_plugin_listed",
    "plugin_missing_message",
    "resolve_bin_accuracy",
]

#: the dotted name users put under ``plugins:`` (``axolotl_calib_plugin.plugin.CalibrationPlugin`` also works).
PLUGIN_NAME = "axolotl_calib_plugin.CalibrationPlugin"
#: the dataset ``type:`` of our MCQ strategy (``axolotl_calib_plugin.mcq.load`` is the same loader).
DATASET_TYPE = "axolotl_calib_plugin.mcq"

#: preset -> (calib_sft_scope, calib_lambda) used for the keys the user left unset.
MODE_PRESETS: dict[str, tuple[str, float]] = {
    "cft": ("answer", 1.0),
    "rcft": ("prompt_and_answer", 1.0),
}
#: default of calib_bin_accuracy (``auto``: held-out rows when the config has an MCQ eval split); see study/heldout.md
DEFAULT_BIN_ACCURACY = "auto"
#: calib_sft_scope -> the value of Axolotl's ``train_on_inputs`` that implements it.
SCOPE_TO_TRAIN_ON_INPUTS = {"answer": False, "prompt_and_answer": True}


def is_plugin_listed(plugins: Any, class_name: str = "CalibrationPlugin") -> bool:
    """True if a ``plugins:`` list names our plugin class ``class_name`` (by any dotted path in this package)."""
    if not plugins:
        return False
    if isinstance(plugins, str):
        plugins = [plugins]
    return any(
        isinstance(p, str) and p.startswith("axolotl_calib_plugin.") and p.rsplit(".", 1)[-1] == class_name
        for p in plugins
    )


def is_calib_dataset_type(ds_type: Any) -> bool:
    """True for ``type: axolotl_calib_plugin.mcq`` and its explicit ``...mcq.load`` form."""
    return isinstance(ds_type, str) and (ds_type == DATASET_TYPE or ds_type.startswith(DATASET_TYPE + "."))


def config_value(obj: Any, key: str) -> Any:
    """Read ``key`` from a dict, a DictDefault or a pydantic dataset model alike."""
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def check_plugin_registered(cfg: Mapping) -> None:
    """Fail when a config uses our dataset type without the plugin registered.

    The dataset strategy is the one piece of ours that runs when ``plugins:`` forgets the plugin (or its
    import failed, which Axolotl only logs): without this check Axolotl would have dropped every
    ``calib_*`` key and trained plain SFT.
    """
    if not is_plugin_listed(cfg.get("plugins")):
        dropped = _raw_calib_keys(cfg)
        msg = (
            f"dataset type {DATASET_TYPE} needs the calibration plugin, but `plugins:` does not list it "
            f"(plugins: {cfg.get('plugins')})."
        )
        if dropped:
            msg += " " + plugin_missing_message(dropped)
        else:
            msg += f" Add\n  plugins:\n    - {PLUGIN_NAME}"
        raise ValueError(msg)
    try:
        from axolotl.integrations.base import PluginManager
    except ImportError:  # pragma: no cover - axolotl is a dependency
        return
    registered = PluginManager.get_instance().plugins
    if not any(is_plugin_listed([name]) for name in registered):
        raise ValueError(
            f"{PLUGIN_NAME} is listed under `plugins:` but was not registered (Axolotl only logs plugin "
            "import errors: see the traceback above), so the calib_* keys were dropped."
        )


def _raw_calib_keys(cfg: Mapping) -> list[str]:
    """calib_* keys of the raw YAML (Axolotl drops them from the validated cfg without the plugin)."""
    keys = [k for k in cfg if isinstance(k, str) and k.startswith("calib")]
    path = cfg.get("axolotl_config_path")
    if path:
        try:
            import yaml

            with open(path, encoding="utf-8") as fh:
                raw = yaml.safe_load(fh) or {}
            keys += [k for k in raw if isinstance(k, str) and k.startswith("calib")]
        except (OSError, ValueError, AttributeError, ImportError):
            pass
    return sorted(set(keys))


def plugin_missing_message(calib_keys: list[str]) -> str:
    return (
        f"the config sets {', '.join(calib_keys)} but `plugins:` does not list {PLUGIN_NAME}. Without the plugin "
        "Axolotl silently drops these keys and trains plain SFT. Add\n  plugins:\n    - " + PLUGIN_NAME
    )


def check_unknown_keys(data: dict, fields: list[str], allowed: set[str] = frozenset()) -> None:
    """Fail on ``calib*`` keys (or near-misses such as ``calb_lambda``) that are not among ``fields`` (the schema's)."""
    ours = list(fields)
    known = set(ours) | set(allowed)
    unknown = []
    for key in data:
        if not isinstance(key, str) or key in known:
            continue
        close = difflib.get_close_matches(key.lower(), ours, n=1, cutoff=0.8)
        if key.lower().startswith("calib") or close:
            unknown.append((key, close))
    if not unknown:
        return
    lines = []
    for key, close in unknown:
        hint = close or difflib.get_close_matches(key, ours, n=1, cutoff=0.5)
        hint = hint or difflib.get_close_matches(key.lower(), ours, n=1, cutoff=0.5)
        lines.append(f"  {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    raise ValueError(
        "unknown calibration plugin key(s):\n" + "\n".join(lines) + "\nvalid keys: " + ", ".join(ours)
    )


def expand_presets(data: dict) -> None:
    """Fill calib_sft_scope / calib_lambda from calib_mode and set or check ``train_on_inputs``."""
    mode = data.get("calib_mode") or "cft"
    if mode not in MODE_PRESETS:
        return  # the Literal field reports the bad value, naming calib_mode
    scope_default, lam_default = MODE_PRESETS[mode]
    scope_given = data.get("calib_sft_scope") is not None
    if not scope_given:
        data["calib_sft_scope"] = scope_default
    if data.get("calib_lambda") is None:
        data["calib_lambda"] = lam_default
    scope = data["calib_sft_scope"]
    if scope not in SCOPE_TO_TRAIN_ON_INPUTS:
        return  # reported by the Literal field
    want = SCOPE_TO_TRAIN_ON_INPUTS[scope]
    have = data.get("train_on_inputs")
    if have is None:
        data["train_on_inputs"] = want
    elif bool(have) != want:
        origin = "calib_sft_scope: " + scope if scope_given else f"calib_mode: {mode} (implies calib_sft_scope: {scope})"
        raise ValueError(
            f"{origin} needs train_on_inputs: {str(want).lower()}, but the config sets train_on_inputs: "
            f"{str(bool(have)).lower()}. Remove train_on_inputs (the plugin sets it) or set calib_sft_scope to "
            f"{'prompt_and_answer' if have else 'answer'} explicitly."
        )


def check_eval_report(data: dict) -> None:
    """calib_eval_* keys and lm_eval_tasks naming our tasks: checked now, not after hours of training."""
    from .report_hook import check_eval_config

    check_eval_config(data)


def check_local_data_files(data: dict) -> None:
    """Reject an empty local data file of a calibration dataset now: HF datasets fails on it later with a
    bare ``StopIteration`` (or "corresponds to no data") that names no file."""
    import os

    from ..rows import check_data_file, read_jsonl_records

    for key in ("datasets", "test_datasets"):
        for ds in data.get(key) or []:
            if not is_calib_dataset_type(config_value(ds, "type")):
                continue
            path, files = config_value(ds, "path"), config_value(ds, "data_files")
            candidates = [path] if isinstance(path, str) else []
            if isinstance(path, str) and os.path.isdir(path) and files:  # Axolotl reads data_files as given
                candidates = [files] if isinstance(files, str) else [f for f in files if isinstance(f, str)]
            for f in candidates:
                if os.path.isfile(f):
                    check_data_file(f, key)
                    if key == "datasets" and _is_json_lines(f, config_value(ds, "ds_type")):
                        read_jsonl_records(f)  # a bad line: file and 1-based line now, not DatasetGenerationError later
    others = [i for i, ds in enumerate(data.get("test_datasets") or []) if not is_calib_dataset_type(config_value(ds, "type"))]
    if others:
        import logging

        logging.getLogger(__name__).warning(
            "test_datasets%s %s not type: %s, so evaluation reports no eval_calib/* metrics for them (only the loss); "
            "use type: %s to get held-out ECE", others, "is" if len(others) == 1 else "are", DATASET_TYPE, DATASET_TYPE)


def _is_json_lines(path: str, ds_type: Any) -> bool:
    """A file Axolotl reads with the JSON loader as one object per line (not a ``.json`` list)."""
    if ds_type and str(ds_type).lower() != "json":
        return False
    if any(ext in path for ext in (".parquet", ".arrow", ".csv", ".txt")):
        return False
    if path.endswith(".json"):
        with open(path, "rb") as fh:
            return not fh.read(1 << 12).lstrip().startswith(b"[")
    return True


#: attention implementations with which Axolotl keeps packed samples apart (block-diagonal mask or varlen
#: kernels; Axolotl 0.19's ``attn_decontaminates_packing``), and the legacy boolean flags that select them
_PACKING_SAFE_ATTN = ("sdpa", "eager", "flash_attention", "flex_attention")
_PACKING_SAFE_FLAGS = ("flash_attention", "sdp_attention", "flex_attention", "eager_attention")


def _isolates_packed_samples(data: dict) -> bool:
    impl = data.get("attn_implementation")
    if isinstance(impl, str):
        return impl.split(":")[-1].startswith(_PACKING_SAFE_ATTN)
    return any(data.get(flag) is True for flag in _PACKING_SAFE_FLAGS)


def _eval_split(data: Mapping) -> tuple[bool, list, list]:
    """(val_set_size > 0, the MCQ-type test_datasets, all test_datasets) of a raw config."""
    val = data.get("val_set_size")
    try:
        has_val = val is not None and float(val) > 0
    except (TypeError, ValueError):
        has_val = False  # Axolotl's own schema reports a non-numeric val_set_size
    test_sets = list(data.get("test_datasets") or [])
    return has_val, [ds for ds in test_sets if is_calib_dataset_type(config_value(ds, "type"))], test_sets


def resolve_bin_accuracy(data: dict, split_source: Mapping | None = None) -> None:
    """``calib_bin_accuracy: auto`` (or unset while the default is auto) -> heldout when the config has an MCQ eval
    split (val_set_size > 0 or a calibration-type test_datasets entry), else train."""
    if (data.get("calib_bin_accuracy") or DEFAULT_BIN_ACCURACY) != "auto":
        return
    has_val, calib_tests, _ = _eval_split(split_source if split_source is not None else data)
    data["calib_bin_accuracy"] = "heldout" if (has_val or calib_tests) else "train"


def check_first_estep(data: dict) -> None:
    """A subsampled first E-step gives live targets from training-row statistics: refuse it with held-out targets."""
    fraction = data.get("calib_first_estep_fraction")
    if isinstance(fraction, str):  # "0.2" from YAML quotes or an env override: the field reads it as 0.2 too
        try:
            fraction = float(fraction)
        except ValueError:
            return  # not a number: the field's own check names the key
    if fraction is None or isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or fraction >= 1:
        return
    wants = _heldout_settings(data)
    if wants:
        raise ValueError(
            f"calib_first_estep_fraction: {fraction} gives the prompts the first E-step leaves out live targets from the "
            f"training forwards' own bin statistics, which {' and '.join(wants)} replace by held-out ones: remove "
            "calib_first_estep_fraction (held-out variants measure every prompt first) or set calib_bin_accuracy: train "
            "and calib_targets: bin."
        )


def _heldout_settings(data: dict) -> list[str]:
    """``"key: value"`` of each setting in ``data`` that makes the M-step read held-out rows (calib_bin_accuracy not
    train, calib_targets not bin); empty when the targets come from training rows only."""
    return [f"{k}: {data.get(k)}" for k, plain in (("calib_bin_accuracy", "train"), ("calib_targets", "bin"))
            if data.get(k) not in (None, plain)]


def check_heldout_source(data: dict) -> None:
    """calib_bin_accuracy: heldout and calib_targets: temperature read the eval split: refuse a config without one."""
    wants = _heldout_settings(data)
    if not wants:
        return
    has_val, calib_tests, test_sets = _eval_split(data)
    if test_sets and not calib_tests:
        raise ValueError(
            f"{' and '.join(wants)} read the eval split's option probabilities, but no test_datasets entry has "
            f"`type: {DATASET_TYPE}` (only those carry the answer position and gold). Give the held-out MCQ file that type."
        )
    if not (has_val or calib_tests):
        raise ValueError(
            f"{' and '.join(wants)} need held-out rows the model never trains on: add an eval split, either "
            f"test_datasets (a held-out MCQ file with `type: {DATASET_TYPE}`) or val_set_size: 0.1 (Axolotl holds "
            "that fraction of the training file out). Or set calib_bin_accuracy: train and calib_targets: bin."
        )


def check_heldout_prior(data: dict) -> None:
    """An explicit calib_heldout_prior (or calib_target_fraction) that nothing reads: say so instead of ignoring it.

    The prior shrinks held-out bin accuracies; with calib_bin_accuracy train (explicit, or auto without an eval split)
    and calib_targets bin every q comes from training rows and the prior changes nothing."""
    import logging

    if _heldout_settings(data):
        return
    unused = [k for k in ("calib_heldout_prior", "calib_target_fraction") if data.get(k) is not None]
    if unused:
        logging.getLogger(__name__).warning(
            "%s set, but calib_bin_accuracy is %s and calib_targets is %s: the bins' accuracies come from the training "
            "rows and no eval row sets a target, so %s has no effect. Set calib_bin_accuracy: heldout (with an eval "
            "split) to use it, or remove it.", " and ".join(unused), data.get("calib_bin_accuracy") or "train",
            data.get("calib_targets") or "bin", "it" if len(unused) == 1 else "they")


def check_incompatible(data: dict) -> None:
    """Reject Axolotl settings that would make the calibration columns wrong or absent."""
    if data.get("rl"):
        raise ValueError(f"the calibration plugin trains with SFT; it does not support rl: {data.get('rl')}")
    if data.get("batch_flattening") is True:
        raise ValueError(
            "batch_flattening: true is not supported with the calibration plugin (its collator drops the "
            "calib_* columns); use sample_packing: true, which the plugin supports."
        )
    if data.get("sample_packing") and not _isolates_packed_samples(data):
        raise ValueError(
            "sample_packing: true with the calibration plugin needs an attention implementation that keeps packed "
            f"samples apart, got attn_implementation: {data.get('attn_implementation')}. Set attn_implementation: "
            "sdpa (or flash_attention_2 / flex_attention / eager). Otherwise every packed sample attends to the "
            "samples packed before it, and its option probabilities (the ECE term, the online E-step, the held-out "
            "metrics) are those of a different prompt."
        )
    if str(data.get("excess_length_strategy") or "").lower() == "truncate":
        raise ValueError(
            "excess_length_strategy: truncate is not supported with the calibration plugin: truncation can cut "
            "off the answer letter and desynchronises the per-token calib_* columns. Use drop (default) or raise, "
            "or raise sequence_len."
        )
    # Axolotl concatenates the tokenized datasets, which needs identical columns: every training
    # dataset must come through our strategy (which emits the calib_* columns).
    datasets = data.get("datasets") or []
    others = [(i, config_value(ds, "type")) for i, ds in enumerate(datasets) if not is_calib_dataset_type(config_value(ds, "type"))]
    if others:
        listing = ", ".join(f"datasets[{i}] type: {t}" for i, t in others)
        raise ValueError(
            f"with the calibration plugin every training dataset needs `type: {DATASET_TYPE}` (it emits the answer "
            f"position and gold option the loss needs, and Axolotl can only merge datasets with the same columns); "
            f"got {listing}"
        )


def check_listed_config(data: dict, fields: list[str]) -> None:
    """Every check of a raw config that lists the plugin, in order: unknown keys (against the schema's ``fields``),
    presets and ``train_on_inputs``, incompatible Axolotl settings, ``calib_bin_accuracy: auto``, the first E-step,
    the held-out M-step's source and prior, the post-training report, the local data files. Fills resolved values
    into ``data``."""
    check_unknown_keys(data, fields)
    expand_presets(data)
    check_incompatible(data)
    resolve_bin_accuracy(data)
    check_first_estep(data)
    check_heldout_source(data)
    check_heldout_prior(data)
    check_eval_report(data)
    check_local_data_files(data)
