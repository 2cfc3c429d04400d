"""Config schema of the calibration plugin: the top-level ``calib_*`` keys, their defaults and per-key checks.

Axolotl merges this model into its own config model by multiple inheritance (see
``axolotl.integrations.config.merge_input_args``), so the ``mode="before"`` validator below sees
the WHOLE raw config dict, like ``integrations/liger/args.py`` and ``cut_cross_entropy/args.py``.
It hands that dict to :mod:`~axolotl_calib_plugin.train.config_checks`, which rejects misspelled
``calib_*`` keys (Axolotl would otherwise drop them silently), expands the ``cft`` / ``rcft`` presets,
keeps Axolotl's ``train_on_inputs`` in sync with ``calib_sft_scope`` and refuses settings that would
make the calibration wrong.

The validator is a no-op for configs that do not list the plugin: the ``PluginManager`` is a
process-wide singleton, so once registered our model is merged into every later config of the
same process (tests, notebooks). Axolotl loads this class by its dotted path
(``CalibrationPlugin.get_input_args``), so it stays ``axolotl_calib_plugin.train.args.CalibrationArgs``.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from ..eval.evaluation import as_list, check_limit
from ..prompts import DEFAULT_LETTERS, check_option_letters
from .config_checks import (
    DEFAULT_BIN_ACCURACY,
    MODE_PRESETS,
    SCOPE_TO_TRAIN_ON_INPUTS,
    check_listed_config,
    check_unknown_keys,
    expand_presets,
    is_plugin_listed,
    plugin_missing_message,
    resolve_bin_accuracy,
)

#: largest calib_lambda accepted: the paper uses 1; far above it the ECE term swamps the SFT loss and a
#: half-precision loss overflows, which Axolotl then reports as a learning-rate / fp16 problem.
MAX_LAMBDA = 1000.0
#: default calib_first_estep_fraction of an online run: its first E-step measures 10 % of the prompts (see the
#: plugin README, "The first E-step"); exact runs measure them all, as Algorithm 1 does
ONLINE_FIRST_ESTEP_FRACTION = 0.1


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

    @field_validator("calib_lambda", "calib_heldout_prior", "calib_bins", "calib_estep_batch_size",
                     "calib_eval_batch_size", "calib_label_smoothing", mode="before")
    @classmethod
    def _refuse_bool(cls, value, info: ValidationInfo):
        if isinstance(value, bool):  # YAML true / false would read as 1 / 0: a silent lambda 0 is plain SFT
            raise ValueError(f"{info.field_name} is a number, got {value!r} (YAML true/false)")
        return value

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
        check_listed_config(data, list(cls.model_fields))
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
        check_unknown_keys(data, list(cls.model_fields), allowed={"train_on_inputs"})
        expand_presets(data)
        data.pop("train_on_inputs", None)
        resolve_bin_accuracy(data, split_source=cfg)
        return cls(**data)

    @property
    def train_on_inputs(self) -> bool:
        return SCOPE_TO_TRAIN_ON_INPUTS[self.calib_sft_scope or MODE_PRESETS[self.calib_mode][0]]
