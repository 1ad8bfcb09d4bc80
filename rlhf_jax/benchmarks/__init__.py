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
    (clipped value loss); one jitted call (`rlhf_jax.rl.ppo.make_ppo_update`) vs the same loop in
    torch.
(f) (a) with LoRA (Llama-family presets): rank-8 adapters on every projection trained, the base
    frozen; against transformers + peft holding the same base and adapters.

Presets other than the design sizes: "gpt2" (GPT-2 small), "smollm2" (SmolLM2-135M's Llama
shape: 30 layers, width 576, 9/3 heads, vocabulary 49,152; 16 x 128 tokens), "tiny" and
"tiny_llama" (the tests').

Each workload prints one JSON line: median, min and max of the timed runs after a warm-up run,
compile time, model FLOP/s as a fraction of the machine's measured fp32 matmul rate, peak memory
(growth of the process's peak RSS during the timed runs, on Linux; for rlhf_jax also the size of
the compiled program's temporary buffers), the torch figures and `speedup_jax_over_torch`.

  python -m experiments.benchmark                      # the design-notes sizes, workloads a-e
  python -m experiments.benchmark --workloads=d,e      # a subset
  python -m experiments.benchmark --preset=tiny        # seconds; used by the tests
  python -m experiments.benchmark --preset=smollm2 --workloads=a,f,c   # the 135M shape
  python -m experiments.benchmark --from_jsonl=experiments/results/benchmark_cpu.jsonl  # table
  python -m experiments.benchmark --matmuls            # the body's matmul shapes, XLA vs torch
  python -m experiments.benchmark --ratios=RUN1.jsonl,RUN2.jsonl  # JAX / PyTorch ratios per run
  python -m experiments.benchmark --phases             # (a), (b): forward, backward, optimizer

The package, one job a module (imports run downwards; torch and transformers are imported only
inside the functions that use them, never when the package is imported):

  workloads        the rlhf_jax side of (a)-(e), `run_workloads`; PRESETS
  probes           --matmuls and --phases: matmul shapes, the training steps phase by phase
  torch_baselines  the transformers/PyTorch side of every workload, `TorchSide`
  setups           models, weights and batches of both sides; the jitted library programs
  presets          the presets' sizes and the optimizer and PPO settings both sides use
  timing           timings, peak memory, compile times, FLOP counts, the host's description
  tables           markdown tables of results and of saved runs (standalone)
"""

from rlhf_jax.benchmarks.presets import PRESETS
from rlhf_jax.benchmarks.probes import bench_matmuls, bench_phases, matmul_shapes
from rlhf_jax.benchmarks.tables import markdown_table, phases_table, ratio_table, read_jsonl
from rlhf_jax.benchmarks.timing import (
    Timings,
    cpu_description,
    forward_flops,
    generation_flops,
    matmul_flops_per_s,
    timed,
)
from rlhf_jax.benchmarks.torch_baselines import (
    TorchSide,
    make_torch_side,
    resolve_torch_device,
    torch_available,
)
from rlhf_jax.benchmarks.workloads import WORKLOADS, run_workloads

__all__ = [
    "PRESETS",
    "WORKLOADS",
    "Timings",
    "TorchSide",
    "bench_matmuls",
    "bench_phases",
    "cpu_description",
    "forward_flops",
    "generation_flops",
    "make_torch_side",
    "markdown_table",
    "matmul_flops_per_s",
    "matmul_shapes",
    "phases_table",
    "ratio_table",
    "read_jsonl",
    "resolve_torch_device",
    "run_workloads",
    "timed",
    "torch_available",
]
