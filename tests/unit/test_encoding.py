"""The row contract's token half (axolotl_calib_plugin.encoding) on hand-made tokenizers: where two token
sequences part, which BOS rule lm-eval must follow, and a plain encoding never ending on an added EOS."""

from __future__ import annotations

import pytest

from axolotl_calib_plugin.encoding import (PROBE_PROMPT, alignment_problem, encode_plain, first_difference,
                                           training_add_bos_token)


class WordTokenizer:
    """One id per whitespace-separated word (ids from 10), with optional BOS (1) / EOS (2) added as special tokens."""

    def __init__(self, bos: bool = False, eos: bool = False):
        self.bos, self.eos, self.vocab = bos, eos, {}
        self.eos_token_id = 2
        self.name_or_path = "words"

    def __call__(self, text: str, add_special_tokens: bool = True):
        ids = [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]
        if add_special_tokens:
            ids = [1] * self.bos + ids + [2] * self.eos
        return {"input_ids": ids}

    def convert_ids_to_tokens(self, i: int) -> str:
        return {1: "<s>", 2: "</s>"}.get(i) or next(w for w, j in self.vocab.items() if j == i)


@pytest.mark.parametrize("a, b, want", [([1, 2, 3], [1, 2, 4], 2), ([1, 2], [1, 2, 3], 2), ([1, 2, 3], [1, 2], 2),
                                        ([], [5], 0), ([7], [8, 7], 0)])
def test_first_difference(a, b, want):
    assert first_difference(a, b) == want


@pytest.mark.parametrize("bos, eos, want", [(True, False, True), (False, False, False)])
def test_bos_rule_follows_the_tokenizer(bos, eos, want):
    tok = WordTokenizer(bos=bos, eos=eos)
    assert training_add_bos_token(tok, chat=False) is want
    assert training_add_bos_token(tok, chat=True) is False  # the template alone, nothing added


def test_a_tokenizer_that_appends_eos_cannot_be_scored_like_training():
    with pytest.raises(ValueError, match="'words' adds tokens after plain text"):
        training_add_bos_token(WordTokenizer(bos=True, eos=True), chat=False)


def test_plain_encoding_keeps_bos_and_drops_an_added_eos():
    tok = WordTokenizer(bos=True, eos=True)
    assert encode_plain(tok, "a b") == [1, 10, 11]
    assert len(encode_plain(tok, PROBE_PROMPT)) == 1 + len(PROBE_PROMPT.split())


def test_alignment_problem_names_the_position_and_tokens():
    tok = WordTokenizer()
    prompt, full = tok("x y z")["input_ids"], tok("x y w A")["input_ids"]
    msg = alignment_problem(tok, prompt, full)
    assert "first difference at token 2: prompt has [12:'z'], prompt+answer has [13:'w', 14:'A']" in msg
    assert alignment_problem(tok, prompt, prompt) == "the answer adds no token after the prompt"
    assert alignment_problem(tok, prompt, prompt + [9]) is None
