"""The key/value cache used for incremental decoding, as an explicit pytree.

All sequences of a batch write at the same array index (prompts are left-padded to one length), so
one scalar `index` describes the whole cache; which slots hold real tokens is `mask_bs`.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import TransformerConfig
from rlhf_jax.models.partitioning import constrain

KEYS_BKDS = ("batch", "kv_heads", "head_dim", "length")
VALUES_BKSD = ("batch", "kv_heads", "length", "head_dim")


@flax.struct.dataclass
class KVCache:
    """Per-layer keys and values plus the slot-validity mask.

    keys: tuple of one [B, K, D, S] array per layer; values: one [B, K, S, D] per layer
      (S = cache length in tokens, K = key/value heads, D = head dim). These are the operand
      layouts of the two attention matmuls, so a decode step reads the cache without transposing
      it (a [B, S, K, D] cache made XLA transpose and copy every layer's cache on every step).
    mask_bs: bool [B, S], True where the slot holds a real (non-pad) token.
    index: int32 scalar, the next slot to write.
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    mask_bs: jax.Array
    index: jax.Array

    @property
    def length(self) -> int:
        return self.mask_bs.shape[1]


def init_cache(config: TransformerConfig, batch_size: int, length: int) -> KVCache:
    """An empty cache for `batch_size` rows of up to `length` tokens, in the activation dtype."""
    kv, dim = config.num_kv_heads, config.head_dim

    def zeros(shape, names):
        return tuple(
            constrain(jnp.zeros(shape, config.jnp_dtype), names) for _ in range(config.num_layers)
        )

    return KVCache(
        keys=zeros((batch_size, kv, dim, length), KEYS_BKDS),
        values=zeros((batch_size, kv, length, dim), VALUES_BKSD),
        mask_bs=jnp.zeros((batch_size, length), jnp.bool_),
        index=jnp.zeros((), jnp.int32),
    )
