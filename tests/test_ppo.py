"""PPO: GAE against a NumPy loop, losses against hand-computed values, reward placement, frozen
rollout statistics, one compiled program per phase, sharded == single device, and learning."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax import losses, sharding
from rlhf_jax.generation import SamplingConfig
from rlhf_jax.models import CausalLM, ScalarModel, TransformerConfig, ValueHead
from rlhf_jax.rl import ppo
from rlhf_jax.rl import rollout as rollout_lib
from rlhf_jax.training import state as state_lib

V, P, N, B = 16, 4, 6, 8
EOS, PAD = 2, 5  # pad id != EOS id on purpose


def tiny_config(**overrides) -> TransformerConfig:
    # Llama family: no biases, so sharded and single-device Adam updates agree (see test_training).
    fields = dict(
        vocab_size=V,
        num_layers=2,
        num_heads=2,
        num_kv_heads=2,
        embed_dim=16,
        mlp_dim=32,
        max_len=16,
    )
    return TransformerConfig.llama(**{**fields, **overrides})


def prompts(batch: int = B, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(6, V, (batch, P)).astype(np.int32)
    mask = np.ones((batch, P), bool)
    for row in range(batch):
        mask[row, : row % P] = False  # left padding of 0..3 slots
    tokens[~mask] = PAD
    return tokens, mask


def make_setup(*, reward=None, eos_ids=(EOS,), missing_eos_penalty=None, config=None, seed=0):
    config = config or tiny_config()
    policy, value = CausalLM(config), ScalarModel(config)
    policy_params, policy_specs = state_lib.init_variables(policy, P + N, seed)
    value_params, value_specs = state_lib.init_variables(value, P + N, seed + 1)
    rollout_config = rollout_lib.RolloutConfig(
        SamplingConfig(max_new_tokens=N, eos_ids=eos_ids, pad_id=PAD),
        missing_eos_penalty=missing_eos_penalty,
    )
    models = rollout_lib.RolloutModels(policy=policy, value=value, reward=reward or value)
    params = rollout_lib.RolloutParams(
        policy=policy_params, reference=policy_params, value=value_params, reward=value_params
    )
    return models, params, rollout_config, (policy_specs, value_specs)


# ---------------------------------------------------------------------------------------------
# GAE, whitening, losses
# ---------------------------------------------------------------------------------------------


def numpy_gae(rewards, values, mask, gamma, lam):
    b, n = rewards.shape
    advantages = np.zeros((b, n))
    for row in range(b):
        last = 0.0
        for t in reversed(range(n)):
            if not mask[row, t]:
                last = 0.0
                continue
            next_value = values[row, t + 1] if t + 1 < n and mask[row, t + 1] else 0.0
            delta = rewards[row, t] + gamma * next_value - values[row, t]
            last = delta + gamma * lam * last
            advantages[row, t] = last
    return advantages, (advantages + values) * mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0)])
def test_gae_equals_numpy_loop(gamma, lam):
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(5, 9)).astype(np.float32)
    values = rng.normal(size=(5, 9)).astype(np.float32)
    lengths = np.array([9, 1, 4, 7, 2])  # a full response, a one-token one, and early EOS
    mask = np.arange(9)[None, :] < lengths[:, None]
    got_adv, got_ret = ppo.gae(
        jnp.asarray(rewards), jnp.asarray(values), mask, gamma=gamma, lam=lam
    )
    want_adv, want_ret = numpy_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(got_adv, want_adv, atol=1e-6)
    np.testing.assert_allclose(got_ret, want_ret, atol=1e-6)
    assert np.all(np.asarray(got_adv)[~mask] == 0)


def test_whiten_uses_masked_entries_only():
    x = jnp.array([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, -7.0, 50.0]])
    mask = jnp.array([[True, True, True, False], [True, True, False, False]])
    out = np.asarray(ppo.whiten(x, mask))
    real = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(out[np.asarray(mask)], (real - 3.0) / real.std(), rtol=1e-5)
    assert np.all(out[~np.asarray(mask)] == 0)


def test_leave_one_out_advantages_hand_computed():
    rewards = jnp.array(
        [[0.1, 0.2, 1.0], [0.0, -0.5, 9.0], [2.0, 9.0, 9.0], [1.0, 1.0, 1.0]], jnp.float32
    )
    mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], bool)
    # Returns 1.3, -0.5 | 2.0, 3.0 (masked rewards do not count); groups of two rows.
    out = np.asarray(ppo.leave_one_out_advantages(rewards, mask, 2))
    want = np.array([[1.8] * 3, [-1.8, -1.8, 0.0], [-1.0, 0.0, 0.0], [1.0] * 3])
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    # One group of four: each return minus the mean of the other three.
    returns = np.array([1.3, -0.5, 2.0, 3.0])
    others = (returns.sum() - returns) / 3
    out = np.asarray(ppo.leave_one_out_advantages(rewards, mask, 4))
    np.testing.assert_allclose(out, (returns - others)[:, None] * np.asarray(mask), rtol=1e-6)
    with pytest.raises(ValueError, match="4 rows in groups of 3"):
        ppo.leave_one_out_advantages(rewards, mask, 3)
    with pytest.raises(ValueError, match="group_size >= 2"):
        ppo.PPOConfig(advantage="leave_one_out", group_size=1)
    with pytest.raises(ValueError, match="'gae' or 'leave_one_out', got 'rloo'"):
        ppo.PPOConfig(advantage="rloo", group_size=4)


def test_leave_one_out_baseline_removes_what_every_response_to_a_prompt_shares():
    # A reward that is the same for every response, and a policy equal to its reference (so no
    # KL penalty): leave-one-out advantages are all zero and the policy does not move; GAE's
    # advantages come from the (untrained) value model's estimates, and it does move.
    models, params, config, _ = make_setup(reward=lambda p, t, a, m: jnp.ones(t.shape[0]))
    tokens, mask = prompts(4)
    experience = rollout_lib.make_rollout(models, config)(
        params,
        np.repeat(tokens, 2, axis=0),
        np.repeat(mask, 2, axis=0),
        jnp.float32(0.1),
        jax.random.key(0),
    )
    tx = optax.adam(1e-2)
    moved = {}
    for advantage, group_size in (("leave_one_out", 2), ("gae", 1)):
        ppo_config = ppo.PPOConfig(
            epochs=2, minibatches=2, advantage=advantage, group_size=group_size
        )
        update = jax.jit(ppo.make_ppo_update(models.policy, models.value, tx, tx, ppo_config))
        state = ppo.create_ppo_state(params.policy, params.value, tx, tx, ppo.KLConfig(), seed=0)
        state, _ = update(state, experience, None, jax.random.key(1))
        moved[advantage] = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(
                jax.tree_util.tree_leaves(state.policy.params),
                jax.tree_util.tree_leaves(params.policy),
                strict=True,
            )
        )
    assert moved["leave_one_out"] == 0.0 and moved["gae"] > 1e-4, moved


def test_ppo_policy_loss_hand_computed():
    logp = jnp.log(jnp.array([[0.5, 0.3, 0.2]]))
    old = jnp.log(jnp.array([[0.25, 0.3, 0.4]]))  # ratios 2.0, 1.0, 0.5
    adv = jnp.array([[1.0, -2.0, -1.0]])
    mask = jnp.array([[True, True, True]])
    loss, metrics = losses.ppo_policy_loss(
        logprobs_bn=logp, old_logprobs_bn=old, advantages_bn=adv, mask_bn=mask, clip_eps=0.2
    )
    # token 0: max(-1*2, -1*1.2) = -1.2 (clipped); token 1: max(2, 2) = 2;
    # token 2: max(0.5, 0.8) = 0.8 (clipped)
    np.testing.assert_allclose(loss, (-1.2 + 2.0 + 0.8) / 3, rtol=1e-6)
    mean = losses.metrics_mean(metrics)
    np.testing.assert_allclose(mean["clipfrac"], 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(mean["ratio"], (2.0 + 1.0 + 0.5) / 3, rtol=1e-6)
    k3 = [(2.0 - 1) - np.log(2.0), 0.0, (0.5 - 1) - np.log(0.5)]
    np.testing.assert_allclose(mean["approx_kl"], np.mean(k3), rtol=1e-5)


def test_ppo_value_loss_hand_computed():
    values = jnp.array([[1.0, 0.0, 2.0]])
    old = jnp.array([[0.5, 0.0, 0.0]])
    returns = jnp.array([[2.0, 1.0, 9.0]])
    mask = jnp.array([[True, True, False]])
    loss, metrics = losses.ppo_value_loss(
        values_bn=values, old_values_bn=old, returns_bn=returns, mask_bn=mask, clip_range=0.2
    )
    # token 0: V moved 0.5 > 0.2, clipped V = 0.7: max((1-2)^2, (0.7-2)^2) = 1.69
    # token 1: max(1, 1) = 1; token 2 is masked out
    np.testing.assert_allclose(loss, 0.5 * (1.69 + 1.0) / 2, rtol=1e-6)
    mean = losses.metrics_mean(metrics)
    np.testing.assert_allclose(mean["value_error"], (1.0 + 1.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(mean["value_clipfrac"], 0.5, rtol=1e-6)


def test_last_true_index_any_padding():
    mask = jnp.array(
        [
            [True, True, True, False, False],  # right-padded
            [False, False, True, True, True],  # left-padded
            [False, True, True, False, False],  # both
            [False, False, False, False, False],  # empty
        ]
    )
    assert losses.last_true_index(mask).tolist() == [2, 4, 2, 0]


def test_adaptive_kl_controller():
    config = ppo.KLConfig(kind="adaptive", init_coef=0.1, target=6.0, horizon=100)
    coef = jnp.float32(0.1)
    np.testing.assert_allclose(ppo.update_kl_coef(coef, 12.0, 10, config), 0.1 * (1 + 0.2 * 0.1))
    np.testing.assert_allclose(ppo.update_kl_coef(coef, 6.6, 10, config), 0.1 * (1 + 0.1 * 0.1))
    np.testing.assert_allclose(ppo.update_kl_coef(coef, 0.0, 10, config), 0.1 * (1 - 0.2 * 0.1))
    fixed = ppo.KLConfig(kind="fixed", init_coef=0.1)
    assert float(ppo.update_kl_coef(coef, 12.0, 10, fixed)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="kind"):
        ppo.KLConfig(kind="pid")


# ---------------------------------------------------------------------------------------------
# Rollout
# ---------------------------------------------------------------------------------------------


def test_score_and_eos_penalty_land_on_last_real_response_token():
    models, params, config, _ = make_setup(missing_eos_penalty=-3.0)
    tokens, mask = prompts(16)
    kl_coef = jnp.float32(0.1)
    out = rollout_lib.make_rollout(models, config)(params, tokens, mask, kl_coef, jax.random.key(7))
    response = np.asarray(out.tokens_bs[:, P:])
    response_mask = np.asarray(out.response_mask_bn)
    has_eos = (response == EOS).any(axis=1)
    # With 16 tokens and random weights, some rows stop early at EOS and some never emit one.
    assert has_eos.any() and (~has_eos).any()
    assert (response_mask.sum(axis=1) < N).any()
    expected_last = np.where(has_eos, np.argmax(response == EOS, axis=1), N - 1)
    np.testing.assert_array_equal(out.has_eos_b, has_eos)
    # After EOS: pad id (not EOS) and masked out.
    for row in range(16):
        assert np.all(response[row, expected_last[row] + 1 :] == PAD)
        assert response_mask[row].sum() == expected_last[row] + 1

    scores_bs = np.asarray(
        models.reward.apply(params.reward, out.tokens_bs, out.attention_mask_bs).scores_bt
    )
    np.testing.assert_allclose(
        out.raw_score_b, scores_bs[np.arange(16), P + expected_last], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        out.score_b, np.asarray(out.raw_score_b) + np.where(has_eos, 0.0, -3.0), rtol=1e-6
    )
    sequence_part = np.asarray(out.rewards_bn) + float(kl_coef) * np.asarray(out.kl_bn)
    want = np.zeros((16, N))
    want[np.arange(16), expected_last] = np.asarray(out.score_b)
    np.testing.assert_allclose(sequence_part, want, atol=1e-5)
    assert np.all(np.asarray(out.rewards_bn)[~response_mask] == 0)
    assert np.all(np.asarray(out.values_bn)[~response_mask] == 0)


def test_policy_equal_to_reference_gives_zero_kl():
    models, params, config, _ = make_setup()
    tokens, mask = prompts()
    out = rollout_lib.make_rollout(models, config)(
        params, tokens, mask, jnp.float32(0.5), jax.random.key(1)
    )
    assert np.all(np.asarray(out.kl_bn) == 0.0)
    assert np.all(np.asarray(out.logprobs_bn)[np.asarray(out.response_mask_bn)] < 0)
    # And the first PPO minibatch sees a ratio of exactly 1 (nothing has been updated yet).
    tx = optax.adam(1e-2)
    state = ppo.create_ppo_state(params.policy, params.value, tx, tx, ppo.KLConfig(), seed=0)
    update = jax.jit(
        ppo.make_ppo_update(
            models.policy, models.value, tx, tx, ppo.PPOConfig(epochs=2, minibatches=2)
        )
    )
    _, metrics = update(state, out, None, jax.random.key(2))
    deviation = np.asarray(metrics["per_minibatch"]["ratio_deviation"])
    clipfrac = np.asarray(metrics["per_minibatch"]["clipfrac"])
    assert deviation[0, 0] < 1e-6 and clipfrac[0, 0] == 0.0
    # Statistics are frozen: after the first step the policy has moved, so the ratio has too.
    assert np.all(deviation.ravel()[1:] > 1e-4)


def test_score_is_shifted_scaled_then_clipped_before_the_eos_penalty():
    models, params, config, _ = make_setup(missing_eos_penalty=-3.0)
    config = dataclasses.replace(config, score_shift=0.2, score_scale=0.05, score_clip=1.5)
    tokens, mask = prompts(16)
    out = rollout_lib.make_rollout(models, config)(
        params, tokens, mask, jnp.float32(0.1), jax.random.key(7)
    )
    normalised = (np.asarray(out.raw_score_b) - 0.2) / 0.05
    assert (np.abs(normalised) > 1.5).any() and (np.abs(normalised) < 1.5).any()
    expected = np.clip(normalised, -1.5, 1.5) + np.where(np.asarray(out.has_eos_b), 0.0, -3.0)
    np.testing.assert_allclose(out.score_b, expected, rtol=1e-5, atol=1e-5)


def test_rollout_config_errors():
    with pytest.raises(ValueError, match="eos_ids"):
        rollout_lib.RolloutConfig(SamplingConfig(max_new_tokens=4), missing_eos_penalty=-1.0)
    with pytest.raises(ValueError, match="score_scale"):
        rollout_lib.RolloutConfig(SamplingConfig(max_new_tokens=4), score_scale=0.0)
    with pytest.raises(ValueError, match="score_clip must be > 0 or None"):
        rollout_lib.RolloutConfig(SamplingConfig(max_new_tokens=4), score_clip=0.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplingConfig(max_new_tokens=4, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        SamplingConfig(max_new_tokens=4, top_k=-1)


# ---------------------------------------------------------------------------------------------
# Iterations: compiled once, no stray transfers, sharded == single device, resumable state
# ---------------------------------------------------------------------------------------------

TARGET = 7


def target_fraction(_params, tokens_bs, attention_mask_bs, response_mask_bn):
    """Programmatic reward: the share of response tokens equal to TARGET."""
    response_bn = tokens_bs[:, -response_mask_bn.shape[1] :]
    hits_b = jnp.sum((response_bn == TARGET) & response_mask_bn, axis=-1)
    return hits_b / jnp.maximum(jnp.sum(response_mask_bn, axis=-1), 1)


def ptx_batch(rows: int = 8):
    """'Pretraining' text: rotations of 6..15 (TARGET is one token in ten)."""
    tokens = np.stack([np.roll(np.arange(6, 16, dtype=np.int32), -i) for i in range(rows)])
    ones = np.ones(tokens.shape, bool)
    return {"tokens_bt": tokens, "mask_bt": ones, "loss_mask_bt": ones}


def make_iteration(
    models, config, *, lr=3e-3, ptx_coef=0.0, mesh=None, specs=None, params=None, **ppo_kwargs
):
    policy_tx, value_tx = optax.adam(lr), optax.adam(1e-2)
    ppo_config = ppo.PPOConfig(
        epochs=4,
        minibatches=2,
        ptx_coef=ptx_coef,
        kl=ppo.KLConfig("adaptive", 0.05, 4.0, 100),
        **ppo_kwargs,
    )
    update = ppo.make_ppo_update(models.policy, models.value, policy_tx, value_tx, ppo_config)
    state = ppo.create_ppo_state(
        params.policy, params.value, policy_tx, value_tx, ppo_config.kl, seed=0
    )
    if mesh is None:
        rollout_fn = rollout_lib.make_rollout(models, config)
        return state, rollout_fn, jax.jit(update)
    policy_specs, value_specs = specs
    policy_sh = sharding.logical_shardings(policy_specs, mesh, shapes=params.policy)
    value_sh = sharding.logical_shardings(value_specs, mesh, shapes=params.value)
    state_sh = ppo.ppo_state_shardings(
        state_lib.state_shardings(policy_sh, policy_tx, params.policy, mesh),
        state_lib.state_shardings(value_sh, value_tx, params.value, mesh),
        mesh,
    )
    rollout_fn = rollout_lib.make_rollout(
        models,
        config,
        mesh=mesh,
        param_shardings=rollout_lib.RolloutParams(policy_sh, policy_sh, value_sh, value_sh),
    )
    return (
        sharding.put_on_mesh(state, state_sh),
        rollout_fn,
        ppo.jit_ppo_update(update, mesh, state_sh),
    )


def iteration_batch(tokens, mask, ptx=None):
    batch = {"tokens_bp": tokens, "mask_bp": mask}
    if ptx is not None:
        batch.update({f"ptx_{k}": v for k, v in ptx.items()})
    return batch


def test_rollout_and_update_compile_once_and_move_no_data_implicitly():
    models, params, config, _ = make_setup(missing_eos_penalty=-1.0)
    state, rollout_fn, update_fn = make_iteration(models, config, ptx_coef=0.5, params=params)
    # Inputs are placed explicitly once; everything after that stays on device.
    reference, reward = jax.device_put((params.reference, params.reward))
    # Timing the two calls waits for them but reads nothing back.
    iteration = ppo.make_iteration(rollout_fn, update_fn, reference, reward, timed=True)
    batch = jax.device_put(iteration_batch(*prompts(), ptx_batch()))
    history = []
    with jax.transfer_guard("disallow"):
        for _ in range(3):
            state, metrics = iteration(state, batch, state_lib.step_rng(state))
            history.append(jax.device_get(metrics["rollout/score"]))  # the intended host read
    assert rollout_fn._cache_size() == 1 and update_fn._cache_size() == 1
    assert int(state.step) == 3 and int(state.policy.step) == 3 * 4 * 2
    assert len(history) == 3
    assert metrics["time/rollout_s"][0] > 0 and metrics["time/update_s"][0] > 0


@pytest.mark.parametrize(
    "advantage, group_size, packed_ptx",
    [("gae", 1, False), ("leave_one_out", 2, False), ("gae", 1, True)],
)
def test_ppo_iteration_sharded_equals_single_device(advantage, group_size, packed_ptx):
    models, params, config, specs = make_setup(missing_eos_penalty=-1.0)
    tokens, mask = prompts()
    ptx = ptx_batch()
    if packed_ptx:  # positions_bt and documents_bt go through the iteration's batch too
        ptx = {k: np.concatenate([v, v]) for k, v in ptx_documents_two_layouts()[1].items()}
    results = []
    for mesh in (None, sharding.make_mesh(data=2, fsdp=2, tensor=2)):
        state, rollout_fn, update_fn = make_iteration(
            models,
            config,
            ptx_coef=0.5,
            mesh=mesh,
            specs=specs,
            params=params,
            advantage=advantage,
            group_size=group_size,
        )
        iteration = ppo.make_iteration(rollout_fn, update_fn, params.reference, params.reward)
        batch = iteration_batch(tokens, mask, ptx)
        if mesh is not None:
            batch = sharding.put_batch(batch, mesh)
        rng = state_lib.step_rng(state)
        experience = rollout_fn(
            rollout_lib.RolloutParams(
                state.policy.params, params.reference, state.value.params, params.reward
            ),
            batch["tokens_bp"],
            batch["mask_bp"],
            state.kl_coef,
            jax.random.split(rng)[0],  # the iteration's rollout key
        )
        state, metrics = iteration(state, batch, rng)
        results.append(jax.device_get((state, experience, metrics["policy/loss"])))
    (single, single_batch, single_loss), (sharded, sharded_batch, sharded_loss) = results
    np.testing.assert_array_equal(sharded_batch.tokens_bs, single_batch.tokens_bs)
    chex.assert_trees_all_close(sharded_batch, single_batch, atol=1e-5)
    np.testing.assert_allclose(sharded_loss, single_loss, rtol=1e-5)
    chex.assert_trees_all_close(sharded.policy.params, single.policy.params, atol=1e-5)
    chex.assert_trees_all_close(sharded.value.params, single.value.params, atol=1e-5)
    chex.assert_trees_all_close(sharded.policy.opt_state, single.policy.opt_state, atol=1e-5)
    np.testing.assert_allclose(sharded.kl_coef, single.kl_coef, rtol=1e-6)
    assert not np.allclose(  # the update moved the params
        single.policy.params["params"]["decoder"]["layer_0"]["mlp"]["up"]["kernel"],
        params.policy["params"]["decoder"]["layer_0"]["mlp"]["up"]["kernel"],
    )


def ptx_documents_two_layouts(row_len: int = 12):
    """Eight 'pretraining' documents of 3..9 tokens as one padded row each [8, row_len] and packed
    two to a row [4, row_len] (positions restart, each attends to itself, first token no target)."""
    rng = np.random.default_rng(3)
    lengths = ((5, 7), (4, 8), (6, 6), (3, 9))
    docs = [rng.integers(6, V, n).astype(np.int32) for pair in lengths for n in pair]
    single = {
        "tokens_bt": np.full((8, row_len), PAD, np.int32),
        "mask_bt": np.zeros((8, row_len), bool),
    }
    for row, doc in enumerate(docs):
        single["tokens_bt"][row, : len(doc)] = doc
        single["mask_bt"][row, : len(doc)] = True
    single["loss_mask_bt"] = single["mask_bt"].copy()
    packed = {
        "tokens_bt": np.full((4, row_len), PAD, np.int32),
        "mask_bt": np.zeros((4, row_len), bool),
        "loss_mask_bt": np.zeros((4, row_len), bool),
        "positions_bt": np.zeros((4, row_len), np.int32),
        "documents_bt": np.full((4, row_len), -1, np.int32),
    }
    for row in range(4):
        start = 0
        for slot, doc in enumerate(docs[2 * row : 2 * row + 2]):
            columns = slice(start, start + len(doc))
            packed["tokens_bt"][row, columns] = doc
            packed["mask_bt"][row, columns] = True
            packed["loss_mask_bt"][row, start + 1 : start + len(doc)] = True
            packed["positions_bt"][row, columns] = np.arange(len(doc))
            packed["documents_bt"][row, columns] = slot
            start += len(doc)
    return single, packed


def test_ppo_ptx_term_on_packed_rows_equals_one_row_per_document():
    models, params, config, _ = make_setup()
    single, packed = ptx_documents_two_layouts()
    # Plain SGD and one minibatch, so the update is the gradient itself (no permutation, and no
    # Adam normalisation amplifying round-off).
    ppo_config = ppo.PPOConfig(epochs=1, minibatches=1, ptx_coef=1.0)
    update = jax.jit(
        ppo.make_ppo_update(models.policy, models.value, optax.sgd(1.0), optax.sgd(1.0), ppo_config)
    )
    state = ppo.create_ppo_state(
        params.policy, params.value, optax.sgd(1.0), optax.sgd(1.0), ppo_config.kl, seed=0
    )
    experience = rollout_lib.make_rollout(models, config)(
        params, *prompts(), state.kl_coef, jax.random.key(1)
    )
    no_documents = {k: v for k, v in packed.items() if k != "documents_bt"}
    results = {
        name: jax.device_get(update(state, experience, batch, jax.random.key(2)))
        for name, batch in (("single", single), ("packed", packed), ("leaky", no_documents))
    }
    one_per_row, one_metrics = results["single"]
    packed_state, packed_metrics = results["packed"]
    # 48 tokens in 8 documents: every token but each document's first is a target.
    assert one_metrics["ptx/nll"][1] == packed_metrics["ptx/nll"][1] == 48 - 8
    np.testing.assert_allclose(packed_metrics["ptx/nll"][0], one_metrics["ptx/nll"][0], rtol=1e-5)
    chex.assert_trees_all_close(packed_state.policy.params, one_per_row.policy.params, atol=1e-6)
    # Without the document mask, the second document of a row attends to the first: not equal.
    leaky_nll = results["leaky"][1]["ptx/nll"][0]
    assert abs(leaky_nll - one_metrics["ptx/nll"][0]) > 1e-3, leaky_nll


def test_iteration_hands_every_ptx_field_to_the_update():
    """`make_iteration` hands the update every [B, T] ptx field without its "ptx_" prefix (packed
    rows' positions and document ids included, the loop's per-row counts not), and None when the
    batch has no ptx rows."""
    from types import SimpleNamespace

    seen = []

    def update_fn(state, experience, ptx, rng):
        seen.append(ptx)
        return state, {"loss": 0.0, "per_minibatch": {}}

    train = SimpleNamespace(params=None)
    state = SimpleNamespace(policy=train, value=train, kl_coef=0.05)
    step = ppo.make_iteration(lambda *args: "experience", update_fn, None, None)
    packed = ptx_documents_two_layouts()[1]
    tokens, mask = prompts()
    counts = {"truncated_b": np.zeros(4, np.int32), "skipped_b": np.zeros(4, np.int32)}
    _, metrics = step(state, iteration_batch(tokens, mask, {**packed, **counts}), jax.random.key(0))
    step(state, iteration_batch(tokens, mask), jax.random.key(0))
    assert sorted(seen[0]) == sorted(packed) and seen[0]["documents_bt"] is packed["documents_bt"]
    assert seen[1] is None and metrics == {"loss": 0.0}


def test_update_config_and_batch_errors():
    with pytest.raises(ValueError, match="epochs and minibatches must be >= 1"):
        ppo.PPOConfig(epochs=0)
    with pytest.raises(ValueError, match="ptx_coef, entropy_coef and value_coef must be >= 0"):
        ppo.PPOConfig(entropy_coef=-0.1)
    models, params, config, _ = make_setup()
    experience = rollout_lib.make_rollout(models, config)(
        params, *prompts(), jnp.float32(0.05), jax.random.key(1)
    )
    state, _, update_fn = make_iteration(models, config, params=params, ptx_coef=0.5)
    with pytest.raises(ValueError, match="ptx_coef > 0 needs a ptx_batch"):
        update_fn(state, experience, None, jax.random.key(2))
    with pytest.raises(ValueError, match="ptx batch 3 is not divisible by 2 minibatches"):
        update_fn(state, experience, ptx_batch(3), jax.random.key(2))
    odd = jax.tree_util.tree_map(lambda x: x[:7] if x.ndim else x, experience)
    state, _, update_fn = make_iteration(models, config, params=params)
    with pytest.raises(ValueError, match="Rollout batch 7 is not divisible by 2 minibatches"):
        update_fn(state, odd, None, jax.random.key(2))


def test_entropy_bonus_keeps_the_policy_more_random():
    """With `entropy_coef` > 0 the policy's sampling entropy ends higher than without it, on the
    same rollouts' reward (the target-token reward, which rewards collapsing onto one token)."""
    models, params, config, _ = make_setup(reward=target_fraction)
    entropies = {}
    for coef in (0.0, 0.5):
        state, rollout_fn, update_fn = make_iteration(
            models, config, params=params, entropy_coef=coef
        )
        iteration = ppo.make_iteration(rollout_fn, update_fn, params.reference, None)
        batch = iteration_batch(*prompts(16))
        for _ in range(12):
            state, metrics = iteration(state, batch, state_lib.step_rng(state))
        total, count = jax.device_get(metrics["entropy"])
        entropies[coef] = total / count
    assert entropies[0.5] > entropies[0.0] + 0.1, entropies


def test_ppo_state_checkpoint_keeps_kl_value_and_both_optimizers(tmp_path):
    from rlhf_jax.training.checkpoint import Checkpointer, abstract_like

    models, params, config, _ = make_setup()
    state, rollout_fn, update_fn = make_iteration(models, config, params=params)
    iteration = ppo.make_iteration(rollout_fn, update_fn, params.reference, params.reward)
    state, _ = iteration(state, iteration_batch(*prompts()), state_lib.step_rng(state))
    assert float(state.kl_coef) != pytest.approx(0.05)  # the adaptive controller moved it
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=2)
    checkpointer.save(int(state.step), state, None, {"seed": 0})
    fresh = ppo.create_ppo_state(
        params.policy, params.value, optax.adam(3e-3), optax.adam(1e-2), ppo.KLConfig(), seed=1
    )
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, fresh)
    restored, _ = checkpointer.restore(abstract_like(fresh, shardings), None)
    checkpointer.close()
    chex.assert_trees_all_equal(restored, state)
    assert int(restored.value.step) == 8 and float(restored.kl_coef) == float(state.kl_coef)


def run_target_token_ppo(ptx_coef: float, iterations: int = 30):
    models, params, config, _ = make_setup(reward=target_fraction, eos_ids=())
    ptx = ptx_batch()
    nll_fn = jax.jit(
        lambda p: losses.sft_loss(
            logits_btv=models.policy.apply(p, ptx["tokens_bt"]).logits_btv,
            tokens_bt=ptx["tokens_bt"],
            loss_mask_bt=ptx["loss_mask_bt"],
        )[0]
    )
    # A short "pretraining" on the ptx text, so there is something for PPO to forget.
    sft_tx = optax.adam(1e-2)
    policy, opt_state = params.policy, sft_tx.init(params.policy)
    grad_fn = jax.jit(jax.grad(nll_fn))
    for _ in range(20):
        updates, opt_state = sft_tx.update(grad_fn(policy), opt_state, policy)
        policy = optax.apply_updates(policy, updates)
    params = params.replace(policy=policy, reference=policy)
    state, rollout_fn, update_fn = make_iteration(models, config, ptx_coef=ptx_coef, params=params)
    iteration = ppo.make_iteration(rollout_fn, update_fn, params.reference, params.reward)
    batch = iteration_batch(*prompts(16), ptx if ptx_coef else None)
    scores, kls = [], []
    for _ in range(iterations):
        state, metrics = iteration(state, batch, state_lib.step_rng(state))
        scores.append(float(metrics["rollout/score"][0] / metrics["rollout/score"][1]))
        kls.append(float(metrics["rollout/kl"][0] / metrics["rollout/kl"][1]))
    nll_rise = float(nll_fn(state.policy.params) - nll_fn(params.policy))
    return scores, kls, nll_rise


@pytest.mark.slow
def test_ppo_learns_a_programmatic_reward_and_ptx_limits_the_alignment_tax():
    scores, kls, nll_rise_ppo = run_target_token_ppo(ptx_coef=0.0)
    # Mean reward (share of the target token) rises by at least 0.15 absolute within 30
    # iterations (0.13 -> ~0.4 with this seed), while KL to the reference stays bounded.
    assert np.mean(scores[-5:]) - scores[0] >= 0.15, scores
    assert max(kls) < 15.0, kls  # nats per 6-token response
    _, _, nll_rise_ptx = run_target_token_ppo(ptx_coef=1.0)
    # PPO alone raises the pretraining NLL; with the ptx term it rises less (here: it falls).
    assert nll_rise_ppo > 0.1 and nll_rise_ptx < nll_rise_ppo, (nll_rise_ppo, nll_rise_ptx)


# ---------------------------------------------------------------------------------------------
# Value head on the policy backbone, collapse and KL checks
# ---------------------------------------------------------------------------------------------


def test_value_head_on_policy_backbone_reads_policy_hidden_states_and_trains_the_decoder():
    models, params, config, _ = make_setup()
    head = ValueHead(tiny_config())
    head_params, _ = state_lib.init_variables(head, P + N, seed=3)
    shared_models = rollout_lib.RolloutModels(policy=models.policy, value=head, reward=models.value)
    shared_params = params.replace(value=head_params)
    tokens, mask = prompts()
    out = rollout_lib.make_rollout(shared_models, config)(
        shared_params, tokens, mask, jnp.float32(0.1), jax.random.key(1)
    )
    # Values are the head applied to the policy's own hidden state before each response token.
    hidden = models.policy.apply(params.policy, out.tokens_bs, out.attention_mask_bs).hidden_btd
    want = head.apply(head_params, hidden[:, P - 1 : -1])
    response_mask = np.asarray(out.response_mask_bn)
    np.testing.assert_allclose(
        np.asarray(out.values_bn)[response_mask], np.asarray(want)[response_mask], atol=1e-6
    )

    def updated(value_model, value_params, value_coef):
        tx = optax.adam(1e-2)
        state = ppo.create_ppo_state(params.policy, value_params, tx, tx, ppo.KLConfig(), seed=0)
        cfg = ppo.PPOConfig(epochs=2, minibatches=2, value_coef=value_coef)
        update = jax.jit(ppo.make_ppo_update(models.policy, value_model, tx, tx, cfg))
        return update(state, out, None, jax.random.key(2))

    separate, _ = updated(models.value, params.value, 0.0)
    no_value_grad, _ = updated(head, head_params, 0.0)
    joint, metrics = updated(head, head_params, 1.0)
    # value_coef = 0: the decoder follows the policy loss alone, as with a separate value model.
    chex.assert_trees_all_close(no_value_grad.policy.params, separate.policy.params, atol=1e-6)
    # value_coef = 1: the value loss's gradient reaches the shared decoder, and the head learns.
    kernel = lambda p: p["params"]["decoder"]["layer_0"]["mlp"]["up"]["kernel"]  # noqa: E731
    assert np.abs(kernel(joint.policy.params) - kernel(separate.policy.params)).max() > 1e-4
    assert not np.allclose(
        joint.value.params["params"]["head"]["kernel"], head_params["params"]["head"]["kernel"]
    )
    assert int(joint.value.step) == 4 and metrics["value/loss"][1] > 0
    assert set(joint.value.params["params"]) == {"head"}


def test_duplicate_responses_compare_tokens_up_to_eos_only():
    tokens = np.array(
        [
            [1, 1, 7, 8, EOS, 9],  # same response as row 1 (after EOS the tail differs)
            [3, 3, 7, 8, EOS, 4],
            [1, 1, 7, 8, 9, 9],  # shares a prefix only
            [3, 1, 6, 6, 6, 6],
        ],
        np.int32,
    )
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]], bool)
    zeros = jnp.zeros((4, 4))
    batch = rollout_lib.Rollout(
        tokens_bs=jnp.asarray(tokens),
        attention_mask_bs=jnp.ones((4, 6), bool),
        response_mask_bn=jnp.asarray(mask),
        logprobs_bn=zeros,
        ref_logprobs_bn=zeros,
        values_bn=zeros,
        kl_bn=zeros,
        rewards_bn=zeros,
        raw_score_b=jnp.zeros(4),
        score_b=jnp.zeros(4),
        has_eos_b=jnp.zeros(4, bool),
    )
    dup = np.asarray(rollout_lib.duplicate_responses(batch))
    np.testing.assert_array_equal(dup, [True, True, False, False])
    total, rows = rollout_lib.rollout_metrics(batch)["duplicate_rate"]
    assert float(total) / float(rows) == 0.5


def test_negative_kl_warning_only_beyond_noise():
    assert ppo.negative_kl_warning(0.3) is None
    assert ppo.negative_kl_warning(-0.01) is None  # within sampling noise
    assert "temperature" in ppo.negative_kl_warning(-0.5)
