"""Reward-model specifics: initialising from the SFT model, and the reference-mean bias."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.training.steps import last_token_scores


def reward_params_from_lm(lm_params: Any, rm_params: Any) -> Any:
    """ScalarModel variables with the decoder of a CausalLM (its LM head dropped) and the scalar
    head of `rm_params` (a fresh init)."""
    if "decoder" not in lm_params.get("params", {}):
        raise ValueError("lm_params must be CausalLM variables {'params': {'decoder': ...}}.")
    return {
        "params": {"decoder": lm_params["params"]["decoder"], "head": rm_params["params"]["head"]}
    }


def make_demonstration_scorer(
    model: nn.Module,
) -> Callable[[Any, dict], tuple[jax.Array, jax.Array]]:
    """Pure `score(params, batch) -> (sum of rewards, number of rows)` over SFT-shaped batches
    (`tokens_bt`, `mask_bt`); rows with an all-False mask (padding, skipped) are left out."""

    def score(params, batch):
        out = model.apply(params, batch["tokens_bt"], batch["mask_bt"])
        scores_b = last_token_scores(out.scores_bt, batch["mask_bt"])
        real_b = jnp.any(batch["mask_bt"], axis=-1)
        return jnp.sum(jnp.where(real_b, scores_b, 0.0)), jnp.sum(real_b.astype(jnp.float32))

    return score


def mean_reference_reward(
    score: Callable[[Any, dict], tuple[jax.Array, jax.Array]], params: Any, batches: Iterable[dict]
) -> float:
    """Mean reward over the reference (demonstration) responses of `batches`."""
    total, count = 0.0, 0.0
    for batch in batches:
        s, c = score(params, batch)
        total += float(s)
        count += float(c)
    if count == 0:
        raise ValueError("No reference responses to normalise the reward model on.")
    return total / count


def shift_reward_bias(params: Any, shift: float) -> Any:
    """Params whose rewards are all `shift` lower (the head's bias absorbs it), so that after
    `shift_reward_bias(p, mean_reference_reward(...))` the reference responses score mean 0, the
    paper's normalisation before RL. The shift is stored in the params, hence with the model."""
    head = params["params"]["head"]
    bias = head["bias"]
    new_bias = (np.asarray(bias, np.float32) - shift).astype(bias.dtype)
    new_bias = jax.device_put(new_bias, bias.sharding) if isinstance(bias, jax.Array) else new_bias
    return {"params": {**params["params"], "head": {**head, "bias": new_bias}}}
