"""Tiny transformers (PyTorch) reference models built from random configs; nothing downloaded."""

from __future__ import annotations

import numpy as np
import torch
import transformers

from rlhf_jax.models import TransformerConfig, hf

VOCAB = 64


def hf_config(family: str, **overrides) -> transformers.PretrainedConfig:
    """Small random configs covering each family's distinguishing features."""
    if family == "gpt2":
        fields = dict(
            n_layer=2,
            n_embd=32,
            n_head=4,
            vocab_size=VOCAB,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=2,
        )
        fields.update(overrides)
        return transformers.GPT2Config(**fields)
    common = dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    if family == "llama":  # GQA, untied embeddings, Llama 3.1 RoPE scaling
        common.update(
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        )
        common.update(overrides)
        return transformers.LlamaConfig(**common)
    if family == "qwen2":  # q/k/v biases, tied embeddings
        common.update(tie_word_embeddings=True)
        common.update(overrides)
        return transformers.Qwen2Config(**common)
    if family == "gpt_neox":  # Pythia: partial rotary, parallel residual, fused per-head qkv
        fields = {k: v for k, v in common.items() if k != "num_key_value_heads"}
        fields.update(
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
            },
        )
        fields.update(overrides)
        return transformers.GPTNeoXConfig(**fields)
    if family == "mistral":  # sliding-window attention
        common.update(sliding_window=3)
        common.update(overrides)
        return transformers.MistralConfig(**common)
    raise ValueError(family)


def reference_model(family: str, seed: int = 0, **overrides):
    """(torch model in eval mode, our config, our params) sharing the same random weights."""
    torch.manual_seed(seed)
    config = hf_config(family, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    # transformers initialises biases to 0 and norm scales to 1; random values make a mistake in
    # their mapping observable.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
            elif "norm" in name or ".ln_" in name:
                p.uniform_(0.5, 1.5)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    ours: TransformerConfig = hf.config_from_hf(config)
    return model, ours, hf.params_from_hf(state, ours)


def left_padded_batch(seed: int = 0, batch: int = 4, length: int = 7, vocab: int = VOCAB):
    """Random tokens with rows of different left-padding (one row unpadded)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), bool)
    for row in range(1, batch):
        mask[row, : min(row * 2, length - 1)] = False
    tokens[~mask] = 0
    return tokens, mask


def torch_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers logits with positions from the mask (as `generate` computes them)."""
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.numpy()
