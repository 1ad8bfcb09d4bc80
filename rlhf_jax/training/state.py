"""Train state (a pytree) and its shardings on a mesh."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding

from rlhf_jax import sharding as sharding_lib
from rlhf_jax.models.heads import ValueHead


class TrainState(struct.PyTreeNode):
    """Everything a step updates and a checkpoint stores (besides the data-iterator state).

    Attributes:
      step: int32 scalar, optimizer steps taken.
      params: the model variables, `{"params": ...}`.
      opt_state: the optax state for `params`.
      rng: uint32 [2] raw key data; step t uses `step_rng(state)` = fold_in(rng, t).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def create_state(params: Any, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
    )


def step_rng(state: TrainState) -> jax.Array:
    """The key of the step `state` is about to take (deterministic in seed and step)."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def state_shardings(
    param_shardings: Any, tx: optax.GradientTransformation, params_shapes: Any, mesh: Mesh
) -> TrainState:
    """Shardings of a TrainState: optimizer moments follow their parameters; scalars (step,
    counts, rng) are replicated.

    Args:
      param_shardings: NamedShardings of the params (`sharding.logical_shardings`).
      tx: the optimizer.
      params_shapes: params or their ShapeDtypeStructs.
      mesh: the mesh.
    """
    replicated = sharding_lib.replicated(mesh)
    opt_shapes = jax.eval_shape(tx.init, params_shapes)
    opt_shardings = optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        opt_shapes,
        param_shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    return TrainState(
        step=replicated, params=param_shardings, opt_state=opt_shardings, rng=replicated
    )


def init_variables(model, seq_len: int, seed: int) -> tuple[Any, Any]:
    """(unboxed variables, logical PartitionSpecs) of a freshly initialised model."""
    if isinstance(model, ValueHead):  # reads hidden states, not tokens
        hidden = jnp.zeros((1, seq_len, model.config.embed_dim), model.config.jnp_dtype)
        boxed = model.init(jax.random.key(seed), hidden)
    else:
        tokens = jnp.zeros((1, seq_len), jnp.int32)
        boxed = model.init(jax.random.key(seed), tokens, jnp.ones((1, seq_len), bool))
    return nn.unbox(boxed), nn.get_partition_spec(boxed)
