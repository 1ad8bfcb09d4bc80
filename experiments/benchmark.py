r"""Benchmarks of the design notes' workloads, rlhf_jax beside transformers/PyTorch in one run.

Workload (c), generation: GPT-2 architecture, 4 layers, 4 heads, width 256, vocab 8192, context
256, float32; 16 prompts x 64 tokens, 64 new tokens each, sampling at temperature 1 (no EOS, so
every row produces all 64 tokens). Both sides use the same weights (rlhf_jax params exported to a
transformers directory). Prints one JSON line per workload.

  python -m experiments.benchmark                      # the design-notes sizes
  python -m experiments.benchmark --preset=tiny        # seconds; used by the tests
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

from absl import app, flags

_PRESET = flags.DEFINE_enum("preset", "design", ["design", "tiny"], "Workload sizes.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs after one warm-up run (median reported).")
_THREADS = flags.DEFINE_integer("threads", 2, "PyTorch intra-op threads (the machine's cores).")
_TORCH = flags.DEFINE_bool("torch", True, "Also time transformers/PyTorch when torch is installed.")

PRESETS = {
    # model: GPT-2 family sizes; workload: batch (prompts), prompt and response lengths in tokens.
    "design": dict(
        layers=4, heads=4, width=256, vocab=8192, context=256, batch=16, prompt=64, new=64
    ),
    "tiny": dict(layers=1, heads=2, width=32, vocab=128, context=32, batch=2, prompt=4, new=4),
}


def _timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall-clock seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _summary(times: list[float], work: float, unit: str) -> dict:
    median = statistics.median(times)
    return {
        f"{unit}_per_s": work / median,
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "runs": len(times),
    }


def matmul_flops_per_s(size: int = 1024, repeats: int = 5) -> float:
    """The machine's measured float32 matmul rate in FLOP/s (jnp.dot of two size x size arrays)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    dot = jax.jit(lambda x: x @ x)
    times = _timed(lambda: dot(a).block_until_ready(), repeats)
    return 2 * size**3 / statistics.median(times)


def generation_flops(cfg, batch: int, prompt: int, new: int) -> float:
    """Forward FLOPs of prefill + decode (2 x multiply-adds of matmuls, attention included)."""
    per_token_matmul = 2 * cfg.num_layers * (4 * cfg.embed_dim**2 + 2 * cfg.embed_dim * cfg.mlp_dim)
    per_token_matmul += 2 * cfg.embed_dim * cfg.vocab_size
    total = 0.0
    for position in range(prompt + new - 1):
        # attention scores and weighted values over the cache up to this position
        attn = 2 * 2 * cfg.num_layers * cfg.embed_dim * (position + 1)
        total += per_token_matmul + attn
    return total * batch


def bench_generation(preset: dict, repeats: int, threads: int, with_torch: bool) -> dict:
    import jax
    import numpy as np

    from rlhf_jax.generation import SamplingConfig, make_sampler
    from rlhf_jax.models import CausalLM, TransformerConfig

    cfg = TransformerConfig.gpt2(
        vocab_size=preset["vocab"],
        num_layers=preset["layers"],
        num_heads=preset["heads"],
        embed_dim=preset["width"],
        max_len=preset["context"],
    )
    batch, prompt_len, new = preset["batch"], preset["prompt"], preset["new"]
    lm = CausalLM(cfg)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, prompt_len), np.int32)
    mask = np.ones_like(tokens, bool)
    params = jax.jit(
        lambda k: jax.tree_util.tree_map(
            lambda x: x.unbox() if hasattr(x, "unbox") else x,
            lm.init(k, tokens[:1]),
            is_leaf=lambda x: hasattr(x, "unbox"),
        )
    )(jax.random.key(0))
    sampler = make_sampler(lm, SamplingConfig(new, temperature=1.0))
    rng = jax.random.key(1)

    start = time.perf_counter()
    compiled = sampler.lower(params, tokens, mask, rng).compile()
    compile_s = time.perf_counter() - start
    tokens_dev, mask_dev = jax.device_put(tokens), jax.device_put(mask)
    run = lambda: compiled(params, tokens_dev, mask_dev, rng).response_tokens_bn.block_until_ready()
    out = compiled(params, tokens_dev, mask_dev, rng)
    assert bool(np.asarray(out.response_mask_bn).all()), "every row must produce all new tokens"
    jax_stats = _summary(_timed(run, repeats), batch * new, "tokens")
    jax_stats["compile_s"] = compile_s
    flops = generation_flops(cfg, batch, prompt_len, new)
    peak = matmul_flops_per_s()
    jax_stats["model_flops_per_s"] = flops / jax_stats["median_s"]
    jax_stats["fraction_of_matmul_peak"] = jax_stats["model_flops_per_s"] / peak

    result = {
        "workload": "c_generation",
        "shape": dict(preset),
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        "jax_device_count": jax.device_count(),
        "matmul_fp32_flops_per_s": peak,
        "jax": jax_stats,
    }
    if with_torch:
        result.update(_torch_generation(cfg, params, tokens, new, repeats, threads))
    return result


def _torch_generation(cfg, params, tokens, new, repeats, threads) -> dict:
    try:
        import torch
        import transformers
    except ImportError:
        return {"torch": None, "torch_note": "torch not installed"}
    from rlhf_jax.models import hf

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp, cfg, params, bos_token_id=0, eos_token_id=0)
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp).eval()
    model.generation_config.eos_token_id = None  # never stop early: 64 tokens for every row
    input_ids = torch.tensor(tokens, dtype=torch.long)
    attention = torch.ones_like(input_ids)

    def run():
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=new,
                pad_token_id=0,
                eos_token_id=None,
            )
        assert out.shape[1] == tokens.shape[1] + new
        return out

    stats = _summary(_timed(run, repeats), tokens.shape[0] * new, "tokens")
    stats.update(threads=threads, version=torch.__version__, transformers=transformers.__version__)
    return {"torch": stats}


def main(argv):
    del argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = bench_generation(PRESETS[_PRESET.value], _REPEATS.value, _THREADS.value, _TORCH.value)
    if result.get("torch"):
        result["speedup_jax_over_torch"] = (
            result["jax"]["tokens_per_s"] / result["torch"]["tokens_per_s"]
        )
    result["date"] = datetime.date.today().isoformat()
    result["machine"] = f"{platform.machine()} {os.cpu_count()} cpus, {platform.processor() or '?'}"
    import jax

    result["jax_version"] = jax.__version__
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
