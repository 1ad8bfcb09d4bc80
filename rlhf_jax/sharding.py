"""Device mesh, logical-axis rules, and putting params and batches onto the mesh.

The mesh has three axes:
- `data`: pure data parallelism (params replicated);
- `fsdp`: data parallelism with params, grads and optimizer state sharded (ZeRO-3 style);
- `tensor`: Megatron-style tensor parallelism over heads, MLP width and vocabulary.

Model code names axes logically (`rlhf_jax.models.transformer`); `DEFAULT_RULES` maps those names
onto the mesh, and a config can replace the table. The mesh is built with **Auto** axis types on
purpose: `jax.make_mesh` defaults to Explicit axes in jax >= 0.7, under which
`with_sharding_constraint` becomes an assertion and GSPMD-style propagation (what this code relies
on) is off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from rlhf_jax.models.partitioning import LogicalRules, activation_sharding, constrain

__all__ = [
    "AXES",
    "DEFAULT_RULES",
    "activation_sharding",
    "batch_sharding",
    "check_model_fits_mesh",
    "constrain",
    "initialize_distributed",
    "logical_shardings",
    "make_mesh",
    "mesh_from_config",
    "param_logical_specs",
    "put_batch",
    "put_on_mesh",
    "replicated",
]

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES: LogicalRules = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("length", None),
    ("act_embed", None),
)


def make_mesh(
    data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes).

    One of the sizes may be -1: it takes whatever the others leave.

    Raises:
      ValueError: when the sizes do not multiply to the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    unknown = [k for k, v in sizes.items() if v == -1]
    if len(unknown) > 1:
        raise ValueError(f"Only one mesh axis may be -1, got {sizes}.")
    if any(v == 0 or v < -1 for v in sizes.values()):
        raise ValueError(f"Mesh axis sizes must be positive (or one -1), got {sizes}.")
    if unknown:
        known = math.prod(v for v in sizes.values() if v != -1)
        if len(devices) % known:
            raise ValueError(
                f"Cannot fill mesh axis {unknown[0]!r}: {len(devices)} devices are not divisible "
                f"by the other axes' product {known} ({sizes})."
            )
        sizes[unknown[0]] = len(devices) // known
    shape = (sizes["data"], sizes["fsdp"], sizes["tensor"])
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"Mesh data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} needs "
            f"{math.prod(shape)} devices, but {len(devices)} are available; set one axis to -1."
        )
    try:
        device_array = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        # Topology-aware placement only knows some platforms; fall back to device order.
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def mesh_from_config(config: Mapping[str, Any] | Any) -> Mesh:
    """A mesh from a config block with `data`, `fsdp`, `tensor` fields (an ml_collections dict)."""
    get = config.get if isinstance(config, Mapping) else lambda k, d: getattr(config, k, d)
    return make_mesh(get("data", -1), get("fsdp", 1), get("tensor", 1))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis split over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


# ----------------------------------------------------------------------------------------------
# Params
# ----------------------------------------------------------------------------------------------


def param_logical_specs(model: nn.Module, *example_args, **example_kwargs) -> Any:
    """Logical PartitionSpecs of `model`'s variables, from a shape-only init (no FLOPs, no memory).

    Returns a tree like `model.init(...)` whose leaves are `PartitionSpec`s of logical names.
    """
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), *example_args, **example_kwargs)
    )
    return nn.get_partition_spec(abstract)


def logical_shardings(
    logical_specs: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES, shapes: Any = None
) -> Any:
    """NamedShardings for a tree of logical PartitionSpecs.

    Args:
      logical_specs: tree of PartitionSpecs of logical names (`param_logical_specs`).
      mesh: the mesh.
      rules: logical name -> mesh axes.
      shapes: optional matching tree of arrays or ShapeDtypeStructs; when given, every sharded
        dimension is checked to divide evenly, with an error naming the parameter.
    """
    shardings = nn.logical_to_mesh_sharding(logical_specs, mesh, rules)
    if shapes is not None:
        _check_divisible(shapes, shardings, logical_specs, mesh)
    return shardings


def _check_divisible(shapes: Any, shardings: Any, logical_specs: Any, mesh: Mesh) -> None:
    flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
    flat_shardings = jax.tree_util.tree_leaves(
        shardings, is_leaf=lambda x: isinstance(x, NamedSharding)
    )
    flat_logical = jax.tree_util.tree_leaves(
        logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
    for (path, leaf), sharding, logical in zip(
        flat_shapes, flat_shardings, flat_logical, strict=True
    ):
        for dim, (size, axes) in enumerate(zip(leaf.shape, sharding.spec, strict=False)):
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else tuple(axes)
            ways = math.prod(mesh.shape[a] for a in axes)
            if size % ways:
                name = "/".join(str(getattr(k, "key", k)) for k in path)
                raise ValueError(
                    f"Parameter {name} {tuple(leaf.shape)}: dim {dim} ({logical[dim]!r}) of size "
                    f"{size} does not split over mesh axes {axes} ({ways} ways); change the mesh "
                    f"or map {logical[dim]!r} to None in the logical-axis rules."
                )


def check_model_fits_mesh(config, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> None:
    """Readable errors for the usual impossible layouts of a TransformerConfig on a mesh.

    Raises:
      ValueError: e.g. "num_heads=6 is not divisible by the mesh's tensor axis (4)".
    """
    table = dict(rules)
    checks = [
        ("num_heads", config.num_heads, "heads"),
        ("num_kv_heads", config.num_kv_heads, "kv_heads"),
        ("mlp_dim", config.mlp_dim, "mlp"),
        ("vocab_size", config.vocab_size, "vocab"),
        ("embed_dim", config.embed_dim, "embed"),
    ]
    for field, value, logical in checks:
        axes = table.get(logical)
        if axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        ways = math.prod(mesh.shape[a] for a in axes)
        if value % ways:
            axes_text = " x ".join(f"{a} ({mesh.shape[a]})" for a in axes)
            raise ValueError(
                f"{field}={value} is not divisible by the mesh's {axes_text} axis; choose a mesh "
                f"whose {'/'.join(axes)} size divides {value}, or map {logical!r} to None in the "
                "logical-axis rules."
            )


def put_on_mesh(tree: Any, shardings: Any) -> Any:
    """Arrays -> global jax.Arrays with `shardings`.

    jax.Arrays are resharded on device. Host (numpy) arrays must hold the full, global value on
    every process; each process then materialises only its addressable shards, so this works on one
    or many processes.
    """

    def put(x, sharding):
        if isinstance(x, jax.Array):
            return jax.device_put(x, sharding)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree, shardings)


def put_batch(batch: Any, mesh: Mesh) -> Any:
    """A batch pytree of host arrays (global batch on every process) -> batch-sharded arrays.

    Raises:
      ValueError: when the batch size does not divide over data x fsdp.
    """
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    leaves = jax.tree_util.tree_leaves(batch)
    sizes = {np.shape(x)[0] for x in leaves}
    if len(sizes) > 1:
        raise ValueError(f"Batch leaves disagree on the batch size: {sorted(sizes)}.")
    (size,) = sizes
    if size % ways:
        raise ValueError(
            f"Batch size {size} is not divisible by data x fsdp = {mesh.shape['data']} x "
            f"{mesh.shape['fsdp']} = {ways}; use a batch size that is a multiple of {ways}."
        )
    shardings = jax.tree_util.tree_map(lambda x: batch_sharding(mesh, np.ndim(x)), batch)
    return put_on_mesh(batch, shardings)


def initialize_distributed(**kwargs) -> None:
    """Starts JAX's multi-controller runtime; call before any other JAX call, on every process.

    On TPU pods and SLURM / Open MPI clusters no arguments are needed (JAX finds its peers);
    elsewhere pass coordinator_address="host:port", num_processes and process_id. Every process
    then runs the same program (SPMD), and `make_mesh()` spans the devices of all of them.
    """
    jax.distributed.initialize(**kwargs)
