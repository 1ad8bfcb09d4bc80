"""Test setup: 8 fake CPU devices, so mesh and sharding code runs without accelerators, and one
persistent compilation cache for the suite.

XLA reads the flag when the backend starts, so it must be set before anything imports jax; JAX
reads the cache settings when it is imported.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Programs compiled by one test load in the next and in the next run of the suite (rlhf_jax.
# compilation_cache; the results are the same bits). The cache stays in the checkout, and the
# experiment and notebook subprocesses the tests start inherit it instead of using ~/.cache.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.makedirs(_CACHE, mode=0o700, exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
