"""Synthetic MCQ worlds whose true answer distribution p*(y | x) is known exactly.

The paper models the test designer as a probabilistic generative model that places correct answers
at random (Sec. 3): the model that predicts p* itself is then perfectly calibrated (its ECE is 0 up to
sampling noise) and its accuracy E[max p*] is the best any model can reach. Two such worlds:

* :class:`TopicWorld` (the default; "hard labels", like real MCQ data). A question is a short sequence of
  made-up words drawn from one latent *topic*; each topic has its own word distribution (so the question
  text has structure a language model can learn: words of a topic co-occur) and its own answer
  distribution over the four fixed options. Every question is drawn ONCE, with ONE gold answer drawn from
  its topic's answer distribution, and no question text repeats across any file: a model trained for
  several epochs can memorise its training golds and becomes over-confident on unseen questions, as on
  real data. The oracle is Bayes' rule: p*(y | x) = sum_t P(t | x) p(y | t).
  Out-of-domain questions come from the same topics with a shifted topic mixture and noisier words.
* :class:`SampledWorld` (the earlier setting). Three feature words, p*(y | x) = softmax(sum of word weights /
  tau); questions repeat and every row's answer is sampled afresh from p*. Cross-entropy is then a proper
  scoring rule on the training rows themselves, so plain SFT already calibrates (useful as a contrast).

Both are pure functions of the seed (``numpy.random.default_rng``): the same seed gives the same words,
weights, questions and answers, byte for byte.

One module of ~500 lines, on purpose: it is the demo's whole ground truth -- the two MCQ worlds, the preference
domain built on a world's vocabulary, the rows each writes and :func:`generate`, which draws every MCQ file of a
seed from one random stream in a fixed order and the preference files from a second. Every byte of the data
depends on that order and on each world's sampling, so the generative story stays in one file that reads top to
bottom, and an edit to it changes one fingerprinted file (the demo reuses a run only while its code is unchanged).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

import numpy as np
from scipy.special import logsumexp, softmax

from ..prompts import format_mcq_prompt

#: the fixed options (one BPE token each with the demo tokenizer), in a fixed order.
OPTIONS: tuple[str, ...] = ("red", "green", "blue", "gold")
#: syllables for the made-up words (two syllables per word).
_SYLL = ("ka", "lo", "mi", "zu", "ve", "ro", "ti", "sa", "ne", "po", "du", "fe", "gi", "ha", "ju", "bo")
WORLDS = ("topic", "sampled")


def _made_up_words(rng: np.random.Generator, n: int) -> list[str]:
    pool = [a + b for a in _SYLL for b in _SYLL if a != b]
    if n > len(pool):
        raise ValueError(f"at most {len(pool)} made-up words, asked for {n}")
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]


def _unique_texts(n: int, draw, text_of, seen: set[str]) -> tuple[list[str], list]:
    """``n`` drawn items whose texts are new (not in ``seen``, which is updated, nor repeated): ``draw(k)`` gives
    ``k`` candidates, batches are drawn until ``n`` are kept; returns ``(texts, items)`` in draw order."""
    texts: list[str] = []
    items: list = []
    while len(texts) < n:
        for item in draw(2 * (n - len(texts)) + 8):
            text = text_of(item)
            if text in seen:
                continue
            seen.add(text)
            texts.append(text)
            items.append(item)
            if len(texts) == n:
                break
    return texts, items


def _fit_temperature_to_accuracy(logits_fn, target: float) -> float:
    """Bisection on log tau so that E[max softmax(logits / tau)] = target (it falls as tau grows)."""
    lo, hi = np.log(0.05), np.log(50.0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if logits_fn(float(np.exp(mid))) > target:
            lo = mid
        else:
            hi = mid
    return float(np.exp(0.5 * (lo + hi)))


class Questions(NamedTuple):
    """``n`` questions of a domain: texts, the oracle p* (n, K) and one gold answer each (n,)."""

    texts: list[str]
    p_star: np.ndarray
    answers: np.ndarray


# ------------------------------------------------------------------------------------------------ topic world
@dataclass
class TopicWorld:
    """Hard-label MCQ world with a latent topic per question (see the module docstring).

    Generative story of a question of domain ``d``: topic ``t ~ prior_d``; ``question_len`` words
    i.i.d. from ``word_dist_d[t]`` (the topic's own words carry ``topic_word_mass``, shared filler words
    ``filler_mass``, every other topic's words the rest); gold ``y ~ p(y | t) = softmax(W_t / tau)`` with
    Gaussian ``W`` and ``tau`` set by bisection so that the in-domain oracle accuracy is
    ``target_oracle_acc``.
    """

    seed: int = 0
    n_topics: int = 8
    words_per_topic: int = 6
    n_filler: int = 6
    question_len: int = 6
    n_options: int = 4
    topic_word_mass: float = 0.75
    filler_mass: float = 0.10
    ood_topic_word_mass: float = 0.55
    ood_prior_skew: float = 1.5
    target_oracle_acc: float = 0.65
    words: list[str] = field(init=False)
    answer_logits: np.ndarray = field(init=False)  # (T, K)
    tau: float = field(init=False)

    def __post_init__(self):
        if self.n_options > len(OPTIONS):
            raise ValueError(f"at most {len(OPTIONS)} options")
        rng = np.random.default_rng([self.seed, 11])
        n_words = self.n_topics * self.words_per_topic + self.n_filler
        self.words = _made_up_words(rng, n_words)
        self.answer_logits = rng.normal(size=(self.n_topics, self.n_options))
        self._priors = {
            "in": np.full(self.n_topics, 1.0 / self.n_topics),
            "out": softmax(self.ood_prior_skew * rng.normal(size=self.n_topics)),
        }
        self._word_dists = {"in": self._word_dist(self.topic_word_mass), "out": self._word_dist(self.ood_topic_word_mass)}
        sample_rng = np.random.default_rng([self.seed, 12])
        ref_topics, ref_words = self._draw(sample_rng, "in", 20000)
        log_post = self._log_posterior("in", ref_words)

        def acc(tau: float) -> float:
            return float(self._mix(log_post, tau).max(axis=1).mean())

        self.tau = _fit_temperature_to_accuracy(acc, self.target_oracle_acc)

    # -- model ----------------------------------------------------------------------------------
    def _word_dist(self, own_mass: float) -> np.ndarray:
        """(T, V) word distribution of every topic: own words, filler words, everything else."""
        t, w, f = self.n_topics, self.words_per_topic, self.n_filler
        v = t * w + f
        other = max(0.0, 1.0 - own_mass - self.filler_mass) / max(1, v - w - f)
        dist = np.full((t, v), other)
        for k in range(t):
            dist[k, k * w:(k + 1) * w] = own_mass / w
        dist[:, t * w:] = self.filler_mass / f
        return dist / dist.sum(axis=1, keepdims=True)

    def answer_probs(self, tau: float | None = None) -> np.ndarray:
        """p(y | t), shape (T, K)."""
        return softmax(self.answer_logits / (self.tau if tau is None else tau), axis=1)

    def _log_posterior(self, domain: str, word_ids: np.ndarray) -> np.ndarray:
        """log P(t | x) for word-id rows (n, L), shape (n, T)."""
        logw = np.log(self._word_dists[domain])  # (T, V)
        ll = logw[:, word_ids].sum(axis=2).T + np.log(self._priors[domain])  # (n, T)
        return ll - logsumexp(ll, axis=1, keepdims=True)

    def _mix(self, log_post: np.ndarray, tau: float | None = None) -> np.ndarray:
        return np.exp(log_post) @ self.answer_probs(tau)

    def oracle_probs(self, domain: str, word_ids: np.ndarray) -> np.ndarray:
        """p*(y | x) = sum_t P(t | x) p(y | t) for word-id rows (n, L); rows sum to 1."""
        return self._mix(self._log_posterior(domain, np.asarray(word_ids, dtype=np.int64)))

    def _draw(self, rng: np.random.Generator, domain: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        topics = rng.choice(self.n_topics, size=n, p=self._priors[domain])
        dist = self._word_dists[domain][topics]  # (n, V)
        u = rng.random((n, self.question_len, 1))
        words = (u > np.cumsum(dist, axis=1)[:, None, :]).sum(axis=2)
        return topics, np.minimum(words, dist.shape[1] - 1)

    # -- text ----------------------------------------------------------------------------------
    def question_text(self, word_ids: Iterable[int]) -> str:
        return "Pick: " + " ".join(self.words[int(i)] for i in word_ids)

    def choices(self) -> list[str]:
        return list(OPTIONS[: self.n_options])

    def vocabulary(self) -> list[str]:
        """Words that must be one token each for the demo tokenizer."""
        return list(self.words) + self.choices()

    def corpus(self) -> list[str]:
        """Text the demo tokenizer is trained on: the prompt frame, every word, every option."""
        rng = np.random.default_rng([self.seed, 13])
        out = [format_mcq_prompt(self.question_text(w), self.choices()) + " A" for w in self._draw(rng, "in", 300)[1]]
        for _ in range(20):
            out.append(" ".join(self.words))
            out.append(" " + " ".join(OPTIONS))
        return out

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, domain: str, n: int, rng: np.random.Generator, exclude: set[str] | None = None) -> Questions:
        """``n`` new questions of ``domain`` with ONE gold answer each; texts never repeat, neither within
        this call nor with ``exclude`` (which is updated), so every question in every file is unique."""
        if domain not in self._priors:
            raise ValueError(f"domain must be 'in' or 'out', got {domain!r}")
        seen = exclude if exclude is not None else set()
        texts, drawn = _unique_texts(n, lambda k: zip(*self._draw(rng, domain, k)), lambda d: self.question_text(d[1]),
                                     seen)
        rows = [wi for _, wi in drawn]
        topics = [int(ti) for ti, _ in drawn]
        word_ids = np.asarray(rows, dtype=np.int64).reshape(n, self.question_len)
        p = self.oracle_probs(domain, word_ids)
        ans_p = self.answer_probs()[np.asarray(topics, dtype=np.int64)]
        answers = (rng.random((n, 1)) > np.cumsum(ans_p, axis=1)).sum(axis=1)
        return Questions(texts, p, np.minimum(answers, self.n_options - 1))

    def describe(self) -> dict:
        return {
            "kind": "topic", "seed": self.seed, "options": self.choices(), "tau": self.tau, "words": self.words,
            "n_topics": self.n_topics, "words_per_topic": self.words_per_topic, "n_filler": self.n_filler,
            "question_len": self.question_len, "topic_word_mass": self.topic_word_mass,
            "ood_topic_word_mass": self.ood_topic_word_mass, "filler_mass": self.filler_mass,
            "answer_probs": self.answer_probs().round(6).tolist(), "ood_prior": self._priors["out"].round(6).tolist(),
            "rule": "topic t ~ prior; words iid from the topic's word distribution; gold y ~ p(y|t) drawn once "
                    "per question; p*(y|x) = sum_t P(t|x) p(y|t). Out-domain: skewed topic prior, noisier words.",
        }


# ------------------------------------------------------------------------------------------------ sampled world
@dataclass
class SampledWorld:
    """Three feature words, one per slot; p*(y | x) = softmax(sum_slot W[slot, word] / tau); every row's
    answer is sampled afresh from p* (questions repeat). In-domain = word-index combinations with
    ``(i_1 + ... + i_S) % 3 != 0``; out-domain = the unseen ``% 3 == 0`` combinations with a skewed mixture."""

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
        flat = _made_up_words(rng, self.n_slots * self.words_per_slot)
        self.words = [flat[s * self.words_per_slot:(s + 1) * self.words_per_slot] for s in range(self.n_slots)]
        self.weights = rng.normal(size=(self.n_slots, self.words_per_slot, self.n_options))
        combos = self.domain_combos("in")
        self.tau = _fit_temperature_to_accuracy(
            lambda tau: float(self.oracle_probs(combos, tau=tau).max(axis=1).mean()), self.target_oracle_acc)

    def all_combos(self) -> np.ndarray:
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
        c = self.domain_combos(domain)
        w = np.ones(len(c)) if domain == "in" else np.exp(0.35 * c.sum(axis=1))
        return w / w.sum()

    def logits(self, combos: np.ndarray) -> np.ndarray:
        combos = np.asarray(combos, dtype=np.int64).reshape(-1, self.n_slots)
        z = np.zeros((len(combos), self.n_options))
        for s in range(self.n_slots):
            z += self.weights[s, combos[:, s]]
        return z

    def oracle_probs(self, combos: np.ndarray, tau: float | None = None) -> np.ndarray:
        return softmax(self.logits(combos) / (self.tau if tau is None else tau), axis=-1)

    def question_text(self, combo: Iterable[int]) -> str:
        return "Pick: " + " ".join(self.words[s][int(i)] for s, i in enumerate(combo))

    def choices(self) -> list[str]:
        return list(OPTIONS[: self.n_options])

    def vocabulary(self) -> list[str]:
        return [w for slot in self.words for w in slot] + self.choices()

    def corpus(self) -> list[str]:
        out = []
        for d in ("in", "out"):
            for combo in self.domain_combos(d)[:200]:
                out.append(format_mcq_prompt(self.question_text(combo), self.choices()) + " A")
        for _ in range(20):
            out.append(" ".join(w for slot in self.words for w in slot))
            out.append(" " + " ".join(OPTIONS))
        return out

    def sample(self, domain: str, n: int, rng: np.random.Generator, exclude: set[str] | None = None) -> Questions:
        """``n`` questions drawn with replacement (texts repeat; ``exclude`` is ignored), answers sampled from p*."""
        c = self.domain_combos(domain)
        combos = c[rng.choice(len(c), size=n, replace=True, p=self.domain_weights(domain))]
        p = self.oracle_probs(combos)
        answers = np.minimum((rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1), self.n_options - 1)
        return Questions([self.question_text(x) for x in combos], p, answers)

    def describe(self) -> dict:
        return {"kind": "sampled", "seed": self.seed, "n_slots": self.n_slots, "words_per_slot": self.words_per_slot,
                "options": self.choices(), "tau": self.tau, "words": self.words,
                "weights": self.weights.round(6).tolist(),
                "rule": "p*(y|x) = softmax(sum_slot W[slot, word] / tau); answers sampled from p* per row; in-domain: "
                        "sum of word indices % 3 != 0, out-domain: == 0 with a skewed word mixture"}


def make_world(kind: str, seed: int, target_oracle_acc: float = 0.65):
    """The world of ``kind`` (``topic`` or ``sampled``) for ``seed``."""
    if kind == "topic":
        return TopicWorld(seed=seed, target_oracle_acc=target_oracle_acc)
    if kind == "sampled":
        return SampledWorld(seed=seed, target_oracle_acc=target_oracle_acc)
    raise ValueError(f"world must be one of {WORLDS}, got {kind!r}")


# ------------------------------------------------------------------------------------------------ preference domain
class PreferencePrompts(NamedTuple):
    """``n`` prompts of the preference domain: texts and the true reward of every candidate reply (n, K)."""

    texts: list[str]
    rewards: np.ndarray


@dataclass
class PreferenceDomain:
    """Prompts and candidate replies with a KNOWN true reward, apart from the MCQ data (the paper's Table 3 in
    miniature: does DPO add alignment, and do the calibration fixes keep it?).

    A prompt is ``"Say: w1 .. wL\nReply:"`` with ``L`` words from its own made-up vocabulary; the candidate
    replies are ``K`` other made-up words (one token each), and the true reward is linear in the prompt's
    words: r*(x, y) = scale * sum_i V[w_i, y] with Gaussian ``V``. The base model's SFT sees these prompts
    with a reply drawn uniformly (so its policy is near uniform); DPO sees pairs whose winner is drawn by
    Bradley-Terry on r*; the calibration fixes never see the domain. ``exclude``: words the MCQ world uses.
    """

    seed: int = 0
    n_words: int = 12
    prompt_len: int = 4
    n_responses: int = 5
    reward_scale: float = 1.0
    exclude: tuple[str, ...] = ()
    words: list[str] = field(init=False)
    responses: list[str] = field(init=False)
    weights: np.ndarray = field(init=False)  # (n_words, K)

    def __post_init__(self):
        rng = np.random.default_rng([self.seed, 31])
        pool = [a + b for a in _SYLL for b in _SYLL if a != b and a + b not in set(self.exclude)]
        need = self.n_words + self.n_responses
        if need > len(pool):
            raise ValueError(f"at most {len(pool)} made-up words for the preference domain, asked for {need}")
        picked = [pool[i] for i in rng.choice(len(pool), size=need, replace=False)]
        self.words, self.responses = picked[:self.n_words], picked[self.n_words:]
        self.weights = self.reward_scale * rng.normal(size=(self.n_words, self.n_responses))

    def prompt_text(self, word_ids: Iterable[int]) -> str:
        return "Say: " + " ".join(self.words[int(i)] for i in word_ids) + "\nReply:"

    def replies(self) -> list[str]:
        """The candidate continuations (leading space: each is one token after ``Reply:``)."""
        return [" " + r for r in self.responses]

    def rewards(self, word_ids: np.ndarray) -> np.ndarray:
        """r*(x, y) for word-id rows (n, L): shape (n, K)."""
        return self.weights[np.asarray(word_ids, dtype=np.int64)].sum(axis=1)

    def sample(self, n: int, rng: np.random.Generator, exclude: set[str] | None = None) -> PreferencePrompts:
        """``n`` new prompts (uniform words), never repeating a text within the call or ``exclude`` (updated)."""
        seen = exclude if exclude is not None else set()
        if n + len(seen) > self.n_words ** self.prompt_len // 2:
            raise ValueError(f"{n} more preference prompts do not fit {self.n_words}^{self.prompt_len} texts")
        texts, rows = _unique_texts(n, lambda k: rng.integers(self.n_words, size=(k, self.prompt_len)), self.prompt_text,
                                    seen)
        return PreferencePrompts(texts, self.rewards(np.asarray(rows, dtype=np.int64).reshape(n, self.prompt_len)))

    def vocabulary(self) -> list[str]:
        return list(self.words) + list(self.responses)

    def corpus(self) -> list[str]:
        rng = np.random.default_rng([self.seed, 32])
        out = [self.prompt_text(w) + self.replies()[int(rng.integers(self.n_responses))]
               for w in rng.integers(self.n_words, size=(100, self.prompt_len))]
        for _ in range(20):
            out.append(" ".join(self.words))
            out.append("".join(self.replies()))
        return out

    def describe(self) -> dict:
        return {"words": self.words, "responses": self.responses, "prompt_len": self.prompt_len,
                "reward_scale": self.reward_scale, "weights": self.weights.round(6).tolist(),
                "rule": "r*(x, y) = sum over the prompt's words w of V[w, y]; base SFT: uniform replies; DPO pairs: "
                        "winner by Bradley-Terry on r*, P(a > b) = sigmoid(r*_a - r*_b)"}


def preference_domain_for(world, seed: int) -> PreferenceDomain:
    """The preference domain of a world: its own words, disjoint from every MCQ word and option."""
    used = [w for w in world.vocabulary()]
    return PreferenceDomain(seed=seed, exclude=tuple(used))


def reply_rows(pref: PreferenceDomain, q: PreferencePrompts, rng: np.random.Generator) -> list[dict]:
    """``{prompt, completion}`` rows with a reply drawn uniformly (the base model's SFT: no preference)."""
    replies = pref.replies()
    return [{"prompt": t, "completion": replies[int(rng.integers(len(replies)))]} for t in q.texts]


def reward_pairs(pref: PreferenceDomain, q: PreferencePrompts, rng: np.random.Generator, prefix: str) -> list[dict]:
    """One DPO pair per prompt: two distinct replies drawn uniformly, the winner by Bradley-Terry on r*."""
    replies, rows = pref.replies(), []
    for i, (text, r) in enumerate(zip(q.texts, q.rewards)):
        a, b = rng.choice(len(replies), size=2, replace=False)
        p_a = 1.0 / (1.0 + np.exp(r[b] - r[a]))
        w, l_ = (a, b) if rng.random() < p_a else (b, a)
        rows.append({"id": f"{prefix}-{i}", "prompt": text, "chosen": replies[w], "rejected": replies[l_],
                     "chosen_idx": int(w), "rejected_idx": int(l_),
                     "p_true": round(float(1.0 / (1.0 + np.exp(r[l_] - r[w]))), 6)})
    return rows


def reward_rows(pref: PreferenceDomain, q: PreferencePrompts, prefix: str) -> list[dict]:
    """Held-out prompts with every candidate reply and its true reward (the exact alignment metrics)."""
    return [{"id": f"{prefix}-{i}", "prompt": t, "replies": pref.replies(), "reward": [round(float(x), 6) for x in r]}
            for i, (t, r) in enumerate(zip(q.texts, q.rewards))]


# ------------------------------------------------------------------------------------------------ files
def mcq_rows(world, q: Questions, prefix: str) -> list[dict]:
    """MCQ rows in the shared format (+ ``p_star`` for the oracle)."""
    return [{"id": f"{prefix}-{i}", "question": text, "choices": world.choices(), "answer": int(a),
             "p_star": [round(float(x), 6) for x in p]}
            for i, (text, p, a) in enumerate(zip(q.texts, q.p_star, q.answers))]


def preference_pairs(world, q: Questions, rng: np.random.Generator, prefix: str) -> list[dict]:
    """One preference pair per question: two distinct options (a, b) drawn uniformly, the winner
    sampled by Bradley-Terry on p*: P(a > b | x) = p*_a / (p*_a + p*_b) (the true preference
    probability; it is what a perfectly calibrated model's pair ratio equals).

    Rows: ``prompt`` (the MCQ prompt), ``chosen``/``rejected`` (the continuations ``" A"``),
    ``chosen_idx``/``rejected_idx``, ``p_true`` = P(chosen > rejected | x).
    """
    letters = "ABCDEFGHIJ"
    rows = []
    k = q.p_star.shape[1]
    for i, (text, pi) in enumerate(zip(q.texts, q.p_star)):
        a, b = rng.choice(k, size=2, replace=False)
        pa = pi[a] / (pi[a] + pi[b])
        w, l_ = (a, b) if rng.random() < pa else (b, a)
        rows.append({
            "id": f"{prefix}-{i}",
            "prompt": format_mcq_prompt(text, world.choices()),
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

    base_train: str  # MCQ rows for the base model's SFT (in-domain)
    train: str  # MCQ rows, in-domain: the training set of every fix (SFT, CFT, RCFT, LS) and of the over-fine-tuning
    dpo: str  # preference pairs on other in-domain prompts (DPO)
    ts_fit: str  # held-out in-domain MCQ rows used only to fit the temperature
    eval_in: str
    eval_out: str
    pairs_eval: str  # held-out preference pairs on the eval_in questions (same order)
    world: str  # world description (json)
    pref_base: str | None = None  # preference domain: {prompt, completion} rows, uniform replies (base SFT)
    pref_eval: str | None = None  # preference domain: held-out prompts, every reply and its true reward


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def generate(out_dir: str, world, n_base: int, n_train: int, n_dpo: int, n_ts: int, n_eval_in: int,
             n_eval_out: int, pref: PreferenceDomain | None = None, n_pref_base: int = 0, n_pref_dpo: int = 0,
             n_pref_eval: int = 0) -> DemoData:
    """Write every data file of the demo into ``out_dir`` (deterministic in ``world.seed``); in the topic
    world no question text appears twice across all files. With ``pref``: the preference domain's base-SFT
    rows (``pref_base.jsonl``), its DPO pairs (appended to ``dpo.jsonl`` after the MCQ pairs) and its held-out
    prompts (``pref_eval.jsonl``), from their own random stream (the MCQ files are the same with or without)."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng([world.seed, 2])
    seen: set[str] = set()
    paths = DemoData(**{k: os.path.join(out_dir, f"{k}.jsonl") for k in
                        ("base_train", "train", "dpo", "ts_fit", "eval_in", "eval_out", "pairs_eval")},
                     world=os.path.join(out_dir, "world.json"))
    write_jsonl(paths.base_train, mcq_rows(world, world.sample("in", n_base, rng, seen), "base"))
    write_jsonl(paths.train, mcq_rows(world, world.sample("in", n_train, rng, seen), "train"))
    dpo_rows = preference_pairs(world, world.sample("in", n_dpo, rng, seen), rng, "dpo")
    write_jsonl(paths.ts_fit, mcq_rows(world, world.sample("in", n_ts, rng, seen), "tsfit"))
    q_in = world.sample("in", n_eval_in, rng, seen)
    write_jsonl(paths.eval_in, mcq_rows(world, q_in, "in"))
    write_jsonl(paths.pairs_eval, preference_pairs(world, q_in, rng, "pair"))
    write_jsonl(paths.eval_out, mcq_rows(world, world.sample("out", n_eval_out, rng, seen), "out"))
    description = world.describe()
    if pref is not None and (n_pref_base or n_pref_dpo or n_pref_eval):
        prng, pseen = np.random.default_rng([world.seed, 3]), set()
        paths.pref_base = os.path.join(out_dir, "pref_base.jsonl")
        paths.pref_eval = os.path.join(out_dir, "pref_eval.jsonl")
        write_jsonl(paths.pref_base, reply_rows(pref, pref.sample(n_pref_base, prng, pseen), prng))
        dpo_rows += reward_pairs(pref, pref.sample(n_pref_dpo, prng, pseen), prng, "pdpo")
        write_jsonl(paths.pref_eval, reward_rows(pref, pref.sample(n_pref_eval, prng, pseen), "pref"))
        description["preference_domain"] = pref.describe()
    write_jsonl(paths.dpo, dpo_rows)
    with open(paths.world, "w", encoding="utf-8") as f:
        json.dump(description, f, indent=1)
    return paths
