"""The one MCQ prompt format shared by training (the dataset strategy) and evaluation (lm-eval tasks).

Keeping a single definition means the answer position the plugin calibrates during training is
the same position the lm-eval tasks score: ``<question>\\nA. <c0>\\nB. <c1>...\\nAnswer:`` followed
by the continuation ``" A"`` (MMLU's zero-shot format, as in lm-eval's ``mmlu`` tasks).
"""

from __future__ import annotations

from typing import Any, Sequence

#: option letters in order; K options use the first K.
DEFAULT_LETTERS: tuple[str, ...] = tuple("ABCDEFGHIJ")
#: what comes between the prompt and the option letter in plain (non-chat) prompts.
ANSWER_DELIMITER = " "


def option_letters(num_options: int, letters: Sequence[str] = DEFAULT_LETTERS) -> list[str]:
    """The first ``num_options`` letters; raises if there are not enough letters."""
    if num_options < 2:
        raise ValueError(f"an MCQ needs at least 2 choices, got {num_options}")
    if num_options > len(letters):
        raise ValueError(f"{num_options} choices but only {len(letters)} option letters {list(letters)}")
    return list(letters[:num_options])


def format_mcq_prompt(question: str, choices: Sequence[str], letters: Sequence[str] = DEFAULT_LETTERS) -> str:
    """``question\\nA. c0\\nB. c1\\n...\\nAnswer:`` (no trailing space: the letter token carries it)."""
    labs = option_letters(len(choices), letters)
    lines = [str(question).strip()]
    lines += [f"{lab}. {str(c).strip()}" for lab, c in zip(labs, choices)]
    lines.append("Answer:")
    return "\n".join(lines)


def check_option_letters(value: Any, key: str = "calib_option_letters") -> list[str]:
    """Option letters as a list (a string such as ``'ABCD'`` is split into characters, ``'A,B'`` at commas);
    ``ValueError`` naming ``key`` unless they are >= 2 distinct non-blank strings without surrounding spaces.
    The one rule for the training key and the lm-eval metadata ``option_letters``."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")] if "," in value else list(value)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of strings, got {value!r}")
    value = list(value)
    if len(value) < 2:
        raise ValueError(f"{key} needs at least 2 letters, got {value!r}")
    bad = [v for v in value if not v.strip() or v != v.strip()]
    if bad:
        raise ValueError(f"{key} must be non-empty and carry no surrounding whitespace, got {bad!r}")
    dup = sorted({v for v in value if value.count(v) > 1})
    if dup:
        raise ValueError(f"{key} has duplicates {dup}")
    return value
