"""Dataset strategy ``type: axolotl_calib_plugin.mcq``: MCQ rows -> tokens + the calibration columns.

A row ``{"question": str, "choices": [str, ...], "answer": int | "B" | choice text}`` becomes the
prompt of :func:`axolotl_calib_plugin.prompts.format_mcq_prompt` followed by the gold letter, either
as plain text (``prompt + " " + letter + eos``) or through the chat template (user turn = prompt,
assistant turn = bare letter). Besides ``input_ids`` / ``attention_mask`` / ``labels`` it emits three
per-token int columns (per-token so that they survive sample packing's concatenation):

* ``calib_sample_id``: at ``t*`` (the last prompt token, whose next-token logits predict the
  letter) a stable int63 id of the prompt tokens, ``-1`` elsewhere;
* ``calib_answer_idx``: at ``t*`` the 0-based gold option, ``-1`` elsewhere;
* ``calib_num_options``: at ``t*`` the number K of choices, ``0`` elsewhere.

Every row is checked by :func:`axolotl_calib_plugin.rows.normalize_mcq_row`, the normalizer the
lm-eval tasks use too (same answer rules, same messages). A bad row raises ``CalibDataError``
(``MCQRowError`` is the same class) naming the dataset, the row, the field and what to do; each batch
of 1000 rows is checked whole first, so one error lists all its bad rows. Nothing is skipped
silently, so the loss never trains on a wrong answer position.

Rows longer than ``sequence_len`` are tokenized whole and dropped later by Axolotl
(``excess_length_strategy: drop``); the strategy logs how many per batch, and
:func:`check_rows_left` turns "no row left" into an error naming each dataset's count.

The tokenization itself (plain / chat encoding, the answer position, each letter's token) is
:mod:`axolotl_calib_plugin.encoding`, shared with the evaluation routes. This module does not import axolotl
at import time; :func:`option_token_ids` turns the training settings into the letters' token ids.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Mapping, Sequence

from .args import CalibrationArgs
from .config_checks import check_plugin_registered, is_calib_dataset_type
from .columns import CALIB_COLUMNS, IGNORE_INDEX
from ..encoding import alignment_problem, encode_mcq, letter_token_id, show_tokens
from ..prompts import format_mcq_prompt
from ..rows import CalibDataError, MCQRow, is_csv_source, normalize_mcq_row, raise_row_errors

LOG = logging.getLogger(__name__)
_INT63 = (1 << 63) - 1


#: a dataset row that cannot be turned into a calibration sample: the lm-eval loaders' error class.
MCQRowError = CalibDataError


def json_columns(batch: Any) -> frozenset[str]:
    """Columns that HF ``datasets`` stores as JSON text in this ``map`` batch (a JSON file's column
    whose values mix types); empty when the batch carries no Arrow table (streaming, plain dicts)."""
    table = getattr(batch, "pa_table", None)
    if table is None:
        return frozenset()
    return frozenset(f.name for f in table.schema if "arrow.json" in str(f.type))


# ---------------------------------------------------------------------------------------- pure helpers
def prompt_sample_id(prompt_ids: Sequence[int]) -> int:
    """Stable non-negative int63 id of a prompt: blake2b over its token ids (same prompt, same id)."""
    h = hashlib.blake2b(b",".join(str(int(t)).encode() for t in prompt_ids), digest_size=8)
    return int.from_bytes(h.digest(), "little") & _INT63


def resolve_chat_template(tokenizer, cfg: Mapping | None, ds_cfg: Mapping | None = None) -> str:
    """The chat template Axolotl itself would use (``chat_template`` / ``chat_template_jinja`` of the
    dataset entry, else of the config, else the tokenizer's own)."""
    from axolotl.utils.chat_templates import get_chat_template_from_config

    try:
        return get_chat_template_from_config(cfg=cfg or {}, ds_cfg=ds_cfg, tokenizer=tokenizer)
    except ValueError as exc:
        raise ValueError(
            f"calib_prompt_format: chat_template needs a chat template: {exc}. Set `chat_template:` "
            "(e.g. tokenizer_default, llama3, chatml) or use calib_prompt_format: plain"
        ) from exc


def option_token_ids(tokenizer, settings: CalibrationArgs, num_options: int | None = None, *,
                     cfg: Mapping | None = None) -> list[int]:
    """Token ids of the option letters after ``t*`` for the configured prompt format.

    A K-option row uses the first K. ``num_options`` limits the result (and the single-token
    check) to the first ``num_options`` letters; by default all ``calib_option_letters`` are
    returned. ``cfg`` (the Axolotl config) is read only for the chat template
    (``chat_template``, ``chat_template_jinja``, ``chat_template_kwargs``) when
    ``calib_prompt_format: chat_template``. Raises ``ValueError`` naming the letter when a letter
    is not one token.
    """
    letters = settings.calib_option_letters
    if num_options is not None:
        if num_options > len(letters):
            raise ValueError(f"{num_options} options but calib_option_letters has only {len(letters)}: {letters}")
        letters = letters[:num_options]
    template = resolve_chat_template(tokenizer, cfg) if settings.calib_prompt_format == "chat_template" else None
    kwargs = (cfg or {}).get("chat_template_kwargs")
    ids = [letter_token_id(tokenizer, L, settings.calib_prompt_format, template, settings.calib_system_prompt, kwargs)
           for L in letters]
    if len(set(ids)) != len(ids):
        raise ValueError(f"option letters {letters} map to repeated token ids {ids}")
    return ids


# ---------------------------------------------------------------------------------------- the strategy
class MCQStrategy:
    """Tokenizes MCQ rows (batched, like Axolotl's chat_template strategy)."""

    filter_rows = None
    supports_batched = True

    def __init__(self, tokenizer, settings: CalibrationArgs, *, train_on_inputs: bool, sequence_len: int | None = None,
                 chat_template: str | None = None, chat_template_kwargs: Mapping | None = None,
                 dataset_name: str = "dataset", exact_row_index: bool = True):
        self.tokenizer = tokenizer
        self.settings = settings
        self.train_on_inputs = bool(train_on_inputs)
        self.sequence_len = sequence_len
        self.chat_template = chat_template
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.dataset_name = dataset_name
        self.exact_row_index = exact_row_index
        #: a CSV dataset: its cells have no type, so an int answer is read as text (rows.read_answer)
        self.answer_from_csv = False
        self.rows_seen = 0
        self._letter_ids: list[int] = []
        #: the config-level template the trainer reads the option logits with, when this dataset has its own
        self.trainer_chat_template: str | None = None

    # -- letters are checked lazily so that a 4-option dataset never trips over a bad "J"
    def letter_ids(self, k: int) -> list[int]:
        letters = self.settings.calib_option_letters
        while len(self._letter_ids) < k:
            letter = letters[len(self._letter_ids)]
            tok = letter_token_id(self.tokenizer, letter, self.settings.calib_prompt_format, self.chat_template,
                                  self.settings.calib_system_prompt, self.chat_template_kwargs)
            if self.trainer_chat_template is not None:
                ref = letter_token_id(self.tokenizer, letter, self.settings.calib_prompt_format,
                                      self.trainer_chat_template, self.settings.calib_system_prompt,
                                      self.chat_template_kwargs)
                if ref != tok:
                    raise ValueError(
                        f"option letter {letter!r} is token {tok} under this dataset's chat_template but {ref} under "
                        "the config's chat_template, which the trainer uses to read the option logits; use one "
                        "template for all calibration datasets"
                    )
            self._letter_ids.append(tok)
        return self._letter_ids[:k]

    def _where(self, row_no: int, question: Any) -> str:
        q = str(question if question is not None else "").replace("\n", " ")
        q = q if len(q) <= 60 else q[:57] + "..."
        idx = f"row {row_no}" if self.exact_row_index else f"row {row_no} of a worker shard (set dataset_num_proc: 1 for exact indices)"
        return f"{self.dataset_name}: {idx} (question {q!r})"

    def normalize(self, row: Mapping[str, Any], answer_from_json_column: bool = False) -> MCQRow:
        """The checked row (question, choices, gold) under this config's fields, letters and answer format."""
        s = self.settings
        return normalize_mcq_row(
            row, question_field=s.calib_field_question, choices_field=s.calib_field_choices,
            answer_field=s.calib_field_answer, letters=s.calib_option_letters, answer_format=s.calib_answer_format,
            answer_from_json_column=answer_from_json_column, answer_from_csv=self.answer_from_csv,
        )

    def tokenize_row(self, row: Mapping[str, Any], row_no: int = 0,
                     answer_from_json_column: bool = False) -> dict[str, list[int]]:
        """One raw row -> the tokenized sample with its calibration columns."""
        where = self._where(row_no, row.get(self.settings.calib_field_question))
        try:
            return self._tokenize_row(self.normalize(row, answer_from_json_column))
        except CalibDataError as exc:
            raise CalibDataError(f"{where}: {exc}") from None
        except ValueError as exc:  # letter_token_id / template errors
            raise CalibDataError(f"{where}: {exc}") from exc

    def _tokenize_row(self, mcq: MCQRow) -> dict[str, list[int]]:
        s = self.settings
        letters = s.calib_option_letters
        k, gold = len(mcq.choices), mcq.gold
        letter_ids = self.letter_ids(k)

        prompt = format_mcq_prompt(mcq.question, mcq.choices, letters)
        prompt_ids, full_ids = encode_mcq(self.tokenizer, prompt, letters[gold], s.calib_prompt_format,
                                          self.chat_template, s.calib_system_prompt, self.chat_template_kwargs)
        problem = alignment_problem(self.tokenizer, prompt_ids, full_ids)
        if problem:
            raise CalibDataError(problem)
        t_star = len(prompt_ids) - 1
        if full_ids[t_star + 1] != letter_ids[gold]:
            raise CalibDataError(
                f"the token after the answer position is {show_tokens(self.tokenizer, full_ids[t_star + 1:t_star + 2])}, "
                f"not the gold letter {letters[gold]!r} (id {letter_ids[gold]}): the prompt and the letter merge "
                "into one token for this tokenizer"
            )
        # No truncation here: a row longer than sequence_len is dropped whole by Axolotl later
        # (excess_length_strategy: drop), marker included; `truncate` is rejected in config_checks.py.
        n = len(full_ids)
        labels = list(full_ids) if self.train_on_inputs else [IGNORE_INDEX] * (t_star + 1) + full_ids[t_star + 1:]
        out = {
            "input_ids": full_ids,
            "attention_mask": [1] * n,
            "labels": labels,
        }
        for col, fill in CALIB_COLUMNS.items():
            out[col] = [fill] * n
        out["calib_sample_id"][t_star] = prompt_sample_id(prompt_ids)
        out["calib_answer_idx"][t_star] = gold
        out["calib_num_options"][t_star] = k
        return out

    def tokenize_prompt(self, prompt: Mapping[str, Any]) -> dict[str, list]:
        """``datasets.map`` entry point: a batch (dict of columns) or a single row."""
        s = self.settings
        # a batch holds a list per column; a row's question and answer are never lists (choices may be a string)
        present = [prompt[f] for f in (s.calib_field_question, s.calib_field_answer) if f in prompt]
        if present:
            batched = isinstance(present[0], list)
        else:
            choices = prompt.get(s.calib_field_choices)
            batched = isinstance(choices, list) and bool(choices) and isinstance(choices[0], (list, tuple))
        json_answer = s.calib_field_answer in json_columns(prompt)
        if not batched:
            row = self.tokenize_row(prompt, self.rows_seen, json_answer)
            self.rows_seen += 1
            return row
        n = len(next(iter(prompt.values())))
        first = self.rows_seen
        rows = [{k: v[i] for k, v in prompt.items()} for i in range(n)]
        # every row of the batch is checked before any is tokenized: one error lists all bad rows
        checked, errors = [], []
        for i, row in enumerate(rows):
            try:
                checked.append(self.normalize(row, json_answer))
            except CalibDataError as exc:
                errors.append((self._where(first + i, row.get(s.calib_field_question)), str(exc)))
        raise_row_errors(errors, self.dataset_name,
                         f" among rows {first}..{first + n - 1} (rows after these are checked once they are fixed)")
        out: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "labels", *CALIB_COLUMNS)}
        for i, mcq in enumerate(checked):
            try:
                res = self._tokenize_row(mcq)
            except ValueError as exc:  # alignment / letter / template errors
                raise CalibDataError(f"{self._where(first + i, mcq.question)}: {exc}") from None
            for k in out:
                out[k].append(res[k])
        self.rows_seen += n
        self._log_too_long(out["input_ids"], first)
        return out

    def _log_too_long(self, input_ids: list[list[int]], first: int) -> None:
        """Warn that Axolotl will drop this batch's rows longer than ``sequence_len`` (it logs only a total)."""
        if not self.sequence_len:
            return
        lengths = [len(ids) for ids in input_ids]
        long = [n for n in lengths if n > self.sequence_len]
        if long:
            LOG.warning(
                "%s: %d of rows %d..%d are longer than sequence_len %d tokens (longest %d) and will be dropped by "
                "Axolotl (excess_length_strategy: drop); raise sequence_len to keep them",
                self.dataset_name, len(long), first, first + len(lengths) - 1, self.sequence_len, max(long),
            )


def length_census_lines(cfg, tokenizer, named: list, none_long_note: str = "") -> tuple[list[str], list[int]]:
    """One line per ``(name, dataset config)`` saying how many of its rows are longer than ``sequence_len`` (the
    rows Axolotl's length filter dropped), and the shortest dropped length of each: why a split came out empty."""
    seq_len = cfg.get("sequence_len")
    lines, shortest = [], []
    for name, ds_cfg in named:
        try:
            lengths = _length_census(cfg, tokenizer, ds_cfg)
        except Exception as exc:  # noqa: BLE001 - the census only explains; never hide the real problem
            lines.append(f"{name}: could not be re-read to count its rows ({type(exc).__name__}: {exc})")
            continue
        long = [n for n in lengths if seq_len and n > seq_len]
        if long:
            shortest.append(min(long))
            lines.append(f"{name}: {len(long)} of its {len(lengths)} rows are longer than sequence_len {seq_len} "
                         f"tokens and were dropped (shortest of them {min(long)}, longest {max(long)} tokens)")
        else:
            lines.append(f"{name}: {len(lengths)} rows, none longer than sequence_len {seq_len}{none_long_note}")
    return lines, shortest


def _length_census(cfg, tokenizer, ds_cfg) -> list[int]:
    """Token length of every row of one calibration dataset, read and tokenized as Axolotl does."""
    from datasets import DatasetDict

    from axolotl.datasets import TokenizedPromptDataset
    from axolotl.utils.data.shared import load_dataset_with_config
    from axolotl.utils.dict import DictDefault

    ds_cfg = DictDefault(dict(ds_cfg))
    ds = load_dataset_with_config(ds_cfg, cfg.get("hf_use_auth_token"))
    if isinstance(ds, DatasetDict):
        ds = ds[ds_cfg.split if ds_cfg.split in ds else "train"]
    strategy = load(tokenizer, cfg, ds_cfg)
    strategy.sequence_len = None  # counted here: no second round of per-batch warnings
    tokenized = TokenizedPromptDataset(strategy, ds, process_count=1, keep_in_memory=True)
    return [len(ids) for ids in tokenized["input_ids"]]


def check_rows_left(cfg, tokenizer, train_dataset) -> None:
    """Fail with numbers when Axolotl left no training row, e.g. every row is longer than ``sequence_len``.

    Axolotl drops rows longer than ``sequence_len`` after tokenization; when that drops all of them,
    training later stops in the sampler with "num_samples should be a positive integer value, but got
    num_samples=0". Only in that case are the calibration datasets re-read and re-tokenized, to name
    each dataset with how many of its rows were too long and the length to ask for.
    """
    if train_dataset is None or len(train_dataset) > 0:
        return
    seq_len = cfg.get("sequence_len")
    named = [(f"datasets[{i}] {ds_cfg.get('path')}" + (f" [split {ds_cfg['split']}]" if ds_cfg.get("split") else ""),
              ds_cfg) for i, ds_cfg in enumerate(cfg.get("datasets") or []) if is_calib_dataset_type(ds_cfg.get("type"))]
    lines, shortest = length_census_lines(cfg, tokenizer, named, " (rows removed by another setting: min_sample_len, "
                                          "shards, val_set_size)")
    fix = (f"Raise sequence_len to at least {min(shortest)} tokens or shorten those rows." if shortest
           else "Check the settings above.")
    raise CalibDataError(
        f"no training rows are left after Axolotl dropped the rows longer than sequence_len {seq_len} "
        f"(excess_length_strategy: drop), so training cannot start:\n  "
        + "\n  ".join(lines or ["no calibration dataset"])
        + "\n" + fix
    )


def load(tokenizer, cfg, ds_cfg=None, processor=None):  # noqa: ARG001 - Axolotl's loader signature
    """Axolotl entry point for ``type: axolotl_calib_plugin.mcq``."""
    cfg = cfg if cfg is not None else {}
    check_plugin_registered(cfg)
    return build_strategy(tokenizer, cfg, ds_cfg)


def build_strategy(tokenizer, cfg, ds_cfg=None) -> "MCQStrategy":
    """The strategy :func:`load` returns, without its plugin-registration check (for rows tokenized outside
    Axolotl's loader, e.g. the report files' overlap check)."""
    if ds_cfg is not None and not isinstance(ds_cfg, Mapping):  # a pydantic SFTDataset
        ds_cfg = ds_cfg.model_dump()
    ds_cfg = dict(ds_cfg or {})
    settings = CalibrationArgs.from_cfg(cfg)
    train_on_inputs = cfg.get("train_on_inputs")
    if train_on_inputs is None:
        train_on_inputs = settings.train_on_inputs
    template = None
    if settings.calib_prompt_format == "chat_template":
        template = resolve_chat_template(tokenizer, cfg, ds_cfg)
    name = ds_cfg.get("path") or "dataset"
    if ds_cfg.get("name"):
        name = f"{name} ({ds_cfg['name']})"
    if ds_cfg.get("split"):
        name = f"{name} [split {ds_cfg['split']}]"
    strategy = MCQStrategy(
        tokenizer,
        settings,
        train_on_inputs=bool(train_on_inputs),
        sequence_len=cfg.get("sequence_len"),
        chat_template=template,
        chat_template_kwargs=cfg.get("chat_template_kwargs"),
        dataset_name=str(name),
        exact_row_index=(cfg.get("dataset_num_proc") or 1) == 1,
    )
    strategy.answer_from_csv = is_csv_source(ds_cfg)
    if template is not None and ds_cfg.get("chat_template"):
        global_template = resolve_chat_template(tokenizer, cfg)
        if global_template != template:
            strategy.trainer_chat_template = global_template
    return strategy
