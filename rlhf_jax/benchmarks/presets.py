"""The benchmark's sizes and shared settings: the presets (model and workload sizes), the
optimizer and PPO hyperparameters both sides use, and the model each preset describes."""

from __future__ import annotations

PRESETS = {
    # model: GPT-2 family sizes; workload: batch (prompts), prompt and response lengths in tokens,
    # PPO epochs and minibatches per epoch.
    "design": dict(
        layers=4,
        heads=4,
        width=256,
        vocab=8192,
        context=256,
        batch=16,
        prompt=64,
        new=64,
        epochs=4,
        minibatches=4,
    ),
    # GPT-2 small (124M parameters) with 256-token sequences: sizes where a GPU is not idle.
    "gpt2": dict(
        layers=12,
        heads=12,
        width=768,
        vocab=50257,
        context=256,
        batch=16,
        prompt=128,
        new=128,
        epochs=4,
        minibatches=4,
    ),
    # SmolLM2-135M-Instruct's shape (Llama family: 30 layers, width 576, 9 query / 3 key-value
    # heads, SwiGLU 1536, vocabulary 49,152, tied embeddings) with random weights; 16 sequences
    # of 128 tokens, 64-token prompts and 64 new tokens.
    "smollm2": dict(
        family="llama",
        layers=30,
        heads=9,
        kv_heads=3,
        width=576,
        mlp=1536,
        vocab=49152,
        context=128,
        batch=16,
        prompt=64,
        new=64,
        epochs=1,
        minibatches=4,
    ),
    # The tiny preset's sizes in the Llama family (what workload f's peft baseline needs).
    "tiny_llama": dict(
        family="llama",
        layers=1,
        heads=2,
        kv_heads=1,
        width=32,
        mlp=64,
        vocab=128,
        context=32,
        batch=4,
        prompt=4,
        new=4,
        epochs=2,
        minibatches=2,
    ),
    "tiny": dict(
        layers=1,
        heads=2,
        width=32,
        vocab=128,
        context=32,
        batch=4,
        prompt=4,
        new=4,
        epochs=2,
        minibatches=2,
    ),
}
# The optimizer and PPO settings both sides share.
LEARNING_RATE = 1e-5
CLIP_EPS, VALUE_CLIP, LAM = 0.2, 0.2, 0.95
WEIGHT_DECAY = 0.01  # AdamW's decoupled weight decay on both sides (torch's default)


# The adapters of the LoRA workload: rank 8 on all seven projections (PEFT's usual choice).
LORA_RANK, LORA_ALPHA = 8, 16.0


def model_config(preset: dict, lora: bool = False):
    """The `TransformerConfig` of a preset's model sizes (GPT-2 architecture unless the preset
    names another family); with `lora`, rank-`LORA_RANK` adapters on every projection."""
    from rlhf_jax.models import LoRAConfig, TransformerConfig

    family = preset.get("family", "gpt2")
    extra = (
        {"num_kv_heads": preset["kv_heads"], "mlp_dim": preset["mlp"]} if "mlp" in preset else {}
    )
    if family == "llama":
        extra["tie_embeddings"] = True
    if lora:
        targets = ("query", "key", "value", "out", "up", "down") + ("gate",) * (family != "gpt2")
        extra["lora"] = LoRAConfig(rank=LORA_RANK, alpha=LORA_ALPHA, targets=targets)
    return getattr(TransformerConfig, family)(
        vocab_size=preset["vocab"],
        num_layers=preset["layers"],
        num_heads=preset["heads"],
        embed_dim=preset["width"],
        max_len=preset["context"],
        **extra,
    )


def init_params(model, seq_len: int, seed: int):
    """Fresh variables of `model` (a CausalLM or ScalarModel) for `seq_len`-token rows; `seed`
    picks the weights, so both sides of a workload can load the same ones."""
    from rlhf_jax.training.state import init_variables

    return init_variables(model, seq_len, seed)[0]
