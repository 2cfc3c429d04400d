"""Tiny Llama models with a locally trained byte-level BPE tokenizer.

Real users load 7B-70B checkpoints from the hub; tests, the demo and the benchmarks build these
instead, so nothing ever needs the network. The tokenizer is guaranteed to encode every option
letter (``"A"``/``" A"`` .. ``"J"``/``" J"``, the default ``calib_option_letters``) as a single token and ships a small chat template.
"""

from __future__ import annotations

import os
from typing import Iterable

from ..prompts import DEFAULT_LETTERS, format_mcq_prompt

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def default_corpus(n: int = 400) -> list[str]:
    """A small MCQ-flavoured corpus: enough for BPE to learn ``" A"``-style merges."""
    words = ("alpha beta gamma delta red green blue cat dog the of and what which is true false "
             "question answer option heart lung cell atom light water energy force mass").split()
    out = []
    for i in range(n):
        q = " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(6)) + "?"
        choices = [" ".join(words[(i + j * 5 + t) % len(words)] for t in range(2)) for j in range(5)]
        out.append(format_mcq_prompt(q, choices[: 2 + i % 4]) + " " + DEFAULT_LETTERS[i % 5])
    return out


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 600, chat_template: bool = True,
                    add_bos: bool = True):
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it as a ``PreTrainedTokenizerFast``.

    ``add_bos=False``: the tokenizer still names ``<s>`` as its BOS token but adds nothing to plain text
    (as GPT-2 style tokenizers such as SmolLM2's do), so the prompt paths of both kinds can be tested."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = list(corpus) if corpus is not None else default_corpus()
    letters = list(DEFAULT_LETTERS)
    # Repeat the letters so BPE always learns the " A" .. " J" merges, whatever the corpus.
    corpus = corpus + [" ".join(f"Answer: {c}" for c in letters)] * 50
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(corpus, trainer=trainer)
    if add_bos:
        bos = tk.token_to_id("<s>")
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                          special_tokens=[("<s>", bos)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
    )
    tok.padding_side = "right"
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    for c in letters:
        for text in (c, " " + c):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:  # pragma: no cover - guarded by the letter corpus above
                raise RuntimeError(f"tiny tokenizer splits option letter {text!r} into {ids}")
    return tok


def build_llama(tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                intermediate_size: int | None = None, max_position_embeddings: int = 512, seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` sized for CPU tests (float32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    return model.to(torch.float32)


def make_tiny_model_dir(path: str | os.PathLike, corpus: Iterable[str] | None = None, seed: int = 0,
                        add_bos: bool = True, **model_kw) -> str:
    """Build a tokenizer + tiny Llama and ``save_pretrained`` both into ``path``; returns the path."""
    path = os.fspath(path)
    tok = build_tokenizer(corpus, add_bos=add_bos)
    model = build_llama(tok, seed=seed, **model_kw)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
