"""Generation: parity with transformers' greedy `generate`, sampling distributions, filters, EOS."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rlhf_jax.generation import (
    SamplingConfig,
    check_prompts,
    generate_texts,
    make_sampler,
    sample_from_logits,
)
from rlhf_jax.models import CausalLM, TransformerConfig
from tests.hf_reference import left_padded_batch, reference_model

PAD = 0


def _greedy(config, params, tokens, mask, n_new, eos_ids=()):
    sampler = make_sampler(
        CausalLM(config), SamplingConfig(n_new, temperature=0.0, eos_ids=eos_ids, pad_id=PAD)
    )
    return sampler(params, tokens, mask, jax.random.key(0))


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "gpt_neox"])
def test_greedy_equals_transformers_generate_with_early_eos(family):
    model, config, params = reference_model(family, seed=1)
    tokens, mask = left_padded_batch(seed=3, length=6)
    n_new = 12
    # Use as EOS a token that row 0 emits at step 2, so that row stops early and others need not.
    eos = int(np.asarray(_greedy(config, params, tokens, mask, n_new).response_tokens_bn)[0, 2])
    out = _greedy(config, params, tokens, mask, n_new, eos_ids=(eos,))
    with torch.no_grad():
        ref = model.generate(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            do_sample=False,
            max_new_tokens=n_new,
            eos_token_id=eos,
            pad_token_id=PAD,
        ).numpy()[:, tokens.shape[1] :]
    ours = np.asarray(out.response_tokens_bn)
    np.testing.assert_array_equal(ours[:, : ref.shape[1]], ref)
    assert (ours[:, ref.shape[1] :] == PAD).all()
    # Row 0 stopped at its first EOS (step <= 2): EOS is in the mask, everything after is not.
    resp_mask = np.asarray(out.response_mask_bn)
    first_eos = int(np.flatnonzero(ours[0] == eos)[0])
    assert first_eos <= 2
    assert resp_mask[0, : first_eos + 1].all() and not resp_mask[0, first_eos + 1 :].any()
    assert (ours[0, first_eos + 1 :] == PAD).all()
    np.testing.assert_array_equal(np.asarray(out.response_logprobs_bn)[~resp_mask], 0.0)
    np.testing.assert_array_equal(
        np.asarray(out.attention_mask_bs), np.concatenate([mask, resp_mask], axis=1)
    )


def _peaked_model(vocab=16, seed=0):
    """A tiny model whose next-token distribution is far from uniform."""
    config = TransformerConfig.gpt2(
        vocab_size=vocab, num_layers=1, num_heads=2, embed_dim=16, max_len=32, init_std=0.6
    )
    lm = CausalLM(config)
    params = nn.unbox(lm.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32)))
    return config, lm, params


def test_sampled_first_token_follows_softmax():
    config, lm, params = _peaked_model()
    n, temperature = 20_000, 0.8
    prompt = np.array([[3, 5, 7]], np.int32)
    probs = np.asarray(jax.nn.softmax(lm.apply(params, prompt).logits_btv[0, -1] / temperature))
    assert probs.max() > 0.2 and probs.min() < 0.02  # far from uniform: a meaningful test
    sampler = make_sampler(lm, SamplingConfig(1, temperature=temperature))
    out = sampler(params, np.repeat(prompt, n, 0), np.ones((n, 3), bool), jax.random.key(1))
    counts = np.bincount(np.asarray(out.response_tokens_bn)[:, 0], minlength=config.vocab_size)
    expected = probs * n
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    dof = config.vocab_size - 1
    p_value = float(jax.scipy.special.gammaincc(dof / 2, chi2 / 2))
    assert p_value > 1e-3, (chi2, counts, expected)
    # The returned log-probs are those of the temperature-scaled softmax.
    lp = np.asarray(out.response_logprobs_bn)[:, 0]
    np.testing.assert_allclose(
        lp, np.log(probs)[np.asarray(out.response_tokens_bn)[:, 0]], atol=1e-5
    )


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.6), (5, 0.5)])
def test_top_k_top_p_never_emit_excluded_tokens(top_k, top_p):
    config, lm, params = _peaked_model(seed=2)
    batch, n_new, temperature = 256, 6, 1.3
    prompt = np.tile(np.array([[2, 9, 4, 1]], np.int32), (batch, 1))
    mask = np.ones_like(prompt, bool)
    cfg = SamplingConfig(n_new, temperature=temperature, top_k=top_k, top_p=top_p)
    out = make_sampler(lm, cfg)(params, prompt, mask, jax.random.key(7))
    tokens = np.asarray(out.tokens_bs)
    # Teacher-force the sampled sequences: logits at P+t-1 are what response token t was drawn from.
    logits = np.asarray(lm.apply(params, tokens).logits_btv)[:, prompt.shape[1] - 1 : -1]
    scaled = logits / temperature
    chosen = np.asarray(out.response_tokens_bn)
    order = np.argsort(-scaled, axis=-1)
    rank = np.argmax(order == chosen[..., None], axis=-1)
    allowed = np.ones_like(rank, bool)
    if top_k:
        allowed &= rank < top_k
    if top_p < 1.0:
        sorted_probs = np.take_along_axis(jax.nn.softmax(scaled, axis=-1), order, axis=-1)
        if top_k:
            kept = sorted_probs[..., :top_k]
            sorted_probs = kept / kept.sum(-1, keepdims=True)
        mass_before = np.cumsum(sorted_probs, -1) - sorted_probs
        rank_mass = np.take_along_axis(
            mass_before, np.minimum(rank, sorted_probs.shape[-1] - 1)[..., None], -1
        )[..., 0]
        allowed &= rank_mass < top_p
    assert allowed.all()
    assert len(np.unique(chosen)) > 1  # it did sample, not just argmax
    np.testing.assert_allclose(
        np.asarray(out.response_logprobs_bn),
        np.take_along_axis(np.asarray(jax.nn.log_softmax(scaled, -1)), chosen[..., None], -1)[
            ..., 0
        ],
        atol=1e-5,
    )


def test_sample_from_logits_greedy_and_filters():
    logits = jnp.array([[0.0, 3.0, 1.0, 2.0]])
    token, lp = sample_from_logits(jax.random.key(0), logits, SamplingConfig(1, temperature=0.0))
    assert int(token[0]) == 1
    np.testing.assert_allclose(lp, jax.nn.log_softmax(logits)[:, 1], atol=1e-6)
    top1 = SamplingConfig(1, temperature=1.0, top_k=1)
    for seed in range(20):
        assert int(sample_from_logits(jax.random.key(seed), logits, top1)[0][0]) == 1
    tiny_p = SamplingConfig(1, temperature=1.0, top_p=0.01)
    for seed in range(20):
        assert int(sample_from_logits(jax.random.key(seed), logits, tiny_p)[0][0]) == 1


def test_sampler_compiles_once_and_is_deterministic():
    config, lm, params = _peaked_model()
    tokens, mask = left_padded_batch(vocab=config.vocab_size)
    sampler = make_sampler(lm, SamplingConfig(5, temperature=1.0, eos_ids=(3,)))
    a = sampler(params, tokens, mask, jax.random.key(0))
    b = sampler(params, tokens, mask, jax.random.key(0))
    c = sampler(params, tokens, mask, jax.random.key(1))
    assert sampler._cache_size() == 1
    np.testing.assert_array_equal(a.response_tokens_bn, b.response_tokens_bn)
    assert not np.array_equal(a.response_tokens_bn, c.response_tokens_bn)


def test_bad_prompts_and_configs_are_rejected():
    with pytest.raises(ValueError, match="not left-padded"):
        check_prompts(np.zeros((2, 3)), np.array([[1, 1, 0], [0, 1, 1]], bool))
    with pytest.raises(ValueError, match="no real token"):
        check_prompts(np.zeros((2, 3)), np.array([[0, 0, 0], [0, 1, 1]], bool))
    with pytest.raises(ValueError, match="must be equal"):
        check_prompts(np.zeros((2, 3)), np.ones((2, 4), bool))
    check_prompts(np.zeros((2, 3)), np.array([[0, 1, 1], [1, 1, 1]], bool))
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(4, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(0)


def test_generate_texts_batches_pads_and_decodes_every_prompt(capsys):
    from rlhf_jax.data.tokenizer import train_bpe_tokenizer
    from rlhf_jax.training import state as state_lib

    texts = [f"What is {i} plus {i}? Answer: {2 * i}" for i in range(30)]
    tokenizer = train_bpe_tokenizer(texts * 3, 300)
    config = TransformerConfig.gpt2(
        vocab_size=300, num_layers=1, num_heads=2, embed_dim=16, max_len=48
    )
    params, _ = state_lib.init_variables(CausalLM(config), 8, seed=0)
    sampler = make_sampler(
        CausalLM(config),
        SamplingConfig(6, temperature=0.0, eos_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id),
    )
    prompts = [f"What is {i} plus {i}?" for i in range(5)]
    kwargs = dict(batch_size=2, max_prompt_len=16, rng=jax.random.key(0))
    got = generate_texts(sampler, params, tokenizer, prompts, **kwargs)
    assert len(got) == 5  # 3 batches, the last padded with a repeat
    assert "answering" not in capsys.readouterr().err  # no progress bar unless asked for
    with_bar = generate_texts(sampler, params, tokenizer, prompts, progress="answering", **kwargs)
    assert with_bar == got
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]
    assert bar.startswith("answering: 100%") and "5/5" in bar, bar
    # Each prompt's text equals decoding a call with that prompt alone (greedy: order-free).
    for prompt, text in zip(prompts, got, strict=True):
        batch = tokenizer.encode_prompts([prompt, prompt], 16)
        out = sampler(params, batch.tokens_bp, batch.mask_bp, jax.random.key(1))
        tokens, mask = np.asarray(out.response_tokens_bn[0]), np.asarray(out.response_mask_bn[0])
        assert text == tokenizer.decode(tokens[mask])


def test_generate_texts_sorted_by_length_pads_each_batch_to_its_own_prompts():
    from rlhf_jax.data.tokenizer import train_bpe_tokenizer
    from rlhf_jax.training import state as state_lib

    texts = [f"What is {i} plus {i}? Answer: {2 * i}" for i in range(30)]
    tokenizer = train_bpe_tokenizer(texts * 3, 300)
    config = TransformerConfig.gpt2(
        vocab_size=300, num_layers=1, num_heads=2, embed_dim=16, max_len=64
    )
    params, _ = state_lib.init_variables(CausalLM(config), 8, seed=0)
    eos = dict(eos_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)
    greedy = SamplingConfig(6, temperature=0.0, **eos)
    prompts = [" and".join([f" What is {i} plus {i}?"] * (1 + i % 4)) for i in range(9)]
    kwargs = dict(batch_size=2, max_prompt_len=24, rng=jax.random.key(0))
    unsorted_sampler = make_sampler(CausalLM(config), greedy)
    unsorted = generate_texts(unsorted_sampler, params, tokenizer, prompts, **kwargs)
    sorted_sampler = make_sampler(CausalLM(config), greedy)
    got = generate_texts(
        sorted_sampler, params, tokenizer, prompts, sort_by_length=True, width_multiple=4, **kwargs
    )
    assert got == unsorted  # greedy: the same answers, in the prompts' order
    assert len(set(got)) > 1
    # One program per batch width: several widths below P, where unsorted batches use P only.
    assert unsorted_sampler._cache_size() == 1 and sorted_sampler._cache_size() >= 3
    # Sampled: the same key gives the same texts (one key per sorted batch).
    hot = make_sampler(CausalLM(config), SamplingConfig(6, **eos))
    first = generate_texts(hot, params, tokenizer, prompts, sort_by_length=True, **kwargs)
    again = generate_texts(hot, params, tokenizer, prompts, sort_by_length=True, **kwargs)
    assert first == again and len(first) == len(prompts)
