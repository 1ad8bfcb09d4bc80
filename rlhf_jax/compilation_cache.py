"""JAX's persistent compilation cache, switched on for a process.

XLA compiles every jitted program once per process; on a 2-core CPU the main job's smoke preset
spends 66 of its 108 s compiling, the default preset 65 of ~700 s (both measured at the preset of
commit 4e1b968; experiments/results/compilation_cache). With the persistent cache on, a compiled
executable is written to disk under a key of its program, compile options, device kind and
jax/jaxlib versions, and any later compile of the same program (a rerun, a resumed run, the next
stage that builds the same step, a restarted notebook) loads it instead. The executable loaded is
the one XLA compiled, so results are bit for bit those of a fresh compile
(tests/test_compilation_cache.py; the main job's resumed smoke run, which loads the first run's
programs, repeats its figures).

The cache holds native code that the process runs, so it belongs in a directory only its user
can write (the default is under ~/.cache, made with mode 0o700), never a shared world-writable
folder.
"""

from __future__ import annotations

import os

import jax

DEFAULT_DIR = os.path.join("~", ".cache", "rlhf_jax", "jax_compilation_cache")

# Programs that compile faster than this are not written: the main job's many small helper
# programs (initialisers, casts, reductions) would cost more in file writes than they save.
DEFAULT_MIN_COMPILE_TIME_S = 0.2
DEFAULT_MAX_SIZE_BYTES = 4 << 30


def enable_compilation_cache(
    directory: str | os.PathLike | None = DEFAULT_DIR,
    *,
    min_compile_time_s: float = DEFAULT_MIN_COMPILE_TIME_S,
    max_size_bytes: int = DEFAULT_MAX_SIZE_BYTES,
) -> str | None:
    """Points JAX's persistent compilation cache at `directory`; returns the directory in use.

    Call it before the first jitted call of the process (an experiment's main does, through
    `experiments.cli.setup_process`; in a notebook, a cell before any jitted call). A
    directory already chosen, by `JAX_COMPILATION_CACHE_DIR` or an earlier `jax.config.update`,
    is kept: the user's own choice wins, and JAX opens its cache only once per process.

    Args:
      directory: where the executables go (`~` expanded), or a bucket URL such as
        gs://bucket/cache that every host of a pod shares; None or "" leaves the cache off.
      min_compile_time_s: seconds; programs that compile faster are not cached.
      max_size_bytes: the cache's size limit; least recently used entries go first (-1: none).

    Returns:
      The absolute directory (or the bucket URL) in use, or None when the cache is off.
    """
    chosen = jax.config.jax_compilation_cache_dir
    if chosen:
        return chosen if "://" in chosen else os.path.abspath(os.path.expanduser(chosen))
    if not directory:
        return None
    path = os.fspath(directory)
    if "://" not in path:  # a bucket (gs://...) is JAX's to open; a local folder is made private
        path = os.path.abspath(os.path.expanduser(path))
        os.makedirs(path, mode=0o700, exist_ok=True)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_compilation_cache_max_size", int(max_size_bytes))
    jax.config.update("jax_compilation_cache_dir", path)
    return path
