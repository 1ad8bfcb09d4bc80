"""The InstructGPT recipe on the synthetic instruction world, stage by stage.

  from rlhf_jax.recipes import instructgpt

  config = instructgpt.get_config("smoke")            # or "default": the README's main job
  instructgpt.build_world(config, workdir)            # datasets + tokenizer
  instructgpt.pretrain(config, workdir)               # base models, one per size
  instructgpt.train_sft(config, workdir)              # SFT models
  instructgpt.sample_and_rank(config, workdir)        # K samples per prompt, ranked by a labeler
  instructgpt.train_reward_models(config, workdir)    # the RM and its accuracy per task family
  instructgpt.best_of_n(config, workdir)              # what reranking N samples gains
  instructgpt.train_policies(config, workdir)         # PPO and PPO-ptx
  instructgpt.evaluate(config, workdir)               # the gold labeler judges every model
  instructgpt.write_report(config, workdir)           # report.md, metrics.json, plots

or all of it at once: `instructgpt.run(config, workdir)`. Modules: `presets` (the configs),
`stage_configs` (each trainer's config in the job), `labeler_stages` (the stages that are not a
trainer: the world, ranking, RM accuracy per family, best-of-n, the gold labeler's evaluation),
`job` (running, skipping and timing stages) and `report` (report.md, metrics.json and plots).
"""

from rlhf_jax.recipes.instructgpt.job import (
    best_of_n,
    build_world,
    evaluate,
    pretrain,
    run,
    run_stages,
    sample_and_rank,
    stages,
    train_policies,
    train_reward_models,
    train_sft,
    write_report,
)
from rlhf_jax.recipes.instructgpt.presets import get_config, world_settings

__all__ = [
    "best_of_n",
    "build_world",
    "evaluate",
    "get_config",
    "pretrain",
    "run",
    "run_stages",
    "sample_and_rank",
    "stages",
    "train_policies",
    "train_reward_models",
    "train_sft",
    "world_settings",
    "write_report",
]
