"""The transformer's configuration: one frozen dataclass covering the GPT-2 and Llama families.

The two families differ only in a handful of switches (norm, activation, gating, positions, biases,
tied embeddings); everything else is one code path. `TransformerConfig.gpt2(...)` and
`TransformerConfig.llama(...)` give the family defaults, and `rlhf_jax.models.hf` builds a config
from a transformers `config.json`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

Family = Literal["gpt2", "llama", "qwen2", "mistral", "gpt_neox"]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling, as transformers' `rope_parameters` describe it.

    kind: "linear" (positions divided by `factor`) or "llama3" (Llama 3.1's wavelength-dependent
      scaling between `low_freq_factor` and `high_freq_factor`).
    """

    kind: Literal["linear", "llama3"]
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


# transformers/PEFT module names -> this model's (the projections LoRA can adapt).
LORA_TARGET_ALIASES = {
    "q_proj": "query",
    "k_proj": "key",
    "v_proj": "value",
    "o_proj": "out",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
}


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters on linear projections: W x + scale * B A x, B zero at init.

    rank: r, the adapters' inner width.
    alpha: scale = alpha / r (or alpha / sqrt(r) with `rslora`, rank-stabilised LoRA).
    dropout: dropout on the adapters' input while training.
    targets: projections to adapt, by this model's names (query, key, value, out, gate, up,
      down) or transformers' (q_proj, ..., down_proj).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("query", "key", "value", "out", "gate", "up", "down")
    rslora: bool = False

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")
        if not self.targets:
            raise ValueError("LoRA needs at least one target module.")
        names = tuple(dict.fromkeys(LORA_TARGET_ALIASES.get(t, t) for t in self.targets))
        object.__setattr__(self, "targets", names)

    @property
    def scale(self) -> float:
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of a decoder-only transformer.

    Sizes are in elements (not bytes); lengths in tokens.
    """

    vocab_size: int  # number of token ids (embedding rows)
    num_layers: int  # transformer blocks
    num_heads: int  # query heads
    embed_dim: int  # residual stream width (transformers' hidden_size / n_embd)
    mlp_dim: int  # hidden width of the MLP (intermediate_size / n_inner)
    num_kv_heads: int | None = None  # key/value heads (grouped-query attention); None = num_heads
    head_dim: int | None = None  # per-head width; None = embed_dim // num_heads
    max_len: int = 1024  # longest sequence in tokens (learned position table size)
    family: Family = "gpt2"  # model_type written on export to transformers
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    activation: Literal["gelu_tanh", "gelu", "silu", "relu"] = "gelu_tanh"
    gated_mlp: bool = False  # SwiGLU-style act(gate(x)) * up(x)
    positions: Literal["learned", "rope"] = "learned"
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    rotary_fraction: float = 1.0  # share of each head's dims that RoPE rotates (Pythia: 0.25)
    parallel_residual: bool = False  # x + attn(norm1(x)) + mlp(norm2(x)) (GPT-NeoX / Pythia)
    sliding_window: int | None = None  # attend to at most this many previous tokens (Mistral)
    qkv_bias: bool = True  # biases on the query/key/value projections (GPT-2, Qwen2)
    out_bias: bool = True  # bias on the attention output projection (GPT-2)
    mlp_bias: bool = True  # biases in the MLP (GPT-2)
    norm_bias: bool = True  # LayerNorm has a bias; RMSNorm never does
    tie_embeddings: bool = True  # LM head reuses the token embedding matrix
    dropout_rate: float = (
        0.0  # on embeddings and on each residual branch (GPT-2's embd/resid_pdrop)
    )
    init_std: float = 0.02  # normal init std (transformers' initializer_range)
    dtype: str = "float32"  # activation dtype ("bfloat16" on accelerators)
    param_dtype: str = "float32"  # storage dtype of parameters
    attention_impl: Literal["xla", "cudnn"] | None = None  # jax.nn.dot_product_attention backend
    remat: bool = False  # recompute each block's activations in the backward pass (saves memory)
    lora: LoRAConfig | None = None  # low-rank adapters (their own "lora" variable collection)

    def __post_init__(self):
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            if self.embed_dim % self.num_heads:
                raise ValueError(
                    f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}; "
                    "set head_dim explicitly."
                )
            object.__setattr__(self, "head_dim", self.embed_dim // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads}."
            )
        if self.positions == "rope" and self.rotary_dim % 2:
            raise ValueError(f"RoPE needs an even number of rotated dims, got {self.rotary_dim}.")
        if self.norm == "rmsnorm" and self.norm_bias:
            object.__setattr__(self, "norm_bias", False)
        if self.lora is not None:
            modules = ("query", "key", "value", "out", "up", "down") + ("gate",) * self.gated_mlp
            unknown = [t for t in self.lora.targets if t not in modules]
            if unknown:
                raise ValueError(
                    f"LoRA targets {unknown} match no module of a {self.family} model; its "
                    f"projections are {', '.join(modules)}."
                )

    @property
    def rotary_dim(self) -> int:
        """Leading dims of each head that RoPE rotates (transformers: partial_rotary_factor)."""
        return int(self.head_dim * self.rotary_fraction)

    @property
    def jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> TransformerConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def gpt2(cls, **kwargs) -> TransformerConfig:
        """GPT-2 family: learned positions, LayerNorm, tanh-GELU, biases, tied embeddings."""
        if "mlp_dim" not in kwargs and "embed_dim" in kwargs:
            kwargs["mlp_dim"] = 4 * kwargs["embed_dim"]
        return cls(**{**_FAMILY_DEFAULTS["gpt2"], **kwargs})

    @classmethod
    def gpt_neox(cls, **kwargs) -> TransformerConfig:
        """GPT-NeoX / Pythia: partial RoPE, LayerNorm, exact GELU, parallel residual, untied."""
        return cls(**{**_FAMILY_DEFAULTS["gpt_neox"], **kwargs})

    @classmethod
    def llama(cls, **kwargs) -> TransformerConfig:
        """Llama family: RoPE, RMSNorm, SwiGLU, no biases, untied embeddings (Qwen2: override)."""
        return cls(**{**_FAMILY_DEFAULTS["llama"], **kwargs})


# What distinguishes each family; everything else is one code path.
_FAMILY_DEFAULTS: dict[str, dict] = {
    "gpt2": dict(
        family="gpt2",
        norm="layernorm",
        activation="gelu_tanh",
        gated_mlp=False,
        positions="learned",
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
    ),
    "gpt_neox": dict(
        family="gpt_neox",
        norm="layernorm",
        activation="gelu",
        gated_mlp=False,
        positions="rope",
        rotary_fraction=0.25,
        parallel_residual=True,
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_embeddings=False,
    ),
    "llama": dict(
        family="llama",
        norm="rmsnorm",
        norm_eps=1e-6,
        activation="silu",
        gated_mlp=True,
        positions="rope",
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
        tie_embeddings=False,
    ),
}
