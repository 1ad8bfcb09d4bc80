"""The fused rollout: sample -> policy/reference log-probs -> values -> RM score -> rewards, as one
XLA program.

`rollout` is pure and traceable; `make_rollout` jits it once over a mesh with explicit shardings,
so a PPO iteration's experience comes out of a single call with no host round trip between the
phases. Layout (B prompts, P prompt slots, N response slots, S = P + N):

- `tokens_bs` is the left-padded prompt followed by the response, right-padded after EOS.
- Response token n sits at sequence index P + n; its log-prob comes from the logits at P + n - 1
  (`losses.next_token_logprobs`), at the sampling temperature: log softmax(logits / T).
- `values_bn[:, n]` is the value of the state before response token n (value head at P + n - 1),
  from a separate value model (a ScalarModel, InstructGPT's choice) or from a `ValueHead` on the
  policy's own hidden states (no extra forward pass).
- The RM score is read at the last real response token (`losses.last_true_index`: the EOS, or the
  last token of a response that never emitted one), and the sequence reward is added there.

Per-token rewards: r_n = -kl_coef * (logp_n - logp_ref_n) on response tokens, plus
clip((score - shift) / scale, +-clip) (+ the missing-EOS penalty when the response has no EOS) at
the last real response token. Everything after the first EOS is masked out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from rlhf_jax import losses
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.generation import SamplingConfig, sample
from rlhf_jax.models.heads import CausalLM, ScalarModel, ValueHead
from rlhf_jax.models.partitioning import LogicalRules, activation_sharding


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How experience is made and rewarded."""

    sampling: SamplingConfig
    score_shift: float = 0.0  # subtracted from the raw RM score
    score_scale: float = 1.0  # the shifted score is divided by this
    score_clip: float | None = None  # clip the normalised score to [-clip, clip]
    missing_eos_penalty: float | None = None  # added to the score of responses without EOS

    def __post_init__(self):
        if self.score_scale <= 0:
            raise ValueError(f"score_scale must be > 0, got {self.score_scale}.")
        if self.score_clip is not None and self.score_clip <= 0:
            raise ValueError(f"score_clip must be > 0 or None, got {self.score_clip}.")
        if self.missing_eos_penalty is not None and not self.sampling.eos_ids:
            raise ValueError("missing_eos_penalty needs sampling.eos_ids.")


class RolloutParams(flax.struct.PyTreeNode):
    """The four models' variables: trained policy and value, frozen reference and reward."""

    policy: Any
    reference: Any
    value: Any
    reward: Any


# A programmatic reward: fn(reward params, tokens_bs, attention_mask_bs, response_mask_bn) -> [B].
ScoreFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class RolloutModels:
    """The modules: policy and reference share `policy`'s architecture. `value` is a separate
    ScalarModel or a ValueHead on the policy's backbone. `reward` is a ScalarModel (read by
    `sequence_scores`) or any traceable ScoreFn, e.g. a programmatic gold reward."""

    policy: CausalLM
    value: ScalarModel | ValueHead
    reward: ScalarModel | ScoreFn


@flax.struct.dataclass
class Rollout:
    """One batch of experience; every statistic is frozen for all PPO epochs and minibatches.

    tokens_bs: int32 [B, S]; attention_mask_bs: bool [B, S] (prompt and response tokens).
    response_mask_bn: bool [B, N], True up to and including the first EOS.
    logprobs_bn, ref_logprobs_bn: float32 [B, N] policy / reference log-probs (0 where masked).
    values_bn: float32 [B, N] value-model predictions (0 where masked).
    kl_bn: float32 [B, N] logp - logp_ref (the per-token KL estimate, 0 where masked).
    rewards_bn: float32 [B, N] per-token rewards (see the module docstring).
    raw_score_b: float32 [B] RM score; score_b: after shift/scale/clip and the EOS penalty.
    has_eos_b: bool [B] the response emitted EOS.
    """

    tokens_bs: jax.Array
    attention_mask_bs: jax.Array
    response_mask_bn: jax.Array
    logprobs_bn: jax.Array
    ref_logprobs_bn: jax.Array
    values_bn: jax.Array
    kl_bn: jax.Array
    rewards_bn: jax.Array
    raw_score_b: jax.Array
    score_b: jax.Array
    has_eos_b: jax.Array

    @property
    def prompt_len(self) -> int:
        return self.tokens_bs.shape[1] - self.response_mask_bn.shape[1]


@flax.struct.dataclass
class PolicyForward:
    """The policy's teacher-forced outputs at the N positions that predict response tokens.

    logprobs_bn: float32 [B, N] log p(response token n | everything before).
    logits_bnv: float32 [B, N, V] the temperature-scaled logits that predicted each of them.
    hidden_bnd: [B, N, E] final hidden states there (what a ValueHead reads).
    """

    logprobs_bn: jax.Array
    logits_bnv: jax.Array
    hidden_bnd: jax.Array


def policy_forward(
    model: CausalLM,
    params: Any,
    tokens_bs: jax.Array,
    attention_mask_bs: jax.Array,
    prompt_len: int,
    temperature: float = 1.0,
) -> PolicyForward:
    """One teacher-forced forward pass over prompt + response (see the module docstring)."""
    # Logits only from position P - 1 on (the last one predicts nothing and is dropped).
    out = model.apply(params, tokens_bs, attention_mask_bs, logits_start=prompt_len - 1)
    scale = 1.0 if temperature == 0.0 else temperature
    logits_bv = out.logits_btv.astype(jnp.float32) / scale  # positions P - 1 .. S - 1
    return PolicyForward(
        logprobs_bn=losses.next_token_logprobs(logits_bv, tokens_bs[:, prompt_len - 1 :]),
        logits_bnv=logits_bv[:, :-1],
        hidden_bnd=out.hidden_btd[:, prompt_len - 1 : -1],
    )


def response_logprobs(
    model: CausalLM,
    params: Any,
    tokens_bs: jax.Array,
    attention_mask_bs: jax.Array,
    prompt_len: int,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """(float32 [B, N] response log-probs, float32 [B, N, V] their logits): `policy_forward`."""
    out = policy_forward(model, params, tokens_bs, attention_mask_bs, prompt_len, temperature)
    return out.logprobs_bn, out.logits_bnv


def response_values(
    model: ScalarModel, params: Any, tokens_bs: jax.Array, attention_mask_bs: jax.Array, prompt_len
) -> jax.Array:
    """float32 [B, N]: value of the state before each response token (head at P + n - 1)."""
    scores_bs = model.apply(params, tokens_bs, attention_mask_bs).scores_bt
    return scores_bs[:, prompt_len - 1 : -1].astype(jnp.float32)


def sequence_scores(
    model: ScalarModel,
    params: Any,
    tokens_bs: jax.Array,
    attention_mask_bs: jax.Array,
    response_mask_bn: jax.Array,
) -> jax.Array:
    """float32 [B]: the RM's score at the last real response token of each row."""
    prompt_len = tokens_bs.shape[1] - response_mask_bn.shape[1]
    scores_bs = model.apply(params, tokens_bs, attention_mask_bs).scores_bt
    last_s = prompt_len + losses.last_true_index(response_mask_bn)
    return jnp.take_along_axis(scores_bs, last_s[:, None], axis=1)[:, 0].astype(jnp.float32)


def shape_rewards(
    *,
    kl_bn: jax.Array,
    score_b: jax.Array,
    response_mask_bn: jax.Array,
    kl_coef: jax.Array,
) -> jax.Array:
    """float32 [B, N]: -kl_coef * kl on response tokens, plus `score_b` at the last real one."""
    last_n = losses.last_true_index(response_mask_bn)
    at_last_bn = jnp.arange(response_mask_bn.shape[1])[None, :] == last_n[:, None]
    rewards_bn = -kl_coef * kl_bn + jnp.where(at_last_bn, score_b[:, None], 0.0)
    return jnp.where(response_mask_bn, rewards_bn, 0.0)


def rollout(
    models: RolloutModels,
    params: RolloutParams,
    prompt_tokens_bp: jax.Array,
    prompt_mask_bp: jax.Array,
    kl_coef: jax.Array,
    rng: jax.Array,
    config: RolloutConfig,
) -> Rollout:
    """Samples responses and scores them (traceable; `make_rollout` jits it).

    Args:
      models: the modules.
      params: their variables.
      prompt_tokens_bp, prompt_mask_bp: int32 / bool [B, P], left-padded prompts.
      kl_coef: float32 scalar, the KL penalty coefficient (beta).
      rng: PRNG key for sampling.
      config: the RolloutConfig.
    """
    generated = sample(
        models.policy, params.policy, prompt_tokens_bp, prompt_mask_bp, rng, config.sampling
    )
    tokens_bs, attention_bs = generated.tokens_bs, generated.attention_mask_bs
    mask_bn = generated.response_mask_bn
    prompt_len = prompt_tokens_bp.shape[1]
    temperature = config.sampling.temperature
    policy_out = policy_forward(
        models.policy, params.policy, tokens_bs, attention_bs, prompt_len, temperature
    )
    ref_logprobs_bn, _ = response_logprobs(
        models.policy, params.reference, tokens_bs, attention_bs, prompt_len, temperature
    )
    logprobs_bn = jnp.where(mask_bn, policy_out.logprobs_bn, 0.0)
    ref_logprobs_bn = jnp.where(mask_bn, ref_logprobs_bn, 0.0)
    if isinstance(models.value, ValueHead):
        values_bn = models.value.apply(params.value, policy_out.hidden_bnd)
    else:
        values_bn = response_values(models.value, params.value, tokens_bs, attention_bs, prompt_len)
    values_bn = jnp.where(mask_bn, values_bn, 0.0)
    score_fn = models.reward
    if isinstance(score_fn, ScalarModel):
        score_fn = lambda p, t, a, m: sequence_scores(models.reward, p, t, a, m)  # noqa: E731
    raw_score_b = score_fn(params.reward, tokens_bs, attention_bs, mask_bn).astype(jnp.float32)

    eos_ids = jnp.asarray(config.sampling.eos_ids or (-1,), jnp.int32)
    has_eos_b = jnp.any(jnp.isin(generated.response_tokens_bn, eos_ids) & mask_bn, axis=-1)
    score_b = (raw_score_b - config.score_shift) / config.score_scale
    if config.score_clip is not None:
        score_b = jnp.clip(score_b, -config.score_clip, config.score_clip)
    if config.missing_eos_penalty is not None:
        score_b = jnp.where(has_eos_b, score_b, score_b + config.missing_eos_penalty)
    kl_bn = logprobs_bn - ref_logprobs_bn
    rewards_bn = shape_rewards(
        kl_bn=kl_bn, score_b=score_b, response_mask_bn=mask_bn, kl_coef=kl_coef
    )
    return Rollout(
        tokens_bs=tokens_bs,
        attention_mask_bs=attention_bs,
        response_mask_bn=mask_bn,
        logprobs_bn=logprobs_bn,
        ref_logprobs_bn=ref_logprobs_bn,
        values_bn=values_bn,
        kl_bn=kl_bn,
        rewards_bn=rewards_bn,
        raw_score_b=raw_score_b,
        score_b=score_b,
        has_eos_b=has_eos_b,
    )


def duplicate_responses(batch: Rollout) -> jax.Array:
    """bool [B]: the row's response (tokens up to its first EOS) equals another row's exactly.

    Prompts differ between rows, so a high share of duplicates is a sign of mode collapse (one
    reply, e.g. a stock refusal, for every prompt). Costs a [B, B, N] comparison.
    """
    response_bn = jnp.where(
        batch.response_mask_bn, batch.tokens_bs[:, batch.prompt_len :], -1
    )  # -1 never is a token id, so masked tails only match masked tails
    same_bb = jnp.all(response_bn[:, None, :] == response_bn[None, :, :], axis=-1)
    rows = response_bn.shape[0]
    return jnp.any(same_bb & ~jnp.eye(rows, dtype=bool), axis=-1)


def rollout_metrics(batch: Rollout) -> losses.Metrics:
    """(sum, count) pairs: raw and normalised score, KL per sequence (sum over tokens) and per
    token, response length, EOS rate, and the share of responses that duplicate another one in
    the batch (`duplicate_responses`)."""
    mask_bn = batch.response_mask_bn.astype(jnp.float32)
    rows = jnp.asarray(mask_bn.shape[0], jnp.float32)
    length_b = jnp.sum(mask_bn, axis=-1)
    kl_b = jnp.sum(batch.kl_bn, axis=-1)
    return {
        "duplicate_rate": (jnp.sum(duplicate_responses(batch).astype(jnp.float32)), rows),
        "score_raw": (jnp.sum(batch.raw_score_b), rows),
        "score": (jnp.sum(batch.score_b), rows),
        "kl": (jnp.sum(kl_b), rows),
        "kl_per_token": (jnp.sum(batch.kl_bn), jnp.sum(mask_bn)),
        "response_length": (jnp.sum(length_b), rows),
        "eos_rate": (jnp.sum(batch.has_eos_b.astype(jnp.float32)), rows),
    }


def make_rollout(
    models: RolloutModels,
    config: RolloutConfig,
    *,
    mesh: Mesh | None = None,
    param_shardings: RolloutParams | None = None,
    rules: LogicalRules | None = None,
) -> Callable[..., Rollout]:
    """`rollout` jitted once, optionally over a mesh with explicit shardings.

    Returns:
      fn(params: RolloutParams, prompt_tokens_bp, prompt_mask_bp, kl_coef, rng) -> Rollout, with
      prompts and every [B, ...] output split over the mesh's batch axes (data x fsdp).
    """

    def fn(params, prompt_tokens_bp, prompt_mask_bp, kl_coef, rng):
        return rollout(models, params, prompt_tokens_bp, prompt_mask_bp, kl_coef, rng, config)

    if mesh is None:
        return jax.jit(fn)
    if param_shardings is None:
        raise ValueError("make_rollout(mesh=...) also needs param_shardings (a RolloutParams).")
    rules = sharding_lib.DEFAULT_RULES if rules is None else rules
    batch_prefix = sharding_lib.batch_sharding(mesh, 1)
    replicated = sharding_lib.replicated(mesh)

    def sharded_fn(params, prompt_tokens_bp, prompt_mask_bp, kl_coef, rng):
        with activation_sharding(mesh, rules):
            return fn(params, prompt_tokens_bp, prompt_mask_bp, kl_coef, rng)

    return jax.jit(
        sharded_fn,
        in_shardings=(param_shardings, batch_prefix, batch_prefix, replicated, replicated),
        out_shardings=batch_prefix,
    )
