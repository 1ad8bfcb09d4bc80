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


def model_config(preset: dict):
    """The GPT-2-architecture `TransformerConfig` of a preset's model sizes."""
    from rlhf_jax.models import TransformerConfig

    return TransformerConfig.gpt2(
        vocab_size=preset["vocab"],
        num_layers=preset["layers"],
        num_heads=preset["heads"],
        embed_dim=preset["width"],
        max_len=preset["context"],
    )


def init_params(model, seq_len: int, seed: int):
    """Fresh variables of `model` (a CausalLM or ScalarModel) for `seq_len`-token rows; `seed`
    picks the weights, so both sides of a workload can load the same ones."""
    from rlhf_jax.training.state import init_variables

    return init_variables(model, seq_len, seed)[0]
