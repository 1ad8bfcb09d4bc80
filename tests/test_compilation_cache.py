"""The persistent compilation cache: a second process loads what the first compiled, and gets the
same bits; a directory the user already chose is kept; an empty one leaves the cache off.

Each case runs in its own process, since JAX opens its cache once per process and this test
process has its own (tests/conftest.py).
"""

import json
import os
import stat
import subprocess
import sys

import numpy as np

_PROGRAM = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax import monitoring
from rlhf_jax.compilation_cache import enable_compilation_cache

events = []
monitoring.register_event_listener(lambda event, **kwargs: events.append(event))
path = enable_compilation_cache(sys.argv[1] or None, min_compile_time_s=0)
x = jnp.linspace(-1.0, 1.0, 64 * 48, dtype=jnp.float32).reshape(64, 48)
y = jax.jit(lambda a: jax.nn.softmax(jnp.tanh(a @ a.T) * 3.0, axis=-1).sum(0))(x)
np.save(sys.argv[2], np.asarray(y))
print(json.dumps({
    "path": path,
    "config_dir": jax.config.jax_compilation_cache_dir,
    "hits": events.count("/jax/compilation_cache/cache_hits"),
    "misses": events.count("/jax/compilation_cache/cache_misses"),
}))
"""


def _env_without_cache() -> dict[str, str]:
    """This process's environment without the suite's cache settings (tests/conftest.py)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}


def _run(cache_arg: str, out: str, env_dir: str | None = None) -> dict:
    env = _env_without_cache()
    if env_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = env_dir
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, cache_arg, out],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_executable_and_gets_the_same_bits(tmp_path):
    cache = tmp_path / "home" / "cache"
    first = _run(str(cache), str(tmp_path / "first.npy"))
    assert first["path"] == str(cache) and first["config_dir"] == str(cache)
    assert first["misses"] >= 1 and first["hits"] == 0
    assert os.listdir(cache), "the compiled program was not written"
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700  # native code: the user's own folder

    second = _run(str(cache), str(tmp_path / "second.npy"))
    assert second["hits"] >= 1 and second["misses"] == 0
    first_y, second_y = np.load(tmp_path / "first.npy"), np.load(tmp_path / "second.npy")
    assert first_y.dtype == np.float32 and first_y.shape == (64,)
    np.testing.assert_array_equal(first_y.view(np.uint32), second_y.view(np.uint32))


def test_a_directory_the_user_chose_wins(tmp_path):
    chosen, ours = tmp_path / "chosen", tmp_path / "ours"
    result = _run(str(ours), str(tmp_path / "y.npy"), env_dir=str(chosen))
    assert result["path"] == str(chosen) and result["config_dir"] == str(chosen)
    assert not ours.exists()


def test_no_directory_leaves_the_cache_off(tmp_path):
    result = _run("", str(tmp_path / "y.npy"))
    assert result["path"] is None and result["config_dir"] is None
    assert result["hits"] == 0 and result["misses"] == 0


def test_a_bucket_url_is_passed_to_jax_as_given(tmp_path):
    """gs://... is JAX's to open (no local folder is made); nothing is compiled here, since this
    machine reaches no bucket."""
    program = (
        "import jax; from rlhf_jax.compilation_cache import enable_compilation_cache; "
        "print(enable_compilation_cache('gs://bucket/cache'), jax.config.jax_compilation_cache_dir)"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        env=_env_without_cache(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["gs://bucket/cache", "gs://bucket/cache"]
    assert not any(tmp_path.iterdir())
