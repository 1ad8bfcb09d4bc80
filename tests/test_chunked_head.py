"""The chunked LM head (`losses.chunked_next_token_logprobs`, `steps.sft_forward(lm_head_chunk=)`):
the same SFT loss, accuracy and gradients as the whole [B, T, V] logits, tied and untied, under
LoRA too, with a smaller compiled program (XLA's temporary buffers)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses
from rlhf_jax.models import CausalLM, LoRAConfig, TransformerConfig
from rlhf_jax.training import state as state_lib
from rlhf_jax.training import steps

V, B, T = 4096, 4, 96


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "tokens_bt": jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32),
        "mask_bt": jnp.ones((B, T), bool),
        "loss_mask_bt": jnp.asarray(rng.random((B, T)) < 0.7),
    }


def _loss_and_grads(forward, params, batch):
    def loss(p):
        value, metrics = forward(p, batch, jax.random.key(0), True)
        return value, metrics

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("with_lora", [False, True], ids=["full", "lora"])
def test_chunked_head_gives_the_same_loss_metrics_and_gradients(tie, with_lora):
    lora = LoRAConfig(rank=4, targets=("q_proj", "down")) if with_lora else None
    config = TransformerConfig.llama(
        vocab_size=V, num_layers=1, num_heads=2, embed_dim=32, mlp_dim=64, max_len=T,
        tie_embeddings=tie, lora=lora,
    )  # fmt: skip
    model = CausalLM(config)
    params, _ = state_lib.init_variables(model, 8, seed=1)
    batch = _batch()
    whole = _loss_and_grads(steps.sft_forward(model), params, batch)
    chunked = _loss_and_grads(steps.sft_forward(model, lm_head_chunk=24), params, batch)
    (loss_w, metrics_w), grads_w = whole(params)
    (loss_c, metrics_c), grads_c = chunked(params)
    np.testing.assert_allclose(loss_c, loss_w, rtol=1e-6)
    for name in ("nll", "accuracy"):
        np.testing.assert_allclose(metrics_c[name], metrics_w[name], rtol=1e-6)
    leaves = jax.tree_util.tree_leaves
    for g_c, g_w in zip(leaves(grads_c), leaves(grads_w), strict=True):
        np.testing.assert_allclose(g_c, g_w, atol=1e-7)

    def temp_bytes(step):
        return step.lower(params).compile().memory_analysis().temp_size_in_bytes

    # The whole logits and their gradient are B x T x V x 4 bytes = 6 MiB each.
    assert temp_bytes(chunked) < temp_bytes(whole) - B * T * V * 4


def test_chunked_logprobs_pad_the_last_chunk_and_match_the_whole_logits():
    rng = np.random.default_rng(0)
    hidden_btd = jnp.asarray(rng.normal(size=(2, 11, 8)), jnp.float32)
    head_dv = jnp.asarray(rng.normal(size=(8, 50)), jnp.float32)
    tokens_bt = jnp.asarray(rng.integers(0, 50, (2, 11)), jnp.int32)
    head = lambda h: h @ head_dv  # noqa: E731
    logprobs, is_top = losses.chunked_next_token_logprobs(hidden_btd, head, tokens_bt, 4)
    logits_btv = head(hidden_btd)
    np.testing.assert_allclose(
        logprobs, losses.next_token_logprobs(logits_btv, tokens_bt), atol=1e-6
    )
    np.testing.assert_array_equal(is_top, losses.next_token_is_top(logits_btv, tokens_bt))
    assert logprobs.shape == (2, 10)


def test_chunked_head_needs_the_built_in_sft_loss():
    model = CausalLM(TransformerConfig.llama(vocab_size=V, num_layers=1, num_heads=2,
                                             embed_dim=32, mlp_dim=64, max_len=T))  # fmt: skip
    with pytest.raises(ValueError, match="use losses.sft_loss"):
        steps.sft_forward(model, lambda **kw: None, lm_head_chunk=16)
