"""Regenerate the local fixtures: small invented MCQ sets in each hub dataset's schema.

    python lm_eval_tasks/calib/data/make_fixtures.py

Every question is invented from templates here (arithmetic, units, made-up words); nothing is copied
from the real datasets. Deterministic (seeded), so the committed files are reproducible.
"""

from __future__ import annotations

import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
SUBJECTS = ["abstract_algebra", "anatomy", "astronomy", "college_physics", "high_school_biology",
            "marketing", "philosophy", "world_religions"]
WORDS = ["zorble", "quint", "miravel", "tesk", "plonder", "vashti", "grumel", "osket", "fendra", "lurb"]
MEANINGS = ["river", "lantern", "harvest", "copper", "whisper", "meadow", "anchor", "thunder", "basket", "mirror"]


def make_question(rng: random.Random, i: int, k: int) -> tuple[str, list[str], int]:
    """(question, K choices, gold index); the gold position is drawn uniformly."""
    kind = i % 5
    if kind == 0:
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        q, right, pool = f"What is {a} + {b}?", str(a + b), [str(a + b + d) for d in (-3, -2, -1, 1, 2, 3, 10, -10)]
    elif kind == 1:
        h = rng.randint(2, 9)
        q, right, pool = f"How many minutes are in {h} hours?", str(60 * h), [str(60 * h + d) for d in (-30, -15, 15, 30, 45, 60, 90, -60)]
    elif kind == 2:
        j = rng.randrange(len(WORDS))
        q = f"In the invented language Velori, the word '{WORDS[j]}' names an everyday thing. Which one?"
        right, pool = MEANINGS[j], [m for m in MEANINGS if m != MEANINGS[j]]
    elif kind == 3:
        w = rng.choice(WORDS)
        q, right, pool = f"How many letters does the made-up word '{w}' have?", str(len(w)), [str(len(w) + d) for d in (-2, -1, 1, 2, 3, 4)]
    else:
        xs = rng.sample(range(100, 999), 8)
        q = "Which of the following numbers is the largest?"
        right, pool = str(max(xs[:k])), [str(x) for x in xs[:k] if x != max(xs[:k])]
        pool += [str(x) for x in xs[k:] if x < max(xs[:k])]
    wrong = [c for c in dict.fromkeys(pool) if c != right][: k - 1]
    gold = rng.randrange(k)
    choices = wrong[:gold] + [right] + wrong[gold:]
    return q, choices, gold


def write(name: str, rows: list[dict]) -> None:
    with open(os.path.join(HERE, f"{name}.jsonl"), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(1234)
    L = "ABCDE"

    rows = []
    for i in range(30):
        q, c, g = make_question(rng, i, 4)
        rows.append({"question": q, "subject": SUBJECTS[i % len(SUBJECTS)], "choices": c, "answer": g})
    write("calib_mmlu", rows)

    rows = []
    for i in range(24):
        q, c, g = make_question(rng, i + 1, 4)
        rows.append({"id": f"med-{i:03d}", "question": q, "opa": c[0], "opb": c[1], "opc": c[2], "opd": c[3],
                     "cop": g, "choice_type": "single", "exp": None, "subject_name": "Invented", "topic_name": None})
    write("calib_medmcqa", rows)

    rows = []
    for i in range(24):
        q, c, g = make_question(rng, i + 2, 4)
        rows.append({"id": f"obqa-{i:03d}", "question_stem": q, "choices": {"text": c, "label": list(L[:4])},
                     "answerKey": L[g]})
    write("calib_openbookqa", rows)

    rows = []
    for i in range(24):
        k = (3, 4, 4, 5)[i % 4]  # ARC has 3-, 4- and 5-option items
        q, c, g = make_question(rng, i + 3, k)
        labels = [str(j + 1) for j in range(k)] if i % 6 == 5 else list(L[:k])  # some ARC items use 1-4 labels
        rows.append({"id": f"arc-{i:03d}", "question": q, "choices": {"text": c, "label": labels}, "answerKey": labels[g]})
    write("calib_arc_challenge", rows)

    rows = []
    for i in range(20):
        q, c, g = make_question(rng, i + 4, 5)
        rows.append({"id": f"csqa-{i:03d}", "question": q, "question_concept": "invented",
                     "choices": {"label": list(L), "text": c}, "answerKey": L[g]})
    write("calib_commonsense_qa", rows)

    rows = []
    for i in range(20):
        q, c, g = make_question(rng, i, 4)
        d = [x for j, x in enumerate(c) if j != g]
        rows.append({"question": q, "distractor1": d[0], "distractor2": d[1], "distractor3": d[2],
                     "correct_answer": c[g], "support": "An invented supporting paragraph."})
    write("calib_sciq", rows)

    # project schema (calib_jsonl): answers as index, letter and choice text
    rows = []
    for i in range(16):
        k = (2, 3, 4, 5)[i % 4]
        q, c, g = make_question(rng, i, k)
        ans = (g, L[g], c[g])[i % 3]
        rows.append({"id": f"mcq-{i:03d}", "question": q, "choices": c, "answer": ans})
    write("mcq_sample", rows)


if __name__ == "__main__":
    main()
