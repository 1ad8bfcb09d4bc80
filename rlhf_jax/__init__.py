"""rlhf_jax: InstructGPT-style RLHF in JAX/Flax.

The package is a house of floors; each imports only the floors below it (docs/architecture.md):

  recipes/     whole jobs as callable stages (the InstructGPT main job, its report and plots)
  trainers/    one `train_and_evaluate(config, workdir)` per stage, and the run machinery
  benchmarks/  the speed workloads beside their PyTorch baselines, probes and tables
  world/       the synthetic instruction world, its gold labeler and its TFDS builder
  data/        tokenizers, records, dataset builders, grain pipelines, packing
  rl/          the fused rollout and the PPO update programs
  training/, generation.py, sharding.py, compilation_cache.py
               train state, pure step factories, checkpoints, metrics; sampling; the mesh
  losses.py, models/
               pure math: losses; decoders, heads, LoRA; transformers, GGUF and PEFT formats

This module is the public surface; the submodules hold the rest.
"""

from rlhf_jax import losses, sharding
from rlhf_jax.data import PromptBatch, Tokenizer, train_bpe_tokenizer
from rlhf_jax.generation import (
    GenerationOutput,
    SamplingConfig,
    check_prompts,
    make_sampler,
    sample,
)
from rlhf_jax.models import CausalLM, KVCache, ScalarModel, TransformerConfig, hf

__all__ = [
    "CausalLM",
    "GenerationOutput",
    "KVCache",
    "PromptBatch",
    "SamplingConfig",
    "ScalarModel",
    "Tokenizer",
    "TransformerConfig",
    "check_prompts",
    "hf",
    "losses",
    "make_sampler",
    "sample",
    "sharding",
    "train_bpe_tokenizer",
]
