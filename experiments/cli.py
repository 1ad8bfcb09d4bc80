"""The flags every experiment module shares, and what each module's `__main__` does first.

They are defined once here, so that the modules can be imported together (by tests, by
`experiments.instructgpt`); each module adds only its own flags.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from rlhf_jax import compilation_cache, sharding

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].")
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")
PRESET = flags.DEFINE_string(
    "preset",
    None,
    "A named preset of the module run (experiments.benchmark: design | gpt2 | tiny; "
    "experiments.instructgpt: default | smoke).",
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() first: one process per host of a TPU slice or GPU "
    "cluster, all started with the same command (addresses from the cluster's environment).",
)
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir",
    compilation_cache.DEFAULT_DIR,
    "JAX's persistent compilation cache: compiled programs are kept here and loaded by later "
    "runs instead of compiling again (same results). Empty: off. JAX_COMPILATION_CACHE_DIR, "
    "when set, wins.",
)


def setup_process() -> None:
    """What every experiment's main does first: quiet orbax's per-file INFO logs, switch on the
    persistent compilation cache (--compilation_cache_dir) and, with --distributed, join the
    other processes so the mesh spans every host's devices."""
    logging.set_verbosity(logging.WARNING)
    compilation_cache.enable_compilation_cache(_COMPILATION_CACHE_DIR.value)
    if _DISTRIBUTED.value:
        sharding.initialize_distributed()


def run_stage_module(train_and_evaluate: Callable[[ml_collections.ConfigDict, str], Any]) -> None:
    """The `__main__` of a stage module: `--config` and `--workdir` are required, the process is
    set up (`setup_process`), then `train_and_evaluate(config, workdir)`."""

    def main(argv):
        del argv
        setup_process()
        train_and_evaluate(CONFIG.value, WORKDIR.value)

    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
