"""Pure SFT and reward-model steps: `step(state, batch, rng) -> (state, metrics)`.

A step is built from a *forward* `forward(params, batch, rng, deterministic) -> (loss, metrics)`,
itself built from a model and a loss function from `rlhf_jax.losses` (or the user's own, with the
same contract), so swapping the loss is one argument. Metrics are `(sum, count)` pairs (see
`rlhf_jax.losses`); the host divides at the end.

Gradient accumulation splits the batch into `grad_accum` micro-batches (rows i, i + A, i + 2A, ...
form micro-batch i, so each device keeps its own rows) and scans over them; micro-batch gradients
are weighted by their `metrics["loss"]` counts, so the update equals the full-batch one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rlhf_jax import losses as losses_lib
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.models.partitioning import activation_sharding
from rlhf_jax.training.state import TrainState

Batch = dict[str, jax.Array]
Forward = Callable[[Any, Batch, jax.Array, bool], tuple[jax.Array, losses_lib.Metrics]]


def _dropout_rngs(rng: jax.Array, deterministic: bool) -> dict[str, jax.Array] | None:
    return None if deterministic else {"dropout": rng}


def sft_forward(
    model: nn.Module, loss_fn: losses_lib.LossFn = losses_lib.sft_loss, *, lm_head_chunk: int = 0
) -> Forward:
    """Forward for a CausalLM on SFT batches (`tokens_bt`, `mask_bt`, `loss_mask_bt`; with
    `positions_bt` and `documents_bt` where rows pack several documents).

    lm_head_chunk: > 0 applies the LM head that many positions at a time inside the loss
      (`losses.chunked_next_token_logprobs`), so the [B, T, V] logits never exist whole; the
      loss must then be `losses.sft_loss`.
    """
    if lm_head_chunk and loss_fn is not losses_lib.sft_loss:
        raise ValueError("lm_head_chunk > 0 computes the SFT NLL itself: use losses.sft_loss.")

    def forward(params, batch, rng, deterministic):
        tokens_bt = batch["tokens_bt"]
        out = model.apply(
            params,
            tokens_bt,
            batch["mask_bt"],
            batch.get("positions_bt"),
            deterministic=deterministic,
            documents_bt=batch.get("documents_bt"),
            rngs=_dropout_rngs(rng, deterministic),
            # Chunked: the hidden states only (logits from position T on: none).
            logits_start=tokens_bt.shape[1] if lm_head_chunk else 0,
        )
        if lm_head_chunk:
            head = lambda h_bcd: model.apply(params, h_bcd, method=type(model).head_logits)  # noqa: E731
            logprobs_bt, is_top_bt = losses_lib.chunked_next_token_logprobs(
                out.hidden_btd, head, tokens_bt, lm_head_chunk
            )
            return losses_lib.sft_loss_from_logprobs(
                logprobs_bt=logprobs_bt, is_top_bt=is_top_bt, loss_mask_bt=batch["loss_mask_bt"]
            )
        return loss_fn(
            logits_btv=out.logits_btv,
            tokens_bt=batch["tokens_bt"],
            loss_mask_bt=batch["loss_mask_bt"],
        )

    return forward


def last_token_scores(scores_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
    """float32 [B]: the score at each row's last attended position (`losses.last_true_index`)."""
    last_b = losses_lib.last_true_index(mask_bt)
    return jnp.take_along_axis(scores_bt, last_b[:, None], axis=1)[:, 0].astype(jnp.float32)


def reward_scores(
    model: nn.Module,
    params: Any,
    tokens_bkt: jax.Array,
    mask_bkt: jax.Array,
    *,
    deterministic: bool = True,
    rng: jax.Array | None = None,
) -> jax.Array:
    """float32 [B, K]: reward of every response, each run through the model exactly once (as one
    [B*K, T] batch). The reward is the scalar head at the response's last token (its EOS)."""
    b, k, t = tokens_bkt.shape
    out = model.apply(
        params,
        tokens_bkt.reshape(b * k, t),
        mask_bkt.reshape(b * k, t),
        deterministic=deterministic,
        rngs=_dropout_rngs(rng, deterministic),
    )
    return last_token_scores(out.scores_bt, mask_bkt.reshape(b * k, t)).reshape(b, k)


def shared_prompt_reward_scores(
    model: nn.Module,
    params: Any,
    batch: Batch,
    *,
    deterministic: bool = True,
    rng: jax.Array | None = None,
) -> jax.Array:
    """float32 [N, K]: reward of every response in shared-prompt rows, the head at response k's
    EOS. Either one comparison per row (`pipeline.TokenizeComparisonSharedPrompt`: `tokens_bt`,
    `mask_bt`, `positions_bt`, `segments_bt`, `last_bk`; N = B), or up to E per row
    (`pipeline.TokenizeComparisonRow`: the same with `documents_bt` and `last_bek`; slot e of row
    b at index b * E + e, N = B * E; empty slots score garbage and have no pairs). Equal to
    `reward_scores` on the same comparisons laid out one response per row."""
    out = model.apply(
        params,
        batch["tokens_bt"],
        batch["mask_bt"],
        batch["positions_bt"],
        deterministic=deterministic,
        segments_bt=batch["segments_bt"],
        documents_bt=batch.get("documents_bt"),
        rngs=_dropout_rngs(rng, deterministic),
    )
    last = batch["last_bek"] if "last_bek" in batch else batch["last_bk"][:, None]
    b, e, k = last.shape
    scores = jnp.take_along_axis(out.scores_bt, last.reshape(b, e * k), axis=1)
    return scores.reshape(b * e, k).astype(jnp.float32)


def comparison_prefers(batch: Batch) -> Any:
    """bool [N, K, K] preferences in the order of `comparison_scores` (N = B, or B * E for rows
    of several comparisons); numpy in, numpy out."""
    if "prefers_bekk" in batch:
        prefers = batch["prefers_bekk"]
        return prefers.reshape(-1, *prefers.shape[2:])
    return batch["prefers_bkk"]


def comparison_scores(
    model: nn.Module,
    params: Any,
    batch: Batch,
    *,
    deterministic: bool = True,
    rng: jax.Array | None = None,
) -> jax.Array:
    """float32 [N, K] rewards of a comparison batch in any layout: one response per row
    (`tokens_bkt`, `mask_bkt`; `reward_scores`) or shared-prompt rows, one or several
    comparisons per row (`segments_bt`; `shared_prompt_reward_scores`). `comparison_prefers` gives
    the matching preferences."""
    if "segments_bt" in batch:
        return shared_prompt_reward_scores(
            model, params, batch, deterministic=deterministic, rng=rng
        )
    return reward_scores(
        model,
        params,
        batch["tokens_bkt"],
        batch["mask_bkt"],
        deterministic=deterministic,
        rng=rng,
    )


def reward_forward(
    model: nn.Module, loss_fn: losses_lib.LossFn = losses_lib.ranking_loss
) -> Forward:
    """Forward for a ScalarModel on comparison batches in any layout of `comparison_scores`.

    The head's bias is held fixed (stop_gradient): a ranking loss sees only reward differences, so
    the bias has zero true gradient, and Adam would turn float round-off in it into drift. It is
    set after training by the reference normalisation (`rlhf_jax.training.reward`).
    """

    def forward(params, batch, rng, deterministic):
        head = params["params"]["head"]
        if "bias" in head:
            head = {**head, "bias": jax.lax.stop_gradient(head["bias"])}
            params = {**params, "params": {**params["params"], "head": head}}
        scores_bk = comparison_scores(model, params, batch, deterministic=deterministic, rng=rng)
        return loss_fn(scores_bk=scores_bk, prefers_bkk=comparison_prefers(batch))

    return forward


def _microbatches(batch: Batch, n: int) -> Batch:
    """[B, ...] -> [n, B / n, ...] with micro-batch i = rows i, i + n, ... (device-local)."""

    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"Batch size {x.shape[0]} is not divisible by grad_accum={n}.")
        return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)

    return jax.tree_util.tree_map(split, batch)


def _tree_add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


def loss_gradients(
    forward: Forward, params: Any, batch: Batch, rng: jax.Array, grad_accum: int = 1
) -> tuple[Any, losses_lib.Metrics]:
    """(gradient of the batch-mean loss, summed metrics), accumulated over micro-batches."""

    def weighted_loss(p, micro, micro_rng):
        loss, metrics = forward(p, micro, micro_rng, False)
        count = jax.lax.stop_gradient(metrics["loss"][1])
        return loss * count, metrics

    grad_fn = jax.grad(weighted_loss, has_aux=True)
    if grad_accum == 1:
        grads, metrics = grad_fn(params, batch, rng)
    else:
        micro = _microbatches(batch, grad_accum)
        first = jax.tree_util.tree_map(lambda x: x[0], micro)
        zeros = jax.eval_shape(grad_fn, params, first, rng)
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)

        def body(carry, inputs):
            index, micro_batch = inputs
            out = grad_fn(params, micro_batch, jax.random.fold_in(rng, index))
            return _tree_add(carry, out), None

        (grads, metrics), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), micro))
    total = jnp.maximum(metrics["loss"][1], 1.0)
    grads = jax.tree_util.tree_map(lambda g: g / total.astype(g.dtype), grads)
    return grads, metrics


def model_variables(params: Any, frozen: Any = None) -> Any:
    """What a model reads when part of its variables is frozen: {**frozen, **params} (e.g. LoRA's
    {"params": base} beside the trained {"lora": adapters}), or `params` alone without `frozen`."""
    return params if frozen is None else {**frozen, **params}


def with_frozen(forward: Forward, frozen: Any) -> Forward:
    """`forward` on {**frozen, **params}: `params` (e.g. {"lora": adapters}) are what a step
    trains, `frozen` (e.g. {"params": base}) are read but get no gradient."""

    def forward_with_frozen(params, batch, rng, deterministic):
        return forward(model_variables(params, frozen), batch, rng, deterministic)

    return forward_with_frozen


def make_train_step(
    forward: Forward, tx: optax.GradientTransformation, *, grad_accum: int = 1
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, losses_lib.Metrics]]:
    """Pure `step(state, batch, rng, frozen=None) -> (state, metrics)`: one optimizer update.

    With `frozen` (variables the state does not train, e.g. {"params": base} under LoRA), the
    forward reads {**frozen, **state.params} and only `state.params` get gradients.

    Metrics: the forward's (sum, count) pairs plus "grad_norm" (before clipping) and "nonfinite".
    A NaN or inf loss or gradient sets "nonfinite" = 1 and skips the update (params and optimizer
    state unchanged), so one bad batch cannot poison the state; the host decides whether to stop.
    """

    def step(state: TrainState, batch: Batch, rng: jax.Array, frozen: Any = None):
        forward_ = forward if frozen is None else with_frozen(forward, frozen)
        grads, metrics = loss_gradients(forward_, state.params, batch, rng, grad_accum)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.isfinite(metrics["loss"][0])
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
            lambda n, o: jnp.where(finite, n, o), new, old
        )
        new_state = state.replace(
            step=state.step + 1,
            params=keep(new_params, state.params),
            opt_state=keep(new_opt_state, state.opt_state),
        )
        one = jnp.ones((), jnp.float32)
        metrics = {
            **metrics,
            "grad_norm": (grad_norm * one, one),
            "nonfinite": ((~finite).astype(jnp.float32), one),
        }
        return new_state, metrics

    return step


def make_eval_step(forward: Forward) -> Callable[[Any, Batch], losses_lib.Metrics]:
    """Pure `eval_step(params, batch) -> metrics` (no dropout)."""

    def eval_step(params, batch):
        _, metrics = forward(params, batch, jax.random.key(0), True)
        return metrics

    return eval_step


def jit_train_step(
    step: Callable,
    mesh: Mesh,
    state_shardings: TrainState,
    rules=sharding_lib.DEFAULT_RULES,
    *,
    frozen: Any = None,
    frozen_shardings: Any = None,
) -> Callable:
    """`step` jitted over `mesh` as `fn(state, batch, rng)`: state in/out with `state_shardings`
    (donated), batch split over data x fsdp, rng and metrics replicated; activations constrained
    by `rules`. `frozen` (placed as `frozen_shardings`) is passed to every call as an argument of
    the compiled program, never donated and never baked into it as a constant."""

    def wrapped(state, batch, rng, frozen_=None):
        with activation_sharding(mesh, rules):
            return step(state, batch, rng, frozen_)

    replicated = sharding_lib.replicated(mesh)
    # A rank-1 spec is a prefix for every batch leaf: leading axis over data x fsdp, rest whole.
    batch_prefix = sharding_lib.batch_sharding(mesh, ndim=1)
    in_shardings = (state_shardings, batch_prefix, replicated)
    if frozen is not None:
        in_shardings += (frozen_shardings,)
    jitted = jax.jit(
        wrapped,
        in_shardings=in_shardings,
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    if frozen is None:
        return jitted  # fn(state, batch, rng), with `.lower` for ahead-of-time compiling
    return lambda state, batch, rng: jitted(state, batch, rng, frozen)


def jit_eval_step(
    eval_step: Callable, mesh: Mesh, param_shardings: Any, rules=sharding_lib.DEFAULT_RULES
) -> Callable:
    """`eval_step` jitted over `mesh` (params with `param_shardings`, metrics replicated)."""

    def wrapped(params, batch):
        with activation_sharding(mesh, rules):
            return eval_step(params, batch)

    return jax.jit(
        wrapped,
        in_shardings=(param_shardings, sharding_lib.batch_sharding(mesh, ndim=1)),
        out_shardings=sharding_lib.replicated(mesh),
    )
