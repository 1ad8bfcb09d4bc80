"""Probes that explain the training workloads' JAX / PyTorch ratios: the transformer body's
matmul shapes timed in XLA and in torch (`bench_matmuls`, GFLOP/s), and workloads (a) and (b)
timed phase by phase, forward, backward and the rest of the step (`bench_phases`, seconds)."""

from __future__ import annotations

import datetime
import statistics
import time
from collections.abc import Callable

from rlhf_jax.benchmarks.presets import LEARNING_RATE, WEIGHT_DECAY, model_config
from rlhf_jax.benchmarks.setups import jit_library_step, reward_setup, sft_setup
from rlhf_jax.benchmarks.timing import timed
from rlhf_jax.benchmarks.torch_baselines import TorchSide, torch_pair_loss, torch_sft_loss


def matmul_shapes(preset: dict) -> list[tuple[str, int, int, int, bool]]:
    """(name, M, K, N, transposed_rhs) of the transformer body's matmuls for a training batch of
    `batch` x `context` tokens: forward x @ W and the input gradient dy @ W^T."""
    rows, width = preset["batch"] * preset["context"], preset["width"]
    shapes = []
    for name, k, n in (("qkv", width, 3 * width), ("mlp_up", width, 4 * width)):
        shapes.append((f"{name} forward", rows, k, n, False))
        shapes.append((f"{name} input gradient", rows, n, k, True))
    return shapes


def bench_matmuls(preset: dict, repeats: int, side: TorchSide) -> list[dict]:
    """GFLOP/s of each `matmul_shapes` product in XLA (jitted) and torch, same operands."""
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    results = []
    for name, m, k, n, transposed in matmul_shapes(preset):
        x = rng.standard_normal((m, k), np.float32)
        w = rng.standard_normal((n, k) if transposed else (k, n), np.float32)
        product = (lambda a, b: a @ b.T) if transposed else (lambda a, b: a @ b)
        jitted, (xj, wj) = jax.jit(product), jax.device_put((x, w))
        xt, wt = side.tensor(x), side.tensor(w)
        jax_s = statistics.median(timed(lambda: jitted(xj, wj).block_until_ready(), repeats))  # noqa: B023
        torch_s = statistics.median(side.timed(lambda: product(xt, wt), repeats))  # noqa: B023
        flops = 2 * m * k * n
        results.append(
            {
                "matmul": name,
                "m_k_n": [m, k, n],
                "rhs_transposed": transposed,
                "jax_gflops": flops / jax_s / 1e9,
                "torch_gflops": flops / torch_s / 1e9,
            }
        )
    return results


def _interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each call, timed round-robin (one warm-up call each first), so that a
    host that speeds up or slows down during the run touches every call alike; phases are
    differences of these medians, so they must come from the same stretch of time."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _jax_phase_calls(forward, params, batch: dict) -> dict[str, Callable[[], object]]:
    """The library's forward (loss only, nothing kept for a backward), its gradients, and the
    jitted training step on a 1-device mesh as in workloads (a) and (b)."""
    import jax

    from rlhf_jax import sharding

    placed = sharding.put_batch(batch, sharding.make_mesh(devices=jax.devices()[:1]))
    rng = jax.random.key(0)
    loss = jax.jit(lambda p, b: forward(p, b, rng, False)[0])
    grads = jax.jit(jax.grad(lambda p, b: forward(p, b, rng, False)[0]))
    run, _, _ = jit_library_step(forward, params, batch, 0)
    return {
        "jax_forward": lambda: jax.block_until_ready(loss(params, placed)),
        "jax_gradients": lambda: jax.block_until_ready(grads(params, placed)),
        "jax_step": run,
    }


def _torch_phase_calls(loss_fn, parameters, side: TorchSide) -> dict[str, Callable[[], object]]:
    """A torch loss's forward under `no_grad` (like JAX's forward-only program, nothing kept for
    a backward), forward + `backward()`, and that + AdamW's step; on CUDA each call ends with a
    synchronize."""
    import torch

    opt = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    sync = torch.cuda.synchronize if side.device == "cuda" else lambda: None

    def forward():
        with torch.no_grad():
            loss_fn()
        sync()

    def gradients():
        opt.zero_grad()
        loss_fn().backward()
        sync()

    def step():
        gradients()
        opt.step()
        sync()

    return {"torch_forward": forward, "torch_gradients": gradients, "torch_step": step}


def _phases(medians: dict[str, float], side: str) -> dict:
    """One side's ("jax" or "torch") median seconds of the forward, the gradients and the whole
    step, from `_interleaved_medians`' keys."""
    return {
        "forward_s": medians[f"{side}_forward"],
        "gradients_s": medians[f"{side}_gradients"],
        "step_s": medians[f"{side}_step"],
    }


def bench_phases(preset: dict, repeats: int, side: TorchSide) -> list[dict]:
    """Workloads (a) and (b) split into phases on both sides: forward, backward (gradients minus
    forward) and the rest of the step (step minus gradients: the optimizer, and in rlhf_jax also
    the gradient norm, the non-finite check and the metrics), to show where a training step's
    ratio comes from. Same weights and batches as the workloads; the six calls of a workload are
    timed round-robin, `repeats` rounds."""
    from rlhf_jax.training import steps

    cfg = model_config(preset)
    results = []
    lm, params, data = sft_setup(preset)
    tokens, loss_mask = data["tokens_bt"], data["loss_mask_bt"]
    with torch_sft_loss(cfg, params, tokens, loss_mask, side) as (loss_fn, trained):
        calls = {
            **_jax_phase_calls(steps.sft_forward(lm), params, data),
            **_torch_phase_calls(loss_fn, trained, side),
        }
        results.append(("a_sft_step", _interleaved_medians(calls, repeats)))
    scalar, params, data = reward_setup(preset)
    with torch_pair_loss(cfg, params, data["tokens_bkt"], side) as (loss_fn, trained):
        calls = {
            **_jax_phase_calls(steps.reward_forward(scalar), params, data),
            **_torch_phase_calls(loss_fn, trained, side),
        }
        results.append(("b_reward_step", _interleaved_medians(calls, repeats)))
    today = datetime.date.today().isoformat()
    return [
        {
            "workload": workload,
            "jax": _phases(medians, "jax"),
            "torch": _phases(medians, "torch"),
            "preset": dict(preset),
            "repeats": repeats,
            "date": today,
        }
        for workload, medians in results
    ]
