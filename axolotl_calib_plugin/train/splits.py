"""What the eval split and the training rows share, checked once when the trainer exists (before the first step).

* The eval split has rows at all: Axolotl drops rows longer than ``sequence_len`` from ``test_datasets`` too, and
  an eval split left empty would fail later with a message that does not say why (:func:`check_eval_rows_left`).
* Held-out means never fitted: with a held-out M-step the eval prompts split into target and report rows
  (:func:`~axolotl_calib_plugin.train.eval_calibration.target_sample_ids`); a half with few rows gets a warning.
* Overlap by sample id (:func:`check_overlap`): a prompt of the eval split (or of ``calib_eval_data_files``, the
  report's file) that is also a training prompt is not held out. Any overlap is a warning naming the files and the
  count; an eval split whose EVERY prompt is a training prompt is refused when the M-step reads it (its "held-out"
  bins would be the training bins under another name).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import numpy as np

from .config_checks import config_value, is_calib_dataset_type

LOG = logging.getLogger(__name__)

__all__ = ["check_eval_rows_left", "check_eval_split", "check_overlap", "eval_data_file_ids", "file_names"]


def file_names(cfg: Mapping, key: str) -> list[str]:
    """The ``path`` of every calibration-type entry of ``cfg[key]`` (``datasets`` / ``test_datasets``)."""
    out = []
    for ds in cfg.get(key) or []:
        if is_calib_dataset_type(config_value(ds, "type")):
            split = config_value(ds, "split")
            out.append(str(config_value(ds, "path")) + (f" [split {split}]" if split else ""))
    return out


def _eval_source(cfg: Mapping) -> str:
    tests = file_names(cfg, "test_datasets")
    if tests:
        return "test_datasets " + ", ".join(tests)
    return f"the val_set_size: {cfg.get('val_set_size')} rows held out of datasets " + ", ".join(file_names(cfg, "datasets"))


def _answer_ids(dataset) -> np.ndarray:
    from .estep import EStepData

    if dataset is None or "calib_sample_id" not in getattr(dataset, "column_names", ()):
        return np.zeros(0, dtype=np.int64)
    return np.unique(EStepData(dataset).sample_id)


def _pooled_eval_ids(eval_dataset) -> np.ndarray:
    sets = list(eval_dataset.values()) if isinstance(eval_dataset, Mapping) else [eval_dataset]
    return np.unique(np.concatenate([_answer_ids(d) for d in sets] or [np.zeros(0, dtype=np.int64)]))


def check_eval_rows_left(cfg: Mapping, tokenizer, eval_dataset) -> None:
    """Fail with numbers when the config has a calibration eval split but no eval row has an answer position left,
    e.g. every ``test_datasets`` row is longer than ``sequence_len`` (Axolotl drops them)."""
    from ..rows import CalibDataError
    from .mcq import length_census_lines

    tests = [(i, ds if isinstance(ds, Mapping) else ds.model_dump())
             for i, ds in enumerate(cfg.get("test_datasets") or []) if is_calib_dataset_type(config_value(ds, "type"))]
    if not tests or _pooled_eval_ids(eval_dataset).size:
        return
    lines, shortest = length_census_lines(cfg, tokenizer, [(f"test_datasets[{i}] {ds_cfg.get('path')}", ds_cfg)
                                                           for i, ds_cfg in tests])
    fix = (f"Raise sequence_len to at least {min(shortest)} tokens, or shorten those rows, or remove test_datasets."
           if shortest else "Check the eval files above.")
    raise CalibDataError(
        "the eval split has no rows left after Axolotl dropped the rows longer than sequence_len "
        f"{cfg.get('sequence_len')} (excess_length_strategy: drop), so there is nothing to evaluate (eval_calib/*) or to take "
        "held-out targets from:\n  " + "\n  ".join(lines) + "\n" + fix)


def eval_data_file_ids(cfg: Mapping, tokenizer, files) -> dict[str, np.ndarray]:
    """Sample ids of the rows of each report file (``calib_eval_data_files``), tokenized as the training rows are
    (the same strategy and settings, so a training prompt gets the same id). Rows that do not parse are skipped:
    the report's own checks name them."""
    from ..rows import read_jsonl_records
    from .mcq import build_strategy

    out = {}
    for f in files or []:
        try:
            strategy = build_strategy(tokenizer, cfg, {"path": f})
            strategy.sequence_len = None
            ids = []
            for i, (_, row) in enumerate(read_jsonl_records(f)):
                try:
                    sid = np.asarray(strategy.tokenize_row(row, i)["calib_sample_id"])
                except ValueError:
                    continue
                ids.append(int(sid[sid >= 0][0]))
            out[str(f)] = np.unique(np.asarray(ids, dtype=np.int64))
        except Exception as exc:  # noqa: BLE001 - an overlap check never hides the report's own error
            LOG.debug("calib: could not read %s for the overlap check (%s)", f, exc)
    return out


def check_overlap(cfg: Mapping, train_ids: np.ndarray, eval_ids: np.ndarray, heldout_mstep: bool,
                  report_files: Optional[dict] = None) -> list[str]:
    """Warn about (and return) every overlap of training prompts with the eval split / the report files, by sample
    id; raise ``ValueError`` when every eval prompt is a training prompt and the M-step reads the eval split."""
    train_names = ", ".join(file_names(cfg, "datasets")) or "the training data"
    messages = []
    shared = np.intersect1d(train_ids, eval_ids)
    if eval_ids.size and shared.size == eval_ids.size and heldout_mstep:
        raise ValueError(
            f"every one of the {eval_ids.size} eval prompts ({_eval_source(cfg)}) is also a training prompt "
            f"({train_names}), so the held-out M-step (calib_bin_accuracy: heldout / calib_targets: temperature) would "
            "take its bins from training rows under the name held-out, and eval_calib/* would score training rows. "
            "Use an eval file whose questions the model does not train on, or set calib_bin_accuracy: train and "
            "calib_targets: bin.")
    if shared.size:
        messages.append(
            f"{shared.size} of the {eval_ids.size} eval prompts ({_eval_source(cfg)}) are also training prompts "
            f"({train_names}): eval_calib/* on them is not a held-out number"
            + (" and the held-out M-step reads their training-row accuracy" if heldout_mstep else "")
            + ". Remove them from one of the files.")
    for f, ids in (report_files or {}).items():
        both = np.intersect1d(train_ids, ids)
        if both.size:
            messages.append(
                f"calib_eval_data_files {f}: {both.size} of its {ids.size} prompts are training prompts ({train_names}), "
                "so the post-training report scores them as if held out. Remove them from one of the files.")
    for m in messages:
        LOG.warning("calib: %s", m)
    return messages


def check_eval_split(cfg: Mapping[str, Any], tokenizer, trainer, calib) -> None:
    """Every check of this module on the finished trainer (the plugin's ``add_callbacks_post_trainer``)."""
    from .eval_calibration import FEW_SPLIT_ROWS

    check_eval_rows_left(cfg, tokenizer, trainer.eval_dataset)
    train_ids = _answer_ids(trainer.train_dataset)
    eval_ids = _pooled_eval_ids(trainer.eval_dataset)
    heldout_mstep = calib.needs_heldout(trainer.eval_dataset)
    report = eval_data_file_ids(cfg, tokenizer, cfg.get("calib_eval_data_files")) if cfg.get("calib_eval_data_files") \
        else None
    check_overlap(cfg, train_ids, eval_ids, heldout_mstep, report)
    target = calib.target_ids(trainer.eval_dataset)  # TargetSplitError when a half would be empty
    if target is not None:
        n_report = int(eval_ids.size - target.size)
        few = [f"{n} {what}" for n, what in ((int(target.size), "target"), (n_report, "report")) if 0 < n < FEW_SPLIT_ROWS]
        if few:
            LOG.warning("calib: calib_target_fraction: %s splits the %d eval prompts into %d target and %d report "
                        "prompts; %s prompts are few, so the numbers they give are noisy. Add eval rows or change "
                        "calib_target_fraction.", calib.settings.calib_target_fraction, eval_ids.size, target.size,
                        n_report, " and ".join(few))
        LOG.info("calib: %d eval prompts set the targets (eval_calib_fit/*), %d are reported as held-out "
                 "(eval_calib/*)", target.size, n_report)
