"""transformers checkpoints <-> rlhf_jax params, both directions, without torch.

Reads a directory with `config.json` plus `model.safetensors` (or a sharded
`model.safetensors.index.json`), or a hub id for users with internet; writes a directory that
`transformers.AutoModelForCausalLM.from_pretrained` loads. Weights are only ever read from
safetensors (no pickle), and `trust_remote_code` is never enabled.

Supported model types: gpt2, llama (also SmolLM and other Llama-architecture checkpoints), mistral,
qwen2, gpt_neox (Pythia). Each is described once, as a table of `Entry`s that is read in both
directions.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors)
import numpy as np
import safetensors
import safetensors.numpy

from rlhf_jax.models.config import TransformerConfig
from rlhf_jax.models.hf_config import SUPPORTED_MODEL_TYPES, config_from_hf, config_to_hf

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "config_from_hf",
    "config_to_hf",
    "load_pretrained",
    "params_from_hf",
    "params_to_hf",
    "save_pretrained",
]

Params = dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Weight tables: one description per family, read in both directions.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One transformers tensor and the rlhf_jax leaves it becomes.

    to_ours maps the transformers array to a tuple of our arrays (one per path); to_hf inverts it.
    hf_shape is the transformers tensor's shape under the config (checked on load).
    """

    hf_name: str
    paths: tuple[tuple[str, ...], ...]
    to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_hf: Callable[..., np.ndarray]
    hf_shape: tuple[int, ...]


def _same(name: str, path: tuple[str, ...], shape: tuple[int, ...]) -> Entry:
    return Entry(name, (path,), lambda a: (a,), lambda a: a, shape)


def _gpt2_entries(cfg: TransformerConfig) -> Iterator[Entry]:
    e, h, d, f = cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
    dec = ("decoder",)
    yield _same("wte.weight", dec + ("embed", "embedding"), (cfg.vocab_size, e))
    yield _same("wpe.weight", dec + ("pos_embed", "embedding"), (cfg.max_len, e))
    yield _same("ln_f.weight", dec + ("final_norm", "scale"), (e,))
    yield _same("ln_f.bias", dec + ("final_norm", "bias"), (e,))
    for i in range(cfg.num_layers):
        hf, ours = f"h.{i}.", dec + (f"layer_{i}",)
        for hf_ln, our_ln in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            yield _same(f"{hf}{hf_ln}.weight", ours + (our_ln, "scale"), (e,))
            yield _same(f"{hf}{hf_ln}.bias", ours + (our_ln, "bias"), (e,))
        qkv = tuple(ours + ("attn", n) for n in ("query", "key", "value"))
        # Conv1D stores [in, out]; c_attn's out axis is q | k | v, each heads x head_dim.
        yield Entry(
            f"{hf}attn.c_attn.weight",
            tuple(p + ("kernel",) for p in qkv),
            lambda a: tuple(x.reshape(e, h, d) for x in np.split(a, 3, axis=1)),
            lambda *xs: np.concatenate([x.reshape(e, h * d) for x in xs], axis=1),
            (e, 3 * h * d),
        )
        yield Entry(
            f"{hf}attn.c_attn.bias",
            tuple(p + ("bias",) for p in qkv),
            lambda a: tuple(x.reshape(h, d) for x in np.split(a, 3)),
            lambda *xs: np.concatenate([x.reshape(h * d) for x in xs]),
            (3 * h * d,),
        )
        yield Entry(
            f"{hf}attn.c_proj.weight",
            (ours + ("attn", "out", "kernel"),),
            lambda a: (a.reshape(h, d, e),),
            lambda a: a.reshape(h * d, e),
            (h * d, e),
        )
        yield _same(f"{hf}attn.c_proj.bias", ours + ("attn", "out", "bias"), (e,))
        yield _same(f"{hf}mlp.c_fc.weight", ours + ("mlp", "up", "kernel"), (e, f))
        yield _same(f"{hf}mlp.c_fc.bias", ours + ("mlp", "up", "bias"), (f,))
        yield _same(f"{hf}mlp.c_proj.weight", ours + ("mlp", "down", "kernel"), (f, e))
        yield _same(f"{hf}mlp.c_proj.bias", ours + ("mlp", "down", "bias"), (e,))


def _linear(
    name: str, path: tuple[str, ...], in_dims: tuple[int, ...], out_dims: tuple[int, ...]
) -> Entry:
    """torch Linear weight [prod(out), prod(in)] <-> our kernel [*in_dims, *out_dims]."""
    n_in, n_out = int(np.prod(in_dims)), int(np.prod(out_dims))
    return Entry(
        name,
        (path,),
        lambda a: (a.T.reshape(*in_dims, *out_dims),),
        lambda a: a.reshape(n_in, n_out).T,
        (n_out, n_in),
    )


def _bias(name: str, path: tuple[str, ...], dims: tuple[int, ...]) -> Entry:
    size = int(np.prod(dims))
    return Entry(name, (path,), lambda a: (a.reshape(dims),), lambda a: a.reshape(-1), (size,))


def _llama_entries(cfg: TransformerConfig) -> Iterator[Entry]:
    e, h, k, d, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    dec = ("decoder",)
    yield _same("model.embed_tokens.weight", dec + ("embed", "embedding"), (cfg.vocab_size, e))
    yield _same("model.norm.weight", dec + ("final_norm", "scale"), (e,))
    if not cfg.tie_embeddings:
        yield _linear("lm_head.weight", ("lm_head", "kernel"), (e,), (cfg.vocab_size,))
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", dec + (f"layer_{i}",)
        attn = ours + ("attn",)
        yield _same(f"{hf}input_layernorm.weight", ours + ("attn_norm", "scale"), (e,))
        yield _same(f"{hf}post_attention_layernorm.weight", ours + ("mlp_norm", "scale"), (e,))
        for proj, ours_name, heads in (
            ("q_proj", "query", h),
            ("k_proj", "key", k),
            ("v_proj", "value", k),
        ):
            yield _linear(
                f"{hf}self_attn.{proj}.weight", attn + (ours_name, "kernel"), (e,), (heads, d)
            )
            if cfg.qkv_bias:
                yield _bias(f"{hf}self_attn.{proj}.bias", attn + (ours_name, "bias"), (heads, d))
        yield _linear(f"{hf}self_attn.o_proj.weight", attn + ("out", "kernel"), (h, d), (e,))
        if cfg.out_bias:
            yield _same(f"{hf}self_attn.o_proj.bias", attn + ("out", "bias"), (e,))
        for proj, ours_name, dims in (
            ("gate_proj", "gate", ((e,), (f,))),
            ("up_proj", "up", ((e,), (f,))),
            ("down_proj", "down", ((f,), (e,))),
        ):
            yield _linear(f"{hf}mlp.{proj}.weight", ours + ("mlp", ours_name, "kernel"), *dims)
            if cfg.mlp_bias:
                yield _same(f"{hf}mlp.{proj}.bias", ours + ("mlp", ours_name, "bias"), dims[1])


def _gpt_neox_entries(cfg: TransformerConfig) -> Iterator[Entry]:
    e, h, d, f = cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
    dec = ("decoder",)
    yield _same("gpt_neox.embed_in.weight", dec + ("embed", "embedding"), (cfg.vocab_size, e))
    yield _same("gpt_neox.final_layer_norm.weight", dec + ("final_norm", "scale"), (e,))
    yield _same("gpt_neox.final_layer_norm.bias", dec + ("final_norm", "bias"), (e,))
    if not cfg.tie_embeddings:
        yield _linear("lm_head.weight", ("lm_head", "kernel"), (e,), (cfg.vocab_size,))
    for i in range(cfg.num_layers):
        hf, ours = f"gpt_neox.layers.{i}.", dec + (f"layer_{i}",)
        for hf_ln, our_ln in (
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "mlp_norm"),
        ):
            yield _same(f"{hf}{hf_ln}.weight", ours + (our_ln, "scale"), (e,))
            yield _same(f"{hf}{hf_ln}.bias", ours + (our_ln, "bias"), (e,))
        qkv = tuple(ours + ("attn", n) for n in ("query", "key", "value"))
        # The fused projection's output is laid out per head: [heads, (q | k | v), head_dim].
        yield Entry(
            f"{hf}attention.query_key_value.weight",
            tuple(p + ("kernel",) for p in qkv),
            lambda a: tuple(a.reshape(h, 3, d, e)[:, j].transpose(2, 0, 1) for j in range(3)),
            lambda *xs: np.stack([x.transpose(1, 2, 0) for x in xs], axis=1).reshape(3 * h * d, e),
            (3 * h * d, e),
        )
        if cfg.qkv_bias:
            yield Entry(
                f"{hf}attention.query_key_value.bias",
                tuple(p + ("bias",) for p in qkv),
                lambda a: tuple(a.reshape(h, 3, d)[:, j] for j in range(3)),
                lambda *xs: np.stack(xs, axis=1).reshape(-1),
                (3 * h * d,),
            )
        yield _linear(f"{hf}attention.dense.weight", ours + ("attn", "out", "kernel"), (h, d), (e,))
        if cfg.out_bias:
            yield _same(f"{hf}attention.dense.bias", ours + ("attn", "out", "bias"), (e,))
        for hf_name, our_name, dims in (
            ("dense_h_to_4h", "up", ((e,), (f,))),
            ("dense_4h_to_h", "down", ((f,), (e,))),
        ):
            yield _linear(f"{hf}mlp.{hf_name}.weight", ours + ("mlp", our_name, "kernel"), *dims)
            yield _same(f"{hf}mlp.{hf_name}.bias", ours + ("mlp", our_name, "bias"), dims[1])


def weight_entries(config: TransformerConfig) -> list[Entry]:
    """The full conversion table for `config`'s family."""
    if config.family == "gpt2":
        return list(_gpt2_entries(config))
    if config.family in ("llama", "mistral", "qwen2"):
        return list(_llama_entries(config))
    if config.family == "gpt_neox":
        return list(_gpt_neox_entries(config))
    raise ValueError(
        f"Unknown family {config.family!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}."
    )


# The prefixes transformers puts before the base model's names; checkpoints saved from the base
# model class (GPT2Model, LlamaModel) lack them.
_BASE_PREFIX = {
    "gpt2": "transformer.",
    "llama": "model.",
    "mistral": "model.",
    "qwen2": "model.",
    "gpt_neox": "gpt_neox.",
}


def _normalise_names(
    tensors: Mapping[str, np.ndarray], config: TransformerConfig
) -> dict[str, np.ndarray]:
    if config.family == "gpt2":
        prefix = _BASE_PREFIX["gpt2"]
        return {k.removeprefix(prefix): v for k, v in tensors.items()}
    # Older GPT-NeoX checkpoints (Pythia on the hub) call the LM head "embed_out".
    tensors = {("lm_head.weight" if k == "embed_out.weight" else k): v for k, v in tensors.items()}
    prefix = _BASE_PREFIX[config.family]
    if not any(k.startswith(prefix) for k in tensors):
        return {(k if k.startswith("lm_head.") else prefix + k): v for k, v in tensors.items()}
    return tensors


def params_from_hf(tensors: Mapping[str, np.ndarray], config: TransformerConfig) -> Params:
    """transformers tensors (name -> array) to a CausalLM params tree in `config.param_dtype`.

    Raises:
      ValueError naming every missing tensor or shape mismatch.
    """
    tensors = _normalise_names(tensors, config)
    params: Params = {}
    missing, bad_shapes = [], []
    dtype = config.jnp_param_dtype
    for entry in weight_entries(config):
        if entry.hf_name not in tensors:
            missing.append(entry.hf_name)
            continue
        shape = tuple(tensors[entry.hf_name].shape)
        if shape != entry.hf_shape:
            bad_shapes.append(f"{entry.hf_name} is {shape}, expected {entry.hf_shape}")
            continue
        arrays = entry.to_ours(np.asarray(tensors[entry.hf_name]))
        for path, array in zip(entry.paths, arrays, strict=True):
            node = params
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = np.ascontiguousarray(array).astype(dtype)
    if missing or bad_shapes:
        raise ValueError(
            "Checkpoint does not match the config: "
            + "; ".join(
                (
                    [f"missing {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else "")]
                    if missing
                    else []
                )
                + bad_shapes[:8]
            )
        )
    return {"params": params}


def params_to_hf(
    params: Params, config: TransformerConfig, dtype: str | None = None
) -> dict[str, np.ndarray]:
    """A CausalLM params tree to transformers tensor names (host numpy arrays).

    Args:
      params: `{"params": {...}}` as returned by `CausalLM.init` (unboxed) or `params_from_hf`.
      config: the model's config.
      dtype: storage dtype of the written tensors; default the params' own.
    """
    tree = params.get("params", params)
    out = {}
    for entry in weight_entries(config):
        leaves = []
        for path in entry.paths:
            node = tree
            for key in path:
                node = node[key]
            leaves.append(np.asarray(jax.device_get(node)))
        array = entry.to_hf(*leaves)
        out[entry.hf_name] = np.ascontiguousarray(array.astype(dtype) if dtype else array)
    if config.family == "gpt2":
        out = {_BASE_PREFIX["gpt2"] + k: v for k, v in out.items()}
    return out


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def resolve_checkpoint_dir(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory, or a hub id downloaded (config, safetensors, tokenizer files only)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"Checkpoint directory {str(path)!r} does not exist or is not a directory."
        )
    import huggingface_hub

    return Path(
        huggingface_hub.snapshot_download(
            str(name_or_path),
            revision=revision,
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"],
        )
    )


def read_safetensors(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors`, or of the shards in `model.safetensors.index.json`."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif single.exists():
        files = [single.name]
    else:
        found = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
        raise FileNotFoundError(
            f"No model.safetensors or model.safetensors.index.json in {directory} "
            f"(found: {found}). "
            "Only safetensors weights are loaded; convert .bin checkpoints with transformers first."
        )
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        try:
            with safetensors.safe_open(directory / name, framework="numpy") as f:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
        except (safetensors.SafetensorError, OSError) as err:
            raise ValueError(f"Could not read {directory / name}: {err}") from err
    return tensors


def load_pretrained(
    name_or_path: str | os.PathLike, *, revision: str | None = None, **config_overrides
) -> tuple[TransformerConfig, Params]:
    """Loads a transformers causal LM checkpoint as (config, params) with numpy leaves.

    Args:
      name_or_path: local directory or hub id.
      revision: hub revision (ignored for local directories).
      **config_overrides: TransformerConfig fields, e.g. param_dtype="bfloat16", dtype="bfloat16".
    """
    import transformers

    directory = resolve_checkpoint_dir(name_or_path, revision)
    hf_config = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=False)
    config = config_from_hf(hf_config, **config_overrides)
    return config, params_from_hf(read_safetensors(directory), config)


def save_pretrained(
    directory: str | os.PathLike,
    config: TransformerConfig,
    params: Params,
    *,
    dtype: str | None = None,
    max_shard_size: str | int = "5GB",
    tokenizer=None,
    **hf_config_fields,
) -> Path:
    """Writes config.json + safetensors (sharded past `max_shard_size`) for transformers.

    Args:
      directory: output directory (created).
      config, params: the model.
      dtype: storage dtype ("float32", "bfloat16"); default the params' own.
      max_shard_size: largest safetensors file, as "5GB" or bytes.
      tokenizer: optional tokenizer with `save_pretrained` written beside the weights.
      **hf_config_fields: e.g. eos_token_id, bos_token_id, pad_token_id.
    """
    import huggingface_hub

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf_config = config_to_hf(config, **hf_config_fields)
    if dtype:
        hf_config.dtype = dtype
    hf_config.save_pretrained(directory)
    tensors = params_to_hf(params, config, dtype)
    split = huggingface_hub.split_state_dict_into_shards_factory(
        tensors,
        get_storage_size=lambda a: a.nbytes,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=max_shard_size,
    )
    for filename, names in split.filename_to_tensors.items():
        safetensors.numpy.save_file(
            {n: tensors[n] for n in names}, str(directory / filename), metadata={"format": "pt"}
        )
    if split.is_sharded:
        index = {
            "metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
            "weight_map": split.tensor_to_filename,
        }
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory
