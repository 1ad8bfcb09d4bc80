"""Models built on the decoder: a causal LM (policy, reference, SFT) and a scalar model (RM, value).

Both keep the decoder under the same parameter name, `decoder`, so a reward or value model is
initialised from an SFT checkpoint by copying `params["decoder"]` (the LM head is dropped).
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import TransformerConfig
from rlhf_jax.models.kv_cache import KVCache
from rlhf_jax.models.transformer import Decoder


@flax.struct.dataclass
class LMOutput:
    """logits_btv: float32 [B, T, V] next-token logits; hidden_btd: [B, T, E]; cache or None."""

    logits_btv: jax.Array
    hidden_btd: jax.Array
    cache: KVCache | None


@flax.struct.dataclass
class ScalarOutput:
    """scores_bt: float32 [B, T], the head's scalar at every position; hidden_btd; cache or None."""

    scores_bt: jax.Array
    hidden_btd: jax.Array
    cache: KVCache | None


class CausalLM(nn.Module):
    """Decoder plus LM head (tied to the token embedding, or its own `lm_head`)."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        self.decoder = Decoder(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Dense(
                cfg.vocab_size,
                use_bias=False,
                dtype=cfg.jnp_dtype,
                param_dtype=cfg.jnp_param_dtype,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.normal(cfg.init_std), ("embed", "vocab")
                ),
            )

    def __call__(
        self,
        tokens_bt: jax.Array,
        attention_mask_bt: jax.Array | None = None,
        positions_bt: jax.Array | None = None,
        cache: KVCache | None = None,
        deterministic: bool = True,
        logits_start: int = 0,
        documents_bt: jax.Array | None = None,
    ) -> LMOutput:
        """See `Decoder.__call__` for the arguments; logits are upcast to float32.

        logits_start: static; logits are computed for positions >= logits_start only, so
          logits_btv is [B, T - logits_start, V] (PPO scores responses, not prompts: the LM
          head, V x E per position, is the costliest matmul of a small model).
        documents_bt: several documents packed in one row (`pipeline.TokenizeDemonstrationRow`).
        """
        out = self.decoder(
            tokens_bt,
            attention_mask_bt,
            positions_bt,
            cache,
            deterministic,
            documents_bt=documents_bt,
        )
        hidden_btd = out.hidden_btd[:, logits_start:] if logits_start else out.hidden_btd
        return LMOutput(
            logits_btv=self.head_logits(hidden_btd), hidden_btd=out.hidden_btd, cache=out.cache
        )

    def head_logits(self, hidden_btd: jax.Array) -> jax.Array:
        """The LM head alone: final hidden states [B, T, E] -> float32 logits [B, T, V]
        (`model.apply(params, hidden_btd, method=CausalLM.head_logits)`; the chunked losses call
        it on a few positions at a time)."""
        if self.config.tie_embeddings:
            logits_btv = self.decoder.attend(hidden_btd)
        else:
            logits_btv = self.lm_head(hidden_btd)
        return logits_btv.astype(jnp.float32)


class ScalarModel(nn.Module):
    """Decoder plus a linear scalar head: reward model and value function.

    The head reads every position; which position a score is taken from (the last real response
    token for a reward) is the caller's choice.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(
        self,
        tokens_bt: jax.Array,
        attention_mask_bt: jax.Array | None = None,
        positions_bt: jax.Array | None = None,
        cache: KVCache | None = None,
        deterministic: bool = True,
        segments_bt: jax.Array | None = None,
        documents_bt: jax.Array | None = None,
    ) -> ScalarOutput:
        """See `Decoder.__call__` for the arguments (segments_bt: responses sharing a prompt;
        documents_bt: several such comparisons packed in one row)."""
        cfg = self.config
        out = Decoder(cfg, name="decoder")(
            tokens_bt,
            attention_mask_bt,
            positions_bt,
            cache,
            deterministic,
            segments_bt,
            documents_bt,
        )
        scores_bt = _scalar_score(cfg, "head", out.hidden_btd)
        return ScalarOutput(scores_bt=scores_bt, hidden_btd=out.hidden_btd, cache=out.cache)


class ValueHead(nn.Module):
    """A value head on another model's backbone: a linear scalar read from its hidden states.

    PPO's option of a value function on the policy (`rlhf_jax.rl.ppo`): the policy forward already
    computes hidden_btd, so values cost one [E] x [E, 1] product per token. Its variables,
    {"params": {"head": {"kernel", "bias"}}}, have the layout of a ScalarModel's head, so a reward
    model's head can initialise it.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, hidden_btd: jax.Array) -> jax.Array:
        """hidden_btd: [B, T, E] -> float32 [B, T] values."""
        return _scalar_score(self.config, "head", hidden_btd)


def _scalar_score(cfg: TransformerConfig, name: str, hidden_btd: jax.Array) -> jax.Array:
    """float32 [B, T]: a linear E -> 1 head (in float32: scores are compared across sequences)."""
    head = nn.Dense(
        1,
        dtype=jnp.float32,
        param_dtype=cfg.jnp_param_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0 / (cfg.embed_dim + 1) ** 0.5), ("embed", None)
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
        name=name,
    )
    return head(hidden_btd.astype(jnp.float32))[..., 0]
