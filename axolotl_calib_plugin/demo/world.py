"""A synthetic MCQ world whose true answer distribution p*(y | x) is known exactly.

Every question is a few *feature words*, one from each of ``n_slots`` slots (``"Pick: kapo julo zugi"``);
the four options are fixed colour words in a fixed order. Each feature word ``w`` carries a weight
vector ``W[w]`` in R^K, and

    p*(y | x) = softmax( sum_{w in x} W[w] / tau )

with ``tau`` chosen (deterministically, by bisection) so that the oracle's accuracy E[max p*] hits
``target_oracle_acc``: informative, but not deterministic. The *test designer* of the paper (a
probabilistic generative model that places correct answers at random) is literally this: every
row's ``answer`` is **sampled** from p*. The oracle that predicts p* itself is perfectly calibrated,
so its ECE is 0 up to sampling noise and its accuracy E[max p*] is the best any model can reach.

Domains (same words, shifted mixture):

* **in-domain**: the combinations whose word indices satisfy ``(i_1 + ... + i_S) % 3 != 0``;
* **out-domain**: the held-out combinations with ``% 3 == 0`` (unseen combinations of seen words),
  drawn with a *skewed* word mixture (the last words of each slot are favoured), so that both the
  inputs and the confidence profile shift.

Everything is a pure function of the seed (``numpy.random.default_rng``): the same seed gives the
same words, weights, questions and sampled answers, byte for byte.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from scipy.special import softmax

from ..prompts import format_mcq_prompt

#: the fixed options (one BPE token each with the demo tokenizer), in a fixed order.
OPTIONS: tuple[str, ...] = ("red", "green", "blue", "gold")
#: syllables for the made-up feature words (two syllables per word).
_SYLL = ("ka", "lo", "mi", "zu", "ve", "ro", "ti", "sa", "ne", "po", "du", "fe", "gi", "ha", "ju", "bo")


@dataclass
class World:
    """The generative model: feature words, weights, temperature, domains."""

    seed: int = 0
    n_slots: int = 3
    words_per_slot: int = 9
    n_options: int = 4
    target_oracle_acc: float = 0.65
    words: list[list[str]] = field(init=False)
    weights: np.ndarray = field(init=False)  # (n_slots, words_per_slot, K)
    tau: float = field(init=False)

    def __post_init__(self):
        if self.n_options > len(OPTIONS):
            raise ValueError(f"at most {len(OPTIONS)} options")
        rng = np.random.default_rng([self.seed, 1])
        n_words = self.n_slots * self.words_per_slot
        pool = [a + b for a in _SYLL for b in _SYLL if a != b]
        if n_words > len(pool):
            raise ValueError("too many feature words")
        chosen = rng.choice(len(pool), size=n_words, replace=False)
        flat = [pool[i] for i in chosen]
        self.words = [flat[s * self.words_per_slot:(s + 1) * self.words_per_slot] for s in range(self.n_slots)]
        self.weights = rng.normal(size=(self.n_slots, self.words_per_slot, self.n_options))
        self.tau = self._fit_tau()

    # -- combinations ------------------------------------------------------------------------
    def all_combos(self) -> np.ndarray:
        """Every word-index combination, shape (words_per_slot ** n_slots, n_slots)."""
        return np.array(list(itertools.product(range(self.words_per_slot), repeat=self.n_slots)), dtype=np.int64)

    @staticmethod
    def in_domain_mask(combos: np.ndarray) -> np.ndarray:
        return combos.sum(axis=1) % 3 != 0

    def domain_combos(self, domain: str) -> np.ndarray:
        c = self.all_combos()
        m = self.in_domain_mask(c)
        if domain == "in":
            return c[m]
        if domain == "out":
            return c[~m]
        raise ValueError(f"domain must be 'in' or 'out', got {domain!r}")

    def domain_weights(self, domain: str) -> np.ndarray:
        """Sampling probability of each combination of the domain (uniform in, skewed out)."""
        c = self.domain_combos(domain)
        if domain == "in":
            w = np.ones(len(c))
        else:  # favour the later words of every slot: a shifted feature mixture
            w = np.exp(0.35 * c.sum(axis=1))
        return w / w.sum()

    # -- oracle --------------------------------------------------------------------------------
    def logits(self, combos: np.ndarray) -> np.ndarray:
        combos = np.asarray(combos, dtype=np.int64).reshape(-1, self.n_slots)
        z = np.zeros((len(combos), self.n_options))
        for s in range(self.n_slots):
            z += self.weights[s, combos[:, s]]
        return z

    def oracle_probs(self, combos: np.ndarray, tau: float | None = None) -> np.ndarray:
        """p*(y | x) for each combination, shape (n, K); rows sum to 1."""
        return softmax(self.logits(combos) / (self.tau if tau is None else tau), axis=-1)

    def _fit_tau(self) -> float:
        """Bisection on log tau so that E_in[max p*] = target_oracle_acc (max p* falls as tau grows)."""
        c = self.domain_combos("in")
        lo, hi = np.log(0.05), np.log(50.0)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            acc = self.oracle_probs(c, tau=float(np.exp(mid))).max(axis=1).mean()
            if acc > self.target_oracle_acc:
                lo = mid
            else:
                hi = mid
        return float(np.exp(0.5 * (lo + hi)))

    # -- text ----------------------------------------------------------------------------------
    def question_text(self, combo: Iterable[int]) -> str:
        return "Pick: " + " ".join(self.words[s][int(i)] for s, i in enumerate(combo))

    def choices(self) -> list[str]:
        return list(OPTIONS[: self.n_options])

    def prompt(self, combo: Iterable[int]) -> str:
        return format_mcq_prompt(self.question_text(combo), self.choices())

    def corpus(self) -> list[str]:
        """Text the demo tokenizer is trained on: every word, every option, the prompt frame."""
        out = []
        for d in ("in", "out"):
            for combo in self.domain_combos(d)[:200]:
                out.append(self.prompt(combo) + " A")
        # make sure every feature/option word appears often with a leading space
        for _ in range(20):
            out.append(" ".join(w for slot in self.words for w in slot))
            out.append(" " + " ".join(OPTIONS))
        return out

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, domain: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` questions of a domain: (combos (n, S), p* (n, K), answers (n,) sampled from p*)."""
        c = self.domain_combos(domain)
        idx = rng.choice(len(c), size=n, replace=True, p=self.domain_weights(domain))
        combos = c[idx]
        p = self.oracle_probs(combos)
        u = rng.random(n)[:, None]
        answers = (u > np.cumsum(p, axis=1)).sum(axis=1)  # inverse-CDF sampling
        answers = np.minimum(answers, self.n_options - 1)
        return combos, p, answers


def mcq_rows(world: World, combos: np.ndarray, p: np.ndarray, answers: np.ndarray, prefix: str) -> list[dict]:
    """MCQ rows in the shared format (+ ``p_star`` for the oracle)."""
    rows = []
    for i, (c, pi, a) in enumerate(zip(combos, p, answers)):
        rows.append({
            "id": f"{prefix}-{i}",
            "question": world.question_text(c),
            "choices": world.choices(),
            "answer": int(a),
            "p_star": [round(float(x), 6) for x in pi],
        })
    return rows


def preference_pairs(world: World, combos: np.ndarray, p: np.ndarray, rng: np.random.Generator,
                     prefix: str) -> list[dict]:
    """One preference pair per question: two distinct options (a, b) drawn uniformly, the winner
    sampled by Bradley-Terry on p*: P(a > b | x) = p*_a / (p*_a + p*_b) (the true preference
    probability; it is what a perfectly calibrated model's pair ratio equals).

    Rows: ``prompt`` (the MCQ prompt), ``chosen``/``rejected`` (the continuations ``" A"``),
    ``chosen_idx``/``rejected_idx``, ``p_true`` = P(chosen > rejected | x).
    """
    letters = "ABCDEFGHIJ"
    rows = []
    k = p.shape[1]
    for i, (c, pi) in enumerate(zip(combos, p)):
        a, b = rng.choice(k, size=2, replace=False)
        pa = pi[a] / (pi[a] + pi[b])
        w, l_ = (a, b) if rng.random() < pa else (b, a)
        rows.append({
            "id": f"{prefix}-{i}",
            "prompt": world.prompt(c),
            "chosen": " " + letters[w],
            "rejected": " " + letters[l_],
            "chosen_idx": int(w),
            "rejected_idx": int(l_),
            "p_true": round(float(pi[w] / (pi[w] + pi[l_])), 6),
        })
    return rows


@dataclass
class DemoData:
    """Paths of every file the demo generates."""

    train: str  # MCQ rows, in-domain, sampled answers (SFT, CFT, RCFT, LS)
    dpo: str  # preference pairs on in-domain prompts (DPO)
    ts_fit: str  # held-out in-domain MCQ rows used only to fit the temperature
    eval_in: str
    eval_out: str
    pairs_eval: str  # held-out preference pairs on the eval_in questions (same order)
    world: str  # world description (json)


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def generate(out_dir: str, world: World, n_train: int, n_dpo: int, n_ts: int, n_eval_in: int,
             n_eval_out: int) -> DemoData:
    """Write every data file of the demo into ``out_dir`` (deterministic in ``world.seed``)."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng([world.seed, 2])
    paths = DemoData(**{k: os.path.join(out_dir, f"{k}.jsonl") for k in
                        ("train", "dpo", "ts_fit", "eval_in", "eval_out", "pairs_eval")},
                     world=os.path.join(out_dir, "world.json"))
    c, p, a = world.sample("in", n_train, rng)
    write_jsonl(paths.train, mcq_rows(world, c, p, a, "train"))
    c, p, _ = world.sample("in", n_dpo, rng)
    write_jsonl(paths.dpo, preference_pairs(world, c, p, rng, "dpo"))
    c, p, a = world.sample("in", n_ts, rng)
    write_jsonl(paths.ts_fit, mcq_rows(world, c, p, a, "tsfit"))
    c, p, a = world.sample("in", n_eval_in, rng)
    write_jsonl(paths.eval_in, mcq_rows(world, c, p, a, "in"))
    write_jsonl(paths.pairs_eval, preference_pairs(world, c, p, rng, "pair"))
    c, p, a = world.sample("out", n_eval_out, rng)
    write_jsonl(paths.eval_out, mcq_rows(world, c, p, a, "out"))
    with open(paths.world, "w", encoding="utf-8") as f:
        json.dump({"seed": world.seed, "n_slots": world.n_slots, "words_per_slot": world.words_per_slot,
                   "options": world.choices(), "tau": world.tau, "words": world.words,
                   "weights": world.weights.round(6).tolist(),
                   "rule": "p*(y|x) = softmax(sum_slot W[slot, word] / tau); in-domain: sum of word "
                           "indices % 3 != 0, out-domain: == 0 with a skewed word mixture"}, f, indent=1)
    return paths
