"""What a training row and a target depend on, so that a cache or a checkpoint made under other settings
or other data is never reused silently.

* Prepared-data cache: Axolotl reuses ``dataset_prepared_path/<hash>`` when the hash of its own config
  fields matches; ``calib_*`` keys and the data files' contents are not among them. :func:`install_dataset_hash`
  (the plugin's ``load_datasets`` hook, before Axolotl loads anything) adds :data:`HASH_KEY` to the config
  fields Axolotl hashes and sets it to :func:`row_fingerprint`: a changed key or an edited file gives a
  new prepared folder (the old one is left alone).
* Resume: each refresh stores :func:`target_settings` and every prompt's gold option and K in
  ``EMState.extra``; :func:`resume_problems` compares them with the resumed run's, and resuming is refused
  rather than mixed (:func:`check_resume`): before the model loads (:func:`check_resume_state_early`, the
  plugin's ``load_datasets`` hook) and again on the training data itself (:func:`check_same_data`, when the
  callback restores the state).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Optional

import torch

from .em_state import STATE_FILE, EMState
from .estep import EStepData

#: settings that change a tokenized training row (prompt, answer position, gold).
ROW_KEYS = ("calib_option_letters", "calib_prompt_format", "calib_system_prompt", "calib_answer_format",
            "calib_field_question", "calib_field_choices", "calib_field_answer", "calib_sft_scope")
#: settings that change a target or what it is compared with; append new target-shaping keys here.
TARGET_KEYS = ROW_KEYS + ("calib_bins", "calib_nonmax_split", "calib_ece_loss", "calib_bin_accuracy", "calib_targets",
                          "calib_heldout_prior", "calib_target_fraction")
#: bumped when the strategy turns the same row into different tokens or golds (a new rule in rows.py / mcq.py).
ROW_RULES_VERSION = 2
#: the config key (set by the plugin, hashed by Axolotl) that carries :func:`row_fingerprint`.
HASH_KEY = "axolotl_calib_rows_digest"  # not calib_*: from_cfg would take it for a typo
SETTINGS_EXTRA, GOLDS_EXTRA, NUM_OPTIONS_EXTRA = "target_settings", "golds", "num_options"
#: the held-out target rows a refresh read: their sample ids, golds and option counts
HELDOUT_IDS_EXTRA, HELDOUT_GOLDS_EXTRA, HELDOUT_KS_EXTRA = "heldout_golds_ids", "heldout_golds", "heldout_num_options"


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def target_settings(settings: Any, keys: tuple[str, ...] = TARGET_KEYS) -> dict:
    """``{key: value}`` of every setting in ``keys`` (``getattr(settings, key, None)``: keys a version
    lacks read None), as plain JSON values (storable in ``calib_state.pt`` with ``weights_only``)."""
    return {k: _plain(getattr(settings, k, None)) for k in keys}


# ---------------------------------------------------------------------------------- prepared-data cache
def _file_digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _local_files(ds_cfg: Mapping) -> list[str]:
    path, files = ds_cfg.get("path"), ds_cfg.get("data_files")
    if not isinstance(path, str):
        return []
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        if files:
            names = [files] if isinstance(files, str) else list(files)
            return sorted(f if os.path.isabs(f) or os.path.isfile(f) else os.path.join(path, f) for f in names)
        return sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    return []


def row_fingerprint(cfg: Mapping) -> str:
    """Digest of what makes the calibration rows: :data:`ROW_KEYS`, :data:`ROW_RULES_VERSION` and the
    contents of every local data file of ``datasets`` / ``test_datasets`` (hub data: Axolotl hashes its
    path and revision)."""
    from .args import CalibrationArgs

    payload = {"settings": target_settings(CalibrationArgs.from_cfg(cfg), ROW_KEYS), "rules": ROW_RULES_VERSION,
               "files": {}}
    for key in ("datasets", "test_datasets"):
        for ds in cfg.get(key) or []:
            ds = ds if isinstance(ds, Mapping) else ds.model_dump()
            for f in _local_files(ds):
                if os.path.isfile(f):
                    payload["files"][os.path.abspath(f)] = _file_digest(f)
    return hashlib.blake2b(json.dumps(payload, sort_keys=True).encode(), digest_size=16).hexdigest()


def install_dataset_hash(cfg) -> str:
    """Make the calibration rows part of Axolotl's prepared-data hash; returns the fingerprint set on ``cfg``."""
    from axolotl.utils.data import shared

    if HASH_KEY not in shared.DATASET_HASH_CONFIG_EXTRA_FIELDS:
        shared.DATASET_HASH_CONFIG_EXTRA_FIELDS = (*shared.DATASET_HASH_CONFIG_EXTRA_FIELDS, HASH_KEY)
    cfg[HASH_KEY] = row_fingerprint(cfg)
    return cfg[HASH_KEY]


# ---------------------------------------------------------------------------------- resume
def golds_table(sample_ids: torch.Tensor, answer_idx: torch.Tensor, num_options: torch.Tensor):
    """(unique sorted ids, gold of each, K of each): the first occurrence of a repeated prompt, as the M-step."""
    uniq, inverse = torch.unique(sample_ids, sorted=True, return_inverse=True)
    first = torch.full((uniq.numel(),), sample_ids.numel(), dtype=torch.int64)
    first = first.scatter_reduce(0, inverse, torch.arange(sample_ids.numel()), reduce="amin")
    return uniq, answer_idx[first].to(torch.int64), num_options[first].to(torch.int64)


def record(extra: dict, settings: Any, sample_ids, answer_idx, num_options) -> None:
    """Store the settings and every prompt's gold and K with a refresh (``EMState.extra``)."""
    _, golds, ks = golds_table(sample_ids, answer_idx, num_options)
    extra[SETTINGS_EXTRA] = target_settings(settings)
    extra[GOLDS_EXTRA], extra[NUM_OPTIONS_EXTRA] = golds, ks


def record_heldout(extra: dict, sample_ids, answer_idx, num_options) -> None:
    """Store the held-out target rows a refresh read (ids, golds, K), so a resume can check they did not change."""
    ids, golds, ks = golds_table(torch.as_tensor(sample_ids).to(torch.int64), torch.as_tensor(answer_idx),
                                 torch.as_tensor(num_options))
    extra[HELDOUT_IDS_EXTRA], extra[HELDOUT_GOLDS_EXTRA], extra[HELDOUT_KS_EXTRA] = ids, golds, ks


def heldout_changes(extra: Mapping, data) -> list[str]:
    """What differs between the held-out target rows the state's refresh read and ``data`` (an ``EStepData`` of this
    run's held-out target rows): prompts gone or new, other golds or option counts."""
    if HELDOUT_IDS_EXTRA not in extra:
        return []
    old_ids = extra[HELDOUT_IDS_EXTRA]
    ids, golds, ks = golds_table(torch.from_numpy(data.sample_id), torch.from_numpy(data.answer_idx),
                                 torch.from_numpy(data.num_options))
    out = []
    gone, new = int((~torch.isin(old_ids, ids)).sum()), int((~torch.isin(ids, old_ids)).sum())
    if gone or new:
        out.append(f"the held-out target rows changed ({gone} of the {old_ids.numel()} it read are gone, {new} are new)")
    pos = torch.searchsorted(old_ids, ids).clamp(max=max(old_ids.numel() - 1, 0))
    shared = old_ids[pos] == ids if old_ids.numel() else torch.zeros_like(ids, dtype=torch.bool)
    for name, now, then in (("gold option", golds, extra[HELDOUT_GOLDS_EXTRA]),
                            ("number of options", ks, extra[HELDOUT_KS_EXTRA])):
        diff = shared & (now != then[pos])
        if bool(diff.any()):
            out.append(f"{int(diff.sum())} of {int(shared.sum())} held-out target prompts have a different {name}")
    return out


def settings_changes(extra: Mapping, settings: Any) -> list[str]:
    """``"key: old -> new"`` for every target setting that differs from the stored one (keys stored only)."""
    old = extra.get(SETTINGS_EXTRA) or {}
    new = target_settings(settings, tuple(old))
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in old if old[k] != new[k]]


def golds_changes(extra: Mapping, state_ids: torch.Tensor, sample_ids, answer_idx, num_options) -> list[str]:
    """What differs in the golds / option counts of the prompts the state and the data share."""
    if GOLDS_EXTRA not in extra:
        return []
    ids, golds, ks = golds_table(sample_ids, answer_idx, num_options)
    pos = torch.searchsorted(state_ids, ids).clamp(max=max(state_ids.numel() - 1, 0))
    shared = state_ids[pos] == ids
    out = []
    for name, new, old in (("gold option", golds, extra[GOLDS_EXTRA]), ("number of options", ks, extra[NUM_OPTIONS_EXTRA])):
        diff = shared & (new != old[pos])
        if bool(diff.any()):
            out.append(f"{int(diff.sum())} of {int(shared.sum())} training prompts have a different {name}")
    return out


def check_resume(path: str, problems: list[str]) -> None:
    """Refuse to resume on targets made under other settings or golds (``problems`` non-empty)."""
    if problems:
        raise ValueError(
            f"{path} holds calibration targets made under other settings or answers than this run's: "
            + "; ".join(problems) + ". Resuming would mix them with the new ones. Either resume with the settings and "
            "data that checkpoint was trained with, or delete that calib_state.pt to recompute the targets with the "
            "resumed model under the new settings, or start a fresh run (a new output_dir, no resume)."
        )


def resume_problems(extra: Mapping, settings: Any, state_ids: Optional[torch.Tensor] = None, data=None,
                    n_bins: Optional[int] = None, heldout=None) -> list[str]:
    """Every reason the stored state does not fit this run: settings (a state that records none cannot be checked),
    the number of bins ``n_bins`` of its statistics, golds when ``data`` is given, and the held-out target rows
    when ``heldout`` (their ``EStepData``) is given."""
    if SETTINGS_EXTRA not in extra:
        problems = ["it records no settings (written by an older version of the plugin), so whether its targets were "
                    "made under this run's calib_* settings cannot be checked"]
    else:
        problems = settings_changes(extra, settings)
    want_bins = getattr(settings, "calib_bins", None)
    if n_bins is not None and want_bins is not None and int(n_bins) != int(want_bins):
        problems.append(f"calib_bins: its targets come from {n_bins} bins, this run has calib_bins: {want_bins}")
    if data is not None and state_ids is not None:
        problems += golds_changes(extra, state_ids, torch.from_numpy(data.sample_id),
                                  torch.from_numpy(data.answer_idx), torch.from_numpy(data.num_options))
    if heldout is not None:
        problems += heldout_changes(extra, heldout)
    return problems


# ---------------------------------------------------------------------------------- the resumed training data
def data_changed_error(path: str, n_stale: int, n_targets: int, n_missing: int | None = None,
                       n_prompts: int | None = None) -> ValueError:
    """The one message for training data that is not the data ``path`` was trained on: ``n_stale`` of its
    ``n_targets`` targets have no prompt left (and, when known, ``n_missing`` of ``n_prompts`` prompts no target)."""
    found = [f"{n_missing} of {n_prompts} training prompts have no target in it"] if n_prompts is not None else []
    found.append(f"{n_stale} of its {n_targets} targets belong to prompts that are no longer in the data")
    return ValueError(
        f"the training data changed since {path} was written: {' and '.join(found)}. Either resume with the data "
        "that checkpoint was trained on (the same files and dataset_prepared_path), or delete that calib_state.pt to "
        "recompute the targets for the new data with the resumed model, or start a fresh run (a new output_dir, "
        "no resume)."
    )


def check_same_data(em_state: EMState, path: str, settings: Any, data: EStepData, heldout=None) -> None:
    """Stop before the first step when the training data ``data`` is not the data the checkpoint was trained on
    (prompts added or gone, other golds or option counts), the target settings changed, or (``heldout``: this run's
    held-out target rows) the held-out rows its targets were made from changed."""
    ids = torch.unique(torch.from_numpy(data.sample_id))
    missing = ids[~torch.isin(ids, em_state.sample_ids)]
    stale = em_state.sample_ids[~torch.isin(em_state.sample_ids, ids)]
    if missing.numel() or stale.numel():
        raise data_changed_error(path, stale.numel(), em_state.sample_ids.numel(), missing.numel(), ids.numel())
    check_resume(path, resume_problems(em_state.extra, settings, em_state.sample_ids, data, em_state.n_bins, heldout))


def _resume_checkpoint(cfg) -> Optional[str]:
    """The checkpoint Axolotl will resume from (``resume_from_checkpoint``, else with
    ``auto_resume_from_checkpoints`` the highest ``output_dir/checkpoint-N``), without changing ``cfg``."""
    from transformers.trainer_utils import get_last_checkpoint

    ckpt = cfg.get("resume_from_checkpoint")
    if ckpt:
        return str(ckpt)
    if cfg.get("auto_resume_from_checkpoints") and cfg.get("output_dir") and os.path.isdir(cfg["output_dir"]):
        return get_last_checkpoint(cfg["output_dir"])
    return None


def _prepared_sample_ids(cfg) -> Optional[torch.Tensor]:
    """Sample ids of the prepared (tokenized) training data Axolotl saved for this config, or None when it
    cannot be found (no prepared-data folder, streaming data, another Axolotl layout)."""
    try:
        from axolotl.utils.data.shared import generate_dataset_hash_from_config, get_prepared_dataset_path
        from datasets import load_from_disk

        tokenizer = cfg.get("tokenizer_config") or cfg.get("base_model_config") or cfg.get("base_model")
        path = get_prepared_dataset_path(cfg, generate_dataset_hash_from_config(cfg, cfg.get("datasets"), tokenizer))
        if not os.path.isdir(path):
            return None
        ds = load_from_disk(str(path))
        return torch.unique(torch.from_numpy(EStepData(ds).sample_id)) if "calib_sample_id" in ds.column_names else None
    except Exception as e:  # the early check is a convenience: the same check runs when training starts
        from axolotl.utils.logging import get_logger

        get_logger(__name__).debug("calib: prepared data not found for the early resume check (%s)", e)
        return None


def check_resume_state_early(cfg) -> None:
    """Before the model loads: read the resumed checkpoint's ``calib_state.pt`` (a corrupted file fails here,
    naming it) and check that every prompt it has a target for is still in the prepared training data (an
    edit of the data shows here; rows only ADDED, and data Axolotl did not save, show at the first step)."""
    ckpt = _resume_checkpoint(cfg)
    path = os.path.join(ckpt, STATE_FILE) if ckpt else None
    if not path or not os.path.isfile(path):
        return
    state = EMState.load(path)
    from .args import CalibrationArgs

    # settings: before the model loads
    check_resume(path, resume_problems(state.extra, CalibrationArgs.from_cfg(cfg), n_bins=state.n_bins))
    ids = _prepared_sample_ids(cfg)
    if ids is None:
        return
    stale = state.sample_ids[~torch.isin(state.sample_ids, ids)]
    if stale.numel():
        raise data_changed_error(path, stale.numel(), state.sample_ids.numel())
