"""The trainers' configs for each training stage of the InstructGPT recipe: the defaults of
`rlhf_jax.trainers.config` with the world's datasets (under workdir/tfds), the recipe config's
sizes and schedules, and the paths of the models the earlier stages made in the workdir.
"""

from __future__ import annotations

import os

import ml_collections

from rlhf_jax.recipes.instructgpt import presets
from rlhf_jax.trainers.config import base_config, default_config


def world_data(
    config, workdir: str, part: str, train: str, eval_: str
) -> ml_collections.ConfigDict:
    data = base_config().data
    data.update(
        name=f"instruction_world/{part}",
        manual_dir="",
        data_dir=os.path.join(workdir, "tfds"),
        skip_bad_records=False,
        train_split=train,
        eval_split=eval_,
        max_len=config.max_len,
        max_prompt_len=config.max_prompt_len,
        max_responses=config.rank.k_max,
        overlong="truncate",
    )
    data.world = ml_collections.ConfigDict(
        dict(seed=config.world.seed, sizes=config.world.sizes.to_dict())
    )
    if changed := presets.world_settings(config):  # only those, so datasets keep their names
        data.world.world = changed
    return data


def _set_schedule(stage, config, steps_, batch_size: int, learning_rate: float) -> None:
    stage.seed = config.seed
    stage.optim.update(learning_rate=learning_rate, warmup_steps=max(1, steps_ // 20))
    stage.train.update(
        batch_size=batch_size,
        num_steps=steps_,
        log_every=max(1, min(10, steps_ // 5)),
        eval_every=steps_,
        checkpoint_every=max(1, steps_ // 2),
        keep_checkpoints=1,
    )


def pretrain_config(config, workdir: str, size: str) -> ml_collections.ConfigDict:
    c = default_config("sft")
    c.data = world_data(config, workdir, "pretrain", "train", "validation")
    c.data.pack_documents = config.pretrain.get("pack_documents", False)
    c.data.documents_per_row = config.pretrain.get("documents_per_row", 1)
    c.tokenizer.path = os.path.join(workdir, "world", "tokenizer")
    c.model.update(init="scratch", max_len=config.max_len, dropout_rate=0.0, **config.models[size])
    _set_schedule(
        c,
        config,
        config.pretrain.steps[size],
        config.pretrain.batch_size,
        config.pretrain.learning_rate,
    )
    return c


def sft_config(config, workdir: str, size: str) -> ml_collections.ConfigDict:
    c = default_config("sft")
    c.data = world_data(config, workdir, "sft", "train", "validation")
    c.data.documents_per_row = config.sft.get("documents_per_row", 1)
    base = os.path.join(workdir, f"pretrain_{size}", "model")
    c.tokenizer.path = base
    c.model.update(init="pretrained", name_or_path=base, max_len=config.max_len, dropout_rate=0.0)
    _set_schedule(
        c, config, config.sft.steps[size], config.sft.batch_size, config.sft.learning_rate
    )
    return c


def reward_config(config, workdir: str) -> ml_collections.ConfigDict:
    c = default_config("reward")
    c.data = world_data(config, workdir, "sft", "train", "heldout")
    c.data.update(
        name="jsonl/world_rankings",
        jsonl_kind="comparisons",
        shared_prompt_row_len=config.rm.get("shared_prompt_row_len", 0),
        comparisons_per_row=config.rm.get("comparisons_per_row", 1),
    )
    c.data.jsonl_files = ml_collections.ConfigDict(
        {s: os.path.join(workdir, "rank", f"{s}.jsonl") for s in ("train", "heldout")}
    )
    # The paper used one 6B RM for every policy size: `rm.sft_size` picks the SFT model it starts
    # from (the PPO policy is always the small SFT model).
    sft_dir = os.path.join(workdir, f"sft_{config.rm.sft_size}", "model")
    c.model.update(sft_dir=sft_dir, dropout_rate=0.0)
    # Normalisation: the labelers' demonstrations score mean 0, as in the paper.
    c.reward.update(reference_name="instruction_world/sft", reference_split="train")
    _set_schedule(c, config, config.rm.steps, config.rm.batch_size, config.rm.learning_rate)
    return c


def ppo_config(config, workdir: str, ptx: bool) -> ml_collections.ConfigDict:
    c = default_config("ppo")
    c.data = world_data(config, workdir, "prompts", "ppo", "test")
    c.model.update(
        sft_dir=os.path.join(workdir, "sft_small", "model"),
        reward_dir=os.path.join(workdir, "rm", "model"),
    )
    p = config.ppo
    c.optim.update(learning_rate=p.learning_rate, value_learning_rate=p.value_learning_rate)
    c.ppo.update(
        epochs=p.epochs,
        minibatches=p.minibatches,
        ptx_coef=p.ptx_coef if ptx else 0.0,
        ptx_batch_size=p.ptx_batch_size,
        ptx_documents_per_row=p.get("ptx_documents_per_row", 1),
        max_new_tokens=config.max_new_tokens,
        kl_coef=p.kl_coef,
        eval_batches=1,
        value_model=p.value_model,
        reward=p.reward,
        advantage=p.advantage,
        samples_per_prompt=p.samples_per_prompt,
        temperature=p.temperature,
    )
    c.ptx.update(name="instruction_world/pretrain", split="train", eval_split="validation")
    _set_schedule(c, config, p.iterations, p.batch_size, p.learning_rate)
    c.optim.warmup_steps = 1
    c.train.log_every = max(1, min(5, p.iterations // 4))
    return c
