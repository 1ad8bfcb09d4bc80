r"""Benchmarks of the design notes' workloads, rlhf_jax beside transformers/PyTorch in one run.

Model for every workload: GPT-2 architecture, 4 layers, 4 heads, width 256, vocab 8192, context
256, float32, no dropout. Both sides use the same weights (rlhf_jax params exported to transformers
directories) and compute the same numbers (checked in the output).

(a) SFT: one AdamW step on 16 sequences x 256 tokens, loss on the last 128 tokens; the library's
    `make_train_step` jitted by `jit_train_step` vs a transformers forward with labels, backward
    and `torch.optim.AdamW`. The rlhf_jax step also computes the gradient norm and guards
    against non-finite updates; the torch loop does not.
(b) reward model: one AdamW step on 16 comparisons of two 256-token sequences (32 sequences,
    each scored once), loss -log sigmoid(r_w - r_l).
The remaining workloads use 16 prompts x 64 tokens + 64 response tokens:
(c) generation: 64 new tokens per prompt, sampling at temperature 1 (no EOS, so every row
    produces all 64 tokens); rlhf_jax's KV-cache sampler vs `model.generate`.
(d) the rest of the rollout: policy and reference log-probs of the response tokens, per-token
    values and the RM score for those 16 x 128 sequences; one jitted call vs four torch forwards.
(e) the PPO update on that rollout: GAE, then 4 epochs x 4 shuffled minibatches of 4 sequences,
    each minibatch one AdamW step of the policy (clipped surrogate) and one of the value model
    (clipped value loss); one jitted call (`rlhf_jax.ppo.make_ppo_update`) vs the same loop in
    torch.

Each workload prints one JSON line: median, min and max of the timed runs after a warm-up run,
compile time, model FLOP/s as a fraction of the machine's measured fp32 matmul rate, peak memory
(growth of the process's peak RSS during the timed runs, on Linux; for rlhf_jax also the size of
the compiled program's temporary buffers), the torch figures and `speedup_jax_over_torch`.

  python -m experiments.benchmark                      # the design-notes sizes, workloads a-e
  python -m experiments.benchmark --workloads=d,e      # a subset
  python -m experiments.benchmark --preset=tiny        # seconds; used by the tests
  python -m experiments.benchmark --from_jsonl=experiments/results/benchmark_cpu.jsonl  # table
  python -m experiments.benchmark --matmuls            # the body's matmul shapes, XLA vs torch
  python -m experiments.benchmark --ratios=RUN1.jsonl,RUN2.jsonl  # JAX / PyTorch ratios per run
  python -m experiments.benchmark --phases             # (a), (b): forward, backward, optimizer
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from absl import app, flags

from experiments import common

_WORKLOADS = flags.DEFINE_list(
    "workloads", ["a", "b", "c", "d", "e"], "Workloads to run (of a, b, c, d, e)."
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs after one warm-up run (median reported).")
_THREADS = flags.DEFINE_integer("threads", 2, "PyTorch intra-op threads (the machine's cores).")
_TORCH = flags.DEFINE_bool("torch", True, "Also time transformers/PyTorch when torch is installed.")
_TORCH_DEVICE = flags.DEFINE_enum(
    "torch_device",
    "auto",
    ["auto", "cpu", "cuda"],
    "Where PyTorch runs: auto = cuda when JAX runs on a GPU and torch sees one, else cpu.",
)
_TABLE = flags.DEFINE_bool("table", True, "After the JSON lines, print them as a markdown table.")
_MATMULS = flags.DEFINE_bool(
    "matmuls",
    False,
    "Run nothing else: time the model's matmul shapes (forward x @ W and the backward's "
    "dy @ W^T) in XLA and in torch, to explain the training workloads' ratios.",
)
_PHASES = flags.DEFINE_bool(
    "phases",
    False,
    "Run nothing else: time the training workloads (a) and (b) phase by phase (forward, "
    "backward, optimizer) in rlhf_jax and in transformers/PyTorch, JSON lines then a table.",
)
_FROM_JSONL = flags.DEFINE_string(
    "from_jsonl", None, "Run nothing: print the markdown table of a saved JSON-lines file."
)
_RATIOS = flags.DEFINE_list(
    "ratios",
    None,
    "Run nothing: print one row per saved JSON-lines file (comma-separated paths) with its host "
    "and each workload's JAX / PyTorch ratio, to compare runs on different machines.",
)

PRESETS = {
    # model: GPT-2 family sizes; workload: batch (prompts), prompt and response lengths in tokens,
    # PPO epochs and minibatches per epoch.
    "design": dict(
        layers=4,
        heads=4,
        width=256,
        vocab=8192,
        context=256,
        batch=16,
        prompt=64,
        new=64,
        epochs=4,
        minibatches=4,
    ),
    # GPT-2 small (124M parameters) with 256-token sequences: sizes where a GPU is not idle.
    "gpt2": dict(
        layers=12,
        heads=12,
        width=768,
        vocab=50257,
        context=256,
        batch=16,
        prompt=128,
        new=128,
        epochs=4,
        minibatches=4,
    ),
    "tiny": dict(
        layers=1,
        heads=2,
        width=32,
        vocab=128,
        context=32,
        batch=4,
        prompt=4,
        new=4,
        epochs=2,
        minibatches=2,
    ),
}
LEARNING_RATE = 1e-5
CLIP_EPS, VALUE_CLIP, LAM = 0.2, 0.2, 0.95


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


def _timed(fn: Callable[[], object], repeats: int) -> Timings:
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


def _summary(times: Timings, work: float, unit: str) -> dict:
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
        times = _timed(lambda: dot(a).block_until_ready(), repeats)  # noqa: B023
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


def _model_config(preset: dict):
    from rlhf_jax.models import TransformerConfig

    return TransformerConfig.gpt2(
        vocab_size=preset["vocab"],
        num_layers=preset["layers"],
        num_heads=preset["heads"],
        embed_dim=preset["width"],
        max_len=preset["context"],
    )


def _params(model, seq_len: int, seed: int):
    from rlhf_jax.training.state import init_variables

    return init_variables(model, seq_len, seed)[0]


def _compiled(fn, *args) -> tuple[Any, float]:
    """(compiled executable of jitted `fn` for `args`, compile seconds)."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - start


def _jax_stats(times, work, unit, compiled, compile_s, flops, peak) -> dict:
    stats = _summary(times, work, unit)
    stats["compile_s"] = compile_s
    # XLA's own account of the temporary buffers the program allocates besides its inputs and
    # outputs (activations, gradients, logits).
    stats["xla_temp_mib"] = compiled.memory_analysis().temp_size_in_bytes / 2**20
    stats["model_flops_per_s"] = flops / stats["median_s"]
    stats["fraction_of_matmul_peak"] = stats["model_flops_per_s"] / peak
    return stats


# ---------------------------------------------------------------------------------------------
# transformers/PyTorch side
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TorchSide:
    """Where the PyTorch baseline runs: `threads` intra-op threads (CPU) and `device` ("cpu" or
    "cuda"). On CUDA every timed call ends with a synchronize, so the wall clock holds the GPU
    work, and the peak allocated GPU memory of the timed calls is reported."""

    threads: int = 2
    device: str = "cpu"

    def tensor(self, array, dtype=None):
        import torch

        return torch.tensor(
            array, dtype=dtype, device=self.device
        )  # a copy: inputs may be read-only

    def timed(self, fn: Callable[[], object], repeats: int) -> Timings:
        if self.device == "cpu":
            return _timed(fn, repeats)
        import torch

        def synced():
            out = fn()
            torch.cuda.synchronize()
            return out

        synced()
        torch.cuda.reset_peak_memory_stats()
        times = _timed(synced, repeats)
        times.device_peak_mib = torch.cuda.max_memory_allocated() / 2**20
        return times

    def versions(self) -> dict:
        import torch
        import transformers

        return dict(
            threads=self.threads,
            device=self.device,
            version=torch.__version__,
            transformers=transformers.__version__,
        )


def resolve_torch_device(choice: str) -> str:
    """ "cpu" or "cuda" for --torch_device (auto: cuda when JAX runs on a GPU and torch sees one).

    Raises:
      ValueError: "cuda" asked for where torch sees no CUDA device.
    """
    import jax
    import torch

    if choice == "auto":
        return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--torch_device=cuda but torch sees no CUDA device.")
    return choice


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _torch_lm(cfg, params, side: TorchSide) -> Iterator[Any]:
    """A transformers causal LM with `params` (rlhf_jax CausalLM variables) on `side.device`, in
    eval mode."""
    import transformers

    from rlhf_jax.models import hf

    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp, cfg, params, bos_token_id=0, eos_token_id=0)
        yield transformers.AutoModelForCausalLM.from_pretrained(tmp).to(side.device).eval()


@contextlib.contextmanager
def _torch_scalar(cfg, params, side: TorchSide) -> Iterator[tuple[Any, Any]]:
    """(transformers base model, torch Linear head) holding a ScalarModel's variables."""
    import numpy as np
    import torch
    import transformers

    from rlhf_jax.models import hf

    decoder_only = {"params": {"decoder": params["params"]["decoder"]}}
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp, cfg, decoder_only, bos_token_id=0, eos_token_id=0)
        base = transformers.AutoModel.from_pretrained(tmp).to(side.device).eval()
    head = torch.nn.Linear(cfg.embed_dim, 1, device=side.device)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(np.asarray(params["params"]["head"]["kernel"]).T))
        head.bias.copy_(torch.from_numpy(np.asarray(params["params"]["head"]["bias"])))
    yield base, head


def _torch_response_logprobs(model, ids, prompt_len: int):
    """float32 [B, N] log-probs of the response tokens, and the logits that predicted them."""
    import torch

    logits = model(input_ids=ids).logits[:, prompt_len - 1 : -1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return torch.gather(logprobs, -1, ids[:, prompt_len:, None])[..., 0], logits


def _torch_values(base, head, ids, prompt_len: int):
    hidden = base(input_ids=ids).last_hidden_state
    return head(hidden[:, prompt_len - 1 : -1])[..., 0]


# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------


WEIGHT_DECAY = 0.01  # AdamW's decoupled weight decay on both sides (torch's default)


def _max_abs_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def _train_batch(preset: dict, rows: int) -> Any:
    """int32 [rows, context] random tokens (seed 0)."""
    import numpy as np

    shape = (rows, preset["context"])
    return np.random.default_rng(0).integers(0, preset["vocab"], shape, np.int32)


def _jit_library_step(forward, params, batch: dict, seed: int):
    """The library's SFT/RM step as the experiments run it: `make_train_step` with AdamW, jitted
    over a 1-device mesh with explicit shardings (`jit_train_step`). Returns (run: one step that
    carries the state on, compile seconds, the compiled executable)."""
    import jax
    import jax.numpy as jnp
    import optax

    from rlhf_jax import sharding
    from rlhf_jax.training import state as state_lib
    from rlhf_jax.training import steps

    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    replicated = jax.tree_util.tree_map(lambda _: sharding.replicated(mesh), params)
    shardings = state_lib.state_shardings(replicated, tx, params, mesh)
    own = jax.tree_util.tree_map(jnp.copy, params)  # the step donates its state; params live on
    state = sharding.put_on_mesh(state_lib.create_state(own, tx, seed), shardings)
    step = steps.jit_train_step(steps.make_train_step(forward, tx), mesh, shardings)
    batch = sharding.put_batch(batch, mesh)
    rng = jax.random.key(seed)
    compiled, compile_s = _compiled(step, state, batch, rng)
    holder = [state]

    def run():  # the state carries on from run to run, as in training
        holder[0], metrics = compiled(holder[0], batch, rng)
        jax.block_until_ready(holder[0])
        return jax.block_until_ready(metrics)

    return run, compile_s, compiled


def _sft_setup(preset: dict) -> tuple[Any, Any, dict]:
    """(a)'s (CausalLM, params, batch): `batch` rows of random tokens, the loss on the second
    half of each row (the "response")."""
    import numpy as np

    from rlhf_jax.models import CausalLM

    lm = CausalLM(_model_config(preset))
    tokens = _train_batch(preset, preset["batch"])
    loss_mask = np.zeros_like(tokens, bool)
    loss_mask[:, preset["context"] // 2 :] = True
    data = dict(tokens_bt=tokens, mask_bt=np.ones_like(loss_mask), loss_mask_bt=loss_mask)
    return lm, _params(lm, preset["context"], 0), data


def _reward_setup(preset: dict) -> tuple[Any, Any, dict]:
    """(b)'s (ScalarModel, params, batch): `batch` comparisons of two random responses, the
    first preferred."""
    import numpy as np

    from rlhf_jax.models import ScalarModel

    pairs, seq = preset["batch"], preset["context"]
    scalar = ScalarModel(_model_config(preset))
    tokens = _train_batch(preset, 2 * pairs).reshape(pairs, 2, seq)
    prefers = np.zeros((pairs, 2, 2), bool)
    prefers[:, 0, 1] = True  # response 0 preferred to response 1
    data = dict(tokens_bkt=tokens, mask_bkt=np.ones_like(tokens, bool), prefers_bkk=prefers)
    return scalar, _params(scalar, seq, 0), data


def bench_sft(preset: dict, repeats: int, side: TorchSide, with_torch: bool, peak: float):
    """(a): SFT tokens/s, one AdamW step on 16 sequences x 256 tokens, loss on the second half."""
    from rlhf_jax import losses
    from rlhf_jax.training import steps

    cfg = _model_config(preset)
    batch, seq = preset["batch"], preset["context"]
    lm, params, data = _sft_setup(preset)
    tokens, loss_mask = data["tokens_bt"], data["loss_mask_bt"]
    run, compile_s, compiled = _jit_library_step(steps.sft_forward(lm), params, data, 0)
    # The first two steps' losses (the second after one AdamW update), compared with torch's.
    first_losses = [float(losses.metrics_mean(run())["loss"]) for _ in range(2)]
    flops = 3 * forward_flops(cfg, batch, range(seq))  # forward + backward (~2x forward)
    result = {
        "workload": "a_sft_step",
        "unit": "trained tokens/s",
        "jax": _jax_stats(
            _timed(run, repeats), batch * seq, "tokens", compiled, compile_s, flops, peak
        ),
    }
    if with_torch:
        result["torch"], torch_losses = _torch_sft(cfg, params, tokens, loss_mask, repeats, side)
        result["loss_abs_diff_vs_torch"] = _max_abs_diff(first_losses, torch_losses)
    return result


@contextlib.contextmanager
def _torch_sft_loss(cfg, params, tokens, loss_mask, side: TorchSide) -> Iterator[tuple[Any, list]]:
    """(loss(), trained parameters) of (a) in transformers/PyTorch: a causal LM holding `params`,
    its mean NLL on the tokens `loss_mask` marks (labels -100 elsewhere)."""
    import torch

    ids = side.tensor(tokens, torch.long)
    labels = ids.masked_fill(~side.tensor(loss_mask), -100)  # -100: no loss there
    with _torch_lm(cfg, params, side) as model:
        model.train()  # dropout is 0 in the config
        yield (lambda: model(input_ids=ids, labels=labels).loss), list(model.parameters())


@contextlib.contextmanager
def _torch_pair_loss(cfg, params, tokens, side: TorchSide) -> Iterator[tuple[Any, list]]:
    """(loss(), trained parameters) of (b) in transformers/PyTorch: every response scored once,
    -log sigmoid(r_0 - r_1) averaged over the comparisons."""
    import torch

    pairs, _, seq = tokens.shape
    ids = side.tensor(tokens.reshape(2 * pairs, seq), torch.long)
    with _torch_scalar(cfg, params, side) as (base, head):
        base.train()  # dropout is 0 in the config
        head.bias.requires_grad_(False)  # as rlhf_jax: the bias is set after training

        def loss():
            rewards = head(base(input_ids=ids).last_hidden_state[:, -1])[:, 0].view(pairs, 2)
            return -torch.nn.functional.logsigmoid(rewards[:, 0] - rewards[:, 1]).mean()

        yield loss, [*base.parameters(), head.weight]


def _torch_train_step(loss_fn, parameters, repeats: int, side: TorchSide, work: float, unit: str):
    """(stats, losses of the first two steps) of `loss_fn` trained with AdamW: forward,
    `backward()`, `step()`, as a transformers training loop does."""
    import torch

    opt = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)

    def run():
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    first_losses = [run() for _ in range(2)]
    stats = _summary(side.timed(run, repeats), work, unit)
    return {**stats, **side.versions()}, first_losses


def _torch_sft(cfg, params, tokens, loss_mask, repeats: int, side: TorchSide):
    """((a) stats, losses of the first two steps) for the same step in transformers/PyTorch."""
    with _torch_sft_loss(cfg, params, tokens, loss_mask, side) as (loss_fn, trained):
        return _torch_train_step(loss_fn, trained, repeats, side, tokens.size, "tokens")


def bench_reward(preset: dict, repeats: int, side: TorchSide, with_torch: bool, peak: float):
    """(b): RM pairs/s, one AdamW step on 16 comparisons of two 256-token sequences, each scored
    once, pairwise loss -log sigmoid(r_w - r_l)."""
    from rlhf_jax import losses
    from rlhf_jax.training import steps

    cfg = _model_config(preset)
    pairs, seq = preset["batch"], preset["context"]
    scalar, params, data = _reward_setup(preset)
    tokens = data["tokens_bkt"]
    run, compile_s, compiled = _jit_library_step(steps.reward_forward(scalar), params, data, 0)
    first_losses = [float(losses.metrics_mean(run())["loss"]) for _ in range(2)]
    flops = 3 * forward_flops(cfg, 2 * pairs, range(seq), 0)
    result = {
        "workload": "b_reward_step",
        "unit": "pairs/s",
        "jax": _jax_stats(_timed(run, repeats), pairs, "pairs", compiled, compile_s, flops, peak),
    }
    if with_torch:
        result["torch"], torch_losses = _torch_reward(cfg, params, tokens, repeats, side)
        result["loss_abs_diff_vs_torch"] = _max_abs_diff(first_losses, torch_losses)
    return result


def _torch_reward(cfg, params, tokens, repeats: int, side: TorchSide):
    """((b) stats, losses of the first two steps) for the same step in transformers/PyTorch."""
    with _torch_pair_loss(cfg, params, tokens, side) as (loss_fn, trained):
        return _torch_train_step(loss_fn, trained, repeats, side, tokens.shape[0], "pairs")


def bench_generation(preset: dict, repeats: int, side: TorchSide, with_torch: bool, peak: float):
    """(c): new tokens/s of sampling 16 x 64 new tokens after 64-token prompts."""
    import jax
    import numpy as np

    from rlhf_jax.generation import SamplingConfig, make_sampler
    from rlhf_jax.models import CausalLM

    cfg = _model_config(preset)
    batch, prompt_len, new = preset["batch"], preset["prompt"], preset["new"]
    lm = CausalLM(cfg)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, prompt_len), np.int32)
    mask = np.ones_like(tokens, bool)
    params = _params(lm, prompt_len, 0)
    sampler = make_sampler(lm, SamplingConfig(new, temperature=1.0))
    rng = jax.random.key(1)
    compiled, compile_s = _compiled(sampler, params, tokens, mask, rng)
    tokens_dev, mask_dev = jax.device_put(tokens), jax.device_put(mask)
    run = lambda: compiled(params, tokens_dev, mask_dev, rng).response_tokens_bn.block_until_ready()
    out = compiled(params, tokens_dev, mask_dev, rng)
    assert bool(np.asarray(out.response_mask_bn).all()), "every row must produce all new tokens"
    flops = generation_flops(cfg, batch, prompt_len, new)
    result = {
        "workload": "c_generation",
        "unit": "new tokens/s",
        "jax": _jax_stats(
            _timed(run, repeats), batch * new, "tokens", compiled, compile_s, flops, peak
        ),
    }
    if with_torch:
        result["torch"] = _torch_generation(cfg, params, tokens, new, repeats, side)
    return result


def _torch_generation(cfg, params, tokens, new, repeats, side: TorchSide) -> dict:
    import torch

    with _torch_lm(cfg, params, side) as model:
        model.generation_config.eos_token_id = None  # never stop early: all tokens for every row
        input_ids = side.tensor(tokens, torch.long)
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

        stats = _summary(side.timed(run, repeats), tokens.shape[0] * new, "tokens")
    return {**stats, **side.versions()}


def _scoring_setup(preset: dict) -> dict:
    """Models, four sets of weights, and 16 x (64 + 64) token sequences."""
    import numpy as np

    from rlhf_jax.models import CausalLM, ScalarModel

    cfg = _model_config(preset)
    seq = preset["prompt"] + preset["new"]
    policy, scalar = CausalLM(cfg), ScalarModel(cfg)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (preset["batch"], seq), np.int32)
    return dict(
        cfg=cfg,
        policy=policy,
        scalar=scalar,
        params=dict(
            policy=_params(policy, seq, 0),
            reference=_params(policy, seq, 1),
            value=_params(scalar, seq, 2),
            reward=_params(scalar, seq, 3),
        ),
        tokens_bs=tokens,
    )


def _jax_scoring_fn(setup: dict, prompt_len: int):
    """Jitted (params, tokens_bs) -> (logprobs_bn, ref_logprobs_bn, values_bn, score_b)."""
    import jax
    import jax.numpy as jnp

    from rlhf_jax.rollout import response_logprobs, response_values, sequence_scores

    policy, scalar = setup["policy"], setup["scalar"]

    @jax.jit
    def score(params, tokens_bs):
        attention_bs = jnp.ones(tokens_bs.shape, bool)
        response_mask_bn = attention_bs[:, prompt_len:]
        logprobs_bn, _ = response_logprobs(
            policy, params["policy"], tokens_bs, attention_bs, prompt_len
        )
        ref_bn, _ = response_logprobs(
            policy, params["reference"], tokens_bs, attention_bs, prompt_len
        )
        values_bn = response_values(scalar, params["value"], tokens_bs, attention_bs, prompt_len)
        score_b = sequence_scores(
            scalar, params["reward"], tokens_bs, attention_bs, response_mask_bn
        )
        return logprobs_bn, ref_bn, values_bn, score_b

    return score


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

    setup = _scoring_setup(preset)
    prompt_len, (batch, seq) = preset["prompt"], setup["tokens_bs"].shape
    score = _jax_scoring_fn(setup, prompt_len)
    params, tokens = jax.device_put((setup["params"], setup["tokens_bs"]))
    compiled, compile_s = _compiled(score, params, tokens)
    run = lambda: jax.block_until_ready(compiled(params, tokens))  # noqa: E731
    flops = _scoring_flops(setup["cfg"], batch, seq, prompt_len)
    result = {
        "workload": "d_rollout_scoring",
        "unit": "sequences/s",
        "jax": _jax_stats(
            _timed(run, repeats), batch, "sequences", compiled, compile_s, flops, peak
        ),
    }
    if with_torch:
        result["torch"], torch_out = _torch_scoring(setup, prompt_len, repeats, side)
        # Same weights, same numbers: a benchmark of two different computations would mislead.
        jax_out = jax.device_get(compiled(params, tokens))
        result["max_abs_diff_vs_torch"] = max(
            float(abs(a - b.cpu().numpy()).max()) for a, b in zip(jax_out, torch_out, strict=True)
        )
    return result


def _torch_scoring(setup: dict, prompt_len: int, repeats: int, side: TorchSide):
    import torch

    cfg, params = setup["cfg"], setup["params"]
    ids = side.tensor(setup["tokens_bs"], torch.long)
    with (
        _torch_lm(cfg, params["policy"], side) as policy,
        _torch_lm(cfg, params["reference"], side) as reference,
        _torch_scalar(cfg, params["value"], side) as (value_base, value_head),
        _torch_scalar(cfg, params["reward"], side) as (reward_base, reward_head),
    ):

        def run():
            with torch.inference_mode():
                logprobs, _ = _torch_response_logprobs(policy, ids, prompt_len)
                ref_logprobs, _ = _torch_response_logprobs(reference, ids, prompt_len)
                values = _torch_values(value_base, value_head, ids, prompt_len)
                hidden = reward_base(input_ids=ids).last_hidden_state[:, -1]
                scores = reward_head(hidden)[:, 0]
            return logprobs, ref_logprobs, values, scores

        stats = _summary(side.timed(run, repeats), ids.shape[0], "sequences")
        outputs = run()
    return {**stats, **side.versions()}, outputs


def bench_ppo_update(preset: dict, repeats: int, side: TorchSide, with_torch: bool, peak: float):
    """(e): the PPO update over a rollout of 16 x (64 + 64): E epochs x M minibatches."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from rlhf_jax import ppo
    from rlhf_jax.rollout import Rollout

    setup = _scoring_setup(preset)
    cfg, params = setup["cfg"], setup["params"]
    prompt_len, (batch, seq) = preset["prompt"], setup["tokens_bs"].shape
    epochs, minibatches = preset["epochs"], preset["minibatches"]
    # The rollout's frozen statistics: the policy's own log-probs, the value model's values.
    logprobs, _, values, _ = jax.device_get(
        _jax_scoring_fn(setup, prompt_len)(params, setup["tokens_bs"])
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
    compiled, compile_s = _compiled(update, state[0], rollout, None, rng)

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
        "jax": _jax_stats(_timed(run, repeats), work, "tokens", compiled, compile_s, flops, peak),
    }
    if with_torch:
        result["torch"] = _torch_ppo_update(setup, data, preset, repeats, side)
    return result


def _torch_ppo_update(setup: dict, data: dict, preset: dict, repeats: int, side: TorchSide) -> dict:
    """The same update in plain PyTorch: GAE, then per minibatch one AdamW step of each model."""
    import torch

    torch.manual_seed(0)
    cfg, params, prompt_len = setup["cfg"], setup["params"], preset["prompt"]
    epochs, minibatches = preset["epochs"], preset["minibatches"]
    ids = side.tensor(data["tokens_bs"], torch.long)
    old_logprobs = side.tensor(data["logprobs_bn"])
    old_values = side.tensor(data["values_bn"])
    rewards = side.tensor(data["rewards_bn"])
    rows, steps = old_logprobs.shape
    with (
        _torch_lm(cfg, params["policy"], side) as policy,
        _torch_scalar(cfg, params["value"], side) as (value_base, value_head),
    ):
        value_params = [*value_base.parameters(), *value_head.parameters()]
        policy_opt = torch.optim.AdamW(policy.parameters(), lr=LEARNING_RATE)
        value_opt = torch.optim.AdamW(value_params, lr=LEARNING_RATE)

        def run():
            with torch.no_grad():  # GAE (gamma = 1) and whitening, once per rollout
                advantages = torch.zeros_like(rewards)
                last = torch.zeros(rows, device=side.device)
                for t in reversed(range(steps)):
                    next_value = old_values[:, t + 1] if t + 1 < steps else torch.zeros_like(last)
                    delta = rewards[:, t] + next_value - old_values[:, t]
                    last = delta + LAM * last
                    advantages[:, t] = last
                returns = advantages + old_values
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            for _ in range(epochs):
                for mb in torch.randperm(rows, device=side.device).chunk(minibatches):
                    logprobs, logits = _torch_response_logprobs(policy, ids[mb], prompt_len)
                    ratio = torch.exp(logprobs - old_logprobs[mb])
                    adv = advantages[mb]
                    clipped = torch.clamp(ratio, 1 - CLIP_EPS, 1 + CLIP_EPS)
                    loss = torch.maximum(-adv * ratio, -adv * clipped).mean()
                    with torch.no_grad():  # logged, as rlhf_jax does
                        probs = torch.softmax(logits, -1)
                        entropy = -(probs * torch.log_softmax(logits, -1)).sum(-1).mean()
                    policy_opt.zero_grad()
                    loss.backward()
                    policy_opt.step()

                    values = _torch_values(value_base, value_head, ids[mb], prompt_len)
                    old = old_values[mb]
                    values_clipped = old + torch.clamp(values - old, -VALUE_CLIP, VALUE_CLIP)
                    value_loss = (
                        0.5
                        * torch.maximum(
                            (values - returns[mb]) ** 2, (values_clipped - returns[mb]) ** 2
                        ).mean()
                    )
                    value_opt.zero_grad()
                    value_loss.backward()
                    value_opt.step()
            return float(entropy)

        policy.train()  # dropout is 0 in the config
        value_base.train()
        stats = _summary(side.timed(run, repeats), epochs * rows * ids.shape[1], "tokens")
    return {**stats, **side.versions()}


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
        jax_s = statistics.median(_timed(lambda: jitted(xj, wj).block_until_ready(), repeats))  # noqa: B023
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
    run, _, _ = _jit_library_step(forward, params, batch, 0)
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

    cfg = _model_config(preset)
    results = []
    lm, params, data = _sft_setup(preset)
    tokens, loss_mask = data["tokens_bt"], data["loss_mask_bt"]
    with _torch_sft_loss(cfg, params, tokens, loss_mask, side) as (loss_fn, trained):
        calls = {
            **_jax_phase_calls(steps.sft_forward(lm), params, data),
            **_torch_phase_calls(loss_fn, trained, side),
        }
        results.append(("a_sft_step", _interleaved_medians(calls, repeats)))
    scalar, params, data = _reward_setup(preset)
    with _torch_pair_loss(cfg, params, data["tokens_bkt"], side) as (loss_fn, trained):
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


def phases_table(results: list[dict]) -> str:
    """Markdown: per workload, the seconds of each phase on both sides and JAX's speed relative
    to PyTorch's (torch seconds / JAX seconds)."""
    lines = [
        "| workload | phase | rlhf_jax | PyTorch | JAX / PyTorch |",
        "| --- | --- | --- | --- | --- |",
    ]
    phases = {
        "forward": lambda s: s["forward_s"],
        "backward (gradients - forward)": lambda s: s["gradients_s"] - s["forward_s"],
        "rest of the step (step - gradients)": lambda s: s["step_s"] - s["gradients_s"],
        "whole step": lambda s: s["step_s"],
    }
    for r in results:
        for phase, seconds in phases.items():
            j, t = seconds(r["jax"]), seconds(r["torch"])
            lines.append(f"| {r['workload']} | {phase} | {j:.3g} s | {t:.3g} s | {t / j:.2f}x |")
    return "\n".join(lines)


WORKLOADS = {
    "a": bench_sft,
    "b": bench_reward,
    "c": bench_generation,
    "d": bench_scoring,
    "e": bench_ppo_update,
}


def _torch_side(threads: int, device: str) -> TorchSide:
    import torch

    torch.set_num_threads(threads)
    return TorchSide(threads=threads, device=resolve_torch_device(device))


def run_workloads(
    names: list[str],
    preset_name: str,
    repeats: int,
    threads: int,
    with_torch: bool,
    torch_device: str = "auto",
):
    """Yields one result dict per workload (the JSON lines `main` prints).

    On a GPU, JAX's float32 matmuls run at full float32 precision ("highest"; XLA would otherwise
    use TF32 there) because PyTorch's do by default: both sides compute the same numbers.
    """
    import jax

    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        raise ValueError(f"Unknown workloads {unknown}; choose from {sorted(WORKLOADS)}.")
    with_torch = with_torch and _torch_available()
    side = _torch_side(threads, torch_device) if with_torch else TorchSide(threads)
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


def _ratio(jax_over_torch: float, bold: bool = False) -> str:
    """A JAX / PyTorch speed ratio for a table, marked "(slower)" below 1."""
    text = f"{jax_over_torch:.2f}x"
    return (f"**{text}**" if bold else text) + (" (slower)" if jax_over_torch < 1 else "")


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MiB"


def markdown_table(results: list[dict]) -> str:
    """The README's benchmark table from result dicts (or JSON lines read back). Memory is the
    peak resident-memory growth during the timed runs (both sides), for rlhf_jax also the
    compiled program's temporary buffers as XLA counts them, and for PyTorch on CUDA its peak
    allocated GPU memory instead."""
    first = results[0]
    torch_info = first.get("torch")
    lines = [
        f"{first['date']}, {first['machine']}, {first['device']}, jax {first['jax_version']}"
        + (
            f", torch {torch_info['version']} on {torch_info.get('device', 'cpu')}"
            if torch_info
            else ""
        )
        + (f", XLA_FLAGS={first['xla_flags']!r}" if first.get("xla_flags") else ""),
        "",
        "| workload | unit | rlhf_jax median | run spread | compile | of fp32 matmul peak "
        "| memory: RSS growth (XLA temp) | PyTorch median | run spread | PyTorch memory "
        "| JAX / PyTorch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        j, t = r["jax"], r.get("torch")
        rate = next(k for k in j if k.endswith("_per_s") and k != "model_flops_per_s")
        row = [
            r["workload"],
            r["unit"],
            f"{j[rate]:,.0f}",
            f"{j['min_s']:.3g}-{j['max_s']:.3g} s",
            f"{j['compile_s']:.1f} s",
            f"{100 * j['fraction_of_matmul_peak']:.0f}%",
            f"{_mib(j.get('peak_rss_growth_mib'))} ({_mib(j.get('xla_temp_mib'))})",
        ]
        if t:
            row += [
                f"{t[rate]:,.0f}",
                f"{t['min_s']:.3g}-{t['max_s']:.3g} s",
                f"{_mib(t['device_peak_mib'])} GPU"
                if "device_peak_mib" in t
                else _mib(t.get("peak_rss_growth_mib")),
                _ratio(r["speedup_jax_over_torch"], bold=True),
            ]
        else:
            row += ["n/a"] * 4
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _read_jsonl(path: str) -> list[dict]:
    """Result dicts of a saved run (stdout: JSON lines, then possibly the printed table)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def ratio_table(paths: list[str]) -> str:
    """Markdown: one row per saved run (file name, date, machine, measured fp32 matmul rate) and
    its JAX / PyTorch ratio for every workload any of the runs has ("n/a" where it has none)."""
    runs = [(path, {r["workload"]: r for r in _read_jsonl(path)}) for path in paths]
    workloads = sorted({name for _, results in runs for name in results})
    lines = [
        "| run | date | machine | fp32 matmul rate | " + " | ".join(workloads) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in workloads) + " |",
    ]
    for path, results in runs:
        first = next(iter(results.values()))
        cells = [
            f"`{os.path.basename(path)}`",
            first["date"],
            first["machine"],
            f"{first['matmul_fp32_flops_per_s'] / 1e9:,.0f} GFLOP/s",
        ]
        for name in workloads:
            ratio = results.get(name, {}).get("speedup_jax_over_torch")
            cells.append("n/a" if ratio is None else _ratio(ratio))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Compile times are measured, so none may come out of a persistent cache (one named by
    # JAX_COMPILATION_CACHE_DIR, say).
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    if _FROM_JSONL.value:
        print(markdown_table(_read_jsonl(_FROM_JSONL.value)))
        return
    if _RATIOS.value:
        print(ratio_table(_RATIOS.value))
        return
    if _PHASES.value:
        preset = PRESETS[common.PRESET.value or "design"]
        side = _torch_side(_THREADS.value, _TORCH_DEVICE.value)
        results = bench_phases(preset, _REPEATS.value, side)
        for row in results:
            print(json.dumps(row), flush=True)
        print("\n" + phases_table(results))
        return
    if _MATMULS.value:
        preset = PRESETS[common.PRESET.value or "design"]
        side = _torch_side(_THREADS.value, _TORCH_DEVICE.value)
        for row in bench_matmuls(preset, _REPEATS.value, side):
            print(json.dumps(row), flush=True)
        return
    results = []
    for result in run_workloads(
        _WORKLOADS.value,
        common.PRESET.value or "design",
        _REPEATS.value,
        _THREADS.value,
        _TORCH.value,
        _TORCH_DEVICE.value,
    ):
        print(json.dumps(result, sort_keys=True), flush=True)
        results.append(result)
    if _TABLE.value:
        print("\n" + markdown_table(results))


if __name__ == "__main__":
    app.run(main)
