"""Losses against hand-computed values and loop-based NumPy references."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.losses import (
    LOSSES,
    metrics_mean,
    next_token_is_top,
    next_token_logprobs,
    preferences_from_ranking,
    ranking_loss,
    sft_loss,
)


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_next_token_logprob_convention():
    # Column t scores token t+1 under the logits at position t.
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]]))
    tokens = jnp.array([[0, 1, 2]])
    np.testing.assert_allclose(
        next_token_logprobs(logits, tokens), [[math.log(0.25), math.log(0.8)]], rtol=1e-6
    )


def test_next_token_logprobs_equals_log_softmax_then_gather_to_the_bit():
    """The target-only computation gives the values and gradients of the full log-softmax
    followed by a gather, bit for bit, jitted, with large, tiny and -inf logits."""

    def reference(logits_btv, tokens_bt):
        logprobs_btv = jax.nn.log_softmax(logits_btv[:, :-1].astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(logprobs_btv, tokens_bt[:, 1:, None], axis=-1)[..., 0]

    def weighted_sum(f, logits_btv, tokens_bt, weights_bt):
        return jnp.sum(f(logits_btv, tokens_bt) * weights_bt)

    value = jax.jit(lambda f, *args: f(*args), static_argnums=0)
    grad = jax.jit(jax.grad(weighted_sum, argnums=1), static_argnums=0)
    rng = np.random.default_rng(0)
    for shape, scale in [((4, 33, 512), 3.0), ((2, 9, 1000), 40.0), ((3, 5, 7), 1e-3)]:
        logits = rng.normal(size=shape).astype(np.float32) * scale
        logits[0, 1, :3] = -np.inf  # masked-out vocabulary entries
        logits = jnp.asarray(logits)
        tokens = jnp.asarray(rng.integers(3, shape[-1], shape[:2]), jnp.int32)
        weights = jnp.asarray(rng.normal(size=(shape[0], shape[1] - 1)), jnp.float32)
        got, want = (value(f, logits, tokens) for f in (next_token_logprobs, reference))
        got_grad, want_grad = (
            grad(f, logits, tokens, weights) for f in (next_token_logprobs, reference)
        )
        assert np.isfinite(np.asarray(got)).all()
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_grad, want_grad)


def test_next_token_is_top_is_argmax_with_ties_counted():
    """Hand cases (a tie for the highest logit counts as a hit), and equal to argmax == target on
    random logits, where ties do not happen."""
    logits = jnp.array([[[0.0, 2.0, 1.0], [3.0, 3.0, 0.0], [1.0, 0.0, 0.0]]])
    # Position 0 predicts token 1 (its highest), position 1 token 1 (tied with token 0).
    np.testing.assert_array_equal(next_token_is_top(logits, jnp.array([[0, 1, 1]])), [[1, 1]])
    np.testing.assert_array_equal(next_token_is_top(logits, jnp.array([[0, 2, 2]])), [[0, 0]])
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(4, 33, 512)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, 512, (4, 33)), jnp.int32)
    tokens = tokens.at[
        :, 1:
    ].set(  # half of the targets are the argmax, so both outcomes occur
        jnp.where(jnp.arange(32) % 2 == 0, jnp.argmax(logits[:, :-1], -1), tokens[:, 1:])
    )
    want = jnp.argmax(logits[:, :-1], axis=-1) == tokens[:, 1:]
    got = jax.jit(next_token_is_top)(logits, tokens)
    np.testing.assert_array_equal(got, want)
    assert 0 < float(got.mean()) < 1


def test_sft_loss_is_response_only_mean_nll():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]]]))
    tokens = jnp.array([[0, 1, 2]])
    # Only token 2 (at index 2) is a response token: loss = -log p(2 | prefix) = -log 0.8.
    loss, metrics = sft_loss(
        logits_btv=logits, tokens_bt=tokens, loss_mask_bt=jnp.array([[True, False, True]])
    )
    np.testing.assert_allclose(loss, -math.log(0.8), rtol=1e-6)
    assert float(metrics["nll"][1]) == 1.0
    assert float(metrics_mean(metrics)["accuracy"]) == 1.0  # argmax at position 1 is token 2
    loss_all, _ = sft_loss(logits_btv=logits, tokens_bt=tokens, loss_mask_bt=jnp.ones((1, 3), bool))
    np.testing.assert_allclose(loss_all, -(math.log(0.25) + math.log(0.8)) / 2, rtol=1e-6)


def _naive_ranking_loss(scores, prefers):
    per_prompt = []
    for b in range(scores.shape[0]):
        terms = [
            -_log_sigmoid(float(scores[b, i] - scores[b, j]))
            for i, j in itertools.product(range(scores.shape[1]), repeat=2)
            if prefers[b, i, j]
        ]
        if terms:
            per_prompt.append(sum(terms) / len(terms))
    return sum(per_prompt) / len(per_prompt)


@pytest.mark.parametrize("seed", range(5))
def test_kwise_loss_equals_mean_over_enumerated_pairs_with_variable_k(seed):
    rng = np.random.default_rng(seed)
    batch, k_max = 6, 9
    ks = rng.integers(2, k_max + 1, batch)  # K = 2..9 responses per prompt
    valid = np.arange(k_max)[None] < ks[:, None]
    ranks = np.stack([rng.permutation(k_max) for _ in range(batch)])
    scores = rng.normal(size=(batch, k_max)) * 2
    scores[~valid] = 1e9  # garbage on padding must not matter
    prefers = np.asarray(preferences_from_ranking(jnp.asarray(ranks), jnp.asarray(valid)))
    for b in range(batch):
        assert prefers[b].sum() == ks[b] * (ks[b] - 1) // 2  # C(K, 2) pairs
    loss, metrics = ranking_loss(scores_bk=jnp.asarray(scores), prefers_bkk=jnp.asarray(prefers))
    np.testing.assert_allclose(loss, _naive_ranking_loss(scores, prefers), rtol=1e-5)
    assert np.isfinite(float(loss))
    assert float(metrics["accuracy"][1]) == prefers.sum()


def test_kwise_loss_reduces_to_pairwise_at_k2():
    scores = jnp.array([[1.5, -0.3]])
    prefers = jnp.array([[[False, True], [False, False]]])
    loss, metrics = ranking_loss(scores_bk=scores, prefers_bkk=prefers)
    np.testing.assert_allclose(loss, -_log_sigmoid(1.8), rtol=1e-6)
    np.testing.assert_allclose(metrics_mean(metrics)["margin"], 1.8, rtol=1e-6)


def test_ties_and_non_transitive_labels():
    # Responses 0 and 1 tie (no pair); 0 > 2, 2 > 1 and 1 > 0 form a cycle (labels need not be
    # transitive): all three labelled pairs count.
    scores = jnp.array([[0.2, 0.5, -1.0]])
    prefers = np.zeros((1, 3, 3), bool)
    prefers[0, 0, 2] = prefers[0, 2, 1] = True
    loss, _ = ranking_loss(scores_bk=scores, prefers_bkk=jnp.asarray(prefers))
    expected = -(_log_sigmoid(1.2) + _log_sigmoid(-1.5)) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    tie = preferences_from_ranking(jnp.array([[0, 0, 1]]), jnp.ones((1, 3), bool))
    assert not tie[0, 0, 1] and not tie[0, 1, 0] and tie[0, 0, 2] and tie[0, 1, 2]


def test_prompt_without_pairs_is_excluded_not_nan():
    scores = jnp.array([[1.0, 0.0], [jnp.nan, jnp.inf]])
    prefers = jnp.array([[[False, True], [False, False]], [[False, False], [False, False]]])
    loss, metrics = ranking_loss(scores_bk=scores, prefers_bkk=prefers)
    np.testing.assert_allclose(loss, -_log_sigmoid(1.0), rtol=1e-6)
    assert float(metrics["loss"][1]) == 1.0
    grads = jax.grad(lambda s: ranking_loss(scores_bk=s, prefers_bkk=prefers)[0])(scores)
    assert np.isfinite(np.asarray(grads)[0]).all()


def test_registry_names_the_builtin_losses():
    assert LOSSES["sft_nll"] is sft_loss and LOSSES["kwise_ranking"] is ranking_loss
