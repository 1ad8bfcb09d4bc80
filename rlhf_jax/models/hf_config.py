"""transformers `config.json` <-> `TransformerConfig`, both directions, for the supported model
types: gpt2, llama (also SmolLM and other Llama-architecture checkpoints), mistral, qwen2 and
gpt_neox (Pythia). `rlhf_jax.models.hf` reads and writes whole checkpoints with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlhf_jax.models.config import RopeScaling, TransformerConfig

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "gpt_neox")
_GPT2_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}
_LLAMA_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}


def _rope_parameters(hf) -> dict:
    return getattr(hf, "rope_parameters", None) or {}


def _rope_from_hf(hf) -> tuple[float, RopeScaling | None]:
    rope = _rope_parameters(hf)
    theta = float(rope.get("rope_theta", getattr(hf, "rope_theta", 10_000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, RopeScaling("linear", float(rope["factor"]))
    if kind == "llama3":
        return theta, RopeScaling(
            "llama3",
            float(rope["factor"]),
            float(rope["low_freq_factor"]),
            float(rope["high_freq_factor"]),
            int(rope["original_max_position_embeddings"]),
        )
    raise ValueError(f"RoPE type {kind!r} is not supported; supported: default, linear, llama3.")


# (TransformerConfig field, transformers field) pairs that GPT-NeoX and the Llama family share;
# read in both directions.
_SHARED_FIELDS = (
    ("vocab_size", "vocab_size"),
    ("num_layers", "num_hidden_layers"),
    ("num_heads", "num_attention_heads"),
    ("embed_dim", "hidden_size"),
    ("mlp_dim", "intermediate_size"),
    ("max_len", "max_position_embeddings"),
    ("tie_embeddings", "tie_word_embeddings"),
    ("init_std", "initializer_range"),
)


def _shared_fields_from_hf(hf_config) -> dict[str, Any]:
    theta, scaling = _rope_from_hf(hf_config)
    fields = {ours: getattr(hf_config, theirs) for ours, theirs in _SHARED_FIELDS}
    fields["tie_embeddings"] = bool(fields["tie_embeddings"])
    return dict(fields, rope_theta=theta, rope_scaling=scaling)


def _shared_fields_to_hf(config: TransformerConfig) -> dict[str, Any]:
    """RoPE excepted (see `_rope_to_hf`)."""
    return {theirs: getattr(config, ours) for ours, theirs in _SHARED_FIELDS}


def config_from_hf(hf_config, **overrides) -> TransformerConfig:
    """A TransformerConfig from a transformers config object (or a dict from config.json).

    Args:
      hf_config: `transformers.PretrainedConfig` or the parsed `config.json` dict.
      **overrides: TransformerConfig fields to set (e.g. dtype="bfloat16", dropout_rate=0.1).
    """
    if isinstance(hf_config, Mapping):
        import transformers

        hf_config = transformers.AutoConfig.for_model(**dict(hf_config))
    model_type = hf_config.model_type
    if model_type == "gpt2":
        if hf_config.activation_function not in _GPT2_ACTIVATIONS:
            raise ValueError(f"gpt2 activation {hf_config.activation_function!r} is not supported.")
        if hf_config.scale_attn_by_inverse_layer_idx or hf_config.reorder_and_upcast_attn:
            raise ValueError(
                "gpt2 configs with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn "
                "are not supported."
            )
        fields = dict(
            vocab_size=hf_config.vocab_size,
            num_layers=hf_config.n_layer,
            num_heads=hf_config.n_head,
            embed_dim=hf_config.n_embd,
            mlp_dim=hf_config.n_inner or 4 * hf_config.n_embd,
            max_len=hf_config.n_positions,
            norm_eps=hf_config.layer_norm_epsilon,
            activation=_GPT2_ACTIVATIONS[hf_config.activation_function],
            init_std=hf_config.initializer_range,
        )
        fields.update(overrides)
        return TransformerConfig.gpt2(**fields)
    if model_type == "gpt_neox":
        if hf_config.hidden_act not in _GPT2_ACTIVATIONS:
            raise ValueError(f"gpt_neox activation {hf_config.hidden_act!r} is not supported.")
        fields = _shared_fields_from_hf(hf_config)
        fields.update(
            norm_eps=hf_config.layer_norm_eps,
            activation=_GPT2_ACTIVATIONS[hf_config.hidden_act],
            rotary_fraction=float(_rope_parameters(hf_config).get("partial_rotary_factor", 1.0)),
            parallel_residual=bool(hf_config.use_parallel_residual),
            qkv_bias=bool(hf_config.attention_bias),
            out_bias=bool(hf_config.attention_bias),
        )
        fields.update(overrides)
        return TransformerConfig.gpt_neox(**fields)
    if model_type in ("llama", "mistral", "qwen2"):
        if hf_config.hidden_act not in _LLAMA_ACTIVATIONS:
            raise ValueError(f"{model_type} activation {hf_config.hidden_act!r} is not supported.")
        fields = _shared_fields_from_hf(hf_config)
        fields.update(
            family=model_type,
            num_kv_heads=hf_config.num_key_value_heads or hf_config.num_attention_heads,
            head_dim=getattr(hf_config, "head_dim", None),
            norm_eps=hf_config.rms_norm_eps,
            activation=_LLAMA_ACTIVATIONS[hf_config.hidden_act],
        )
        if model_type == "llama":
            fields.update(
                qkv_bias=hf_config.attention_bias,
                out_bias=hf_config.attention_bias,
                mlp_bias=hf_config.mlp_bias,
            )
        elif model_type == "qwen2":
            fields.update(qkv_bias=True, out_bias=False, mlp_bias=False)
            if hf_config.use_sliding_window:
                raise ValueError("qwen2 with use_sliding_window=True is not supported.")
        else:  # mistral
            fields.update(sliding_window=hf_config.sliding_window)
        fields.update(overrides)
        return TransformerConfig.llama(**fields)
    raise ValueError(
        f"Unknown model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}."
    )


def _rope_to_hf(config: TransformerConfig, **extra) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta, **extra}
    if config.rope_scaling is not None:
        s = config.rope_scaling
        rope.update(rope_type=s.kind, factor=s.factor)
        if s.kind == "llama3":
            rope.update(
                low_freq_factor=s.low_freq_factor,
                high_freq_factor=s.high_freq_factor,
                original_max_position_embeddings=s.original_max_position_embeddings,
            )
    return rope


def config_to_hf(config: TransformerConfig, **extra):
    """The transformers config for `config`, e.g. to save beside exported weights.

    Args:
      config: the rlhf_jax config; its `family` picks the transformers model_type.
      **extra: further transformers config fields (bos_token_id, eos_token_id, pad_token_id, ...).
    """
    import transformers

    fam = config.family
    if fam == "gpt2":
        problems = [
            name
            for name, ok in [
                ("norm=layernorm", config.norm == "layernorm"),
                ("positions=learned", config.positions == "learned"),
                ("gated_mlp=False", not config.gated_mlp),
                ("all biases", config.qkv_bias and config.out_bias and config.mlp_bias),
                ("tie_embeddings=True", config.tie_embeddings),
                ("num_kv_heads=num_heads", config.num_kv_heads == config.num_heads),
                (
                    "head_dim*num_heads=embed_dim",
                    config.head_dim * config.num_heads == config.embed_dim,
                ),
            ]
            if not ok
        ]
        if problems:
            raise ValueError(f"Cannot export as gpt2: the config needs {', '.join(problems)}.")
        inverse = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
        fields = dict(
            vocab_size=config.vocab_size,
            n_positions=config.max_len,
            n_embd=config.embed_dim,
            n_layer=config.num_layers,
            n_head=config.num_heads,
            n_inner=config.mlp_dim,
            activation_function=inverse[config.activation],
            layer_norm_epsilon=config.norm_eps,
            resid_pdrop=config.dropout_rate,
            embd_pdrop=config.dropout_rate,
            attn_pdrop=0.0,
            initializer_range=config.init_std,
            tie_word_embeddings=True,
            architectures=["GPT2LMHeadModel"],
        )
    elif fam == "gpt_neox":
        if (
            config.norm != "layernorm"
            or config.positions != "rope"
            or config.gated_mlp
            or config.num_kv_heads != config.num_heads
            or config.qkv_bias != config.out_bias
            or not config.mlp_bias
        ):
            raise ValueError(
                "Cannot export as gpt_neox: needs layernorm, rope, a plain MLP with biases, "
                "num_kv_heads=num_heads and matching attention biases."
            )
        inverse = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
        fields = _shared_fields_to_hf(config)
        fields.update(
            layer_norm_eps=config.norm_eps,
            hidden_act=inverse[config.activation],
            use_parallel_residual=config.parallel_residual,
            attention_bias=config.qkv_bias,
            rope_parameters=_rope_to_hf(config, partial_rotary_factor=config.rotary_fraction),
            architectures=["GPTNeoXForCausalLM"],
        )
    elif fam in ("llama", "mistral", "qwen2"):
        if config.norm != "rmsnorm" or config.positions != "rope" or not config.gated_mlp:
            raise ValueError(f"Cannot export as {fam}: needs rmsnorm, rope and a gated MLP.")
        if config.rotary_fraction != 1.0 or config.parallel_residual:
            raise ValueError(f"Cannot export as {fam}: partial rotary / parallel residual.")
        inverse = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
        rope = _rope_to_hf(config)
        fields = _shared_fields_to_hf(config)
        fields.update(
            num_key_value_heads=config.num_kv_heads,
            head_dim=config.head_dim,
            rms_norm_eps=config.norm_eps,
            hidden_act=inverse[config.activation],
            rope_parameters=rope,
            architectures=[
                {
                    "llama": "LlamaForCausalLM",
                    "mistral": "MistralForCausalLM",
                    "qwen2": "Qwen2ForCausalLM",
                }[fam]
            ],
        )
        if fam == "llama":
            if config.qkv_bias != config.out_bias:
                raise ValueError(
                    "Cannot export as llama: q/k/v and output biases must match "
                    "(use family='qwen2')."
                )
            fields.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
        elif fam == "qwen2":
            if not config.qkv_bias or config.out_bias or config.mlp_bias:
                raise ValueError("Cannot export as qwen2: needs q/k/v biases only.")
        else:
            if config.qkv_bias or config.out_bias or config.mlp_bias:
                raise ValueError("Cannot export as mistral: it has no biases.")
            fields.update(sliding_window=config.sliding_window)
    else:
        raise ValueError(f"Unknown family {fam!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}.")
    fields.update(extra)
    return transformers.AutoConfig.for_model(fam, **fields)
