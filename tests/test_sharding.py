"""Sharded runs on 8 fake CPU devices equal single-device runs; impossible layouts fail clearly."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from rlhf_jax import sharding
from rlhf_jax.generation import SamplingConfig, make_sampler
from rlhf_jax.models import CausalLM, TransformerConfig
from tests.hf_reference import left_padded_batch, reference_model

MESHES = [dict(data=8), dict(fsdp=4, tensor=2, data=1), dict(data=2, fsdp=2, tensor=2)]


def _place(config, params, mesh):
    lm = CausalLM(config)
    specs = sharding.param_logical_specs(lm, np.zeros((1, 4), np.int32))
    sharding.check_model_fits_mesh(config, mesh)
    shardings = sharding.logical_shardings(specs, mesh, shapes=params)
    return lm, shardings, sharding.put_on_mesh(params, shardings)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize(
    "mesh_shape", MESHES, ids=lambda m: "x".join(f"{k}{v}" for k, v in m.items())
)
def test_sharded_logits_and_greedy_generation_equal_single_device(family, mesh_shape):
    assert jax.device_count() == 8
    _, config, params = reference_model(family)
    tokens, mask = left_padded_batch(batch=8, length=6)
    lm = CausalLM(config)
    ref_logits = np.asarray(lm.apply(params, tokens, mask).logits_btv)
    sampling = SamplingConfig(8, temperature=0.0, eos_ids=(5,))
    ref_gen = make_sampler(lm, sampling)(params, tokens, mask, jax.random.key(0))

    mesh = sharding.make_mesh(**mesh_shape)
    lm, shardings, sharded_params = _place(config, params, mesh)
    batch = sharding.put_batch({"tokens": tokens, "mask": mask}, mesh)

    def forward(p, t, m):
        with sharding.activation_sharding(mesh, sharding.DEFAULT_RULES):
            return lm.apply(p, t, m).logits_btv

    logits = jax.jit(
        forward,
        in_shardings=(shardings, sharding.batch_sharding(mesh), sharding.batch_sharding(mesh)),
    )(sharded_params, batch["tokens"], batch["mask"])
    np.testing.assert_allclose(np.asarray(logits)[mask], ref_logits[mask], atol=1e-5)

    sampler = make_sampler(lm, sampling, mesh=mesh, param_shardings=shardings)
    gen = sampler(sharded_params, batch["tokens"], batch["mask"], jax.random.key(0))
    assert gen.response_tokens_bn.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_array_equal(np.asarray(gen.response_tokens_bn), ref_gen.response_tokens_bn)
    np.testing.assert_array_equal(np.asarray(gen.response_mask_bn), ref_gen.response_mask_bn)
    np.testing.assert_allclose(
        np.asarray(gen.response_logprobs_bn), ref_gen.response_logprobs_bn, atol=1e-5
    )


def test_sharded_sampling_equals_single_device_sampling():
    _, config, params = reference_model("llama")
    tokens, mask = left_padded_batch(batch=8, length=6)
    sampling = SamplingConfig(6, temperature=1.0, top_k=10)
    ref = make_sampler(CausalLM(config), sampling)(params, tokens, mask, jax.random.key(4))
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    lm, shardings, sharded_params = _place(config, params, mesh)
    batch = sharding.put_batch((tokens, mask), mesh)
    out = make_sampler(lm, sampling, mesh=mesh, param_shardings=shardings)(
        sharded_params, *batch, jax.random.key(4)
    )
    np.testing.assert_array_equal(np.asarray(out.response_tokens_bn), ref.response_tokens_bn)


def test_params_are_sharded_as_the_rules_say():
    _, config, params = reference_model("llama")
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    _, _, placed = _place(config, params, mesh)
    query = placed["params"]["decoder"]["layer_0"]["attn"]["query"]["kernel"]  # embed, heads, dim
    assert tuple(query.sharding.spec) == ("fsdp", "tensor", None)
    assert query.addressable_shards[0].data.shape == (32 // 2, 4 // 2, 8)
    embedding = placed["params"]["decoder"]["embed"]["embedding"]  # vocab, embed
    assert tuple(embedding.sharding.spec) == ("tensor", "fsdp")


def test_mesh_uses_auto_axes_and_fills_minus_one():
    mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert dict(sharding.mesh_from_config({"fsdp": 8}).shape) == {"data": 1, "fsdp": 8, "tensor": 1}


def test_impossible_layouts_fail_with_one_line_errors():
    with pytest.raises(ValueError, match="needs 12 devices, but 8 are available"):
        sharding.make_mesh(data=3, fsdp=2, tensor=2)
    with pytest.raises(ValueError, match="Cannot fill mesh axis 'data'"):
        sharding.make_mesh(data=-1, fsdp=3)
    with pytest.raises(ValueError, match="Only one mesh axis may be -1"):
        sharding.make_mesh(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="Mesh axis sizes must be positive"):
        sharding.make_mesh(data=0, fsdp=8)
    mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
    config = TransformerConfig.gpt2(vocab_size=64, num_layers=1, num_heads=6, embed_dim=48)
    with pytest.raises(
        ValueError, match=r"num_heads=6 is not divisible by the mesh's tensor \(4\)"
    ):
        sharding.check_model_fits_mesh(config, mesh)
    lm = CausalLM(config)
    specs = sharding.param_logical_specs(lm, np.zeros((1, 4), np.int32))
    shapes = jax.eval_shape(lm.init, jax.random.key(0), np.zeros((1, 4), np.int32))
    shapes = jax.tree_util.tree_map(
        lambda x: x.value if hasattr(x, "value") else x,
        shapes,
        is_leaf=lambda x: hasattr(x, "names"),
    )
    with pytest.raises(
        ValueError,
        match=r"Parameter params/decoder/layer_0/attn/.*'(kv_)?heads'\) of size 6 does not split",
    ):
        sharding.logical_shardings(specs, mesh, shapes=shapes)
    with pytest.raises(ValueError, match="Batch size 13 is not divisible by data x fsdp = 1 x 2"):
        sharding.put_batch(np.zeros((13, 3)), mesh)
    with pytest.raises(ValueError, match=r"Batch leaves disagree on the batch size: \[4, 8\]"):
        sharding.put_batch({"tokens": np.zeros((8, 3)), "ptx_tokens": np.zeros((4, 3))}, mesh)
