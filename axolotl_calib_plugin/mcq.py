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

Every row is checked, and a bad row raises ``MCQRowError`` naming the dataset, the row and the
problem: nothing is skipped silently, so the loss never trains on a wrong answer position.

This module does not import axolotl at import time; :func:`option_token_ids` (the letters' token ids
for the trainer) lives here because it is the same tokenization question, asked of a probe prompt.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

from .args import CalibrationArgs, check_plugin_registered
from .columns import CALIB_COLUMNS, IGNORE_INDEX
from .prompts import ANSWER_DELIMITER, answer_to_index, format_mcq_prompt
_INT63 = (1 << 63) - 1
#: a neutral prompt used to find out how each letter tokenizes right after the answer position.
_PROBE_PROMPT = format_mcq_prompt("Which option?", ["first", "second"])


class MCQRowError(ValueError):
    """A dataset row that cannot be turned into a calibration sample."""


# ---------------------------------------------------------------------------------------- pure helpers
def prompt_sample_id(prompt_ids: Sequence[int]) -> int:
    """Stable non-negative int63 id of a prompt: blake2b over its token ids (same prompt, same id)."""
    h = hashlib.blake2b(b",".join(str(int(t)).encode() for t in prompt_ids), digest_size=8)
    return int.from_bytes(h.digest(), "little") & _INT63


def _ids(encoded: Any) -> list[int]:
    """token ids out of whatever a tokenizer / apply_chat_template returned."""
    if isinstance(encoded, Mapping) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return [int(t) for t in encoded]


def _encode_plain(tokenizer, text: str) -> list[int]:
    """Tokenize with the tokenizer's own special tokens (BOS), never ending on an added EOS."""
    ids = _ids(tokenizer(text, add_special_tokens=True))
    if ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return ids


def _messages(prompt: str, system_prompt: str | None, letter: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    msgs.append({"role": "user", "content": prompt})
    if letter is not None:
        msgs.append({"role": "assistant", "content": letter})
    return msgs


def _render_chat(tokenizer, chat_template: str, messages: list[dict], add_generation_prompt: bool,
                 chat_template_kwargs: Mapping | None) -> list[int]:
    return _ids(
        tokenizer.apply_chat_template(
            messages,
            chat_template=chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=True,
            return_dict=False,
            **dict(chat_template_kwargs or {}),
        )
    )


def encode_mcq(tokenizer, prompt: str, letter: str, prompt_format: str, chat_template: str | None = None,
               system_prompt: str | None = None, chat_template_kwargs: Mapping | None = None
               ) -> tuple[list[int], list[int]]:
    """(prompt_ids, full_ids) of one prompt answered with ``letter``.

    ``prompt_ids`` ends at ``t*``; ``full_ids`` is the whole training sequence. Whether the
    first is a prefix of the second is checked by the caller (:func:`_check_alignment`).
    """
    if prompt_format == "plain":
        prompt_ids = _encode_plain(tokenizer, prompt)
        full_ids = _encode_plain(tokenizer, prompt + ANSWER_DELIMITER + letter)
        if tokenizer.eos_token_id is not None:
            full_ids.append(int(tokenizer.eos_token_id))
        return prompt_ids, full_ids
    if prompt_format == "chat_template":
        prompt_ids = _render_chat(tokenizer, chat_template, _messages(prompt, system_prompt), True, chat_template_kwargs)
        full_ids = _render_chat(tokenizer, chat_template, _messages(prompt, system_prompt, letter), False,
                                chat_template_kwargs)
        return prompt_ids, full_ids
    raise ValueError(f"calib_prompt_format must be 'plain' or 'chat_template', got {prompt_format!r}")


def _show(tokenizer, ids: Sequence[int]) -> str:
    return "[" + ", ".join(f"{t}:{tokenizer.convert_ids_to_tokens(int(t))!r}" for t in ids) + "]"


def _alignment_problem(tokenizer, prompt_ids: list[int], full_ids: list[int]) -> str | None:
    """Why ``t* = len(prompt_ids) - 1`` is not the answer position in ``full_ids`` (None if it is)."""
    n = len(prompt_ids)
    if n == 0:
        return "the prompt tokenizes to nothing"
    if full_ids[:n] != prompt_ids:
        i = next((i for i, (a, b) in enumerate(zip(prompt_ids, full_ids)) if a != b), min(n, len(full_ids)))
        return (
            "the tokenized training text does not start with the tokenized prompt, so the answer position "
            f"is lost (first difference at token {i}: prompt has {_show(tokenizer, prompt_ids[i:i + 3])}, "
            f"prompt+answer has {_show(tokenizer, full_ids[i:i + 3])}). With chat_template this means the "
            "template renders the turns before the answer differently once the answer is there (e.g. it "
            "injects reasoning blocks or drops the generation prompt); use another chat_template or "
            "calib_prompt_format: plain"
        )
    if len(full_ids) <= n:
        return "the answer adds no token after the prompt"
    return None


def letter_token_id(tokenizer, letter: str, prompt_format: str, chat_template: str | None = None,
                    system_prompt: str | None = None, chat_template_kwargs: Mapping | None = None) -> int:
    """The single token that spells ``letter`` right after the answer position; ``ValueError`` otherwise.

    Found in context (probe prompt vs probe prompt + answer) rather than by tokenizing the letter
    alone, because SentencePiece and byte-level BPE tokenizers encode a lone ``" A"`` differently.
    """
    prompt_ids, full_ids = encode_mcq(tokenizer, _PROBE_PROMPT, letter, prompt_format, chat_template,
                                      system_prompt, chat_template_kwargs)
    problem = _alignment_problem(tokenizer, prompt_ids, full_ids)
    if problem:
        raise ValueError(f"cannot locate option letter {letter!r} after the prompt: {problem}")
    tok = full_ids[len(prompt_ids)]
    tail = full_ids[len(prompt_ids):]
    one_token = tokenizer.decode([tok]).strip() == letter
    if prompt_format == "plain":
        eos = tokenizer.eos_token_id
        one_token = one_token and len(tail) == 1 + (eos is not None)
    if not one_token:
        where = "' ' + letter after 'Answer:'" if prompt_format == "plain" else "the assistant turn"
        raise ValueError(
            f"option letter {letter!r} is not a single token for this tokenizer ({where} tokenizes as "
            f"{_show(tokenizer, tail[:4])}); choose calib_option_letters that are single tokens"
        )
    return int(tok)


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

    def tokenize_row(self, row: Mapping[str, Any], row_no: int = 0) -> dict[str, list[int]]:
        """One raw row -> the tokenized sample with its calibration columns."""
        s = self.settings
        q = row.get(s.calib_field_question)
        where = self._where(row_no, q)
        try:
            return self._tokenize_row(row, q)
        except MCQRowError as exc:
            raise MCQRowError(f"{where}: {exc}") from None
        except ValueError as exc:  # answer_to_index / letter_token_id / template errors
            raise MCQRowError(f"{where}: {exc}") from exc

    def _tokenize_row(self, row: Mapping[str, Any], q: Any) -> dict[str, list[int]]:
        s = self.settings
        fq, fc, fa = s.calib_field_question, s.calib_field_choices, s.calib_field_answer
        if q is None or (isinstance(q, str) and not q.strip()):
            raise MCQRowError(f"missing question (column {fq!r})")
        choices = row.get(fc)
        if choices is None:
            raise MCQRowError(f"missing choices (column {fc!r})")
        if isinstance(choices, str) or not isinstance(choices, Sequence):
            raise MCQRowError(f"choices (column {fc!r}) must be a list of strings, got {type(choices).__name__}: {choices!r:.80}")
        choices = list(choices)
        k = len(choices)
        if k < 2:
            raise MCQRowError(f"needs at least 2 choices (column {fc!r}), got {k}: {choices!r}")
        letters = s.calib_option_letters
        if k > len(letters):
            raise MCQRowError(f"{k} choices but only {len(letters)} option letters {letters} (calib_option_letters)")
        answer = row.get(fa)
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            raise MCQRowError(f"missing answer (column {fa!r})")
        gold = answer_to_index(answer, choices, letters)
        letter_ids = self.letter_ids(k)

        prompt = format_mcq_prompt(q, choices, letters)
        prompt_ids, full_ids = encode_mcq(self.tokenizer, prompt, letters[gold], s.calib_prompt_format,
                                          self.chat_template, s.calib_system_prompt, self.chat_template_kwargs)
        problem = _alignment_problem(self.tokenizer, prompt_ids, full_ids)
        if problem:
            raise MCQRowError(problem)
        t_star = len(prompt_ids) - 1
        if full_ids[t_star + 1] != letter_ids[gold]:
            raise MCQRowError(
                f"the token after the answer position is {_show(self.tokenizer, full_ids[t_star + 1:t_star + 2])}, "
                f"not the gold letter {letters[gold]!r} (id {letter_ids[gold]}): the prompt and the letter merge "
                "into one token for this tokenizer"
            )
        # No truncation here: a row longer than sequence_len is dropped whole by Axolotl later
        # (excess_length_strategy: drop), marker included; `truncate` is rejected in args.py.
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
        col = prompt.get(self.settings.calib_field_question)
        if col is None:  # no question column: a batch has a list of choice lists
            choices = prompt.get(self.settings.calib_field_choices)
            batched = isinstance(choices, list) and bool(choices) and isinstance(choices[0], (list, tuple))
        else:
            batched = isinstance(col, list)
        if not batched:
            row = self.tokenize_row(prompt, self.rows_seen)
            self.rows_seen += 1
            return row
        n = len(next(iter(prompt.values())))
        out: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "labels", *CALIB_COLUMNS)}
        for i in range(n):
            row = {k: v[i] for k, v in prompt.items()}
            res = self.tokenize_row(row, self.rows_seen)
            self.rows_seen += 1
            for k in out:
                out[k].append(res[k])
        return out


def load(tokenizer, cfg, ds_cfg=None, processor=None):  # noqa: ARG001 - Axolotl's loader signature
    """Axolotl entry point for ``type: axolotl_calib_plugin.mcq``."""
    cfg = cfg if cfg is not None else {}
    check_plugin_registered(cfg)
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
    if template is not None and ds_cfg.get("chat_template"):
        global_template = resolve_chat_template(tokenizer, cfg)
        if global_template != template:
            strategy.trainer_chat_template = global_template
    return strategy
