"""LoRA adapters as their own variable collection: merge into the base weights, and export in
PEFT's format.

A model whose config carries a `LoRAConfig` creates, at init, a "lora" collection beside "params"
with A [*in_dims, r] and B [r, *out_dims] for each targeted projection (`Projection._low_rank`);
applied with {"params": base, "lora": adapters} it computes W x + scale * B A x, and applied with
{"params": base} alone it is the base model (the reference policy without a second copy of the
weights). Only the adapters are trained; `merge` folds them into the kernels for a plain
transformers checkpoint, `save_peft` writes adapter_config.json + adapter_model.safetensors that
`peft.PeftModel.from_pretrained` loads onto the transformers base model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import safetensors.numpy

from rlhf_jax.models.config import LORA_TARGET_ALIASES, TransformerConfig

# This model's module names -> the transformers module path inside a Llama-style decoder layer.
_HF_MODULE = {
    ("attn", "query"): "self_attn.q_proj",
    ("attn", "key"): "self_attn.k_proj",
    ("attn", "value"): "self_attn.v_proj",
    ("attn", "out"): "self_attn.o_proj",
    ("mlp", "gate"): "mlp.gate_proj",
    ("mlp", "up"): "mlp.up_proj",
    ("mlp", "down"): "mlp.down_proj",
}
PEFT_FAMILIES = ("llama", "mistral", "qwen2")


def parameter_count(tree: Any) -> int:
    """Number of scalars in a pytree of arrays."""
    return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(tree))


def _adapted(adapters: dict) -> list[tuple[tuple[str, ...], dict]]:
    """(module path under "lora", {"a": A, "b": B}) of every adapted projection."""
    found = []

    def walk(node, path):
        if isinstance(node, dict) and set(node) == {"a", "b"}:
            found.append((path, node))
        elif isinstance(node, dict):
            for key, child in node.items():
                walk(child, (*path, key))

    walk(adapters, ())
    return found


def delta(a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """scale * A B: the adapter's change of the kernel, [*in_dims, *out_dims]."""
    return scale * np.tensordot(np.asarray(a, np.float32), np.asarray(b, np.float32), axes=1)


def merge(config: TransformerConfig, variables: dict) -> dict:
    """{"params": base with every kernel += scale * A B} (float32 arithmetic, the base's dtype),
    from {"params": base, "lora": adapters}: the plain model that computes what the adapted one
    does."""
    if config.lora is None:
        raise ValueError("merge needs a config with a LoRAConfig.")
    merged = jax.tree_util.tree_map(np.asarray, variables["params"])
    for path, ab in _adapted(variables["lora"]):
        node = merged
        for key in path:
            node = node[key]
        kernel = node["kernel"]
        updated = kernel.astype(np.float32) + delta(ab["a"], ab["b"], config.lora.scale)
        node["kernel"] = updated.astype(kernel.dtype)
    return {"params": merged}


def peft_tensors(config: TransformerConfig, adapters: dict) -> dict[str, np.ndarray]:
    """PEFT's names and layouts: base_model.model.model.layers.N.<module>.lora_A.weight [r, in]
    and lora_B.weight [out, r], q/k/v exported separately.

    Raises:
      ValueError for a family PEFT names differently (GPT-2's fused c_attn, GPT-NeoX).
    """
    if config.family not in PEFT_FAMILIES:
        raise ValueError(
            f"PEFT export covers the {', '.join(PEFT_FAMILIES)} families, not {config.family!r}."
        )
    tensors = {}
    for path, ab in _adapted(adapters):
        decoder, layer, block, module = path
        index = int(layer.removeprefix("layer_"))
        prefix = f"base_model.model.model.layers.{index}.{_HF_MODULE[block, module]}"
        a = np.asarray(ab["a"], np.float32)
        b = np.asarray(ab["b"], np.float32)
        tensors[f"{prefix}.lora_A.weight"] = a.reshape(-1, a.shape[-1]).T.copy()
        tensors[f"{prefix}.lora_B.weight"] = b.reshape(b.shape[0], -1).T.copy()
    return tensors


def save_peft(
    directory: str | os.PathLike,
    config: TransformerConfig,
    adapters: dict,
    *,
    base_model_name_or_path: str = "",
) -> Path:
    """adapter_config.json + adapter_model.safetensors in `directory` (PEFT's LoRA format)."""
    lora = config.lora
    if lora is None:
        raise ValueError("save_peft needs a config with a LoRAConfig.")
    tensors = peft_tensors(config, adapters)
    ours_to_hf = {v: k for k, v in LORA_TARGET_ALIASES.items()}
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "use_rslora": lora.rslora,
        "target_modules": sorted(ours_to_hf[t] for t in lora.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    safetensors.numpy.save_file(
        tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"}
    )
    return directory
