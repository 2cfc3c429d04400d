"""What a training row and a target depend on, so that a cache or a checkpoint made under other settings
or other data is never reused silently.

* Prepared-data cache: Axolotl reuses ``dataset_prepared_path/<hash>`` when the hash of its own config
  fields matches; ``calib_*`` keys and the data files' contents are not among them. :func:`install_dataset_hash`
  (the plugin's ``load_datasets`` hook, before Axolotl loads anything) adds :data:`HASH_KEY` to the config
  fields Axolotl hashes and sets it to :func:`row_fingerprint`: a changed key or an edited file gives a
  new prepared folder (the old one is left alone).
* Resume: each refresh stores :func:`target_settings` and every prompt's gold option and K in
  ``EMState.extra``; :func:`resume_problems` compares them with the resumed run's, and the callback
  refuses to mix (:func:`check_resume`).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Optional

import torch

#: settings that change a tokenized training row (prompt, answer position, gold).
ROW_KEYS = ("calib_option_letters", "calib_prompt_format", "calib_system_prompt", "calib_answer_format",
            "calib_field_question", "calib_field_choices", "calib_field_answer", "calib_sft_scope")
#: settings that change a target or what it is compared with; append new target-shaping keys here.
TARGET_KEYS = ROW_KEYS + ("calib_bins", "calib_nonmax_split", "calib_ece_loss", "calib_bin_accuracy", "calib_targets",
                          "calib_heldout_prior")
#: bumped when the strategy turns the same row into different tokens or golds (a new rule in rows.py / mcq.py).
ROW_RULES_VERSION = 2
#: the config key (set by the plugin, hashed by Axolotl) that carries :func:`row_fingerprint`.
HASH_KEY = "axolotl_calib_rows_digest"  # not calib_*: from_cfg would take it for a typo
SETTINGS_EXTRA, GOLDS_EXTRA, NUM_OPTIONS_EXTRA = "target_settings", "golds", "num_options"


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


def resume_problems(extra: Mapping, settings: Any, state_ids: Optional[torch.Tensor] = None, data=None) -> list[str]:
    """Every reason the stored state does not fit this run (settings; golds when ``data`` is given)."""
    problems = settings_changes(extra, settings)
    if data is not None and state_ids is not None:
        problems += golds_changes(extra, state_ids, torch.from_numpy(data.sample_id),
                                  torch.from_numpy(data.answer_idx), torch.from_numpy(data.num_options))
    return problems
