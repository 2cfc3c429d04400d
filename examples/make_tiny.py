"""Build the offline inputs of ``examples/tiny_cpu_*.yml``: a tiny local Llama and a small MCQ JSONL.

    python examples/make_tiny.py            # writes ./outputs/tiny-model and ./outputs/tiny_mcq.jsonl
    axolotl train examples/tiny_cpu_cft.yml

Run it from the repository root (the tiny configs use paths relative to it). Nothing is
downloaded: the tokenizer is trained locally on an MCQ-flavoured corpus and the model is a
randomly initialised 2-layer Llama (float32, ~100 KB), so the run only shows that the pipeline
works, not that anything is learned.

The questions have a learnable rule (the answer is the choice from the asked-for category) and
2-5 choices each, answers given as an index, a letter or the choice text, to exercise the strategy.
"""

from __future__ import annotations

import argparse
import json
import os
import random

CATEGORIES = {
    "colour": ["red", "green", "blue", "gold"],
    "animal": ["cat", "dog", "owl", "fox"],
    "organ": ["heart", "lung", "liver", "skin"],
    "element": ["water", "light", "atom", "fire"],
}
LETTERS = "ABCDE"


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows: "Which of these is a(n) <category>?" with one member of it among 2-5 choices."""
    rng = random.Random(seed)
    names = sorted(CATEGORIES)
    rows = []
    for i in range(n):
        cat = names[i % len(names)]
        k = 2 + i % 4
        others = [w for c in names if c != cat for w in CATEGORIES[c]]
        choices = rng.sample(others, k - 1)
        gold = rng.randrange(k)
        choices.insert(gold, rng.choice(CATEGORIES[cat]))
        answer = [gold, LETTERS[gold], choices[gold]][i % 3]
        article = "an" if cat[0] in "aeiou" else "a"
        rows.append({"id": i, "question": f"Which of these is {article} {cat}?", "choices": choices, "answer": answer,
                     "subject": cat})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs", help="output folder (default: ./outputs)")
    parser.add_argument("--rows", type=int, default=96, help="number of MCQ rows (default: 96)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    from axolotl_calib_plugin.testing import make_tiny_model_dir

    os.makedirs(args.out, exist_ok=True)
    model_dir = make_tiny_model_dir(os.path.join(args.out, "tiny-model"), seed=args.seed)
    data = os.path.join(args.out, "tiny_mcq.jsonl")
    with open(data, "w", encoding="utf-8") as fh:
        for row in make_rows(args.rows, args.seed):
            fh.write(json.dumps(row) + "\n")  # mixed int/str answers load as a Json column (datasets >= 4)
    print(f"tiny model: {model_dir}\nMCQ data:   {data} ({args.rows} rows)")


if __name__ == "__main__":
    main()
