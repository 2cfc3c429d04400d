"""The row contract's settings half: what training records so that every evaluation builds its rows.

Training (:class:`axolotl_calib_plugin.train.callbacks`) writes :data:`SETTINGS_FILE` into its output_dir:
the option letters, answer format and field names (:data:`ROW_METADATA`, the lm-eval task metadata of
``lm_eval_tasks/calib/utils.py``), the prompt format and system prompt, and the ``add_bos_token`` rule
(:func:`axolotl_calib_plugin.encoding.training_add_bos_token`). ``axolotl-calib eval`` / ``diagnose``, the
post-training report and ``reproduce`` read it back (:func:`read_settings`) and refuse flags that contradict it
(:func:`check_trained_row_settings`): a model scored with other letters or another prompt format is scored on
another task. Imports only the shared core: neither train/ nor eval/.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, NamedTuple

from .encoding import training_add_bos_token
from .prompts import DEFAULT_LETTERS, check_option_letters
from .rows import ANSWER_FORMATS

__all__ = ["ROW_METADATA", "SETTINGS_FILE", "SettingsError", "TrainedRowSettings", "check_trained_row_settings",
           "read_settings", "row_metadata", "settings_source", "training_settings"]

#: training key -> lm-eval task metadata key (lm_eval_tasks/calib/utils.py), with the training default.
ROW_METADATA = {"calib_option_letters": ("option_letters", None), "calib_answer_format": ("answer_format", "auto"),
                "calib_field_question": ("question_field", "question"),
                "calib_field_choices": ("choices_field", "choices"), "calib_field_answer": ("answer_field", "answer")}

#: what ``axolotl-calib eval`` reads to score a model as it was trained (written by the training callback).
SETTINGS_FILE = "calib_settings.json"


def row_metadata(cfg: Mapping) -> dict:
    """The lm-eval metadata that makes the tasks build rows as training did (letters, answer format, fields)."""
    out = {meta: cfg.get(key) if cfg.get(key) is not None else default for key, (meta, default) in ROW_METADATA.items()}
    out["option_letters"] = check_option_letters(out["option_letters"] or list(DEFAULT_LETTERS))
    return out


def training_settings(settings, tokenizer=None) -> dict:
    """The contents of :data:`SETTINGS_FILE`: row metadata plus the prompt format, system prompt and, given the
    training tokenizer, ``add_bos_token`` (:func:`axolotl_calib_plugin.encoding.training_add_bos_token`:
    whether lm-eval adds the tokenizer's special tokens, so every route scores training's token sequence)."""
    cfg = {k: getattr(settings, k, None) for k in ROW_METADATA}
    out = {**row_metadata(cfg), "prompt_format": settings.calib_prompt_format,
           "system_prompt": settings.calib_system_prompt}
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a multimodal processor carries its tokenizer
    if tokenizer is not None:
        try:
            out["add_bos_token"] = training_add_bos_token(tokenizer, settings.calib_prompt_format == "chat_template")
        except (ValueError, TypeError):  # no rule lm-eval can follow: every evaluation route refuses and says why
            pass
    return out


class SettingsError(ValueError):
    """A ``calib_settings.json`` that cannot be used, or flags that contradict it: the message names the file, the
    key and what to do."""


#: key -> (accepted types, what the value must be), for every key :func:`training_settings` writes.
_SETTINGS_TYPES = {"option_letters": ((list,), "a list of option letters"),
                   "answer_format": ((str,), "one of auto, index, letter, text"),
                   "question_field": ((str,), "a column name"), "choices_field": ((str,), "a column name"),
                   "answer_field": ((str,), "a column name"),
                   "prompt_format": ((str,), "plain or chat_template"),
                   "system_prompt": ((str, type(None)), "a string or null"),
                   "add_bos_token": ((bool,), "true or false")}


def read_settings(folder: str) -> dict | None:
    """The checked contents of ``folder``'s :data:`SETTINGS_FILE` (None when there is none).

    The file is written by training; an edited or damaged one is refused with the file, the key and the remedy
    (rather than scoring with letters it never trained on, or failing later with a message about the data).
    """
    path = os.path.join(folder, SETTINGS_FILE)
    if not os.path.exists(path):
        return None
    fix = (f"it is written by training (the calibration plugin): restore it from the training output_dir or a "
           f"checkpoint, or delete it and pass the settings as flags")
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as e:  # a folder of that name, no permission
        raise SettingsError(f"{path}: cannot be read ({e}); {fix}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise SettingsError(f"{path}: not valid JSON ({e}); {fix}") from None
    if not isinstance(doc, dict):
        raise SettingsError(f"{path}: expected a JSON object, got {type(doc).__name__}; {fix}")
    for key, (types, what) in _SETTINGS_TYPES.items():
        if key in doc and not isinstance(doc[key], types):
            raise SettingsError(f"{path}: {key} must be {what}, got {type(doc[key]).__name__} {doc[key]!r}; {fix}")
    try:
        if "option_letters" in doc:
            doc["option_letters"] = check_option_letters(doc["option_letters"], "option_letters")
    except ValueError as e:
        raise SettingsError(f"{path}: {e}; {fix}") from None
    if "answer_format" in doc and doc["answer_format"] not in ANSWER_FORMATS:
        raise SettingsError(f"{path}: answer_format must be one of {list(ANSWER_FORMATS)}, got {doc['answer_format']!r}; "
                            f"{fix}")
    if doc.get("prompt_format", "plain") not in ("plain", "chat_template"):
        raise SettingsError(f"{path}: prompt_format must be plain or chat_template, got {doc['prompt_format']!r}; {fix}")
    return doc


def settings_source(model: str, settings_from: str | None = None) -> tuple[str, dict | None]:
    """(folder, checked calib_settings.json contents or None) of the model being scored: ``settings_from``, else
    the model folder. A folder without one inside a folder that has one (``axolotl merge-lora`` writes
    ``<output_dir>/merged``) is refused, pointing at ``--settings-from``: scoring it with default letters and
    format would score another task than the one it was trained on."""
    folder = settings_from or model
    trained = read_settings(folder) if os.path.isdir(folder) else None
    parent = os.path.dirname(os.path.abspath(model))
    if trained is None and not settings_from and os.path.isdir(model) and read_settings(parent) is not None:
        raise SettingsError(
            f"{model} has no {SETTINGS_FILE}, but {parent} (a calibration-plugin training output_dir) has one: "
            f"this looks like `axolotl merge-lora` output of that run, which does not copy it. Pass --settings-from "
            f"{parent} to score it with the letters and prompt format it was trained with (or --settings-from "
            f"{model} if it was not trained with those)")
    return folder, trained


class TrainedRowSettings(NamedTuple):
    """What :func:`check_trained_row_settings` found: the tasks' row metadata, the recorded lm-eval
    ``add_bos_token`` (None: none recorded) and the settings file it came from (None: flags and defaults)."""

    task_metadata: dict
    add_bos_token: bool | None
    settings_file: str | None


def check_trained_row_settings(model: str, *, settings_from: str | None = None, option_letters: str | None = None,
                               apply_chat_template: bool = False,
                               system_instruction: str | None = None) -> TrainedRowSettings:
    """Letters / answer format / fields for the tasks: the model folder's calib_settings.json (written by training;
    ``settings_from`` names another folder), else ``option_letters`` (the ``--option-letters`` flag); a flag that
    contradicts what the model was trained with is refused (:class:`SettingsError`), naming both."""
    folder, trained = settings_source(model, settings_from)
    try:
        flag = check_option_letters(option_letters, "--option-letters") if option_letters else None
    except ValueError as e:
        raise SettingsError(str(e)) from None
    if trained is None:
        return TrainedRowSettings(row_metadata({"calib_option_letters": flag}), None, None)
    meta = {k: trained[k] for k in row_metadata({}) if k in trained}
    problems = []
    if flag is not None and flag != meta.get("option_letters"):
        problems.append(f"--option-letters {','.join(flag)} but it was trained with calib_option_letters "
                        f"{meta.get('option_letters')} (drop the flag)")
    chat = trained.get("prompt_format") == "chat_template"
    if chat != bool(apply_chat_template):
        problems.append(f"it was trained with calib_prompt_format: {trained.get('prompt_format')} but this evaluation "
                        f"{'scores plain prompts (add --apply-chat-template)' if chat else 'applies the chat template (drop --apply-chat-template)'}")
    elif chat and (trained.get("system_prompt") or None) != (system_instruction or None):
        problems.append(f"it was trained with calib_system_prompt {trained.get('system_prompt')!r} but "
                        f"--system-instruction is {system_instruction!r}")
    if problems:
        raise SettingsError(f"{folder} ({SETTINGS_FILE}): " + "; ".join(problems) + ". Scoring other prompts than "
                            "the model was trained on gives numbers for a different task.")
    return TrainedRowSettings(meta, trained.get("add_bos_token"), os.path.join(folder, SETTINGS_FILE))
