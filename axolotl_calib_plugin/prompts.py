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
    """Normalize an answer given as an index (0-based int or digit string), a letter ("B") or the
    choice text itself to a 0-based index; ``ValueError`` if it is not one of the choices."""
    k = len(choices)
    labs = option_letters(k, letters)
    if isinstance(answer, bool) or answer is None:
        raise ValueError(f"answer {answer!r} is not a valid option for {k} choices")
    if isinstance(answer, (int,)) or (hasattr(answer, "__index__") and not isinstance(answer, str)):
        idx = int(answer)
        if 0 <= idx < k:
            return idx
        raise ValueError(f"answer index {idx} is out of range for {k} choices (valid: 0..{k - 1})")
    if isinstance(answer, float) and answer.is_integer():
        return answer_to_index(int(answer), choices, letters)
    if isinstance(answer, str):
        a = answer.strip()
        if a in labs:
            return labs.index(a)
        if a.isdigit() and 0 <= int(a) < k:
            return int(a)
        stripped = [str(c).strip() for c in choices]
        if a in stripped and stripped.count(a) == 1:
            return stripped.index(a)
    raise ValueError(
        f"answer {answer!r} is not a valid option: expected an index 0..{k - 1}, a letter in {labs}, "
        "or the text of one choice"
    )
