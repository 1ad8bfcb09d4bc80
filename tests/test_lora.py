"""LoRA as its own variable collection: zero-initialised B leaves the base model's logits exact,
the model without the "lora" collection is the base (the reference without a second copy),
gradients and optimizer state exist for the adapters only, merged weights compute what the
adapters do (and load in transformers), the PEFT export loads in `peft` to the same logits, a
sharded step equals the single-device one, and a bad target is a one-line error."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

from rlhf_jax import sharding
from rlhf_jax.models import CausalLM, LoRAConfig, TransformerConfig, hf, lora
from rlhf_jax.training import state as state_lib
from rlhf_jax.training import steps

V, T = 64, 12
GPT2_SIZES = dict(vocab_size=V, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, max_len=T)


def lora_config(**changes) -> TransformerConfig:
    return TransformerConfig.llama(
        vocab_size=V,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        embed_dim=32,
        mlp_dim=48,
        max_len=32,
        tie_embeddings=False,
        lora=LoRAConfig(**{"rank": 4, "alpha": 8.0, **changes}),
    )


def _variables(config, seed=0, trained=True):
    """{"params": base, "lora": adapters}; with `trained`, B is random (as after training)."""
    variables, specs = state_lib.init_variables(CausalLM(config), T, seed)
    if trained:
        keys = iter(jax.random.split(jax.random.key(seed + 1), 100))
        variables["lora"] = jax.tree_util.tree_map(
            lambda x: 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), variables["lora"]
        )
    return variables, specs


def _tokens(seed=0, batch=2):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (batch, T)), jnp.int32)


def _logits(config, variables, tokens_bt):
    return np.asarray(CausalLM(config).apply(variables, tokens_bt).logits_btv)


def test_fresh_adapters_leave_the_base_and_adapters_off_is_the_base():
    config = lora_config()
    fresh, _ = _variables(config, trained=False)
    tokens = _tokens()
    plain = config.replace(lora=None)
    base = _logits(plain, {"params": fresh["params"]}, tokens)
    np.testing.assert_array_equal(_logits(config, fresh, tokens), base)
    trained, _ = _variables(config)
    assert np.abs(_logits(config, trained, tokens) - base).max() > 1e-3  # adapters act
    # The reference policy: the same model without its "lora" collection, the base's log-probs.
    np.testing.assert_array_equal(_logits(config, {"params": trained["params"]}, tokens), base)


def test_merged_weights_equal_the_adapted_model_and_load_in_transformers(tmp_path):
    config = lora_config(rslora=True, targets=("q_proj", "k_proj", "value", "out", "up", "down"))
    variables, _ = _variables(config)
    tokens = _tokens()
    adapted = _logits(config, variables, tokens)
    merged = lora.merge(config, jax.device_get(variables))
    plain = config.replace(lora=None)
    np.testing.assert_allclose(_logits(plain, merged, tokens), adapted, atol=1e-5)
    hf.save_pretrained(tmp_path, plain, merged)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    with torch.no_grad():
        theirs = model(torch.as_tensor(np.asarray(tokens))).logits.numpy()
    np.testing.assert_allclose(theirs, adapted, atol=1e-4)


def test_peft_loads_the_export_to_the_same_logits(tmp_path):
    import peft  # a test-only dependency (setup.py dev extras)

    config = lora_config(targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down"))
    variables, _ = _variables(config)
    plain = config.replace(lora=None)
    hf.save_pretrained(tmp_path / "base", plain, {"params": variables["params"]})
    lora.save_peft(tmp_path / "adapter", config, jax.device_get(variables["lora"]))
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    tokens = _tokens()
    with torch.no_grad():
        theirs = model(torch.as_tensor(np.asarray(tokens))).logits.numpy()
    np.testing.assert_allclose(theirs, _logits(config, variables, tokens), atol=1e-4)
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == (
        lora.parameter_count(variables["lora"])
    )


def _sft_batch(seed=0, batch=4):
    tokens = np.asarray(_tokens(seed, batch))
    loss_mask = np.zeros((batch, T), bool)
    loss_mask[:, T // 2 :] = True
    return {"tokens_bt": tokens, "mask_bt": np.ones((batch, T), bool), "loss_mask_bt": loss_mask}


def _lora_steps(mesh, n=3, same_batch=False):
    """(state after `n` LoRA SFT steps, losses, initial variables), on `mesh` with explicit
    shardings or plain jit; a new batch each step unless `same_batch`."""
    config = lora_config(dropout=0.1)
    variables, specs = _variables(config, trained=False)
    frozen, params = {"params": variables["params"]}, {"lora": variables["lora"]}
    tx = optax.adamw(1e-2)
    step = steps.make_train_step(steps.sft_forward(CausalLM(config)), tx)
    state = state_lib.create_state(params, tx, seed=0)
    if mesh is None:
        run = jax.jit(lambda s, b, r: step(s, b, r, frozen))
    else:
        trained_sh = sharding.logical_shardings({"lora": specs["lora"]}, mesh, shapes=params)
        frozen_sh = sharding.logical_shardings({"params": specs["params"]}, mesh, shapes=frozen)
        shardings = state_lib.state_shardings(trained_sh, tx, params, mesh)
        state = sharding.put_on_mesh(state, shardings)
        frozen = sharding.put_on_mesh(frozen, frozen_sh)
        run = steps.jit_train_step(step, mesh, shardings, frozen=frozen, frozen_shardings=frozen_sh)
    losses = []
    for seed in range(n):
        batch = _sft_batch(0 if same_batch else seed)
        if mesh is not None:
            batch = sharding.put_batch(batch, mesh)
        state, metrics = run(state, batch, state_lib.step_rng(state))
        losses.append(float(metrics["loss"][0] / metrics["loss"][1]))
    return jax.device_get(state), losses, variables


def test_gradients_and_optimizer_state_only_on_the_adapters():
    state, losses, variables = _lora_steps(None, n=6, same_batch=True)
    adapters = lora.parameter_count(variables["lora"])
    base = lora.parameter_count(variables["params"])
    moments = lora.parameter_count(
        [leaf for leaf in jax.tree_util.tree_leaves(state.opt_state) if np.ndim(leaf) > 0]
    )
    print(f"trained {adapters:,} adapter parameters; frozen {base:,}; Adam moments {moments:,}")
    assert set(state.params) == {"lora"} and moments == 2 * adapters < base
    chex.assert_trees_all_equal_structs(state.params["lora"], variables["lora"])
    assert losses[-1] < losses[0] - 0.1  # the adapters learn the batch
    moved = jax.tree_util.tree_map(
        lambda new, old: float(np.abs(new - old).max()), state.params, {"lora": variables["lora"]}
    )
    assert min(jax.tree_util.tree_leaves(moved)) > 0  # every A and B moved


def test_sharded_lora_steps_equal_single_device():
    assert jax.device_count() == 8
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    single, single_losses, _ = _lora_steps(None)
    sharded, sharded_losses, _ = _lora_steps(mesh)
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5)
    # Adam (lr 1e-2) turns float round-off in the gradients into ~1e-5 of an update of 1e-2.
    chex.assert_trees_all_close(sharded.params, single.params, atol=3e-5)


def test_lora_targets_must_name_a_projection_of_the_model():
    with pytest.raises(ValueError, match=r"LoRA targets \['gate'\] match no module of a gpt2"):
        TransformerConfig.gpt2(**GPT2_SIZES, lora=LoRAConfig(targets=("gate_proj", "up")))
    with pytest.raises(ValueError, match=r"LoRA targets \['wq'\] match no module of a llama"):
        lora_config(targets=("wq",))
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoRAConfig(rank=0)
    assert LoRAConfig(targets=("q_proj", "query", "v_proj")).targets == ("query", "value")
    assert dataclasses.replace(LoRAConfig(rank=4, alpha=8.0), rslora=True).scale == 4.0
    with pytest.raises(ValueError, match="PEFT export covers"):
        lora.peft_tensors(
            TransformerConfig.gpt2(**GPT2_SIZES, lora=LoRAConfig(targets=("up",))), {}
        )
