"""Config schema of the calibration plugin: the top-level ``calib_*`` keys and their checks.

Axolotl merges this model into its own config model by multiple inheritance (see
``axolotl.integrations.config.merge_input_args``), so the ``mode="before"`` validators below see
the WHOLE raw config dict, like ``integrations/liger/args.py`` and ``cut_cross_entropy/args.py``.
That is what lets us (a) reject misspelled ``calib_*`` keys, which Axolotl would otherwise drop
silently, (b) expand the ``cft`` / ``rcft`` presets, and (c) keep Axolotl's ``train_on_inputs``
in sync with ``calib_sft_scope``.

The validators are no-ops for configs that do not list the plugin: the ``PluginManager`` is a
process-wide singleton, so once registered our model is merged into every later config of the
same process (tests, notebooks).
"""

from __future__ import annotations

import difflib
from typing import Any, Literal, Mapping

from pydantic import BaseModel, Field, field_validator, model_validator

from ..eval.evaluation import as_list, check_limit
from ..prompts import DEFAULT_LETTERS, check_option_letters

#: the dotted name users put under ``plugins:`` (``axolotl_calib_plugin.plugin.CalibrationPlugin`` also works).
PLUGIN_NAME = "axolotl_calib_plugin.CalibrationPlugin"
#: the dataset ``type:`` of our MCQ strategy (``axolotl_calib_plugin.mcq.load`` is the same loader).
DATASET_TYPE = "axolotl_calib_plugin.mcq"

#: preset -> (calib_sft_scope, calib_lambda) used for the keys the user left unset.
MODE_PRESETS: dict[str, tuple[str, float]] = {
    "cft": ("answer", 1.0),
    "rcft": ("prompt_and_answer", 1.0),
}
#: largest calib_lambda accepted: the paper uses 1; far above it the ECE term swamps the SFT loss and a
#: half-precision loss overflows, which Axolotl then reports as a learning-rate / fp16 problem.
MAX_LAMBDA = 1000.0
#: default of calib_bin_accuracy (``auto``: held-out rows when the config has an MCQ eval split); see study/heldout.md
DEFAULT_BIN_ACCURACY = "auto"
#: default calib_first_estep_fraction of an online run: its first E-step measures 10 % of the prompts (see the
#: plugin README, "The first E-step"); exact runs measure them all, as Algorithm 1 does
ONLINE_FIRST_ESTEP_FRACTION = 0.1
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


def _get(obj: Any, key: str) -> Any:
    """Read ``key`` from a dict, a DictDefault or a pydantic dataset model alike."""
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


class CalibrationArgs(BaseModel):
    """Input args of the calibration plugin (all top-level, all prefixed ``calib_``)."""

    calib_mode: Literal["cft", "rcft"] = Field(
        default="cft",
        json_schema_extra={
            "description": "Preset. cft: SFT loss on the answer only (calib_sft_scope=answer) + calib_lambda*ECE; "
            "rcft: SFT loss on prompt and answer (calib_sft_scope=prompt_and_answer) + calib_lambda*ECE. "
            "Both presets use calib_lambda=1.0. Keys set explicitly override the preset."
        },
    )
    calib_lambda: float | None = Field(
        default=None,
        ge=0.0,
        le=MAX_LAMBDA,
        allow_inf_nan=False,
        json_schema_extra={"description": "Weight of the ECE term. Default from calib_mode (1.0). 0 = plain SFT."},
    )
    calib_sft_scope: Literal["answer", "prompt_and_answer"] | None = Field(
        default=None,
        json_schema_extra={
            "description": "Tokens the SFT (cross-entropy) loss covers. Default from calib_mode. Sets Axolotl's "
            "train_on_inputs (answer -> false, prompt_and_answer -> true); a contradicting train_on_inputs is an error."
        },
    )
    calib_bins: int = Field(
        default=10, ge=2, json_schema_extra={"description": "Number M of equal-width confidence bins of the E-step."}
    )
    calib_refresh: Literal["epoch"] | int = Field(
        default="epoch",
        json_schema_extra={
            "description": "When the E-step/M-step refresh the targets: 'epoch' (start of every epoch) or every N optimizer steps."
        },
    )
    calib_ece_loss: Literal["mse", "kl"] = Field(
        default="mse",
        json_schema_extra={
            "description": "Distance between the targets p(x) and the model's option distribution: squared error or KL(p || model)."
        },
    )
    calib_nonmax_split: Literal["proportional", "uniform", "reference"] = Field(
        default="proportional",
        json_schema_extra={
            "description": "How the M-step splits 1 - q_m over the non-argmax options: proportional to the model's own "
            "non-max probabilities, uniformly, or as the authors' reference code (tanh re-weighting)."
        },
    )
    calib_option_letters: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LETTERS),
        json_schema_extra={
            "description": "Option labels in order (a K-option row uses the first K). Each must be ONE token after "
            "the prompt for this tokenizer. A string such as 'ABCD' is split into characters."
        },
    )
    calib_prompt_format: Literal["plain", "chat_template"] = Field(
        default="plain",
        json_schema_extra={
            "description": "plain: '<question>\\nA. ..\\nAnswer:' + ' A' (lm-eval MMLU format); chat_template: the same "
            "prompt as the user turn, the bare letter as the assistant turn (Axolotl's chat_template / the tokenizer's)."
        },
    )
    calib_system_prompt: str | None = Field(
        default=None,
        json_schema_extra={"description": "Optional system turn (chat_template format only)."},
    )
    calib_bin_accuracy: Literal["auto", "train", "heldout"] = Field(
        default=DEFAULT_BIN_ACCURACY,
        json_schema_extra={
            "description": "Where the M-step's per-bin accuracy q_m comes from. train: the training rows themselves "
            "(Algorithm 1). heldout: the eval split's rows (test_datasets, or val_set_size held out of the training "
            "file), binned by the same model's confidence -- a model that memorised its training rows is calibrated "
            "on them and over-confident elsewhere, and only held-out rows show it. Bins with few held-out rows are "
            "shrunk toward the training-row accuracy (calib_heldout_prior). auto: heldout when the config has an "
            "MCQ eval split, else train."
        },
    )
    calib_targets: Literal["bin", "temperature"] = Field(
        default="bin",
        json_schema_extra={
            "description": "Target of each training row. bin: its argmax option gets q of its bin (Algorithm 1). "
            "temperature: softmax(log pi_i / T) with T fitted by NLL on the eval split's rows at every refresh (keeps "
            "the ranking inside a bin; use with calib_ece_loss: kl). Needs an eval split."
        },
    )
    calib_heldout_prior: float = Field(
        default=10.0,
        ge=0.0,
        allow_inf_nan=False,
        json_schema_extra={
            "description": "Pseudo-count kappa of calib_bin_accuracy: heldout: q_m = (n_m acc_m + kappa q_train_m) / "
            "(n_m + kappa) with n_m held-out rows in bin m; a bin with no held-out row uses q_train_m."
        },
    )
    calib_target_fraction: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        json_schema_extra={
            "description": "With a held-out M-step (calib_bin_accuracy: heldout or calib_targets: temperature): the "
            "share of the eval split's prompts that set the targets (chosen by sample id, the same rows every time). "
            "Only the other prompts are reported as held-out (eval_calib/*); the target rows are logged as "
            "eval_calib_fit/*, a diagnostic of the fit. 1: every eval row sets targets and no eval_calib/* is logged "
            "(report held-out calibration on another file, e.g. calib_eval_data_files)."
        },
    )
    calib_estep_batch_size: int = Field(
        default=8, ge=1, json_schema_extra={"description": "Batch size of the E-step inference pass."}
    )
    calib_estep: Literal["exact", "online"] = Field(
        default="exact",
        json_schema_extra={
            "description": "exact: every refresh runs a forward pass over all training prompts (Algorithm 1). online: "
            "refreshes after the first reuse the option probabilities the training forwards already computed (no "
            "extra forward; probabilities from a model that moved during the interval, samples not seen since the "
            "last refresh keep their target)."
        },
    )
    calib_first_estep_fraction: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        json_schema_extra={
            "description": "Fraction of the training prompts the first E-step (before step 1) runs its forward over. 1: "
            "every prompt (Algorithm 1). Below 1: a random subset (seeded by `seed`) gets fixed targets; every other "
            "prompt's epoch-0 target comes from its live option probabilities at its training step, binned by its live "
            "confidence, with each bin's accuracy from running statistics of the training forwards (started from the "
            "measured subset); the next refresh measures every prompt. Needs calib_bin_accuracy: train and "
            "calib_targets: bin. Unset: 0.1 with calib_estep: online and those two, else 1 (a first E-step then costs "
            "~0.03 of an epoch instead of ~0.3)."
        },
    )
    calib_eval_plots: bool = Field(
        default=False,
        json_schema_extra={
            "description": "Write a reliability diagram of the eval split at every evaluation "
            "(output_dir/calibration_eval/reliability_eval_step<N>.png) and log it as an image to TensorBoard / W&B."
        },
    )
    calib_field_question: str = Field(default="question", json_schema_extra={"description": "Dataset column of the question."})
    calib_field_choices: str = Field(
        default="choices", json_schema_extra={"description": "Dataset column of the list of choices."}
    )
    calib_field_answer: str = Field(
        default="answer",
        json_schema_extra={"description": "Dataset column of the answer: 0-based index, letter, or the choice text."},
    )
    calib_answer_format: Literal["auto", "index", "letter", "text"] = Field(
        default="auto",
        json_schema_extra={
            "description": "How answers are written. auto: an int is the 0-based index; a string may be an index "
            "(\"2\"), a letter (\"C\") or a choice's text, and one that names two different options (\"3\" when "
            "choice A's text is \"3\") is an error. index / letter / text: read every answer that one way (text "
            "reads an int as its decimal text). Same rules as the lm-eval metadata answer_format."
        },
    )
    # -- baselines and the post-training calibration report (report_hook.py); checked before training
    calib_label_smoothing: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        json_schema_extra={
            "description": "Label smoothing factor of the SFT cross-entropy (HF TrainingArguments.label_smoothing_factor), "
            "the paper's LS baseline with calib_lambda: 0. Unset or 0 = off."
        },
    )
    calib_eval_tasks: list[str] | None = Field(
        default=None,
        json_schema_extra={
            "description": "axolotl-calib lm-eval tasks evaluated on the saved model after training, e.g. "
            "[calib_in_domain_pooled, calib_arc_challenge]; writes output_dir/calibration_report.{md,json} and "
            "reliability PNGs and logs test_calib/<task>/<metric>. Main process only."
        },
    )
    calib_eval_batch_size: int = Field(
        default=8, ge=1, json_schema_extra={"description": "Batch size of the post-training lm-eval run."}
    )
    calib_eval_limit: int | float | None = Field(
        default=None,
        json_schema_extra={"description": "lm-eval --limit of the report: first N questions per task (int >= 1), or a fraction in (0, 1)."},
    )
    calib_eval_data_dir: str | None = Field(
        default=None,
        json_schema_extra={
            "description": "Folder of local <task>.jsonl files (each in its hub schema) read instead of the hub by the "
            "report's tasks (lm-eval metadata calib_data_dir)."
        },
    )
    calib_eval_data_files: list[str] | None = Field(
        default=None,
        json_schema_extra={"description": "MCQ JSONL file(s) ({question, choices, answer}) of the calib_jsonl task."},
    )
    calib_eval_ood_data_files: list[str] | None = Field(
        default=None,
        json_schema_extra={"description": "MCQ JSONL file(s) of the calib_jsonl_ood task (a second, out-of-domain set)."},
    )

    # ------------------------------------------------------------------ field checks
    @field_validator("calib_eval_tasks", "calib_eval_data_files", "calib_eval_ood_data_files", mode="before")
    @classmethod
    def _comma_list(cls, value):
        return as_list(value) if isinstance(value, str) else value

    @field_validator("calib_eval_limit", mode="before")
    @classmethod
    def _check_eval_limit(cls, value):
        return check_limit(value)

    @field_validator("calib_refresh", mode="before")
    @classmethod
    def _check_refresh(cls, value):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if value == "epoch" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise ValueError(f"calib_refresh must be 'epoch' or a positive integer number of optimizer steps, got {value!r}")

    @field_validator("calib_first_estep_fraction", mode="before")
    @classmethod
    def _check_fraction(cls, value):
        if isinstance(value, bool):  # YAML `true` would read as 1.0: say what the key wants instead
            raise ValueError(f"calib_first_estep_fraction is a number in (0, 1] (the share of prompts the first E-step "
                             f"measures; 1 = all), got {value!r}")
        return value

    @field_validator("calib_target_fraction", mode="before")
    @classmethod
    def _check_target_fraction(cls, value):
        if isinstance(value, bool):  # YAML `true` would read as 1.0
            raise ValueError(f"calib_target_fraction is a number in (0, 1] (the share of eval prompts that set the "
                             f"targets; the rest are reported as held-out), got {value!r}")
        return value

    @field_validator("calib_option_letters", mode="before")
    @classmethod
    def _check_letters(cls, value):
        return check_option_letters(value)

    # ------------------------------------------------------------------ whole-config checks
    @model_validator(mode="before")
    @classmethod
    def check_calib_config(cls, data):
        """Reject typos, expand presets and sync ``train_on_inputs`` (only when the plugin is listed)."""
        if not isinstance(data, dict):
            return data
        for key in [k for k in CalibrationArgs.model_fields if k in data and data[k] is None]:
            del data[key]  # `key: null` means unset (Axolotl's convention), so the default applies
        listed = is_plugin_listed(data.get("plugins"))
        calib_keys = sorted(k for k, v in data.items() if isinstance(k, str) and k.lower().startswith("calib")
                            and v is not None)
        if not listed:
            # Merged into a config that lists other plugins only (singleton manager): our keys there
            # mean the user forgot us. Without a `plugins` key this is CalibrationArgs(**...) itself.
            if calib_keys and "plugins" in data:
                raise ValueError(plugin_missing_message(calib_keys))
            return data
        _check_unknown_keys(cls, data)
        _expand_presets(data)
        _check_incompatible(data)
        _resolve_bin_accuracy(data)
        _check_first_estep(data)
        _check_heldout_source(data)
        _check_heldout_prior(data)
        _check_eval_report(data)
        _check_local_data_files(data)
        return data

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> "CalibrationArgs":
        """The resolved calibration settings of an (already validated or raw) Axolotl cfg.

        Works on cfgs that never went through the merged schema (unit tests, scripts): the
        presets are expanded here too, and the cfg itself is not modified.
        """
        cfg = cfg or {}
        data = {k: cfg[k] for k in cfg if isinstance(k, str) and k.startswith("calib") and cfg[k] is not None}
        if cfg.get("train_on_inputs") is not None:
            data["train_on_inputs"] = cfg.get("train_on_inputs")
        _check_unknown_keys(cls, data, allowed={"train_on_inputs"})
        _expand_presets(data)
        data.pop("train_on_inputs", None)
        _resolve_bin_accuracy(data, split_source=cfg)
        return cls(**data)

    @property
    def train_on_inputs(self) -> bool:
        return SCOPE_TO_TRAIN_ON_INPUTS[self.calib_sft_scope or MODE_PRESETS[self.calib_mode][0]]


# ---------------------------------------------------------------------- config diagnostics
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


# ---------------------------------------------------------------------- helpers (pure, on the raw dict)
def calib_field_names() -> list[str]:
    return list(CalibrationArgs.model_fields)


def plugin_missing_message(calib_keys: list[str]) -> str:
    return (
        f"the config sets {', '.join(calib_keys)} but `plugins:` does not list {PLUGIN_NAME}. Without the plugin "
        "Axolotl silently drops these keys and trains plain SFT. Add\n  plugins:\n    - " + PLUGIN_NAME
    )


def _check_unknown_keys(cls, data: dict, allowed: set[str] = frozenset()) -> None:
    """Fail on ``calib*`` keys (or near-misses such as ``calb_lambda``) that are not our fields."""
    ours = calib_field_names()
    known = set(cls.model_fields) | set(allowed)
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


def _expand_presets(data: dict) -> None:
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


def _check_eval_report(data: dict) -> None:
    """calib_eval_* keys and lm_eval_tasks naming our tasks: checked now, not after hours of training."""
    from .report_hook import check_eval_config

    check_eval_config(data)


def _check_local_data_files(data: dict) -> None:
    """Reject an empty local data file of a calibration dataset now: HF datasets fails on it later with a
    bare ``StopIteration`` (or "corresponds to no data") that names no file."""
    import os

    from ..rows import check_data_file, read_jsonl_records

    for key in ("datasets", "test_datasets"):
        for ds in data.get(key) or []:
            if not is_calib_dataset_type(_get(ds, "type")):
                continue
            path, files = _get(ds, "path"), _get(ds, "data_files")
            candidates = [path] if isinstance(path, str) else []
            if isinstance(path, str) and os.path.isdir(path) and files:  # Axolotl reads data_files as given
                candidates = [files] if isinstance(files, str) else [f for f in files if isinstance(f, str)]
            for f in candidates:
                if os.path.isfile(f):
                    check_data_file(f, key)
                    if key == "datasets" and _is_json_lines(f, _get(ds, "ds_type")):
                        read_jsonl_records(f)  # a bad line: file and 1-based line now, not DatasetGenerationError later
    others = [i for i, ds in enumerate(data.get("test_datasets") or []) if not is_calib_dataset_type(_get(ds, "type"))]
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
    return has_val, [ds for ds in test_sets if is_calib_dataset_type(_get(ds, "type"))], test_sets


def _resolve_bin_accuracy(data: dict, split_source: Mapping | None = None) -> None:
    """``calib_bin_accuracy: auto`` (or unset while the default is auto) -> heldout when the config has an MCQ eval
    split (val_set_size > 0 or a calibration-type test_datasets entry), else train."""
    if (data.get("calib_bin_accuracy") or DEFAULT_BIN_ACCURACY) != "auto":
        return
    has_val, calib_tests, _ = _eval_split(split_source if split_source is not None else data)
    data["calib_bin_accuracy"] = "heldout" if (has_val or calib_tests) else "train"


def _check_first_estep(data: dict) -> None:
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


def _check_heldout_source(data: dict) -> None:
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


def _check_heldout_prior(data: dict) -> None:
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


def _check_incompatible(data: dict) -> None:
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
    others = [(i, _get(ds, "type")) for i, ds in enumerate(datasets) if not is_calib_dataset_type(_get(ds, "type"))]
    if others:
        listing = ", ".join(f"datasets[{i}] type: {t}" for i, t in others)
        raise ValueError(
            f"with the calibration plugin every training dataset needs `type: {DATASET_TYPE}` (it emits the answer "
            f"position and gold option the loss needs, and Axolotl can only merge datasets with the same columns); "
            f"got {listing}"
        )
