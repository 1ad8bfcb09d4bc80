"""Measuring: wall-clock timings with the process's peak memory growth, compile times, the
machine's fp32 matmul rate, the workloads' model FLOP counts, and the host CPU's description.

Nothing here imports JAX, torch or the library at import time.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

_PROC_STATUS, _PROC_CLEAR_REFS = "/proc/self/status", "/proc/self/clear_refs"


def _rss_kib(field: str) -> int | None:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process in KiB; None off Linux."""
    try:
        with open(_PROC_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux: write 5 to clear_refs); False when not possible."""
    try:
        with open(_PROC_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class Timings(list):
    """Wall-clock seconds of the timed runs; `peak_rss_growth_mib` is how far the process's peak
    resident memory rose above its resident memory before the first run (activations, gradients
    and temporaries; None where it cannot be measured)."""

    peak_rss_growth_mib: float | None = None
    device_peak_mib: float | None = None  # PyTorch on CUDA: peak allocated GPU memory


def timed(fn: Callable[[], object], repeats: int) -> Timings:
    """Wall-clock seconds of `repeats` calls after one warm-up call, and their peak memory."""
    fn()
    reset = _reset_peak_rss()
    before = _rss_kib("VmRSS")
    times = Timings()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    peak = _rss_kib("VmHWM")
    if reset and before is not None and peak is not None:
        # The kernel's RSS counters are batched per CPU and can lag by a few pages, so a workload
        # that allocates nothing may read a page below its start: that is zero growth.
        times.peak_rss_growth_mib = max(0.0, (peak - before) / 1024)
    return times


def summarize(times: Timings, work: float, unit: str) -> dict:
    """A result's figures for `times`: `{unit}_per_s` (`work` units per median second), the
    median, min and max seconds, the number of runs and the peak memory growth in MiB (and the
    peak allocated GPU memory in MiB where PyTorch ran on CUDA)."""
    median = statistics.median(times)
    summary = {
        f"{unit}_per_s": work / median,
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "runs": len(times),
        "peak_rss_growth_mib": times.peak_rss_growth_mib,
    }
    if times.device_peak_mib is not None:
        summary["device_peak_mib"] = times.device_peak_mib
    return summary


def matmul_flops_per_s(sizes: tuple[int, ...] | None = None, repeats: int = 5) -> float:
    """The machine's measured float32 matmul rate in FLOP/s: the best median over square
    `jnp.dot`s of the given sizes (default 1024 and 2048 on a CPU, 4096 and 8192 on a GPU)."""
    import jax
    import jax.numpy as jnp

    if sizes is None:
        sizes = (1024, 2048) if jax.default_backend() == "cpu" else (4096, 8192)
    rates = []
    for size in sizes:
        a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
        dot = jax.jit(lambda x: x @ x)
        times = timed(lambda: dot(a).block_until_ready(), repeats)  # noqa: B023
        rates.append(2 * size**3 / statistics.median(times))
    return max(rates)


def forward_flops(cfg, batch: int, positions: range, lm_head_positions: int | None = None) -> float:
    """Forward FLOPs (2 x multiply-adds of the matmuls, attention included) of `batch` rows, one
    token at each of `positions` attending to every earlier position. The LM head (E x V) is
    counted at `lm_head_positions` positions (default all; 0 for a scalar-head model, whose
    E x 1 head is counted at every position)."""
    per_token = 2 * cfg.num_layers * (4 * cfg.embed_dim**2 + 2 * cfg.embed_dim * cfg.mlp_dim)
    total = 0.0
    for position in positions:
        # attention scores and weighted values over the positions up to this one
        total += per_token + 2 * 2 * cfg.num_layers * cfg.embed_dim * (position + 1)
    head_positions = len(positions) if lm_head_positions is None else lm_head_positions
    total += 2 * cfg.embed_dim * cfg.vocab_size * head_positions
    if lm_head_positions == 0:
        total += 2 * cfg.embed_dim * len(positions)
    return total * batch


def generation_flops(cfg, batch: int, prompt: int, new: int) -> float:
    """Forward FLOPs of prefill + decode."""
    return forward_flops(cfg, batch, range(prompt + new - 1))


def timed_compile(fn, *args) -> tuple[Any, float]:
    """(compiled executable of jitted `fn` for `args`, compile seconds)."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - start


def cpu_description(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The host CPU's model name, family/model numbers and widest x86 vector extension, read from
    `/proc/cpuinfo` (for example "AMD EPYC, family 26 model 2, avx512"); what `platform` knows
    elsewhere, or "?". Two hosts with the same model name can be different generations, and the
    JAX/PyTorch ratios of the CPU workloads differ between them, so a result records both."""
    try:
        with open(cpuinfo_path) as f:
            first_cpu = f.read().split("\n\n")[0]
    except OSError:
        return platform.processor() or "?"
    fields = {}
    for line in first_cpu.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    parts = [fields.get("model name") or platform.processor() or "?"]
    if "cpu family" in fields and "model" in fields:
        parts.append(f"family {fields['cpu family']} model {fields['model']}")
    cpu_flags = set(fields.get("flags", "").split())
    vector = next((v for v in ("avx512f", "avx2", "avx") if v in cpu_flags), None)
    if vector:
        parts.append(vector.removesuffix("f"))
    return ", ".join(parts)
