"""One process of `tests/test_multiprocess.py`: an SFT step (its batch placed whole on every
process, then again from each process's own rows through `pipeline.to_global_arrays`) and a PPO
rollout on a (data=2, fsdp=2, tensor=2) mesh, written to an .npz file by process 0.

  python -m tests.multiprocess_worker --num_processes=2 --process_id=0 --port=PORT \
      --local_devices=4 --out=result.npz

With --num_processes=1 --local_devices=8 it is the single-process reference. Several processes
start JAX's multi-controller runtime on localhost (`jax.distributed.initialize`) with gloo CPU
collectives, so their devices form one 8-device mesh; every process runs the same program.
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--local_devices", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    # Before jax starts its backend: this process's fake CPU devices.
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"

    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from rlhf_jax import sharding
    from rlhf_jax.data import pipeline
    from rlhf_jax.rl import rollout as rollout_lib
    from rlhf_jax.training import state as state_lib
    from rlhf_jax.training import steps
    from tests import test_ppo, test_training

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.num_processes > 1:
        sharding.initialize_distributed(
            coordinator_address=f"localhost:{args.port}",
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    assert jax.device_count() == 8, jax.devices()
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    gather = lambda tree: multihost_utils.process_allgather(tree, tiled=True)  # noqa: E731

    # One SFT step (dropout on, so the per-device masks must agree too).
    _, params, specs, tx, step = test_training.make_sft(
        config=test_training.tiny_config(dropout_rate=0.1)
    )
    state = state_lib.create_state(params, tx, seed=0)
    param_shardings = sharding.logical_shardings(specs, mesh, shapes=params)
    shardings = state_lib.state_shardings(param_shardings, tx, params, mesh)
    state = sharding.put_on_mesh(state, shardings)
    train_step = steps.jit_train_step(step, mesh, shardings)
    global_batch = test_training.sft_batch(seed=1)
    batch = sharding.put_batch(global_batch, mesh)
    first_state = jax.tree_util.tree_map(lambda x: x.copy(), state)  # the step donates `state`
    state, metrics = train_step(state, batch, state_lib.step_rng(state))
    sft_params = gather(state.params)
    sft_loss = gather(metrics["loss"])

    # The same step fed the way the data pipeline feeds it: every process loads only its own
    # rows (process i: the i-th contiguous block, the rows its devices hold on this mesh) and
    # `pipeline.to_global_arrays` assembles the global batch.
    rows = len(global_batch["tokens_bt"]) // jax.process_count()
    mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
    local_batch = pipeline.to_global_arrays({k: v[mine] for k, v in global_batch.items()}, mesh)
    for key, value in gather(local_batch).items():
        np.testing.assert_array_equal(value, global_batch[key], err_msg=key)
    local_state, local_metrics = train_step(
        first_state, local_batch, state_lib.step_rng(first_state)
    )
    local_params = gather(local_state.params)

    # One fused rollout: sampling, log-probs, values, RM score, per-token rewards.
    models, rollout_params, config, (policy_specs, value_specs) = test_ppo.make_setup(
        missing_eos_penalty=-1.0
    )
    policy_sh = sharding.logical_shardings(policy_specs, mesh, shapes=rollout_params.policy)
    value_sh = sharding.logical_shardings(value_specs, mesh, shapes=rollout_params.value)
    placed_sh = rollout_lib.RolloutParams(policy_sh, policy_sh, value_sh, value_sh)
    rollout_fn = rollout_lib.make_rollout(models, config, mesh=mesh, param_shardings=placed_sh)
    tokens, mask = test_ppo.prompts()
    prompts = sharding.put_batch({"tokens": tokens, "mask": mask}, mesh)
    experience = rollout_fn(
        sharding.put_on_mesh(rollout_params, placed_sh),
        prompts["tokens"],
        prompts["mask"],
        np.float32(0.05),
        jax.random.key(3),
    )
    experience = gather(experience)

    if jax.process_index() == 0:
        leaves = {
            f"sft/{jax.tree_util.keystr(path)}": np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(sft_params)
        }
        leaves.update(
            {
                f"sft_local_rows/{jax.tree_util.keystr(path)}": np.asarray(leaf)
                for path, leaf in jax.tree_util.tree_leaves_with_path(local_params)
            }
        )
        leaves.update(
            {
                f"rollout/{jax.tree_util.keystr(path)}": np.asarray(leaf)
                for path, leaf in jax.tree_util.tree_leaves_with_path(experience)
            }
        )
        np.savez(
            args.out,
            sft_loss=np.asarray(sft_loss),
            sft_local_rows_loss=np.asarray(gather(local_metrics["loss"])),
            **leaves,
        )
    if args.num_processes > 1:
        multihost_utils.sync_global_devices("done")  # no process exits while others still read


if __name__ == "__main__":
    main()
