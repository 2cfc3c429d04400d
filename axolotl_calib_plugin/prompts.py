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


def answer_to_index(answer: Any, choices: Sequence[str], letters: Sequence[str] = DEFAULT_LETTERS) -> int:
    """0-based index of ``answer`` (int index, digit string, letter or choice text; ``answer_format: auto``).

    The rules, ambiguity included, are :func:`axolotl_calib_plugin.rows.read_answer`'s (kept here for
    callers that only format prompts); raises ``CalibDataError`` (a ``ValueError``) on a bad answer.
    """
    from .rows import read_answer  # rows imports this module's letters

    return read_answer(answer, [str(c) for c in choices], letters)
