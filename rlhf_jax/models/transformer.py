"""Decoder-only transformer (linen) for the GPT-2 and Llama families, with an explicit KV cache.

Conventions (shared by every stage):
- token ids int32 [B, T]; `attention_mask_bt` bool [B, T], True on real tokens;
- prompts are left-padded, so the last array position of a prompt is its last real token;
- positions come from the attention mask (`positions_from_mask`), never from the array index, so a
  left-padded row computes exactly what the same row unpadded would;
- causality is by array index, which equals causality by position for real tokens because padding is
  only on the left of each row and new tokens are appended at the same index for every row.

Every parameter carries logical axis names (see `rlhf_jax.sharding`):
  vocab, embed, heads, kv_heads, head_dim, mlp, norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import TransformerConfig
from rlhf_jax.models.kv_cache import KVCache
from rlhf_jax.models.partitioning import constrain
from rlhf_jax.models.rope import apply_rope, inverse_frequencies

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}

# Logical names of activations; `rlhf_jax.sharding` maps them to mesh axes.
ACT_BTD = ("batch", "length", "act_embed")


def positions_from_mask(mask_bt: jax.Array, offset_b: jax.Array | None = None) -> jax.Array:
    """Position of each token: the number of real tokens before it in its row.

    Args:
      mask_bt: bool [B, T], True on real tokens.
      offset_b: optional int [B] real tokens already in the row (e.g. in the KV cache).

    Returns:
      int32 [B, T]; padding slots get the position of the next real token (clipped at 0), which
      keeps them inside a learned position table and is never read for a real token.
    """
    positions = jnp.cumsum(mask_bt.astype(jnp.int32), axis=-1) - 1
    if offset_b is not None:
        positions = positions + offset_b[:, None].astype(jnp.int32)
    return jnp.maximum(positions, 0)


def _param_init(config: TransformerConfig, names: tuple[str | None, ...], std: float | None = None):
    return nn.with_logical_partitioning(nn.initializers.normal(std or config.init_std), names)


def _zeros(names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def make_norm(config: TransformerConfig, name: str) -> nn.Module:
    """LayerNorm (GPT-2) or RMSNorm (Llama); statistics in float32."""
    scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",))
    common = dict(
        epsilon=config.norm_eps,
        dtype=config.jnp_dtype,
        param_dtype=config.jnp_param_dtype,
        scale_init=scale_init,
        name=name,
    )
    if config.norm == "rmsnorm":
        return nn.RMSNorm(**common)
    return nn.LayerNorm(
        use_bias=config.norm_bias,
        bias_init=_zeros(("norm",)),
        # E[x^2] - E[x]^2 loses precision; transformers uses the two-pass form.
        use_fast_variance=False,
        **common,
    )


def _lookup(table_ne: jax.Array, ids_bt: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Rows of an embedding table: [N, E] x int [B, T] -> [B, T, E]."""
    # Gather from a replicated view of the table (the all-gather FSDP does for every weight): a
    # gather from a sharded table into batch-sharded rows makes XLA rematerialize its output.
    table_ne = constrain(table_ne, (None, None))
    return jnp.take(table_ne, ids_bt, axis=0).astype(dtype)


def cached_attention(
    q_bthd: jax.Array, keys_bkds: jax.Array, values_bksd: jax.Array, mask_b1ts: jax.Array
) -> jax.Array:
    """Attention of T new queries over the KV cache, in the cache's own layouts.

    Written as two einsums rather than through `jax.nn.dot_product_attention` because that takes
    keys as [B, S, K, D], a layout which forces a transpose of the whole cache on every decode
    step. Softmax in float32.

    Args:
      q_bthd: [B, T, H, D] queries (H a multiple of K).
      keys_bkds: [B, K, D, S]; values_bksd: [B, K, S, D].
      mask_b1ts: bool [B, 1, T, S], True where a query may attend to a slot; every query row must
        allow at least one slot.

    Returns:
      [B, T, H, D].
    """
    batch, length, heads, dim = q_bthd.shape
    kv_heads = keys_bkds.shape[1]
    groups = heads // kv_heads
    q_bkgtd = q_bthd.reshape(batch, length, kv_heads, groups, dim).transpose(0, 2, 3, 1, 4)
    scores_bkgts = jnp.einsum(
        "bkgtd,bkds->bkgts", q_bkgtd, keys_bkds, preferred_element_type=jnp.float32
    ) / jnp.sqrt(jnp.float32(dim))
    scores_bkgts = jnp.where(mask_b1ts[:, :, None], scores_bkgts, -jnp.inf)
    probs_bkgts = jax.nn.softmax(scores_bkgts, axis=-1).astype(values_bksd.dtype)
    out_bkgtd = jnp.einsum("bkgts,bksd->bkgtd", probs_bkgts, values_bksd)
    return (
        out_bkgtd.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, dim).astype(q_bthd.dtype)
    )


class Projection(nn.Module):
    """Linear map over the last `in_ndim` axes: kernel [*in_dims, *out_dims], bias [*out_dims].

    Used instead of `nn.DenseGeneral`, whose flattened-kernel shape check does not compose with
    logical-axis constraints on multi-dimensional kernels.
    """

    out_dims: tuple[int, ...]
    in_ndim: int
    kernel_names: tuple[str | None, ...]
    use_bias: bool
    config: TransformerConfig
    init_std: float | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kernel_shape = x.shape[x.ndim - self.in_ndim :] + tuple(self.out_dims)
        kernel = self.param(
            "kernel",
            _param_init(cfg, self.kernel_names, self.init_std),
            kernel_shape,
            cfg.jnp_param_dtype,
        )
        x, kernel = x.astype(cfg.jnp_dtype), kernel.astype(cfg.jnp_dtype)
        y = jnp.tensordot(x, kernel, axes=self.in_ndim)
        lora = cfg.lora
        # Adapters exist once initialised; applied without the "lora" collection (a reference
        # policy), the model is the base model.
        if lora is not None and self.name in lora.targets:
            if self.is_initializing() or self.has_variable("lora", "a"):
                y = y + self._low_rank(x, kernel_shape, lora)
        if self.use_bias:
            bias_names = self.kernel_names[self.in_ndim :]
            bias = self.param("bias", _zeros(bias_names), tuple(self.out_dims), cfg.jnp_param_dtype)
            y = y + bias.astype(cfg.jnp_dtype)
        return y

    def _low_rank(self, x: jax.Array, kernel_shape: tuple[int, ...], lora) -> jax.Array:
        """scale * (x A) B with A [*in_dims, r] and B [r, *out_dims] in the "lora" collection;
        A uniform in +-1/sqrt(fan_in) (PEFT's default), B zero, so the model starts as the base.
        Dropout on x only while training (when a "dropout" rng is given)."""
        cfg = self.config
        in_shape = kernel_shape[: self.in_ndim]
        a_names = (*self.kernel_names[: self.in_ndim], "lora_rank")
        b_names = ("lora_rank", *self.kernel_names[self.in_ndim :])
        bound = 1.0 / math.prod(in_shape) ** 0.5
        a_init = nn.with_logical_partitioning(
            lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound),
            a_names,
        )
        b_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), b_names)
        shape_a, shape_b = (*in_shape, lora.rank), (lora.rank, *self.out_dims)
        dtype = cfg.jnp_param_dtype
        a = self.variable("lora", "a", lambda: a_init(self.make_rng("params"), shape_a, dtype))
        b = self.variable("lora", "b", lambda: b_init(None, shape_b, dtype))
        if lora.dropout:
            x = nn.Dropout(lora.dropout, deterministic=not self.has_rng("dropout"))(x)
        x_r = jnp.tensordot(x, a.value.astype(cfg.jnp_dtype), axes=self.in_ndim)
        return jnp.tensordot(x_r, b.value.astype(cfg.jnp_dtype), axes=1) * lora.scale


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention through `jax.nn.dot_product_attention`."""

    config: TransformerConfig

    @nn.compact
    def __call__(
        self,
        x_btd: jax.Array,
        positions_bt: jax.Array,
        mask_b1ts: jax.Array,
        layer_cache: tuple[jax.Array, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Args: x [B,T,E]; positions int [B,T]; mask bool [B,1,T,S]; layer_cache ([B,S,K,D],)*2.

        Returns: output [B,T,E] and the updated (keys, values) cache of this layer (or None).
        """
        cfg = self.config

        def projection(heads: int, name: str, heads_axis: str) -> nn.Module:
            names = ("embed", heads_axis, "head_dim")
            return Projection((heads, cfg.head_dim), 1, names, cfg.qkv_bias, cfg, name=name)

        q_bthd = projection(cfg.num_heads, "query", "heads")(x_btd)
        k_btkd = projection(cfg.num_kv_heads, "key", "kv_heads")(x_btd)
        v_btkd = projection(cfg.num_kv_heads, "value", "kv_heads")(x_btd)
        if cfg.positions == "rope":
            inv_freq = inverse_frequencies(cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling)
            q_bthd = apply_rope(q_bthd, positions_bt, inv_freq)
            k_btkd = apply_rope(k_btkd, positions_bt, inv_freq)

        new_cache = None
        if layer_cache is None:
            out_bthd = jax.nn.dot_product_attention(
                q_bthd, k_btkd, v_btkd, mask=mask_b1ts, implementation=cfg.attention_impl
            )
        else:
            keys_bkds, values_bksd = layer_cache
            keys_bkds = jax.lax.dynamic_update_slice(
                keys_bkds,
                k_btkd.transpose(0, 2, 3, 1).astype(keys_bkds.dtype),
                (0, 0, 0, cache_index),
            )
            values_bksd = jax.lax.dynamic_update_slice(
                values_bksd,
                v_btkd.transpose(0, 2, 1, 3).astype(values_bksd.dtype),
                (0, 0, cache_index, 0),
            )
            new_cache = (keys_bkds, values_bksd)
            out_bthd = cached_attention(q_bthd, keys_bkds, values_bksd, mask_b1ts)
        out_btd = Projection(
            (cfg.embed_dim,),
            2,
            ("heads", "head_dim", "embed"),
            cfg.out_bias,
            cfg,
            init_std=cfg.init_std / (2 * cfg.num_layers) ** 0.5,
            name="out",
        )(out_bthd)
        return out_btd, new_cache


class MLP(nn.Module):
    """act(up(x)) or, gated, act(gate(x)) * up(x); then down."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_btd: jax.Array) -> jax.Array:
        cfg = self.config

        def dense(features: int, names: tuple[str, str], name: str, std: float | None = None):
            return Projection((features,), 1, names, cfg.mlp_bias, cfg, init_std=std, name=name)

        activation = _ACTIVATIONS[cfg.activation]
        up_btf = dense(cfg.mlp_dim, ("embed", "mlp"), "up")(x_btd)
        if cfg.gated_mlp:
            hidden_btf = activation(dense(cfg.mlp_dim, ("embed", "mlp"), "gate")(x_btd)) * up_btf
        else:
            hidden_btf = activation(up_btf)
        down_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
        return dense(cfg.embed_dim, ("mlp", "embed"), "down", down_std)(hidden_btf)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(.)).

    With `parallel_residual` (GPT-NeoX), both branches read x: x + attn(norm1(x)) + mlp(norm2(x)).
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_btd, positions_bt, mask_b1ts, layer_cache, cache_index, deterministic):
        cfg = self.config
        dropout = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)
        attn_out, new_layer_cache = Attention(cfg, name="attn")(
            make_norm(cfg, "attn_norm")(x_btd), positions_bt, mask_b1ts, layer_cache, cache_index
        )
        attn_out = dropout(attn_out)
        mlp = lambda h_btd: dropout(MLP(cfg, name="mlp")(make_norm(cfg, "mlp_norm")(h_btd)))
        if cfg.parallel_residual:
            x_btd = x_btd + attn_out + mlp(x_btd)
        else:
            x_btd = x_btd + attn_out
            x_btd = x_btd + mlp(x_btd)
        return constrain(x_btd, ACT_BTD), new_layer_cache


@flax.struct.dataclass
class DecoderOutput:
    """hidden_btd: final-norm hidden states [B, T, E]; cache: updated KVCache or None."""

    hidden_btd: jax.Array
    cache: KVCache | None


@jax.custom_vjp
def tied_logits(hidden_btd: jax.Array, embedding_ve: jax.Array) -> jax.Array:
    """hidden [B, T, E] x embedding [V, E] -> logits [B, T, V] (the tied LM head).

    The same product as `nn.Embed.attend`, with a hand-written backward: the embedding's
    gradient is computed as hidden^T @ dlogits ([E, V], then transposed), so the [B*T, V]
    gradient of the logits is read in its own layout. Autodiff's dlogits^T @ hidden made XLA:CPU
    copy that whole array into transposed form first (about a fifth of an SFT step's time at
    vocab 8192, measured by `rlhf_jax.benchmarks`' workload (a)).
    """
    return jnp.dot(hidden_btd, embedding_ve.T)


def _tied_logits_fwd(hidden_btd, embedding_ve):
    return tied_logits(hidden_btd, embedding_ve), (hidden_btd, embedding_ve)


def _tied_logits_bwd(residuals, dlogits_btv):
    hidden_btd, embedding_ve = residuals
    dhidden_btd = jnp.einsum("btv,ve->bte", dlogits_btv, embedding_ve)
    dembedding_ev = jnp.einsum("bte,btv->ev", hidden_btd, dlogits_btv)
    return dhidden_btd, dembedding_ev.T


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


class Decoder(nn.Module):
    """Token (+ learned position) embedding, the blocks, and the final norm."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        self.embed = nn.Embed(
            cfg.vocab_size,
            cfg.embed_dim,
            dtype=cfg.jnp_dtype,
            param_dtype=cfg.jnp_param_dtype,
            embedding_init=_param_init(cfg, ("vocab", "embed")),
        )
        if cfg.positions == "learned":
            self.pos_embed = nn.Embed(
                cfg.max_len,
                cfg.embed_dim,
                dtype=cfg.jnp_dtype,
                param_dtype=cfg.jnp_param_dtype,
                embedding_init=_param_init(cfg, (None, "embed"), 0.01),
            )
        # Under remat, `deterministic` (argument 6, counting the module) must stay a Python bool.
        block = nn.remat(Block, static_argnums=(6,)) if cfg.remat else Block
        self.layers = [block(cfg, name=f"layer_{i}") for i in range(cfg.num_layers)]
        self.final_norm = make_norm(cfg, "final_norm")
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def __call__(
        self,
        tokens_bt: jax.Array,
        attention_mask_bt: jax.Array | None = None,
        positions_bt: jax.Array | None = None,
        cache: KVCache | None = None,
        deterministic: bool = True,
        segments_bt: jax.Array | None = None,
        documents_bt: jax.Array | None = None,
    ) -> DecoderOutput:
        """Runs the decoder over T new tokens, optionally appending them to a KV cache.

        Args:
          tokens_bt: int32 [B, T].
          attention_mask_bt: bool [B, T], True on real tokens (default: all True).
          positions_bt: int [B, T]; default from the mask (and the cache's real tokens).
          cache: KVCache with at least T free slots after `cache.index`, or None.
          deterministic: disables dropout when True.
          segments_bt: int [B, T] or None (no cache). Several sequences sharing one prefix in a
            row: segment 0 is the shared prefix and a token of segment k > 0 attends only to the
            prefix and to earlier tokens of segment k, so each segment computes what it would
            after the prefix alone (give `positions_bt` to match: the prefix's, then each
            segment's continuing from the prefix's end).
          documents_bt: int [B, T] or None (no cache). Independent documents packed in one row: a
            token attends only to tokens of its own document (give `positions_bt` restarting at
            each document; with `segments_bt`, each document has its own prefix, segment 0).

        Returns:
          DecoderOutput with hidden states [B, T, E] and the updated cache.
        """
        cfg = self.config
        batch, length = tokens_bt.shape
        if attention_mask_bt is None:
            attention_mask_bt = jnp.ones((batch, length), jnp.bool_)
        attention_mask_bt = attention_mask_bt.astype(jnp.bool_)
        query_idx_t = jnp.arange(length)
        if cache is None:
            key_mask_bs = attention_mask_bt
            key_idx_s = query_idx_t
            cache_index = None
            offset_b = None
        else:
            cache_index = cache.index
            key_idx_s = jnp.arange(cache.length)
            offset_b = jnp.sum(cache.mask_bs & (key_idx_s < cache_index), axis=-1)
            key_mask_bs = jax.lax.dynamic_update_slice(
                cache.mask_bs, attention_mask_bt, (0, cache_index)
            )
            query_idx_t = query_idx_t + cache_index
        if positions_bt is None:
            positions_bt = positions_from_mask(attention_mask_bt, offset_b)

        allowed_ts = key_idx_s[None, :] <= query_idx_t[:, None]
        if cfg.sliding_window is not None and segments_bt is None:
            allowed_ts &= query_idx_t[:, None] - key_idx_s[None, :] < cfg.sliding_window
        allowed_bts = allowed_ts[None] & key_mask_bs[:, None, :]
        if segments_bt is not None:
            if cache is not None:
                raise ValueError("segments_bt is for full sequences, not decoding with a cache.")
            same_bts = segments_bt[:, :, None] == segments_bt[:, None, :]
            allowed_bts &= same_bts | (segments_bt[:, None, :] == 0)
            if cfg.sliding_window is not None:  # the window counts positions, not row slots
                distance_bts = positions_bt[:, :, None] - positions_bt[:, None, :]
                allowed_bts &= distance_bts < cfg.sliding_window
        if documents_bt is not None:
            if cache is not None:
                raise ValueError("documents_bt is for full sequences, not decoding with a cache.")
            allowed_bts &= documents_bt[:, :, None] == documents_bt[:, None, :]
        # A padding query would otherwise have no key to attend to (an all-masked softmax row);
        # letting every query see its own slot keeps it finite and changes no real token.
        allowed_bts |= (query_idx_t[:, None] == key_idx_s[None, :])[None]
        mask_b1ts = allowed_bts[:, None]

        x_btd = _lookup(self.embed.embedding, tokens_bt, cfg.jnp_dtype)
        if cfg.positions == "learned":
            x_btd = x_btd + _lookup(self.pos_embed.embedding, positions_bt, cfg.jnp_dtype)
        x_btd = constrain(self.dropout(x_btd, deterministic), ACT_BTD)

        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            x_btd, new_layer_cache = layer(
                x_btd, positions_bt, mask_b1ts, layer_cache, cache_index, deterministic
            )
            if new_layer_cache is not None:
                new_keys.append(new_layer_cache[0])
                new_values.append(new_layer_cache[1])
        hidden_btd = self.final_norm(x_btd)

        new_cache = None
        if cache is not None:
            new_cache = KVCache(
                keys=tuple(new_keys),
                values=tuple(new_values),
                mask_bs=key_mask_bs,
                index=cache.index + length,
            )
        return DecoderOutput(hidden_btd=hidden_btd, cache=new_cache)

    def attend(self, hidden_btd: jax.Array) -> jax.Array:
        """Logits through the (tied) token embedding: [B, T, E] -> [B, T, V]."""
        dtype = self.config.jnp_dtype
        return tied_logits(hidden_btd.astype(dtype), self.embed.embedding.astype(dtype))
