"""The gold labeler as a PPO reward: what PPO reaches when the reward model is perfect.

A diagnostic for the instruction world, not part of the InstructGPT recipe: the paper's policy
never sees its labelers' judgements directly. Swapping the RM for the gold labeler separates the
two things that bound PPO's gain over SFT: how good the reward is, and how far PPO moves the
policy in the time it has.

The labeler judges text, so the score runs on the host through `jax.pure_callback` inside the
otherwise fused rollout program (one device-to-host copy of the tokens per rollout).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.rl.rollout import ScoreFn
from rlhf_jax.world import labeler


def gold_totals(
    tokenizer: Tokenizer,
    tokens_bs: np.ndarray,
    attention_mask_bs: np.ndarray,
    response_mask_bn: np.ndarray,
) -> np.ndarray:
    """float32 [B]: the gold labeler's total for each row's response to its prompt.

    Args:
      tokens_bs: int [B, P + N], the left-padded prompt then the response (rollout layout).
      attention_mask_bs: bool [B, P + N], True on real prompt and response tokens.
      response_mask_bn: bool [B, N], True on response tokens up to and including EOS.
    """
    tokens_bs, attention_mask_bs = np.asarray(tokens_bs), np.asarray(attention_mask_bs, bool)
    response_mask_bn = np.asarray(response_mask_bn, bool)
    prompt_len = tokens_bs.shape[1] - response_mask_bn.shape[1]
    totals = np.empty(tokens_bs.shape[0], np.float32)
    for i in range(tokens_bs.shape[0]):
        prompt = tokenizer.decode(tokens_bs[i, :prompt_len][attention_mask_bs[i, :prompt_len]])
        response = tokenizer.decode(tokens_bs[i, prompt_len:][response_mask_bn[i]])
        totals[i] = labeler.gold_score(prompt, response)
    return totals


def gold_score_fn(tokenizer: Tokenizer) -> ScoreFn:
    """A rollout `ScoreFn` (ignores the reward params) that scores with the gold labeler."""

    def score(params, tokens_bs, attention_mask_bs, response_mask_bn) -> jax.Array:
        del params
        return jax.pure_callback(
            lambda t, a, m: gold_totals(tokenizer, t, a, m),
            jax.ShapeDtypeStruct((tokens_bs.shape[0],), jnp.float32),
            tokens_bs,
            attention_mask_bs,
            response_mask_bn,
        )

    return score
