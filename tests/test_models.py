"""Model parity with transformers, checkpoint conversion both ways, KV cache, heads."""

import dataclasses
import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from rlhf_jax.models import CausalLM, ScalarModel, TransformerConfig, hf, init_cache
from tests.hf_reference import left_padded_batch, reference_model, torch_logits

FAMILIES = ["gpt2", "llama", "qwen2", "mistral", "gpt_neox"]


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_on_left_padded_batch(family):
    model, config, params = reference_model(family)
    tokens, mask = left_padded_batch()
    ours = np.asarray(CausalLM(config).apply(params, tokens, mask).logits_btv)
    ref = torch_logits(model, tokens, mask)
    chex.assert_shape(ours, ref.shape)
    np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_does_not_change_real_tokens(family):
    _, config, params = reference_model(family)
    tokens, mask = left_padded_batch()
    lm = CausalLM(config)
    padded = np.asarray(lm.apply(params, tokens, mask).logits_btv)
    for row in range(tokens.shape[0]):
        real = tokens[row, mask[row]][None]
        alone = np.asarray(lm.apply(params, real).logits_btv)[0]
        np.testing.assert_allclose(padded[row, mask[row]], alone, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_transformers_with_same_logits(family, tmp_path):
    model, config, params = reference_model(family)
    tokens, mask = left_padded_batch()
    hf.save_pretrained(tmp_path, config, params, eos_token_id=2)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    np.testing.assert_allclose(
        torch_logits(reloaded, tokens, mask)[mask],
        torch_logits(model, tokens, mask)[mask],
        atol=1e-6,
    )
    config2, params2 = hf.load_pretrained(tmp_path)
    assert config2 == config
    chex.assert_trees_all_equal(params2, jax.tree_util.tree_map(np.asarray, params))


def test_sharded_safetensors_round_trip(tmp_path):
    _, config, params = reference_model("llama")
    hf.save_pretrained(tmp_path, config, params, max_shard_size=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    _, params2 = hf.load_pretrained(tmp_path)
    chex.assert_trees_all_equal(params2, jax.tree_util.tree_map(np.asarray, params))


def test_bfloat16_checkpoint_loads_as_bfloat16_and_float32(tmp_path):
    model, config, params = reference_model("qwen2")
    hf.save_pretrained(tmp_path, config, params, dtype="bfloat16")
    cfg_bf16, params_bf16 = hf.load_pretrained(tmp_path, param_dtype="bfloat16")
    leaves = jax.tree_util.tree_leaves(params_bf16)
    assert all(x.dtype == jnp.bfloat16 for x in leaves)
    cfg32, params32 = hf.load_pretrained(tmp_path)
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(params32))
    tokens, mask = left_padded_batch()
    ref = torch_logits(model, tokens, mask)
    ours = np.asarray(CausalLM(cfg32).apply(params32, tokens, mask).logits_btv)
    # Weights were rounded to bfloat16 on save: close, not equal.
    np.testing.assert_allclose(ours[mask], ref[mask], atol=0.1)


def test_checkpoint_errors_are_clear(tmp_path):
    _, config, params = reference_model("gpt2")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hf.load_pretrained(tmp_path / "missing")
    hf.save_pretrained(tmp_path, config, params)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="Could not read"):
        hf.load_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="Only safetensors"):
        hf.load_pretrained(tmp_path)
    state = hf.params_to_hf(params, config)
    state.pop("transformer.h.1.mlp.c_fc.weight")
    with pytest.raises(ValueError, match="missing h.1.mlp.c_fc.weight"):
        hf.params_from_hf(state, config)
    # A tensor of another shape than the config's (a checkpoint of another size) is named too.
    state = hf.params_to_hf(params, config)
    state["transformer.h.0.mlp.c_fc.weight"] = state["transformer.h.0.mlp.c_fc.weight"][:, :-4]
    with pytest.raises(
        ValueError, match=r"h\.0\.mlp\.c_fc\.weight is \(32, 124\), expected \(32, 128\)"
    ):
        hf.params_from_hf(state, config)
    # A transposed torch Linear weight has the right size but not the right shape: named too.
    _, config, params = reference_model("llama")
    state = hf.params_to_hf(params, config)
    name = "model.layers.0.mlp.gate_proj.weight"
    rows, cols = state[name].shape
    state[name] = state[name].T
    with pytest.raises(ValueError, match=rf"{name} is \({cols}, {rows}\), expected"):
        hf.params_from_hf(state, config)
    with pytest.raises(ValueError, match="Unknown model_type 'bert'"):
        hf.config_from_hf(transformers.BertConfig())


def test_kv_cache_decoding_equals_full_forward():
    _, config, params = reference_model("llama")
    tokens, mask = left_padded_batch(length=9)
    lm = CausalLM(config)
    full = np.asarray(lm.apply(params, tokens, mask).logits_btv)
    cache = init_cache(config, tokens.shape[0], 12)
    out = lm.apply(params, tokens[:, :5], mask[:, :5], cache=cache)
    step_logits = [np.asarray(out.logits_btv)]
    cache = out.cache
    for t in range(5, 9):
        out = lm.apply(params, tokens[:, t : t + 1], mask[:, t : t + 1], cache=cache)
        cache = out.cache
        step_logits.append(np.asarray(out.logits_btv))
    incremental = np.concatenate(step_logits, axis=1)
    np.testing.assert_allclose(incremental[mask], full[mask], atol=1e-5)
    assert int(cache.index) == 9


def test_every_parameter_has_logical_axis_names():
    for family in FAMILIES:
        _, config, _ = reference_model(family)
        for module in (CausalLM(config), ScalarModel(config)):
            boxed = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
            leaves = jax.tree_util.tree_leaves(
                boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
            )
            assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
            for leaf in leaves:
                assert len(leaf.names) == len(leaf.value.shape)


def test_scalar_model_shares_decoder_with_lm():
    config = TransformerConfig.gpt2(vocab_size=64, num_layers=2, num_heads=4, embed_dim=32)
    tokens = jnp.ones((2, 5), jnp.int32)
    lm_params = nn.unbox(CausalLM(config).init(jax.random.key(0), tokens))
    rm = ScalarModel(config)
    rm_params = nn.unbox(rm.init(jax.random.key(1), tokens))
    chex.assert_trees_all_equal_shapes(
        lm_params["params"]["decoder"], rm_params["params"]["decoder"]
    )
    rm_params["params"]["decoder"] = lm_params["params"]["decoder"]
    out = rm.apply(rm_params, tokens)
    chex.assert_shape(out.scores_bt, (2, 5))
    assert out.scores_bt.dtype == jnp.float32
    hidden = CausalLM(config).apply(lm_params, tokens).hidden_btd
    np.testing.assert_allclose(out.hidden_btd, hidden, atol=1e-6)


def test_bfloat16_activations_run_and_stay_close():
    _, config, params = reference_model("llama")
    tokens, mask = left_padded_batch()
    f32 = np.asarray(CausalLM(config).apply(params, tokens, mask).logits_btv)
    bf16 = CausalLM(config.replace(dtype="bfloat16")).apply(params, tokens, mask).logits_btv
    assert bf16.dtype == jnp.float32  # logits are upcast for log-softmax
    np.testing.assert_allclose(np.asarray(bf16)[mask], f32[mask], atol=0.1)


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        TransformerConfig.llama(
            vocab_size=8, num_layers=1, num_heads=4, num_kv_heads=3, embed_dim=16, mlp_dim=16
        )
    llama = TransformerConfig.llama(
        vocab_size=8, num_layers=1, num_heads=4, embed_dim=16, mlp_dim=16
    )
    with pytest.raises(ValueError, match="Cannot export as gpt2"):
        hf.config_to_hf(llama.replace(family="gpt2"))


def test_torch_is_not_imported_by_the_library():
    import subprocess
    import sys

    code = (
        "import sys, rlhf_jax.models.hf, rlhf_jax.generation, rlhf_jax.sharding, rlhf_jax.data;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dropout_changes_training_forward_only():
    config = TransformerConfig.gpt2(
        vocab_size=64, num_layers=2, num_heads=4, embed_dim=32, dropout_rate=0.2
    )
    lm = CausalLM(config)
    tokens = jnp.ones((2, 5), jnp.int32)
    params = nn.unbox(lm.init(jax.random.key(0), tokens))
    eval1 = lm.apply(params, tokens).logits_btv
    eval2 = lm.apply(params, tokens).logits_btv
    train = lm.apply(params, tokens, deterministic=False, rngs={"dropout": jax.random.key(3)})
    np.testing.assert_array_equal(eval1, eval2)
    assert not np.allclose(train.logits_btv, eval1)


def test_legacy_and_unprefixed_tensor_names_load():
    _, config, params = reference_model("gpt_neox")
    state = hf.params_to_hf(params, config)
    legacy = {("embed_out.weight" if k == "lm_head.weight" else k): v for k, v in state.items()}
    chex.assert_trees_all_equal(hf.params_from_hf(legacy, config), hf.params_from_hf(state, config))
    _, llama_config, llama_params = reference_model("llama")
    llama_state = hf.params_to_hf(llama_params, llama_config)
    bare = {k.removeprefix("model."): v for k, v in llama_state.items()}
    chex.assert_trees_all_equal(
        hf.params_from_hf(bare, llama_config), hf.params_from_hf(llama_state, llama_config)
    )


def test_hub_ids_go_through_snapshot_download(tmp_path, monkeypatch):
    """No hub is reachable here, so the download is faked; the resolution logic is real."""
    import huggingface_hub

    _, config, params = reference_model("gpt2")
    hf.save_pretrained(tmp_path / "snapshot", config, params)
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    config2, _ = hf.load_pretrained("openai-community/gpt2", revision="main")
    assert config2 == config
    repo_id, revision, patterns = calls[0]
    assert (repo_id, revision) == ("openai-community/gpt2", "main")
    assert "*.safetensors" in patterns and not any(p.endswith((".bin", ".pt")) for p in patterns)


def test_remat_keeps_params_outputs_gradients_and_cache():
    config = TransformerConfig.llama(
        vocab_size=64, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, dropout_rate=0.1
    )
    plain, remat = CausalLM(config), CausalLM(dataclasses.replace(config, remat=True))
    tokens = (jnp.arange(12)[None] * 7 % 64).astype(jnp.int32)
    params = nn.unbox(plain.init(jax.random.key(0), tokens))
    chex.assert_trees_all_equal_shapes(params, nn.unbox(remat.init(jax.random.key(0), tokens)))

    def loss(p, model):
        out = model.apply(p, tokens, deterministic=False, rngs={"dropout": jax.random.key(1)})
        return jnp.sum(out.logits_btv**2)

    chex.assert_trees_all_close(
        jax.grad(loss)(params, remat), jax.grad(loss)(params, plain), atol=1e-4, rtol=1e-5
    )
    cache = init_cache(config, 1, 16)
    out_plain = plain.apply(params, tokens, cache=cache)
    out_remat = remat.apply(params, tokens, cache=cache)
    np.testing.assert_allclose(out_remat.logits_btv, out_plain.logits_btv, atol=1e-5)
    chex.assert_trees_all_close(out_remat.cache, out_plain.cache, atol=1e-5)


def test_tied_lm_head_gradient_equals_autodiff():
    """`tied_logits` has a hand-written backward (for XLA:CPU's layouts); it must give autodiff's
    gradients for both the hidden states and the embedding."""
    from rlhf_jax.models.transformer import tied_logits

    hidden = jax.random.normal(jax.random.key(0), (2, 5, 8))
    embedding = jax.random.normal(jax.random.key(1), (11, 8))
    weights = jax.random.normal(jax.random.key(2), (2, 5, 11))

    def loss(logits_fn, h, e):
        return jnp.sum(weights * jnp.tanh(logits_fn(h, e)))

    got = jax.grad(lambda h, e: loss(tied_logits, h, e), argnums=(0, 1))(hidden, embedding)
    want = jax.grad(lambda h, e: loss(lambda a, b: a @ b.T, h, e), argnums=(0, 1))(
        hidden, embedding
    )
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(tied_logits(hidden, embedding), hidden @ embedding.T, atol=1e-5)
