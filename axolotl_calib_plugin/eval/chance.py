"""Is a model answering at chance? Chance level, the spread of predicted letters, and the warnings that the
reports, ``axolotl-calib table`` and ``diagnose`` print.

A model at chance can show a small ECE by being uniformly unsure, and one that names the same letter on every
question can look calibrated when its confidence happens to match the share of that letter among the golds.
Neither number then says anything about what the model knows, so every place that prints calibration metrics
also prints:

* the **chance level**: the accuracy of guessing uniformly, 1/K, averaged over the questions when their option
  counts K differ;
* the **predicted letters**: how often each option position is the argmax (ties go to the first option, as in
  :func:`axolotl_calib_plugin.metrics.accuracy`), next to how often it is the gold one;
* a **near-chance warning** when the 95 % Wilson interval of the accuracy (``scipy.stats.binomtest``, a
  binomial with the mean chance level; for mixed K the exact count is Poisson-binomial, whose spread is at most
  the binomial's, so the test errs towards warning) contains the chance level, and a **below-chance** warning
  when the whole interval lies under it;
* a **one-letter warning** when the most predicted letter is the argmax on at least
  ``max(50 %, 1.5 x chance)`` of the questions (:func:`one_letter_threshold`: 50 % for K >= 3, 75 % for K = 2)
  and on at least 10 points more of them than it is the gold answer (so a model that follows a skewed
  answer key is not flagged).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

__all__ = ["CONFIDENCE", "GOLD_MARGIN", "ChanceCheck", "chance_check", "chance_of_items", "one_letter_threshold"]

#: level of the accuracy interval tested against chance.
CONFIDENCE = 0.95
#: the top letter must be predicted this much more often than it is the gold answer to be flagged.
GOLD_MARGIN = 0.10


def one_letter_threshold(chance: float) -> float:
    """Share of answers on one letter from which it is flagged: ``max(0.5, 1.5 * chance)``."""
    return max(0.5, 1.5 * float(chance))


@dataclass
class ChanceCheck:
    n: int
    correct: int
    accuracy: float
    chance: float  # mean of 1/K over the questions
    mixed_k: bool
    ci_low: float
    ci_high: float
    p_value: float  # two-sided binomial test of accuracy == chance
    letters: list[str]  # the option names, in position order
    predicted: list[int]  # questions whose argmax is each position
    gold: list[int]  # questions whose gold is each position
    top_letter: str
    top_share: float
    top_gold_share: float
    one_letter_threshold: float
    near_chance: bool
    below_chance: bool
    one_letter: bool
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def flagged(self) -> bool:
        return self.near_chance or self.below_chance or self.one_letter

    def level_text(self) -> str:
        """``0.2500 (1/K, K = 4)`` or ``0.2833 (mean 1/K over questions, K = 3-5)``."""
        return f"{self.chance:.4f} ({'mean 1/K over the questions' if self.mixed_k else '1/K'})"

    def letters_text(self) -> str:
        """``A 99 (100%), B 0 (0%), ...``: predicted letters, with the golds' shares."""
        parts = [f"{L} {c} ({c / max(self.n, 1):.0%})" for L, c in zip(self.letters, self.predicted)]
        golds = ", ".join(f"{L} {c / max(self.n, 1):.0%}" for L, c in zip(self.letters, self.gold))
        return f"{', '.join(parts)}; golds: {golds}"

    def lines(self, name: str = "") -> list[str]:
        """What a report prints: chance level, accuracy interval, predicted letters, then the warnings."""
        head = f"{name}: " if name else ""
        return [f"{head}accuracy {self.accuracy:.4f} (95 % CI [{self.ci_low:.4f}, {self.ci_high:.4f}], n = {self.n}) vs "
                f"chance {self.level_text()}; predicted letters: {self.letters_text()}",
                *[f"{head}{w}" for w in self.warnings]]


def chance_check(probs, labels, num_options: Sequence[int] | None = None,
                 letters: Sequence[str] | None = None) -> ChanceCheck:
    """The checks of the module docstring on ``probs`` (n, Kmax; rows zero-padded past their own K given in
    ``num_options``) and gold indices ``labels``; ``letters`` names the option positions (default A, B, ...)."""
    from scipy.stats import binomtest

    from ..prompts import DEFAULT_LETTERS

    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 2 or len(p) == 0 or len(y) != len(p):
        raise ValueError(f"chance check needs (n, K) probabilities and n labels, got {p.shape} and {y.shape}")
    kmax = p.shape[1]
    ks = np.full(len(p), kmax) if num_options is None else np.asarray(num_options, dtype=np.int64)
    n = len(p)
    pred = p.argmax(axis=1)
    correct = int((pred == y).sum())
    acc = correct / n
    chance = float(np.mean(1.0 / ks))
    test = binomtest(correct, n, min(max(chance, 1e-12), 1.0))
    ci = test.proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    names = [str(x) for x in (letters or DEFAULT_LETTERS)]
    names = names[:kmax] + [str(i) for i in range(len(names), kmax)]
    predicted = np.bincount(pred, minlength=kmax)[:kmax]
    gold = np.bincount(y, minlength=kmax)[:kmax]
    top = int(predicted.argmax())
    top_share, top_gold = float(predicted[top] / n), float(gold[top] / n)
    thr = one_letter_threshold(chance)
    near = bool(ci.low <= chance <= ci.high)
    below = bool(ci.high < chance)
    one = bool(top_share >= thr and top_share >= top_gold + GOLD_MARGIN)
    level = f"{chance:.4f} ({'mean 1/K over the questions' if len(set(ks.tolist())) > 1 else '1/K'})"
    warnings = []
    if near:
        warnings.append(f"WARNING: accuracy {acc:.4f} is within noise of chance {level}: its 95 % interval "
                        f"[{ci.low:.4f}, {ci.high:.4f}] (n = {n}) contains it. These answers are not shown to be "
                        "better than guessing, so the calibration numbers describe a guesser: check the prompt "
                        "format (chat template for instruct models), the option letters and the model before "
                        "reading them.")
    elif below:
        warnings.append(f"WARNING: accuracy {acc:.4f} is below chance {level} (95 % interval [{ci.low:.4f}, "
                        f"{ci.high:.4f}], n = {n}): the model systematically avoids the gold option, which usually "
                        "means the prompt, the option letters or the answer key are not what it expects.")
    if one:
        warnings.append(f"WARNING: one letter takes most answers: {names[top]} is the model's answer on "
                        f"{predicted[top]} of {n} questions ({top_share:.0%}; it is the gold one on {top_gold:.0%}); "
                        f"flagged from max(50 %, 1.5 x chance) = {thr:.0%} of answers and {100 * GOLD_MARGIN:.0f} points "
                        "above its gold share. The model picks a position rather than an answer.")
    return ChanceCheck(n=n, correct=correct, accuracy=acc, chance=chance, mixed_k=len(set(ks.tolist())) > 1,
                       ci_low=float(ci.low), ci_high=float(ci.high), p_value=float(test.pvalue), letters=names,
                       predicted=[int(c) for c in predicted], gold=[int(c) for c in gold], top_letter=names[top],
                       top_share=top_share, top_gold_share=top_gold, one_letter_threshold=thr, near_chance=near,
                       below_chance=below, one_letter=one, warnings=warnings)


def chance_of_items(items: Sequence[Mapping]) -> ChanceCheck:
    """:func:`chance_check` of per-question items (``probs``, ``gold``; ``letters`` where the samples carry them)."""
    from .samples import stack_items

    probs, labels, ks = stack_items(items)
    letters = next((it.get("letters") for it in items if it.get("letters")), None)
    return chance_check(probs, labels, ks, letters)
