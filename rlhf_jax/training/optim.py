"""The optimizer every trainer uses: AdamW, linear warm-up + cosine decay, global-norm clipping."""

from __future__ import annotations

import jax
import optax


def decay_mask(params):
    """True on matrices (kernels, embeddings); biases and norm scales get no weight decay."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_schedule(
    *, learning_rate: float, warmup_steps: int, total_steps: int, end_fraction: float = 0.1
) -> optax.Schedule:
    """0 -> learning_rate linearly over warmup_steps, then cosine to end_fraction * learning_rate
    at total_steps (optimizer steps, i.e. after gradient accumulation)."""
    if total_steps <= warmup_steps:
        return optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=learning_rate * end_fraction,
    )


def make_optimizer(
    *,
    learning_rate: float,
    warmup_steps: int,
    total_steps: int,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.95,
    clip_norm: float | None = 1.0,
    end_fraction: float = 0.1,
) -> optax.GradientTransformation:
    """optax chain: clip_by_global_norm(clip_norm) -> AdamW with the schedule above."""
    schedule = make_schedule(
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        end_fraction=end_fraction,
    )
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask))
    return optax.chain(*parts)
