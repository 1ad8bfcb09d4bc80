"""Data: tokenizers (and, in later stages, TFDS builders and grain pipelines)."""

from rlhf_jax.data.tokenizer import PromptBatch, Tokenizer, train_bpe_tokenizer

__all__ = ["PromptBatch", "Tokenizer", "train_bpe_tokenizer"]
