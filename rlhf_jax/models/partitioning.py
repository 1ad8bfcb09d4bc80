"""Activation sharding constraints by logical axis names, for model code.

Model code calls `constrain(x, ("batch", "length", "act_embed"))`. Outside an
`activation_sharding(mesh, rules)` block this does nothing, so the model runs unchanged on one
device; inside, it becomes `jax.lax.with_sharding_constraint` with an explicit `NamedSharding`. The
block is entered by the jitted function itself (at trace time), because `jax.set_mesh` cannot be
used inside `jax.jit`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

_STATE = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
    """Within this block, `constrain` pins activations to `mesh` according to `rules`."""
    previous = getattr(_STATE, "value", None)
    _STATE.value = (mesh, tuple(rules))
    try:
        yield
    finally:
        _STATE.value = previous


def constrain(x: jax.Array, logical_names: tuple[str | None, ...]) -> jax.Array:
    """Constrains `x` (rank == len(logical_names)) to the active mesh; a no-op when none is."""
    active = getattr(_STATE, "value", None)
    if active is None:
        return x
    mesh, rules = active
    spec = nn.logical_to_mesh_axes(logical_names, rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
