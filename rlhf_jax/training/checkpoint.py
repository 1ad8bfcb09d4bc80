"""Checkpoints with orbax `CheckpointManager`: train state, data-iterator state, run metadata.

One checkpoint = `state` (a pytree such as TrainState: params, optimizer state, step, RNG;
`StandardSave`), the grain iterators' positions (`data` for one iterator, `data_<name>` for a dict
of them, e.g. PPO's prompts and pretraining batches) and `meta` (JSON: config, counters). Saves
are synchronous, so a SIGKILL right after `save` returns loses nothing; orbax writes to a
temporary directory and renames it, so a killed save leaves no half-written checkpoint behind.
`keep` bounds how many are kept. Restoring takes an abstract state whose leaves carry the *target*
shardings, so a run saved on one mesh resumes on another.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
    """No usable checkpoint although some exist (all failed to restore)."""


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` with `shardings` (the restore target)."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _data_items(data_iterators: Any, make: Any) -> dict[str, Any]:
    """Composite items for None, one grain iterator, or a {name: iterator} dict."""
    if data_iterators is None:
        return {}
    if isinstance(data_iterators, dict):
        return {f"data_{name}": make(it) for name, it in data_iterators.items()}
    return {"data": make(data_iterators)}


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` for (state, data iterator, metadata).

    Args:
      directory: where the step folders go (created).
      keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3):
        self.directory = os.path.abspath(os.fspath(directory))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False
            ),
        )

    def save(self, step: int, state: Any, data_iterator: Any, meta: dict) -> None:
        """Saves synchronously; `data_iterator` is a grain iterator, a {name: iterator} dict, or
        None."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave(meta),
                **_data_items(data_iterator, grain.checkpoint.CheckpointSave),
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_state: Any, data_iterator: Any) -> tuple[Any, dict] | None:
        """Restores the newest readable checkpoint into `abstract_state`'s shardings and moves
        `data_iterator` (one, a dict as saved, or None; in place) to its saved position.

        Returns:
          (state, meta), or None when the directory holds no checkpoint.

        Raises:
          CheckpointError: checkpoints exist but none can be read (each failure is logged); a
            corrupted newest checkpoint falls back to the one before, with a warning.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        failures = []
        for step in steps:
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        meta=ocp.args.JsonRestore(),
                        **_data_items(data_iterator, grain.checkpoint.CheckpointRestore),
                    ),
                )
            except Exception as e:  # orbax raises many types for unreadable files
                logging.warning("Checkpoint %s/%d is unreadable: %s", self.directory, step, e)
                failures.append(f"step {step}: {type(e).__name__}: {e}")
                continue
            if step != steps[0]:
                logging.warning("Resumed from step %d: newer checkpoints were unreadable.", step)
            return restored.state, restored.meta
        raise CheckpointError(
            f"No checkpoint in {self.directory} could be restored:\n" + "\n".join(failures)
        )

    def close(self) -> None:
        self.manager.close()
