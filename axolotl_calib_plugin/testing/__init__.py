"""Helpers to build tiny local models and data (tests, demo, benchmarks): no hub access, ever."""

from .tiny import build_llama, build_tokenizer, default_corpus, make_tiny_model_dir

__all__ = ["build_llama", "build_tokenizer", "default_corpus", "make_tiny_model_dir"]
