"""GGUF checkpoints (llama.cpp's format) -> rlhf_jax params, without torch.

Reads the Llama and Qwen2 families (Llama-architecture models such as SmolLM2 included) with the
`gguf` package: every tensor type `gguf.quants.dequantize` knows (F32, F16, BF16, Q4_0, Q4_1, Q5_x,
Q8_0, the K-quants, ...) is dequantized to float32, renamed to transformers' names and handed to
`rlhf_jax.models.hf.params_from_hf`, so a GGUF file and a transformers directory load through the
same tables. `convert_to_transformers_dir` writes a standard transformers directory (config.json,
model.safetensors, the tokenizer with its chat template) that every experiment takes as it takes a
hub id.

Three things the GGUF converter changes, undone here:
- ggml lists dimensions fastest-first; `dequantize` returns numpy's [out, in] order, checked
  against the config (the embedding must be [vocab, hidden]).
- llama.cpp permutes the rows of the Llama q and k projections for its RoPE layout (pairs
  interleaved per head); `unpermute_rows` restores transformers' half-split layout. Qwen2 files
  are not permuted.
- A tied-embedding model has no `output.weight`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_jax.models.config import TransformerConfig
from rlhf_jax.models.hf import Params, params_from_hf, save_pretrained
from rlhf_jax.models.hf_config import config_from_hf

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
_ARCHITECTURE_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# GGUF tensor names -> transformers names (dense Llama-style decoders).
_TOP_LEVEL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_IN_BLOCK = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def transformers_name(gguf_name: str) -> str | None:
    """ "blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight"; None if unknown."""
    if gguf_name in _TOP_LEVEL:
        return _TOP_LEVEL[gguf_name]
    match = _BLOCK_NAME.match(gguf_name)
    if match and match.group(2) in _IN_BLOCK:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{_IN_BLOCK[part]}.{kind}"
    return None


def unpermute_rows(rows_xd: np.ndarray, num_heads: int) -> np.ndarray:
    """The inverse of llama.cpp's q/k row permutation (its `LlamaModel.permute`).

    Args:
      rows_xd: a q or k projection weight [num_heads * head_dim, in] or bias [num_heads *
        head_dim], rows in llama.cpp's order (the two RoPE halves of each head interleaved).
      num_heads: query heads for q, key-value heads for k.

    Returns:
      The same array with transformers' row order (each head's two halves contiguous).
    """
    half = rows_xd.shape[0] // num_heads // 2
    split = rows_xd.reshape(num_heads, half, 2, *rows_xd.shape[1:])
    return split.swapaxes(1, 2).reshape(rows_xd.shape)


def open_gguf(path: str | os.PathLike):
    """A `gguf.GGUFReader` on `path`; a missing, truncated or foreign file raises an error that
    names it."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file.")
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError) as e:
        raise ValueError(f"{path}: not a readable GGUF file (truncated or corrupt?): {e}") from e


def field(reader, key: str, default: Any = None) -> Any:
    """The value of metadata field `key` (str, number, bool or list), or `default`."""
    found = reader.fields.get(key)
    return default if found is None else found.contents()


def _float32(value: float) -> float:
    """A float32 metadata value at its shortest float32 spelling (9.99999974e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def transformers_config(reader, path: str | os.PathLike = "") -> dict[str, Any]:
    """The transformers config.json fields of the GGUF file's model.

    Raises:
      ValueError naming the file for an architecture other than llama or qwen2, or RoPE scaling
      this reader does not apply.
    """
    arch = field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{path}: GGUF architecture {arch!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    get = lambda key, default=None: field(reader, f"{arch}.{key}", default)  # noqa: E731
    scaling = get("rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(f"{path}: RoPE scaling {scaling!r} in a GGUF file is not supported.")
    names = {tensor.name for tensor in reader.tensors}
    hidden, heads = get("embedding_length"), get("attention.head_count")
    vocab = get("vocab_size") or len(field(reader, "tokenizer.ggml.tokens", []))
    config = {
        "model_type": arch,
        "architectures": [_ARCHITECTURE_CLASSES[arch]],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "max_position_embeddings": get("context_length"),
        "rms_norm_eps": _float32(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": _float32(get("rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in names,
    }
    if arch == "llama":
        config["head_dim"] = get("rope.dimension_count", hidden // heads)
        config["attention_bias"] = "blk.0.attn_q.bias" in names
        config["mlp_bias"] = False
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        value = field(reader, f"tokenizer.ggml.{key}")
        if value is not None:
            config[key.replace("padding_", "pad_")] = int(value)
    return config


def transformers_tensors(reader, config: dict[str, Any], path: str | os.PathLike = ""):
    """{transformers name: float32 array} of every tensor, dequantized, with q/k rows restored.

    Raises:
      ValueError naming the file and tensor for a tensor this reader has no name for (e.g. Llama
      3.1's `rope_freqs.weight`), a tensor type `gguf` cannot dequantize, or an embedding whose
      shape is not [vocab, hidden].
    """
    from gguf.quants import dequantize

    permuted = config["model_type"] == "llama"
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    tensors = {}
    for tensor in reader.tensors:
        name = transformers_name(tensor.name)
        if name is None:
            raise ValueError(f"{path}: GGUF tensor {tensor.name!r} is not supported here.")
        try:
            array = np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32)
        except NotImplementedError as e:
            raise ValueError(
                f"{path}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, which the "
                f"gguf package cannot dequantize ({e})."
            ) from e
        part = tensor.name.split(".")[2] if tensor.name.startswith("blk.") else ""
        if permuted and part in heads:
            array = unpermute_rows(array, heads[part])
        tensors[name] = array
    embedding = tensors.get("model.embed_tokens.weight")
    expected = (config["vocab_size"], config["hidden_size"])
    if embedding is None or embedding.shape != expected:
        found = None if embedding is None else embedding.shape
        raise ValueError(f"{path}: token embedding of shape {found}; expected {expected}.")
    return tensors


def load_gguf(path: str | os.PathLike, **config_overrides) -> tuple[TransformerConfig, Params]:
    """A GGUF checkpoint as (config, params) with numpy leaves, like `hf.load_pretrained`.

    Args:
      path: the .gguf file.
      **config_overrides: TransformerConfig fields, e.g. dtype="bfloat16".
    """
    reader = open_gguf(path)
    hf_config = transformers_config(reader, path)
    config = config_from_hf(hf_config, **config_overrides)
    return config, params_from_hf(transformers_tensors(reader, hf_config, path), config)


def convert_to_transformers_dir(
    gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: str = "float32"
) -> Path:
    """Writes the GGUF checkpoint as a transformers directory: config.json, model.safetensors
    (dequantized, in `dtype`) and the tokenizer with its chat template
    (`rlhf_jax.models.gguf_tokenizer`). Returns the directory."""
    from rlhf_jax.models import gguf_tokenizer

    reader = open_gguf(gguf_path)
    hf_config = transformers_config(reader, gguf_path)
    config = config_from_hf(hf_config)
    params = params_from_hf(transformers_tensors(reader, hf_config, gguf_path), config)
    tokenizer = gguf_tokenizer.tokenizer_from_reader(reader, gguf_path)
    special = {k: v for k, v in hf_config.items() if k.endswith("_token_id")}
    return save_pretrained(out_dir, config, params, dtype=dtype, tokenizer=tokenizer, **special)
