"""How a prompt becomes tokens, the same way for training and for every evaluation route.

The row contract's token half: training (the strategy :mod:`axolotl_calib_plugin.train.mcq`), the preference
check (:mod:`axolotl_calib_plugin.eval.preference`) and lm-eval (:func:`training_add_bos_token`, the
``add_bos_token`` that makes ``HFLM`` score training's sequence) all encode through these functions, so a
prompt is one token sequence everywhere.

* plain: the text with the tokenizer's own special tokens (BOS where it adds one), never ending on an added
  EOS (:func:`encode_plain`); the answer follows ``prompt + ANSWER_DELIMITER``;
* chat: the chat template alone (:func:`render_chat`; whatever BOS the template writes, nothing added), the
  prompt as the user turn (after an optional system turn), the answer letter as the assistant turn.

:func:`letter_token_id` finds the single token that spells a letter after the answer position, asked in
context of a probe prompt. Imports only the shared prompt format: neither train/ nor eval/.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .prompts import ANSWER_DELIMITER, format_mcq_prompt

__all__ = ["PROBE_PROMPT", "alignment_problem", "chat_messages", "encode_mcq", "encode_plain", "first_difference",
           "letter_token_id", "render_chat", "show_tokens", "token_ids", "training_add_bos_token"]

#: a neutral prompt: how each letter tokenizes right after the answer position, and how the tokenizer treats
#: plain text, are asked of it.
PROBE_PROMPT = format_mcq_prompt("Which option?", ["first", "second"])


def token_ids(encoded: Any) -> list[int]:
    """Token ids out of whatever a tokenizer / apply_chat_template returned."""
    if isinstance(encoded, Mapping) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return [int(t) for t in encoded]


def encode_plain(tokenizer, text: str) -> list[int]:
    """Tokenize with the tokenizer's own special tokens (BOS), never ending on an added EOS."""
    ids = token_ids(tokenizer(text, add_special_tokens=True))
    if ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return ids


def chat_messages(prompt: str, system_prompt: str | None, letter: str | None = None) -> list[dict]:
    """The turns of one MCQ: an optional system turn, the prompt as the user turn, the letter as the assistant's."""
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    msgs.append({"role": "user", "content": prompt})
    if letter is not None:
        msgs.append({"role": "assistant", "content": letter})
    return msgs


def render_chat(tokenizer, chat_template: str, messages: list[dict], add_generation_prompt: bool,
                chat_template_kwargs: Mapping | None) -> list[int]:
    """The token ids of ``messages`` rendered by ``chat_template`` (the template's own special tokens only)."""
    return token_ids(
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
    first is a prefix of the second is checked by the caller (:func:`alignment_problem`).
    """
    if prompt_format == "plain":
        prompt_ids = encode_plain(tokenizer, prompt)
        full_ids = encode_plain(tokenizer, prompt + ANSWER_DELIMITER + letter)
        if tokenizer.eos_token_id is not None:
            full_ids.append(int(tokenizer.eos_token_id))
        return prompt_ids, full_ids
    if prompt_format == "chat_template":
        prompt_ids = render_chat(tokenizer, chat_template, chat_messages(prompt, system_prompt), True,
                                 chat_template_kwargs)
        full_ids = render_chat(tokenizer, chat_template, chat_messages(prompt, system_prompt, letter), False,
                               chat_template_kwargs)
        return prompt_ids, full_ids
    raise ValueError(f"calib_prompt_format must be 'plain' or 'chat_template', got {prompt_format!r}")


def show_tokens(tokenizer, ids: Sequence[int]) -> str:
    """``[id:'token', ...]``: token ids as error messages show them."""
    return "[" + ", ".join(f"{t}:{tokenizer.convert_ids_to_tokens(int(t))!r}" for t in ids) + "]"


def first_difference(prefix: Sequence[int], ids: Sequence[int]) -> int:
    """The first position where ``ids`` does not continue ``prefix`` (the shorter length when one is a prefix of the
    other)."""
    return next((i for i, (a, b) in enumerate(zip(prefix, ids)) if a != b), min(len(prefix), len(ids)))


def alignment_problem(tokenizer, prompt_ids: list[int], full_ids: list[int]) -> str | None:
    """Why ``t* = len(prompt_ids) - 1`` is not the answer position in ``full_ids`` (None if it is)."""
    n = len(prompt_ids)
    if n == 0:
        return "the prompt tokenizes to nothing"
    if full_ids[:n] != prompt_ids:
        i = first_difference(prompt_ids, full_ids)
        return (
            "the tokenized training text does not start with the tokenized prompt, so the answer position "
            f"is lost (first difference at token {i}: prompt has {show_tokens(tokenizer, prompt_ids[i:i + 3])}, "
            f"prompt+answer has {show_tokens(tokenizer, full_ids[i:i + 3])}). With chat_template this means the "
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
    prompt_ids, full_ids = encode_mcq(tokenizer, PROBE_PROMPT, letter, prompt_format, chat_template,
                                      system_prompt, chat_template_kwargs)
    problem = alignment_problem(tokenizer, prompt_ids, full_ids)
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
            f"{show_tokens(tokenizer, tail[:4])}); choose calib_option_letters that are single tokens"
        )
    return int(tok)


def training_add_bos_token(tokenizer, chat: bool) -> bool:
    """lm-eval's ``add_bos_token`` that makes ``HFLM`` score the token sequence training used.

    The one rule of every evaluation route (``axolotl-calib eval`` / ``diagnose`` / ``reproduce``, the
    post-training report, and the value to put in ``lm_eval --model_args``): training (the strategy
    ``axolotl_calib_plugin.mcq``) encodes a plain prompt with the tokenizer's own special tokens, so the
    prompt starts with a BOS exactly when the tokenizer adds one (Llama: yes; GPT-2 / SmolLM2 style: no),
    and renders a chat prompt with the template alone (whatever BOS the template writes, nothing added).
    ``HFLM`` with ``add_bos_token=True`` adds special tokens to every request; with ``False`` none. A
    tokenizer that appends an EOS to plain text cannot be scored like training (lm-eval's context would end
    with it): ``ValueError``.
    """
    if chat:
        return False
    with_special = token_ids(tokenizer(PROBE_PROMPT, add_special_tokens=True))
    bare = token_ids(tokenizer(PROBE_PROMPT, add_special_tokens=False))
    if with_special == bare:
        return False
    eos = tokenizer.eos_token_id
    if with_special[-len(bare):] != bare or (eos is not None and with_special[-1] == eos and bare[-1] != eos):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} adds tokens after plain text "
            f"({with_special[-3:]} vs {bare[-3:]}; e.g. add_eos_token: true): lm-eval would score prompts that end "
            "in them, unlike training. Turn that off in the tokenizer's tokenizer_config.json"
        )
    return True
