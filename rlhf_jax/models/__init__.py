"""Model code: configuration, decoder, heads, KV cache and transformers conversion (`hf`,
`hf_config`). Pure math: imports no other part of rlhf_jax."""

from rlhf_jax.models import hf
from rlhf_jax.models.config import LoRAConfig, RopeScaling, TransformerConfig
from rlhf_jax.models.heads import CausalLM, LMOutput, ScalarModel, ScalarOutput, ValueHead
from rlhf_jax.models.kv_cache import KVCache, init_cache
from rlhf_jax.models.transformer import Decoder, positions_from_mask

__all__ = [
    "CausalLM",
    "Decoder",
    "KVCache",
    "LMOutput",
    "LoRAConfig",
    "RopeScaling",
    "ScalarModel",
    "ScalarOutput",
    "TransformerConfig",
    "ValueHead",
    "hf",
    "init_cache",
    "positions_from_mask",
]
