"""PPO and PPO-ptx: GAE (or a leave-one-out baseline), advantage whitening, KL controllers, and
the update as one jitted call.

`make_ppo_update` builds a pure `update(state, rollout, ptx_batch, rng) -> (state, metrics)`:
advantages and returns are computed once from the frozen rollout, then E epochs x M shuffled
minibatches run inside `lax.scan`s, each minibatch taking one policy step (clipped surrogate -
entropy bonus + gamma_ptx x pretraining NLL) and one value step (clipped value loss) with their own
optimizers (with a ValueHead on the policy's backbone: one step on the joint loss, policy loss +
value_coef x value loss); finally the KL controller adapts to the rollout's KL. The policy runs
without dropout in PPO, so the probability ratio on the first minibatch of the first epoch is 1.

The losses come in as arguments (defaults from `rlhf_jax.losses`), so a user's own objective is
one function away.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from rlhf_jax import losses
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.models.heads import CausalLM, ScalarModel, ValueHead
from rlhf_jax.models.partitioning import LogicalRules, activation_sharding, constrain
from rlhf_jax.rl.rollout import Rollout, policy_forward, response_values, rollout_metrics
from rlhf_jax.training import steps
from rlhf_jax.training.state import TrainState

# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


def gae(
    rewards_bn: jax.Array,
    values_bn: jax.Array,
    mask_bn: jax.Array,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over response tokens.

    The episode ends after the last masked-in token (its next value is 0), and masked-out
    positions get advantage 0 and return 0.

      delta_n = r_n + gamma * m_{n+1} * V_{n+1} - V_n
      A_n = delta_n + gamma * lam * m_{n+1} * A_{n+1}

    Args:
      rewards_bn, values_bn: float32 [B, N].
      mask_bn: bool [B, N], True on response tokens.
      gamma, lam: discount and GAE lambda.

    Returns:
      (advantages_bn, returns_bn = advantages + values), both 0 where masked.
    """
    mask_f = mask_bn.astype(jnp.float32)
    values_bn = values_bn * mask_f
    next_mask_bn = jnp.concatenate([mask_f[:, 1:], jnp.zeros_like(mask_f[:, :1])], axis=1)
    next_values_bn = jnp.concatenate([values_bn[:, 1:], jnp.zeros_like(values_bn[:, :1])], axis=1)
    deltas_bn = rewards_bn + gamma * next_mask_bn * next_values_bn - values_bn

    def backward(carry_b, inputs):
        delta_b, next_mask_b = inputs
        advantage_b = delta_b + gamma * lam * next_mask_b * carry_b
        return advantage_b, advantage_b

    _, advantages_nb = jax.lax.scan(
        backward, jnp.zeros_like(deltas_bn[:, 0]), (deltas_bn.T, next_mask_bn.T), reverse=True
    )
    advantages_bn = advantages_nb.T * mask_f
    return advantages_bn, (advantages_bn + values_bn) * mask_f


def whiten(x_bn: jax.Array, mask_bn: jax.Array, *, shift_mean: bool = True) -> jax.Array:
    """(x - mean) / std over the masked-in entries of the whole batch (0 where masked)."""
    mask_f = mask_bn.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask_f), 1.0)
    mean = jnp.sum(x_bn * mask_f) / count
    var = jnp.sum(jnp.square(x_bn - mean) * mask_f) / count
    out = (x_bn - mean) * jax.lax.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask_f


def leave_one_out_advantages(
    rewards_bn: jax.Array, mask_bn: jax.Array, group_size: int
) -> jax.Array:
    """float32 [B, N]: each response's return minus the mean return of the other responses to
    the same prompt (RLOO, Ahmadian et al. 2024), on every one of its response tokens.

    The B rows hold B / group_size prompts, each repeated on `group_size` consecutive rows. The
    return is the sum of the row's rewards (gamma = 1: the score and the KL penalties), so the
    baseline knows each prompt's difficulty without a value model.
    """
    rows = rewards_bn.shape[0]
    if group_size < 2 or rows % group_size:
        raise ValueError(
            f"Leave-one-out needs groups of >= 2 rows dividing the batch; got {rows} rows in "
            f"groups of {group_size}."
        )
    mask_f = mask_bn.astype(jnp.float32)
    returns_gk = jnp.sum(rewards_bn * mask_f, axis=-1).reshape(-1, group_size)
    others_gk = (jnp.sum(returns_gk, axis=-1, keepdims=True) - returns_gk) / (group_size - 1)
    return (returns_gk - others_gk).reshape(rows, 1) * mask_f


# ---------------------------------------------------------------------------------------------
# KL controllers
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KLConfig:
    """The KL penalty coefficient beta: fixed, or the adaptive controller of Ziegler et al. (2019):
    beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon), with KL the rollout's mean
    per-sequence KL (nats) and n the number of sequences in it."""

    kind: Literal["fixed", "adaptive"] = "fixed"
    init_coef: float = 0.02  # InstructGPT's beta
    target: float = 6.0  # nats per sequence (adaptive only)
    horizon: int = 10_000  # sequences (adaptive only)

    def __post_init__(self):
        if self.kind not in ("fixed", "adaptive"):
            raise ValueError(
                f"KL controller kind must be 'fixed' or 'adaptive', got {self.kind!r}."
            )
        if self.init_coef < 0 or self.target <= 0 or self.horizon <= 0:
            raise ValueError(f"Invalid KL controller settings: {self}.")


def update_kl_coef(coef: jax.Array, observed_kl: jax.Array, n_steps: int, config: KLConfig):
    """The next beta after a rollout of `n_steps` sequences with mean KL `observed_kl`."""
    if config.kind == "fixed":
        return coef
    error = jnp.clip(observed_kl / config.target - 1.0, -0.2, 0.2)
    return coef * (1.0 + error * n_steps / config.horizon)


# ---------------------------------------------------------------------------------------------
# State and update
# ---------------------------------------------------------------------------------------------


class PPOState(struct.PyTreeNode):
    """Everything PPO updates and a checkpoint stores.

    step: int32 scalar, PPO iterations (rollout + update) done.
    policy, value: TrainStates (params, optimizer state, step, rng) of the two trained models.
    kl_coef: float32 scalar, the current KL penalty coefficient.
    rng: uint32 [2] raw key data; iteration i uses `training.state.step_rng(state)` =
      fold_in(rng, i), as the SFT/RM train states do, so `training.loop.train_loop` drives PPO too.
    """

    step: jax.Array
    policy: TrainState
    value: TrainState
    kl_coef: jax.Array
    rng: jax.Array

    @property
    def params(self) -> Any:
        """The policy's variables (what evaluation and export read)."""
        return self.policy.params


def create_ppo_state(
    policy_params: Any,
    value_params: Any,
    policy_tx: optax.GradientTransformation,
    value_tx: optax.GradientTransformation,
    kl: KLConfig,
    seed: int,
) -> PPOState:
    def train_state(params, tx, salt):
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(jax.random.fold_in(jax.random.key(seed), salt)),
        )

    return PPOState(
        step=jnp.zeros((), jnp.int32),
        policy=train_state(policy_params, policy_tx, 1),
        value=train_state(value_params, value_tx, 2),
        kl_coef=jnp.asarray(kl.init_coef, jnp.float32),
        rng=jax.random.key_data(jax.random.key(seed)),
    )


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Hyper-parameters of the update (InstructGPT-style defaults)."""

    epochs: int = 4  # E passes over the rollout
    minibatches: int = 4  # M minibatches per epoch
    clip_eps: float = 0.2
    value_clip: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    entropy_coef: float = 0.0
    ptx_coef: float = 0.0  # gamma_ptx: weight of the pretraining NLL (PPO-ptx when > 0)
    # Weight of the value loss in the joint loss when the value is a ValueHead on the policy's
    # backbone (both losses then train the shared decoder); unused with a separate value model.
    value_coef: float = 0.1
    temperature: float = 1.0  # the sampling temperature (log-probs use softmax(logits / T))
    kl: KLConfig = KLConfig()
    # "gae": GAE on the value model's estimates (InstructGPT). "leave_one_out": each response's
    # return minus the mean of the other `group_size` - 1 responses to its prompt (the rollout
    # must hold each prompt on `group_size` consecutive rows); the value model still trains.
    advantage: str = "gae"
    group_size: int = 1

    def __post_init__(self):
        if self.epochs < 1 or self.minibatches < 1:
            raise ValueError(f"epochs and minibatches must be >= 1, got {self}.")
        if self.advantage not in ("gae", "leave_one_out"):
            raise ValueError(f"advantage must be 'gae' or 'leave_one_out', got {self.advantage!r}.")
        if self.advantage == "leave_one_out" and self.group_size < 2:
            raise ValueError(f"advantage='leave_one_out' needs group_size >= 2, got {self}.")
        if self.ptx_coef < 0 or self.entropy_coef < 0 or self.value_coef < 0:
            raise ValueError("ptx_coef, entropy_coef and value_coef must be >= 0.")


Batch = dict[str, jax.Array]


def _take_minibatches(data: Any, perm: jax.Array, minibatches: int) -> Any:
    """Rows permuted by `perm`, then split into [M, B / M, ...], each minibatch batch-sharded."""

    def split(x):
        x = x[perm]
        x = x.reshape(minibatches, x.shape[0] // minibatches, *x.shape[1:])
        return constrain(x, (None, "batch") + (None,) * (x.ndim - 2))

    return jax.tree_util.tree_map(split, data)


def _mean_metrics(metrics: losses.Metrics) -> dict[str, jax.Array]:
    return losses.metrics_mean(metrics)


def make_ppo_update(
    policy_model: CausalLM,
    value_model: ScalarModel | ValueHead,
    policy_tx: optax.GradientTransformation,
    value_tx: optax.GradientTransformation,
    config: PPOConfig,
    *,
    policy_loss_fn: losses.LossFn = losses.ppo_policy_loss,
    value_loss_fn: losses.LossFn = losses.ppo_value_loss,
    ptx_loss_fn: losses.LossFn = losses.sft_loss,
) -> Callable[[PPOState, Rollout, Batch | None, jax.Array], tuple[PPOState, dict]]:
    """Pure `update(state, rollout, ptx_batch, rng, policy_frozen=None) -> (state, metrics)`.

    With `policy_frozen` (the policy's variables it does not train, e.g. {"params": base} under
    LoRA), the policy reads {**policy_frozen, **state.policy.params} and only the latter are
    updated.

    Args:
      policy_model, value_model: the modules. With a separate value model (a ScalarModel) each
        minibatch takes one policy step and one value step on their own losses. With a
        ValueHead, the value reads the policy's hidden states: one joint loss, policy loss +
        `config.value_coef` x value loss, whose gradient trains the shared decoder (policy
        optimizer) and the head (value optimizer).
      policy_tx, value_tx: their optimizers.
      config: the PPOConfig.
      policy_loss_fn, value_loss_fn, ptx_loss_fn: losses with the signatures of
        `losses.ppo_policy_loss`, `losses.ppo_value_loss` and `losses.sft_loss`.

    The returned update takes `ptx_batch` = {tokens_bt, mask_bt, loss_mask_bt} ([B_ptx, T], B_ptx
    divisible by M; with positions_bt and documents_bt where rows pack several documents, as for
    `steps.sft_forward`) when `config.ptx_coef > 0`, else None. Metrics: (sum, count) pairs summed
    over all E x M minibatches ("policy/...", "value/...", "ptx/...", "entropy"), the rollout's
    statistics ("rollout/...", see `rollout.rollout_metrics`), plus
    "per_minibatch": {name: float32 [E, M] means} of the policy metrics, and "kl_coef".
    """
    use_ptx = config.ptx_coef > 0
    ptx_forward = steps.sft_forward(policy_model, ptx_loss_fn)
    shared_backbone = isinstance(value_model, ValueHead)

    def value_loss(values_bn, mb):
        loss, metrics = value_loss_fn(
            values_bn=values_bn,
            old_values_bn=mb["values_bn"],
            returns_bn=mb["returns_bn"],
            mask_bn=mb["response_mask_bn"],
            clip_range=config.value_clip,
        )
        return loss, {f"value/{k}": v for k, v in metrics.items()}

    def policy_objective(params, mb, ptx_mb, head_params=None, frozen=None):
        """Policy loss (+ value_coef x value loss of the ValueHead when `head_params`); the
        policy reads {**frozen, **params} when part of it is frozen (LoRA's base)."""
        params = steps.model_variables(params, frozen)
        forward = policy_forward(
            policy_model,
            params,
            mb["tokens_bs"],
            mb["attention_mask_bs"],
            mb["prompt_len"],
            config.temperature,
        )
        logprobs_bn, logits_bnv = forward.logprobs_bn, forward.logits_bnv
        mask_bn = mb["response_mask_bn"]
        loss, metrics = policy_loss_fn(
            logprobs_bn=logprobs_bn,
            old_logprobs_bn=mb["logprobs_bn"],
            advantages_bn=mb["advantages_bn"],
            mask_bn=mask_bn,
            clip_eps=config.clip_eps,
        )
        metrics = {f"policy/{k}": v for k, v in metrics.items()}
        entropy_sum, count = losses.masked_sum(losses.token_entropy(logits_bnv), mask_bn)
        metrics["entropy"] = (entropy_sum, count)
        if config.entropy_coef:
            loss = loss - config.entropy_coef * entropy_sum / jnp.maximum(count, 1.0)
        if use_ptx:
            ptx_loss, ptx_metrics = ptx_forward(params, ptx_mb, None, True)
            loss = loss + config.ptx_coef * ptx_loss
            metrics.update({f"ptx/{k}": v for k, v in ptx_metrics.items()})
        if head_params is not None:
            v_loss, v_metrics = value_loss(value_model.apply(head_params, forward.hidden_bnd), mb)
            loss = loss + config.value_coef * v_loss
            metrics.update(v_metrics)
        return loss, metrics

    def value_objective(params, mb):
        values_bn = response_values(
            value_model, params, mb["tokens_bs"], mb["attention_mask_bs"], mb["prompt_len"]
        )
        return value_loss(values_bn, mb)

    def apply(train_state: TrainState, tx, grads):
        updates, opt_state = tx.update(grads, train_state.opt_state, train_state.params)
        return train_state.replace(
            step=train_state.step + 1,
            params=optax.apply_updates(train_state.params, updates),
            opt_state=opt_state,
        )

    def update(
        state: PPOState,
        batch: Rollout,
        ptx_batch: Batch | None,
        rng: jax.Array,
        policy_frozen: Any = None,
    ):
        prompt_len = batch.prompt_len
        mask_bn = batch.response_mask_bn
        advantages_bn, returns_bn = gae(
            batch.rewards_bn, batch.values_bn, mask_bn, gamma=config.gamma, lam=config.lam
        )
        if config.advantage == "leave_one_out":
            advantages_bn = leave_one_out_advantages(batch.rewards_bn, mask_bn, config.group_size)
        if config.whiten_advantages:
            advantages_bn = whiten(advantages_bn, mask_bn)
        data = {
            "tokens_bs": batch.tokens_bs,
            "attention_mask_bs": batch.attention_mask_bs,
            "response_mask_bn": mask_bn,
            "logprobs_bn": batch.logprobs_bn,
            "values_bn": batch.values_bn,
            "advantages_bn": advantages_bn,
            "returns_bn": returns_bn,
        }
        rows = mask_bn.shape[0]
        m = config.minibatches
        if rows % m:
            raise ValueError(f"Rollout batch {rows} is not divisible by {m} minibatches.")
        if use_ptx:
            if ptx_batch is None:
                raise ValueError("ptx_coef > 0 needs a ptx_batch.")
            if ptx_batch["tokens_bt"].shape[0] % m:
                raise ValueError(
                    f"ptx batch {ptx_batch['tokens_bt'].shape[0]} is not divisible by {m} "
                    "minibatches."
                )

        def minibatch_step(carry, inputs):
            policy_state, value_state = carry
            mb, ptx_mb = inputs
            mb = {**mb, "prompt_len": prompt_len}
            if shared_backbone:
                (policy_grads, value_grads), policy_metrics = jax.grad(
                    policy_objective, argnums=(0, 3), has_aux=True
                )(policy_state.params, mb, ptx_mb, value_state.params, policy_frozen)
                value_metrics = {}
            else:
                policy_grads, policy_metrics = jax.grad(policy_objective, has_aux=True)(
                    policy_state.params, mb, ptx_mb, None, policy_frozen
                )
                value_grads, value_metrics = jax.grad(value_objective, has_aux=True)(
                    value_state.params, mb
                )
            policy_norm, value_norm = optax.tree.norm(policy_grads), optax.tree.norm(value_grads)
            # A NaN/inf gradient skips this minibatch's updates (both models), as in SFT/RM.
            finite = jnp.isfinite(policy_norm) & jnp.isfinite(value_norm)
            keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
                lambda n, o: jnp.where(finite, n, o), new, old
            )
            policy_state = keep(apply(policy_state, policy_tx, policy_grads), policy_state)
            value_state = keep(apply(value_state, value_tx, value_grads), value_state)
            one = jnp.ones((), jnp.float32)
            extra = {
                "policy/grad_norm": (policy_norm * one, one),
                "value/grad_norm": (value_norm * one, one),
                "nonfinite": ((~finite).astype(jnp.float32), one),
            }
            return (policy_state, value_state), {**policy_metrics, **value_metrics, **extra}

        def epoch_step(carry, epoch_rng):
            rollout_rng, ptx_rng = jax.random.split(epoch_rng)
            mbs = _take_minibatches(data, jax.random.permutation(rollout_rng, rows), m)
            ptx_mbs = None
            if use_ptx:
                ptx_rows = ptx_batch["tokens_bt"].shape[0]
                ptx_mbs = _take_minibatches(ptx_batch, jax.random.permutation(ptx_rng, ptx_rows), m)
            return jax.lax.scan(minibatch_step, carry, (mbs, ptx_mbs))

        (policy_state, value_state), metrics_em = jax.lax.scan(
            epoch_step,
            (state.policy, state.value),
            jax.random.split(rng, config.epochs),
        )
        summed = jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=(0, 1)), metrics_em)
        per_minibatch = {
            k.removeprefix("policy/"): s / jnp.maximum(c, 1.0)
            for k, (s, c) in metrics_em.items()
            if k.startswith("policy/")
        }
        observed_kl = jnp.mean(jnp.sum(batch.kl_bn, axis=-1))
        new_state = state.replace(
            step=state.step + 1,
            policy=policy_state,
            value=value_state,
            kl_coef=update_kl_coef(state.kl_coef, observed_kl, rows, config.kl),
        )
        one = jnp.ones((), jnp.float32)
        metrics = {
            **summed,
            **{f"rollout/{k}": v for k, v in rollout_metrics(batch).items()},
            "loss": summed["policy/loss"],
            "kl_coef": (state.kl_coef * one, one),
            "generated_tokens": (jnp.sum(mask_bn.astype(jnp.float32)), one),
            "per_minibatch": per_minibatch,
        }
        return new_state, metrics

    return update


def make_iteration(
    rollout_fn: Callable,
    update_fn: Callable,
    reference_params: Any,
    reward_params: Any,
    *,
    timed: bool = False,
    policy_frozen: Any = None,
) -> Callable:
    """One PPO iteration as a train step, `step(state, batch, rng) -> (state, metrics)`: the jitted
    rollout (`rollout.make_rollout`) then the jitted update (`make_ppo_update` +
    `jit_ppo_update`), two compiled calls with no host round trip between them.

    Args:
      rollout_fn, update_fn: the two jitted functions.
      reference_params, reward_params: the frozen models' variables (on the mesh).
      policy_frozen: the policy's frozen variables under LoRA (its base, which is then also the
        reference: the policy without its adapters); the rollout reads them with the state's
        adapters. `update_fn` must have been jitted with them (`jit_ppo_update`).

    The batch holds `tokens_bp` / `mask_bp` (left-padded prompts) and, for PPO-ptx,
    `ptx_tokens_bt` / `ptx_mask_bt` / `ptx_loss_mask_bt` (+ `ptx_positions_bt` /
    `ptx_documents_bt` where rows pack several documents). Metrics are the update's, without the
    per-minibatch arrays (see `make_ppo_update`), so `training.loop.train_loop` can run PPO.
    With `timed`, the host waits for each call to finish (no data is read) and adds
    "time/rollout_s" and "time/update_s" (wall seconds of each call, dispatch included).
    """
    from rlhf_jax.rl.rollout import RolloutParams

    def step(state: PPOState, batch: Batch, rng: jax.Array):
        rollout_rng, update_rng = jax.random.split(rng)
        params = RolloutParams(
            policy=steps.model_variables(state.policy.params, policy_frozen),
            reference=reference_params,
            value=state.value.params,
            reward=reward_params,
        )
        start = time.perf_counter()
        experience = rollout_fn(
            params, batch["tokens_bp"], batch["mask_bp"], state.kl_coef, rollout_rng
        )
        if timed:
            jax.block_until_ready(experience)
            rollout_s, start = time.perf_counter() - start, time.perf_counter()
        # The [B, T] fields only: the per-row counts ("ptx_truncated_b", ...) are the loop's.
        ptx = {
            k.removeprefix("ptx_"): v
            for k, v in batch.items()
            if k.startswith("ptx_") and k.endswith("_bt")
        }
        state, metrics = update_fn(state, experience, ptx or None, update_rng)
        metrics = {k: v for k, v in metrics.items() if k != "per_minibatch"}
        if timed:
            jax.block_until_ready(state)
            metrics["time/rollout_s"] = (np.float64(rollout_s), np.float64(1.0))
            metrics["time/update_s"] = (np.float64(time.perf_counter() - start), np.float64(1.0))
        return state, metrics

    return step


# A sampled estimate of KL(pi || pi_ref) is >= 0 in expectation. A window mean below this (nats
# per response) is beyond sampling noise for a healthy run and usually means the log-probs do not
# match how responses were sampled (temperature, top-k/top-p, a different tokenizer/model).
NEGATIVE_KL_NATS = -0.1


def negative_kl_warning(kl_per_response: float) -> str | None:
    """A warning text when the mean KL estimate per response is clearly negative, else None."""
    if kl_per_response >= NEGATIVE_KL_NATS:
        return None
    return (
        f"The mean KL to the reference is negative ({kl_per_response:.3f} nats per response). "
        "A sampled KL estimate is >= 0 in expectation; check that the log-probs use the "
        "sampling temperature and that top-k/top-p are off during PPO rollouts."
    )


def ppo_state_shardings(
    policy_shardings: TrainState, value_shardings: TrainState, mesh: Mesh
) -> PPOState:
    """Shardings of a PPOState from those of its two TrainStates (`state.state_shardings`)."""
    replicated = sharding_lib.replicated(mesh)
    return PPOState(
        step=replicated,
        policy=policy_shardings,
        value=value_shardings,
        kl_coef=replicated,
        rng=replicated,
    )


def jit_ppo_update(
    update: Callable,
    mesh: Mesh,
    state_shardings: PPOState,
    rules: LogicalRules = sharding_lib.DEFAULT_RULES,
    *,
    policy_frozen: Any = None,
    policy_frozen_shardings: Any = None,
) -> Callable:
    """`update` jitted over `mesh` as `fn(state, batch, ptx_batch, rng)`: state in/out with
    `state_shardings` (donated), rollout and ptx batch split over data x fsdp, rng and metrics
    replicated. `policy_frozen` (LoRA's base, placed as `policy_frozen_shardings`) goes to every
    call as an argument of the compiled program, never donated."""

    def wrapped(state, batch, ptx_batch, rng, frozen=None):
        with activation_sharding(mesh, rules):
            return update(state, batch, ptx_batch, rng, frozen)

    replicated = sharding_lib.replicated(mesh)
    batch_prefix = sharding_lib.batch_sharding(mesh, ndim=1)
    in_shardings = (state_shardings, batch_prefix, batch_prefix, replicated)
    if policy_frozen is not None:
        in_shardings += (policy_frozen_shardings,)
    jitted = jax.jit(
        wrapped,
        in_shardings=in_shardings,
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    if policy_frozen is None:
        return jitted
    return lambda state, batch, ptx_batch, rng: jitted(state, batch, ptx_batch, rng, policy_frozen)
