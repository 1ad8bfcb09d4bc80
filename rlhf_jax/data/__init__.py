"""Data: tokenizers, record parsers, TFDS builders of real datasets, grain pipelines (tokenize,
truncate, pad, batch, put on the mesh) and packing. Imports only `sharding` below it, never the
world, trainers or recipes."""

from rlhf_jax.data.tokenizer import PromptBatch, Tokenizer, train_bpe_tokenizer

__all__ = ["PromptBatch", "Tokenizer", "train_bpe_tokenizer"]
