"""Pure loss functions. Each takes keyword-only arrays and returns `(loss, metrics)`.

Metrics are `(sum, count)` pairs, so that masked means stay exact when they are summed over
devices, micro-batches or steps. Divide only at the end (`metrics_mean`). Contract for a loss used
by a step builder: `metrics["loss"] = (sum, count)` with `loss == sum / count`, where `count`
depends only on the batch (not on parameters); gradient accumulation weights micro-batches by it,
so accumulating is exactly the full-batch gradient. A loss knows nothing about
meshes or files. A step builder takes the loss function as an argument, and `LOSSES` maps names to
functions so that a config can pick one, or a user can register their own.

Log-probability convention, for the whole project:
  `next_token_logprobs(logits_btv, tokens_bt)[:, t]` is log p(tokens[:, t + 1] | tokens[:, :t + 1]),
  computed from float32 logits. The result has T - 1 columns.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Metrics = dict[str, tuple[jax.Array, jax.Array]]
LossFn = Callable[..., tuple[jax.Array, Metrics]]


def _next_token_targets(
    logits_btv: jax.Array, tokens_bt: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(float32 logits [B, T-1, V] that predict tokens 1.., the targets' logits [B, T-1, 1], the
    maximum logit [B, T-1, 1] as a constant for autodiff): what `next_token_logprobs` and
    `next_token_is_top` both read, so that XLA computes it once for both in the SFT loss."""
    logits_btv = logits_btv[:, :-1].astype(jnp.float32)
    max_bt1 = jax.lax.stop_gradient(jnp.max(logits_btv, axis=-1, keepdims=True))
    target_bt1 = jnp.take_along_axis(logits_btv, tokens_bt[:, 1:, None], axis=-1)
    return logits_btv, target_bt1, max_bt1


def next_token_logprobs(logits_btv: jax.Array, tokens_bt: jax.Array) -> jax.Array:
    """float32 [B, T-1]: column t is log p(token t+1 | tokens <= t) (see module docstring).

    The same operations as `jax.nn.log_softmax` followed by a gather (alone, values and
    gradients equal to the bit; inside a larger program XLA may fuse them differently), but only
    the targets' shifted logits are kept, so the [B, T-1, V] log-softmax is never written out. At
    16 x 256 tokens and vocab 8192 that takes 253 MiB off an SFT step's XLA buffers and makes the
    step faster on a CPU (README, benchmark workload (a)).
    """
    logits_btv, target_bt1, max_bt1 = _next_token_targets(logits_btv, tokens_bt)
    log_norm_bt1 = jnp.log(jnp.sum(jnp.exp(logits_btv - max_bt1), axis=-1, keepdims=True))
    return (target_bt1 - max_bt1 - log_norm_bt1)[..., 0]


def next_token_is_top(logits_btv: jax.Array, tokens_bt: jax.Array) -> jax.Array:
    """bool [B, T-1]: column t is True where token t+1 has the highest logit at position t (a
    tie for the highest counts). It reads the max and gather `next_token_logprobs` takes instead
    of running an argmax: on a CPU an argmax over a [16, 255, 8192] vocabulary cost a few percent
    of an SFT step."""
    _, target_bt1, max_bt1 = _next_token_targets(logits_btv, tokens_bt)
    return (target_bt1 >= max_bt1)[..., 0]


def chunked_next_token_logprobs(
    hidden_btd: jax.Array,
    head: Callable[[jax.Array], jax.Array],
    tokens_bt: jax.Array,
    chunk_len: int,
) -> tuple[jax.Array, jax.Array]:
    """`next_token_logprobs` and `next_token_is_top` from the final hidden states, the LM head
    applied `chunk_len` positions at a time, so that the [B, T, V] logits never exist whole.

    Each chunk's logits are recomputed in the backward pass (`jax.checkpoint`) instead of kept:
    memory for one [B, chunk_len, V] block at a time, for one more LM-head matmul.

    Args:
      hidden_btd: [B, T, E] final hidden states.
      head: hidden [B, C, E] -> float32 logits [B, C, V] (e.g. `CausalLM.head_logits`).
      tokens_bt: int [B, T].
      chunk_len: positions per chunk (the last chunk is padded).

    Returns:
      (float32 [B, T-1] log p(token t+1 | tokens <= t), bool [B, T-1] token t+1 is the top one).
    """
    batch, length = tokens_bt.shape
    positions = length - 1
    chunks = -(-positions // chunk_len)
    pad = chunks * chunk_len - positions
    hidden = jnp.pad(hidden_btd[:, :-1], ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(tokens_bt[:, 1:], ((0, 0), (0, pad)))
    # [chunks, B, C, ...]: one LM-head call per chunk.
    hidden_nbcd = hidden.reshape(batch, chunks, chunk_len, -1).swapaxes(0, 1)
    targets_nbc = targets.reshape(batch, chunks, chunk_len).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(inputs):
        hidden_bcd, targets_bc = inputs
        logits_bcv = head(hidden_bcd).astype(jnp.float32)
        max_bc1 = jax.lax.stop_gradient(jnp.max(logits_bcv, axis=-1, keepdims=True))
        target_bc1 = jnp.take_along_axis(logits_bcv, targets_bc[..., None], axis=-1)
        log_norm_bc1 = jnp.log(jnp.sum(jnp.exp(logits_bcv - max_bc1), axis=-1, keepdims=True))
        return (target_bc1 - max_bc1 - log_norm_bc1)[..., 0], (target_bc1 >= max_bc1)[..., 0]

    logprobs_nbc, is_top_nbc = jax.lax.map(one_chunk, (hidden_nbcd, targets_nbc))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(batch, -1)[:, :positions]  # noqa: E731
    return unchunk(logprobs_nbc), unchunk(is_top_nbc)


def last_true_index(mask_bt: jax.Array) -> jax.Array:
    """int32 [B]: index of the last True of each row (0 for an all-False row).

    The one helper that finds "the last real token" (for a response: its EOS, or its last token
    when it never emitted one), whatever the padding on either side and whatever the pad id. The
    RM score is read there, and the rollout puts the sequence reward and the missing-EOS penalty
    there.
    """
    length = mask_bt.shape[-1]
    from_end_b = jnp.argmax(mask_bt[:, ::-1].astype(jnp.int32), axis=-1)
    return jnp.where(jnp.any(mask_bt, axis=-1), length - 1 - from_end_b, 0).astype(jnp.int32)


def masked_sum(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask), jnp.sum(mask)


def metrics_mean(metrics: Metrics) -> dict[str, jax.Array]:
    """(sum, count) pairs -> means (0 where the count is 0)."""
    return {k: jnp.where(c > 0, s / jnp.maximum(c, 1), 0.0) for k, (s, c) in metrics.items()}


def sft_loss(
    *, logits_btv: jax.Array, tokens_bt: jax.Array, loss_mask_bt: jax.Array
) -> tuple[jax.Array, Metrics]:
    """Mean next-token negative log-likelihood over the target tokens.

    Args:
      logits_btv: [B, T, V] model logits over the sequence.
      tokens_bt: int [B, T] prompt + response tokens.
      loss_mask_bt: bool [B, T], True on the tokens to predict (the response, EOS included).
        Column 0 is ignored, because nothing predicts the first token.

    Returns:
      (mean NLL per target token in nats, {"loss" and "nll": (sum, count), "accuracy": (sum,
      count)}).
    """
    return sft_loss_from_logprobs(
        logprobs_bt=next_token_logprobs(logits_btv, tokens_bt),
        is_top_bt=next_token_is_top(logits_btv, tokens_bt),
        loss_mask_bt=loss_mask_bt,
    )


def sft_loss_from_logprobs(
    *, logprobs_bt: jax.Array, is_top_bt: jax.Array, loss_mask_bt: jax.Array
) -> tuple[jax.Array, Metrics]:
    """`sft_loss` from the next-token log-probs and top-token hits [B, T-1] (as
    `next_token_logprobs` / `next_token_is_top`, or their chunked form, give them)."""
    target_mask_bt = loss_mask_bt[:, 1:]
    nll_sum, count = masked_sum(-logprobs_bt, target_mask_bt)
    metrics = {
        "loss": (nll_sum, count),
        "nll": (nll_sum, count),
        "accuracy": masked_sum(is_top_bt.astype(jnp.float32), target_mask_bt),
    }
    return nll_sum / jnp.maximum(count, 1.0), metrics


def preferences_from_ranking(ranks_bk: jax.Array, valid_bk: jax.Array) -> jax.Array:
    """Preference matrix from ranks: bool [B, K, K], [b, i, j] = "i is preferred to j".

    Args:
      ranks_bk: int [B, K], 0 = best. Equal ranks are ties and give no pair.
      valid_bk: bool [B, K], False on padding responses (prompts with fewer than K responses).
    """
    better_bkk = ranks_bk[:, :, None] < ranks_bk[:, None, :]
    return better_bkk & valid_bk[:, :, None] & valid_bk[:, None, :]


def ranking_loss(*, scores_bk: jax.Array, prefers_bkk: jax.Array) -> tuple[jax.Array, Metrics]:
    """InstructGPT's K-wise reward-model loss, over all labelled pairs of each prompt.

    loss(prompt) = -1/P * sum over labelled pairs (w, l) of log sigmoid(r_w - r_l), where P is the
    number of labelled pairs (C(K, 2) for a total ranking without ties). The batch loss is the mean
    over prompts that have at least one pair, so every prompt weighs the same whatever its K, as
    in the paper. Every response is scored once, and all pairs of a prompt are one batch element.
    Ties and unlabelled pairs have prefers[i, j] = prefers[j, i] = False and contribute nothing.
    Labels need not be transitive.

    Args:
      scores_bk: float [B, K] reward of each response; padding responses may hold anything.
      prefers_bkk: bool [B, K, K], [b, i, j] = response i preferred to response j.

    Returns:
      (loss, {"loss": per-prompt sum and count, "accuracy": (r_w > r_l) over pairs,
       "margin": r_w - r_l over pairs}).
    """
    scores_bk = scores_bk.astype(jnp.float32)
    margin_bkk = scores_bk[:, :, None] - scores_bk[:, None, :]
    pairs_bkk = prefers_bkk.astype(jnp.float32)
    pairs_b = jnp.sum(pairs_bkk, axis=(1, 2))
    # Where there is no pair, the margin is replaced before log_sigmoid, so no inf or NaN can leak
    # through the masked sum, even from garbage scores on padding.
    safe_margin_bkk = jnp.where(prefers_bkk, margin_bkk, 0.0)
    pair_loss_bkk = -jax.nn.log_sigmoid(safe_margin_bkk) * pairs_bkk
    prompt_loss_b = jnp.sum(pair_loss_bkk, axis=(1, 2)) / jnp.maximum(pairs_b, 1.0)
    has_pairs_b = pairs_b > 0
    loss_sum, prompts = masked_sum(prompt_loss_b, has_pairs_b)
    metrics = {
        "loss": (loss_sum, prompts),
        "accuracy": masked_sum((safe_margin_bkk > 0).astype(jnp.float32), prefers_bkk),
        "margin": masked_sum(safe_margin_bkk, prefers_bkk),
    }
    return loss_sum / jnp.maximum(prompts, 1.0), metrics


def ppo_policy_loss(
    *,
    logprobs_bn: jax.Array,
    old_logprobs_bn: jax.Array,
    advantages_bn: jax.Array,
    mask_bn: jax.Array,
    clip_eps: float = 0.2,
) -> tuple[jax.Array, Metrics]:
    """PPO's clipped surrogate, as a loss to minimise, averaged over response tokens.

    per token: max(-A * r, -A * clip(r, 1 - eps, 1 + eps)) with r = exp(logp - logp_old).

    Args:
      logprobs_bn: float32 [B, N] log-probs of the response tokens under the current policy.
      old_logprobs_bn: float32 [B, N] the same under the rollout policy (frozen per rollout).
      advantages_bn: float32 [B, N] (already whitened if whitening is on).
      mask_bn: bool [B, N], True on response tokens up to and including EOS.
      clip_eps: the clipping range epsilon.

    Returns:
      (loss, {"loss", "clipfrac" (share of tokens where the clipped term is active),
       "approx_kl" (k3 estimator (r - 1) - log r of KL(old || new)), "ratio",
       "ratio_deviation" (|r - 1|)}).
    """
    log_ratio_bn = jnp.where(mask_bn, logprobs_bn - old_logprobs_bn, 0.0)
    ratio_bn = jnp.exp(log_ratio_bn)
    unclipped_bn = -advantages_bn * ratio_bn
    clipped_bn = -advantages_bn * jnp.clip(ratio_bn, 1.0 - clip_eps, 1.0 + clip_eps)
    loss_sum, count = masked_sum(jnp.maximum(unclipped_bn, clipped_bn), mask_bn)
    metrics = {
        "loss": (loss_sum, count),
        "clipfrac": masked_sum((clipped_bn > unclipped_bn).astype(jnp.float32), mask_bn),
        "approx_kl": masked_sum((ratio_bn - 1.0) - log_ratio_bn, mask_bn),
        "ratio": masked_sum(ratio_bn, mask_bn),
        "ratio_deviation": masked_sum(jnp.abs(ratio_bn - 1.0), mask_bn),
    }
    return loss_sum / jnp.maximum(count, 1.0), metrics


def ppo_value_loss(
    *,
    values_bn: jax.Array,
    old_values_bn: jax.Array,
    returns_bn: jax.Array,
    mask_bn: jax.Array,
    clip_range: float = 0.2,
) -> tuple[jax.Array, Metrics]:
    """Clipped value loss: per token 0.5 * max((V - R)^2, (V_old + clip(V - V_old, +-c) - R)^2).

    Args:
      values_bn: float32 [B, N] current value predictions (state before each response token).
      old_values_bn: float32 [B, N] the rollout's predictions (frozen per rollout).
      returns_bn: float32 [B, N] GAE returns (advantages + old values).
      mask_bn: bool [B, N] response tokens.
      clip_range: how far V may move from V_old before the clipped term takes over.

    Returns:
      (loss, {"loss", "value_clipfrac", "value_error" ((V - R)^2, unclipped)}).
    """
    clipped_bn = old_values_bn + jnp.clip(values_bn - old_values_bn, -clip_range, clip_range)
    error_bn = jnp.square(values_bn - returns_bn)
    clipped_error_bn = jnp.square(clipped_bn - returns_bn)
    loss_sum, count = masked_sum(0.5 * jnp.maximum(error_bn, clipped_error_bn), mask_bn)
    metrics = {
        "loss": (loss_sum, count),
        "value_clipfrac": masked_sum((clipped_error_bn > error_bn).astype(jnp.float32), mask_bn),
        "value_error": masked_sum(error_bn, mask_bn),
    }
    return loss_sum / jnp.maximum(count, 1.0), metrics


def token_entropy(logits_bnv: jax.Array) -> jax.Array:
    """float32 [B, N]: entropy in nats of softmax(logits) at each position."""
    logprobs_bnv = jax.nn.log_softmax(logits_bnv.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logprobs_bnv) * logprobs_bnv, axis=-1)


# Name -> loss function. Configs refer to losses by name, and users add their own with
# `LOSSES["my_loss"] = fn`, with no subclassing.
LOSSES: dict[str, LossFn] = {
    "sft_nll": sft_loss,
    "kwise_ranking": ranking_loss,
    "ppo_policy": ppo_policy_loss,
    "ppo_value": ppo_value_loss,
}
