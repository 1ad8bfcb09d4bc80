r"""Benchmarks of the design notes' workloads (a)-(e), rlhf_jax beside transformers/PyTorch in
one run: the command line of `rlhf_jax.benchmarks`, whose docstring describes the workloads and
the JSON-line fields.

  python -m experiments.benchmark                      # the design-notes sizes, workloads a-e
  python -m experiments.benchmark --workloads=d,e      # a subset
  python -m experiments.benchmark --preset=tiny        # seconds; used by the tests
  python -m experiments.benchmark --from_jsonl=experiments/results/benchmark_cpu.jsonl  # table
  python -m experiments.benchmark --matmuls            # the body's matmul shapes, XLA vs torch
  python -m experiments.benchmark --ratios=RUN1.jsonl,RUN2.jsonl  # JAX / PyTorch ratios per run
  python -m experiments.benchmark --phases             # (a), (b): forward, backward, optimizer
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from experiments import cli
from rlhf_jax import benchmarks

_WORKLOADS = flags.DEFINE_list(
    "workloads",
    ["a", "b", "c", "d", "e"],
    "Workloads to run (of a, b, c, d, e; f, (a) with LoRA against peft, on the Llama-family "
    "presets smollm2 and tiny_llama).",
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


def main(argv):
    """Prints what the flags ask for: a saved run's table (--from_jsonl), the ratios of saved runs
    (--ratios), the phase split (--phases: JSON lines, then a table), the matmul rates
    (--matmuls: JSON lines), or else one JSON line per workload and then the markdown table."""
    del argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Compile times are measured, so none may come out of a persistent cache (one named by
    # JAX_COMPILATION_CACHE_DIR, say).
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    if _FROM_JSONL.value:
        print(benchmarks.markdown_table(benchmarks.read_jsonl(_FROM_JSONL.value)))
        return
    if _RATIOS.value:
        print(benchmarks.ratio_table(_RATIOS.value))
        return
    if _PHASES.value:
        preset = benchmarks.PRESETS[cli.PRESET.value or "design"]
        side = benchmarks.make_torch_side(_THREADS.value, _TORCH_DEVICE.value)
        results = benchmarks.bench_phases(preset, _REPEATS.value, side)
        for row in results:
            print(json.dumps(row), flush=True)
        print("\n" + benchmarks.phases_table(results))
        return
    if _MATMULS.value:
        preset = benchmarks.PRESETS[cli.PRESET.value or "design"]
        side = benchmarks.make_torch_side(_THREADS.value, _TORCH_DEVICE.value)
        for row in benchmarks.bench_matmuls(preset, _REPEATS.value, side):
            print(json.dumps(row), flush=True)
        return
    results = []
    for result in benchmarks.run_workloads(
        _WORKLOADS.value,
        cli.PRESET.value or "design",
        _REPEATS.value,
        _THREADS.value,
        _TORCH.value,
        _TORCH_DEVICE.value,
    ):
        print(json.dumps(result, sort_keys=True), flush=True)
        results.append(result)
    if _TABLE.value:
        print("\n" + benchmarks.markdown_table(results))


if __name__ == "__main__":
    app.run(main)
