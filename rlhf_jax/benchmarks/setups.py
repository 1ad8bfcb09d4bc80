"""The workloads' inputs and the library programs they time: models and weights (the same on
both sides), random token batches, the jitted SFT/RM training step and the jitted scoring of a
rollout (policy and reference log-probs, values, reward-model scores)."""

from __future__ import annotations

from typing import Any

from rlhf_jax.benchmarks.presets import LEARNING_RATE, WEIGHT_DECAY, init_params, model_config
from rlhf_jax.benchmarks.timing import timed_compile


def _train_batch(preset: dict, rows: int) -> Any:
    """int32 [rows, context] random tokens (seed 0)."""
    import numpy as np

    shape = (rows, preset["context"])
    return np.random.default_rng(0).integers(0, preset["vocab"], shape, np.int32)


def jit_library_step(forward, params, batch: dict, seed: int, frozen=None):
    """The library's SFT/RM step as the experiments run it: `make_train_step` with AdamW, jitted
    over a 1-device mesh with explicit shardings (`jit_train_step`); with `frozen` (LoRA's base),
    `params` are the adapters the step trains. Returns (run: one step that carries the state on,
    compile seconds, the compiled executable)."""
    import jax
    import jax.numpy as jnp
    import optax

    from rlhf_jax import sharding
    from rlhf_jax.training import state as state_lib
    from rlhf_jax.training import steps

    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    replicated = jax.tree_util.tree_map(lambda _: sharding.replicated(mesh), params)
    shardings = state_lib.state_shardings(replicated, tx, params, mesh)
    own = jax.tree_util.tree_map(jnp.copy, params)  # the step donates its state; params live on
    state = sharding.put_on_mesh(state_lib.create_state(own, tx, seed), shardings)
    train_step = steps.make_train_step(forward, tx)
    batch = sharding.put_batch(batch, mesh)
    rng = jax.random.key(seed)
    if frozen is None:
        step, extra = steps.jit_train_step(train_step, mesh, shardings), ()
    else:  # the base as the step's fourth argument; on one device the arguments' placement holds
        step = jax.jit(train_step, donate_argnums=(0,))
        replicated_frozen = jax.tree_util.tree_map(lambda _: sharding.replicated(mesh), frozen)
        extra = (sharding.put_on_mesh(frozen, replicated_frozen),)
    compiled, compile_s = timed_compile(step, state, batch, rng, *extra)
    holder = [state]

    def run():  # the state carries on from run to run, as in training
        holder[0], metrics = compiled(holder[0], batch, rng, *extra)
        jax.block_until_ready(holder[0])
        return jax.block_until_ready(metrics)

    return run, compile_s, compiled


def sft_setup(preset: dict, lora: bool = False) -> tuple[Any, Any, dict]:
    """(a)'s (CausalLM, params, batch): `batch` rows of random tokens, the loss on the second
    half of each row (the "response"); with `lora`, params hold "lora" beside "params"."""
    import numpy as np

    from rlhf_jax.models import CausalLM

    lm = CausalLM(model_config(preset, lora))
    tokens = _train_batch(preset, preset["batch"])
    loss_mask = np.zeros_like(tokens, bool)
    loss_mask[:, preset["context"] // 2 :] = True
    data = dict(tokens_bt=tokens, mask_bt=np.ones_like(loss_mask), loss_mask_bt=loss_mask)
    return lm, init_params(lm, preset["context"], 0), data


def reward_setup(preset: dict) -> tuple[Any, Any, dict]:
    """(b)'s (ScalarModel, params, batch): `batch` comparisons of two random responses, the
    first preferred."""
    import numpy as np

    from rlhf_jax.models import ScalarModel

    pairs, seq = preset["batch"], preset["context"]
    scalar = ScalarModel(model_config(preset))
    tokens = _train_batch(preset, 2 * pairs).reshape(pairs, 2, seq)
    prefers = np.zeros((pairs, 2, 2), bool)
    prefers[:, 0, 1] = True  # response 0 preferred to response 1
    data = dict(tokens_bkt=tokens, mask_bkt=np.ones_like(tokens, bool), prefers_bkk=prefers)
    return scalar, init_params(scalar, seq, 0), data


def scoring_setup(preset: dict) -> dict:
    """Models, four sets of weights, and 16 x (64 + 64) token sequences: `cfg`, `policy`
    (CausalLM), `scalar` (ScalarModel), `params` (policy, reference, value and reward weights,
    seeds 0-3) and `tokens_bs` (int32 [batch, prompt + new])."""
    import numpy as np

    from rlhf_jax.models import CausalLM, ScalarModel

    cfg = model_config(preset)
    seq = preset["prompt"] + preset["new"]
    policy, scalar = CausalLM(cfg), ScalarModel(cfg)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (preset["batch"], seq), np.int32)
    return dict(
        cfg=cfg,
        policy=policy,
        scalar=scalar,
        params=dict(
            policy=init_params(policy, seq, 0),
            reference=init_params(policy, seq, 1),
            value=init_params(scalar, seq, 2),
            reward=init_params(scalar, seq, 3),
        ),
        tokens_bs=tokens,
    )


def jax_scoring_fn(setup: dict, prompt_len: int):
    """Jitted (params, tokens_bs) -> (logprobs_bn, ref_logprobs_bn, values_bn, score_b)."""
    import jax
    import jax.numpy as jnp

    from rlhf_jax.rl.rollout import response_logprobs, response_values, sequence_scores

    policy, scalar = setup["policy"], setup["scalar"]

    @jax.jit
    def score(params, tokens_bs):
        attention_bs = jnp.ones(tokens_bs.shape, bool)
        response_mask_bn = attention_bs[:, prompt_len:]
        logprobs_bn, _ = response_logprobs(
            policy, params["policy"], tokens_bs, attention_bs, prompt_len
        )
        ref_bn, _ = response_logprobs(
            policy, params["reference"], tokens_bs, attention_bs, prompt_len
        )
        values_bn = response_values(scalar, params["value"], tokens_bs, attention_bs, prompt_len)
        score_b = sequence_scores(
            scalar, params["reward"], tokens_bs, attention_bs, response_mask_bn
        )
        return logprobs_bn, ref_bn, values_bn, score_b

    return score
