"""The rlhf_jax side of workloads (a)-(e), each timed beside its transformers/PyTorch baseline
(`torch_baselines`): one result dict per workload, the JSON line `experiments.benchmark` prints
(see the package docstring for the workloads and the fields).

Each `bench_*` takes (preset, repeats, side, with_torch, peak): the preset's sizes (`PRESETS`),
the number of timed runs after a warm-up run, where the baseline runs (`TorchSide`), whether to
time it, and the machine's measured fp32 matmul rate in FLOP/s.
"""

from __future__ import annotations

import datetime
import os
import platform

from rlhf_jax.benchmarks.presets import (
    CLIP_EPS,
    LAM,
    LEARNING_RATE,
    PRESETS,
    VALUE_CLIP,
    init_params,
    model_config,
)
from rlhf_jax.benchmarks.setups import (
    jax_scoring_fn,
    jit_library_step,
    reward_setup,
    scoring_setup,
    sft_setup,
)
from rlhf_jax.benchmarks.timing import (
    cpu_description,
    forward_flops,
    generation_flops,
    matmul_flops_per_s,
    summarize,
    timed,
    timed_compile,
)
from rlhf_jax.benchmarks.torch_baselines import (
    TorchSide,
    make_torch_side,
    torch_available,
    torch_generation,
    torch_ppo_update,
    torch_reward,
    torch_scoring,
    torch_sft,
    torch_sft_lora,
)


def _jax_stats(times, work, unit, compiled, compile_s, flops, peak) -> dict:
    """The rlhf_jax figures of a workload: `summarize`'s, the compile seconds, the compiled
    program's temporary buffers in MiB, and its model FLOP/s (`flops` per median second), also
    as a fraction of the measured matmul rate `peak` (FLOP/s)."""
    stats = summarize(times, work, unit)
    stats["compile_s"] = compile_s
    # XLA's own account of the temporary buffers the program allocates besides its inputs and
    # outputs (activations, gradients, logits).
    stats["xla_temp_mib"] = compiled.memory_analysis().temp_size_in_bytes / 2**20
    stats["model_flops_per_s"] = flops / stats["median_s"]
    stats["fraction_of_matmul_peak"] = stats["model_flops_per_s"] / peak
    return stats


def _max_abs_diff(a: list[float], b: list[float]) -> float:
    """The largest absolute difference between paired values (two sides' losses)."""
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def bench_sft(preset: dict, repeats: int, side: TorchSide, with_torch: bool, peak: float):
    """(a): SFT tokens/s, one AdamW step on 16 sequences x 256 tokens, loss on the second half."""
    from rlhf_jax import losses
    from rlhf_jax.training import steps

    cfg = model_config(preset)
    batch, seq = preset["batch"], preset["context"]
    lm, params, data = sft_setup(preset)
    tokens, loss_mask = data["tokens_bt"], data["loss_mask_bt"]
    run, compile_s, compiled = jit_library_step(steps.sft_forward(lm), params, data, 0)
    # The first two steps' losses (the second after one AdamW update), compared with torch's.
    first_losses = [float(losses.metrics_mean(run())["loss"]) for _ in range(2)]
    flops = 3 * forward_flops(cfg, batch, range(seq))  # forward + backward (~2x forward)
    result = {
        "workload": "a_sft_step",
        "unit": "trained tokens/s",
        "jax": _jax_stats(
            timed(run, repeats), batch * seq, "tokens", compiled, compile_s, flops, peak
        ),
    }
    if with_torch:
        result["torch"], torch_losses = torch_sft(cfg, params, tokens, loss_mask, repeats, side)
        result["loss_abs_diff_vs_torch"] = _max_abs_diff(first_losses, torch_losses)
    return result


def bench_sft_lora(preset: dict, repeats: int, side: TorchSide, with_torch: bool, peak: float):
    """(f): (a) with LoRA: rank-8 adapters on every projection trained, the base frozen (an
    argument of the step), against transformers + peft with the same base and adapters."""
    from rlhf_jax import losses
    from rlhf_jax.models import lora
    from rlhf_jax.training import steps

    if preset.get("family", "gpt2") not in lora.PEFT_FAMILIES:
        raise ValueError(
            "Workload f (LoRA) runs on a Llama-family preset (smollm2, tiny_llama): peft names "
            "GPT-2's fused attention differently."
        )
    cfg = model_config(preset, lora=True)
    batch, seq = preset["batch"], preset["context"]
    lm, variables, data = sft_setup(preset, lora=True)
    frozen, adapters = {"params": variables["params"]}, {"lora": variables["lora"]}
    run, compile_s, compiled = jit_library_step(
        steps.sft_forward(lm), adapters, data, 0, frozen=frozen
    )
    first_losses = [float(losses.metrics_mean(run())["loss"]) for _ in range(2)]
    flops = 2 * forward_flops(cfg, batch, range(seq))  # forward + the activations' backward
    result = {
        "workload": "f_sft_lora_step",
        "unit": "trained tokens/s",
        "trained_parameters": lora.parameter_count(adapters),
        "jax": _jax_stats(
            timed(run, repeats), batch * seq, "tokens", compiled, compile_s, flops, peak
        ),
    }
    if with_torch:
        result["torch"], torch_losses = torch_sft_lora(
            cfg, variables, data["tokens_bt"], data["loss_mask_bt"], repeats, side
        )
        result["loss_abs_diff_vs_torch"] = _max_abs_diff(first_losses, torch_losses)
    return result


def bench_reward(preset: dict, repeats: int, side: TorchSide, with_torch: bool, peak: float):
    """(b): RM pairs/s, one AdamW step on 16 comparisons of two 256-token sequences, each scored
    once, pairwise loss -log sigmoid(r_w - r_l)."""
    from rlhf_jax import losses
    from rlhf_jax.training import steps

    cfg = model_config(preset)
    pairs, seq = preset["batch"], preset["context"]
    scalar, params, data = reward_setup(preset)
    tokens = data["tokens_bkt"]
    run, compile_s, compiled = jit_library_step(steps.reward_forward(scalar), params, data, 0)
    first_losses = [float(losses.metrics_mean(run())["loss"]) for _ in range(2)]
    flops = 3 * forward_flops(cfg, 2 * pairs, range(seq), 0)
    result = {
        "workload": "b_reward_step",
        "unit": "pairs/s",
        "jax": _jax_stats(timed(run, repeats), pairs, "pairs", compiled, compile_s, flops, peak),
    }
    if with_torch:
        result["torch"], torch_losses = torch_reward(cfg, params, tokens, repeats, side)
        result["loss_abs_diff_vs_torch"] = _max_abs_diff(first_losses, torch_losses)
    return result


def bench_generation(preset: dict, repeats: int, side: TorchSide, with_torch: bool, peak: float):
    """(c): new tokens/s of sampling 16 x 64 new tokens after 64-token prompts."""
    import jax
    import numpy as np

    from rlhf_jax.generation import SamplingConfig, make_sampler
    from rlhf_jax.models import CausalLM

    cfg = model_config(preset)
    batch, prompt_len, new = preset["batch"], preset["prompt"], preset["new"]
    lm = CausalLM(cfg)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, prompt_len), np.int32)
    mask = np.ones_like(tokens, bool)
    params = init_params(lm, prompt_len, 0)
    sampler = make_sampler(lm, SamplingConfig(new, temperature=1.0))
    rng = jax.random.key(1)
    compiled, compile_s = timed_compile(sampler, params, tokens, mask, rng)
    tokens_dev, mask_dev = jax.device_put(tokens), jax.device_put(mask)
    run = lambda: compiled(params, tokens_dev, mask_dev, rng).response_tokens_bn.block_until_ready()
    out = compiled(params, tokens_dev, mask_dev, rng)
    assert bool(np.asarray(out.response_mask_bn).all()), "every row must produce all new tokens"
    flops = generation_flops(cfg, batch, prompt_len, new)
    result = {
        "workload": "c_generation",
        "unit": "new tokens/s",
        "jax": _jax_stats(
            timed(run, repeats), batch * new, "tokens", compiled, compile_s, flops, peak
        ),
    }
    if with_torch:
        result["torch"] = torch_generation(cfg, params, tokens, new, repeats, side)
    return result


def _scoring_flops(cfg, batch: int, seq: int, prompt_len: int) -> float:
    """Two LM forwards and two scalar-model forwards over the whole sequences; the LM head is
    needed at the N = seq - prompt_len positions that predict response tokens."""
    positions = range(seq)
    return 2 * forward_flops(cfg, batch, positions, seq - prompt_len) + 2 * forward_flops(
        cfg, batch, positions, 0
    )


def bench_scoring(preset: dict, repeats: int, side: TorchSide, with_torch: bool, peak: float):
    """(d): policy and reference log-probs, values and RM scores of 16 x 128-token sequences."""
    import jax

    setup = scoring_setup(preset)
    prompt_len, (batch, seq) = preset["prompt"], setup["tokens_bs"].shape
    score = jax_scoring_fn(setup, prompt_len)
    params, tokens = jax.device_put((setup["params"], setup["tokens_bs"]))
    compiled, compile_s = timed_compile(score, params, tokens)
    run = lambda: jax.block_until_ready(compiled(params, tokens))  # noqa: E731
    flops = _scoring_flops(setup["cfg"], batch, seq, prompt_len)
    result = {
        "workload": "d_rollout_scoring",
        "unit": "sequences/s",
        "jax": _jax_stats(
            timed(run, repeats), batch, "sequences", compiled, compile_s, flops, peak
        ),
    }
    if with_torch:
        result["torch"], torch_out = torch_scoring(setup, prompt_len, repeats, side)
        # Same weights, same numbers: a benchmark of two different computations would mislead.
        jax_out = jax.device_get(compiled(params, tokens))
        result["max_abs_diff_vs_torch"] = max(
            float(abs(a - b.cpu().numpy()).max()) for a, b in zip(jax_out, torch_out, strict=True)
        )
    return result


def bench_ppo_update(preset: dict, repeats: int, side: TorchSide, with_torch: bool, peak: float):
    """(e): the PPO update over a rollout of 16 x (64 + 64): E epochs x M minibatches."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from rlhf_jax.rl import ppo
    from rlhf_jax.rl.rollout import Rollout

    setup = scoring_setup(preset)
    cfg, params = setup["cfg"], setup["params"]
    prompt_len, (batch, seq) = preset["prompt"], setup["tokens_bs"].shape
    epochs, minibatches = preset["epochs"], preset["minibatches"]
    # The rollout's frozen statistics: the policy's own log-probs, the value model's values.
    logprobs, _, values, _ = jax.device_get(
        jax_scoring_fn(setup, prompt_len)(params, setup["tokens_bs"])
    )
    rewards = np.random.default_rng(1).normal(0.0, 0.1, logprobs.shape).astype(np.float32)
    data = dict(
        tokens_bs=setup["tokens_bs"], logprobs_bn=logprobs, values_bn=values, rewards_bn=rewards
    )
    ones_bn = np.ones(logprobs.shape, bool)
    rollout = Rollout(
        tokens_bs=jnp.asarray(setup["tokens_bs"]),
        attention_mask_bs=jnp.ones((batch, seq), bool),
        response_mask_bn=jnp.asarray(ones_bn),
        logprobs_bn=jnp.asarray(logprobs),
        ref_logprobs_bn=jnp.asarray(logprobs),
        values_bn=jnp.asarray(values),
        kl_bn=jnp.zeros(logprobs.shape),
        rewards_bn=jnp.asarray(rewards),
        raw_score_b=jnp.zeros(batch),
        score_b=jnp.zeros(batch),
        has_eos_b=jnp.zeros(batch, bool),
    )
    tx = optax.adamw(LEARNING_RATE)
    config = ppo.PPOConfig(
        epochs=epochs, minibatches=minibatches, clip_eps=CLIP_EPS, value_clip=VALUE_CLIP, lam=LAM
    )
    update = jax.jit(
        ppo.make_ppo_update(setup["policy"], setup["scalar"], tx, tx, config), donate_argnums=0
    )
    own = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)  # noqa: E731  (the update donates)
    state = [
        ppo.create_ppo_state(own(params["policy"]), own(params["value"]), tx, tx, config.kl, 0)
    ]
    rng = jax.random.key(2)
    compiled, compile_s = timed_compile(update, state[0], rollout, None, rng)

    def run():  # the state carries on from run to run, as in training
        state[0], metrics = compiled(state[0], rollout, None, rng)
        jax.block_until_ready((state[0], metrics))

    # Per row: forward + backward (~3x forward) of the policy (LM head on the N response
    # positions) and of the value model.
    positions = range(seq)
    policy_flops = forward_flops(cfg, batch, positions, seq - prompt_len)
    flops = epochs * 3 * (policy_flops + forward_flops(cfg, batch, positions, 0))
    work = epochs * batch * seq
    result = {
        "workload": "e_ppo_update",
        "unit": "trained tokens/s (epochs x sequences x tokens, policy and value)",
        "jax": _jax_stats(timed(run, repeats), work, "tokens", compiled, compile_s, flops, peak),
    }
    if with_torch:
        result["torch"] = torch_ppo_update(setup, data, preset, repeats, side)
    return result


WORKLOADS = {
    "a": bench_sft,
    "b": bench_reward,
    "c": bench_generation,
    "d": bench_scoring,
    "e": bench_ppo_update,
    "f": bench_sft_lora,
}


def run_workloads(
    names: list[str],
    preset_name: str,
    repeats: int,
    threads: int,
    with_torch: bool,
    torch_device: str = "auto",
):
    """Yields one result dict per workload (the JSON lines `experiments.benchmark` prints).

    On a GPU, JAX's float32 matmuls run at full float32 precision ("highest"; XLA would otherwise
    use TF32 there) because PyTorch's do by default: both sides compute the same numbers.
    """
    import jax

    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        raise ValueError(f"Unknown workloads {unknown}; choose from {sorted(WORKLOADS)}.")
    with_torch = with_torch and torch_available()
    side = make_torch_side(threads, torch_device) if with_torch else TorchSide(threads)
    if preset_name not in PRESETS:
        raise ValueError(
            f"Unknown benchmark preset {preset_name!r}; expected one of {list(PRESETS)}."
        )
    preset = PRESETS[preset_name]
    precision = "default" if jax.default_backend() == "cpu" else "highest"
    with jax.default_matmul_precision(precision):
        peak = matmul_flops_per_s()
    for name in names:
        with jax.default_matmul_precision(precision):
            result = _one_workload(name, preset, preset_name, repeats, side, with_torch, peak)
        yield result


def _one_workload(name, preset, preset_name, repeats, side, with_torch, peak) -> dict:
    """Workload `name`'s result, with `speedup_jax_over_torch` (the ratio of the two sides'
    rates) and what the run was: sizes, device, matmul precision and rate, date, host, versions
    and XLA flags."""
    import jax

    result = WORKLOADS[name](preset, repeats, side, with_torch, peak)
    if with_torch:
        rate = next(k for k in result["torch"] if k.endswith("_per_s"))  # the workload's unit
        result["speedup_jax_over_torch"] = result["jax"][rate] / result["torch"][rate]
    else:
        result["torch"] = None
        result["torch_note"] = "torch/transformers not installed (or --notorch)"
    result.update(
        shape=dict(preset),
        preset=preset_name,
        device=f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        jax_device_count=jax.device_count(),
        jax_fp32_matmul_precision=str(jax.config.jax_default_matmul_precision or "default"),
        matmul_fp32_flops_per_s=peak,
        date=datetime.date.today().isoformat(),
        machine=f"{platform.machine()} {os.cpu_count()} cpus, {cpu_description()}",
        jax_version=jax.__version__,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )
    return result
