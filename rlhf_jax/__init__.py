"""rlhf_jax: InstructGPT-style RLHF in JAX/Flax.

The public surface; submodules (`rlhf_jax.models.hf`, `rlhf_jax.sharding`, ...) hold the rest.
"""

from rlhf_jax import losses, sharding
from rlhf_jax.data import PromptBatch, Tokenizer, train_bpe_tokenizer
from rlhf_jax.generation import (
    GenerationOutput,
    SamplingConfig,
    check_prompts,
    make_sampler,
    sample,
)
from rlhf_jax.models import CausalLM, KVCache, ScalarModel, TransformerConfig, hf

__all__ = [
    "CausalLM",
    "GenerationOutput",
    "KVCache",
    "PromptBatch",
    "SamplingConfig",
    "ScalarModel",
    "Tokenizer",
    "TransformerConfig",
    "check_prompts",
    "hf",
    "losses",
    "make_sampler",
    "sample",
    "sharding",
    "train_bpe_tokenizer",
]
