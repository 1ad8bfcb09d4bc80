r"""PPO and PPO-ptx (InstructGPT step 3): the SFT policy against the reward model.

  python -m experiments.ppo --config=experiments/configs/hh_tiny.py:ppo --workdir=/tmp/hh_ppo \
      --config.model.sft_dir=/tmp/hh_sft/model --config.model.reward_dir=/tmp/hh_rm/model
  # PPO-ptx: add --config.ppo.ptx_coef=1.0 (and --config.ppo.ptx_documents_per_row=4 to pack
  # its pretraining documents several to a row)

The policy and the frozen reference load from the SFT model (a transformers directory), the frozen
RM and the value model (initialised from it) from the reward run's export; with
--config.ppo.value_model=policy_head the value is a fresh head on the policy's backbone. Each
iteration is one fused rollout call and one update call (`rlhf_jax.rl.ppo.make_iteration`),
driven by the same loop as SFT/RM: progress bar, metrics (JSONL + TensorBoard + png), SIGTERM,
checkpoints of the whole PPOState (both models, both optimizers, the KL coefficient) and of the
prompt/ptx iterators; rerunning the command resumes. Every `train.eval_every` iterations the
policy answers the held-out prompts; their mean RM score and KL are logged and a table of samples
goes to workdir/samples.md.
The final policy is exported as a transformers directory (workdir/model).

With `model.lora.rank` > 0 the policy trains low-rank adapters only: the SFT weights are its
frozen base and, without the adapters, the reference policy (one copy of them); the export holds
the merged weights (workdir/model) and the adapters in PEFT's format (workdir/adapter).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from rlhf_jax import sharding
from rlhf_jax.data import pipeline
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.generation import SamplingConfig
from rlhf_jax.models import CausalLM, ScalarModel, ValueHead, hf
from rlhf_jax.rl import ppo
from rlhf_jax.rl import rollout as rollout_lib
from rlhf_jax.trainers import run, setup
from rlhf_jax.training import export, steps
from rlhf_jax.training import state as state_lib
from rlhf_jax.training.loop import LoopConfig, means, sum_metrics, train_loop
from rlhf_jax.world import gold_reward


def _load_models(config: ml_collections.ConfigDict):
    """(policy config, policy params, reward config, reward params) from the two exports."""
    sft_dir = setup.resolve_path(config.model.get("sft_dir"))
    reward_dir = setup.resolve_path(config.model.get("reward_dir"))
    if not sft_dir or not reward_dir:
        raise ValueError(
            "PPO needs --config.model.sft_dir (an experiments.sft workdir/model) and "
            "--config.model.reward_dir (an experiments.reward workdir/model)."
        )
    overrides = {**setup.model_overrides(config.model), "dropout_rate": 0.0}  # no dropout in RL
    policy_config, policy_params = hf.load_pretrained(sft_dir, **overrides)
    kind, reward_config, reward_params = export.load_model(reward_dir)
    if kind != "reward":
        raise ValueError(f"{reward_dir} holds a {kind!r} model, not a reward model.")
    reward_config = dataclasses.replace(reward_config, dropout_rate=0.0)
    return sft_dir, policy_config, policy_params, reward_config, reward_params


def _ptx_source(config, split: str):
    """The pretraining-data stand-in (`config.ptx.name`, default the prompt dataset) at `split`."""
    ptx_data = ml_collections.ConfigDict(config.data.to_dict())
    ptx_data.name = config.ptx.name or config.data.name
    return setup.open_split(ptx_data, split)


def _optimizer(config, learning_rate: float):
    # Each iteration takes epochs x minibatches optimizer steps.
    total = config.train.num_steps * config.ppo.epochs * config.ppo.minibatches
    return setup.make_optimizer(config.optim, learning_rate, total)


def _ppo_config(config) -> ppo.PPOConfig:
    p = config.ppo
    return ppo.PPOConfig(
        epochs=p.epochs,
        minibatches=p.minibatches,
        clip_eps=p.clip_eps,
        value_clip=p.value_clip,
        gamma=p.gamma,
        lam=p.lam,
        whiten_advantages=p.whiten_advantages,
        entropy_coef=p.entropy_coef,
        ptx_coef=p.ptx_coef,
        value_coef=p.get("value_coef", 0.1),
        temperature=p.temperature,
        advantage=p.get("advantage", "gae"),
        group_size=p.get("samples_per_prompt", 1),
        kl=ppo.KLConfig(
            kind=p.kl_kind, init_coef=p.kl_coef, target=p.kl_target, horizon=p.kl_horizon
        ),
    )


def _rollout_config(config, tokenizer: Tokenizer) -> rollout_lib.RolloutConfig:
    p = config.ppo
    return rollout_lib.RolloutConfig(
        SamplingConfig(
            max_new_tokens=p.max_new_tokens,
            temperature=p.temperature,
            eos_ids=(tokenizer.eos_id,),
            pad_id=tokenizer.pad_id,
        ),
        score_clip=p.score_clip or None,
        missing_eos_penalty=p.missing_eos_penalty if p.missing_eos_penalty else None,
    )


def _score_fn(config, reward_model: ScalarModel, tokenizer: Tokenizer):
    """The rollout's reward: the RM, or the world's gold labeler (`ppo.reward="gold"`)."""
    kind = config.ppo.get("reward", "model")
    if kind == "model":
        return reward_model
    if kind == "gold":
        if not config.data.name.startswith("instruction_world/"):
            raise ValueError(
                "ppo.reward='gold' judges with the instruction world's gold labeler, which only "
                f"reads that world's prompts; data.name is {config.data.name!r}."
            )
        return gold_reward.gold_score_fn(tokenizer)
    raise ValueError(f"ppo.reward must be 'model' or 'gold', got {kind!r}.")


def repeat_prompts(batch: dict[str, np.ndarray], samples: int) -> dict[str, np.ndarray]:
    """Each prompt row on `samples` consecutive rows (the leave-one-out groups). The per-row
    counts ("truncated_b", "skipped_b") stay on the first row of each group, so the loop's
    totals count prompts, not samples."""
    out = {}
    for key, x in batch.items():
        if key in ("truncated_b", "skipped_b"):
            out[key] = np.zeros((x.shape[0] * samples, *x.shape[1:]), x.dtype)
            out[key][::samples] = x
        else:
            out[key] = np.repeat(x, samples, axis=0)
    return out


def _ptx_rows(config, tokenizer: Tokenizer, ptx_source) -> tuple[Any, Any, dict]:
    """(ptx rows, their transform, a summary of the packing): one padded row per document, or
    with `ppo.ptx_documents_per_row` > 1 whole documents packed up to that many to a row of
    `ppo.ptx_row_len` tokens (default max_len), each attending to itself, so every token has the
    loss it has in its own row (`ppo.ptx_batch_size` then counts rows)."""
    spec = setup.sequence_spec(config.data)
    per_row = config.ppo.get("ptx_documents_per_row", 1)
    if per_row < 1:
        raise ValueError(f"ppo.ptx_documents_per_row must be >= 1, got {per_row}.")
    if per_row == 1:
        return ptx_source, pipeline.TokenizeDemonstration(tokenizer, spec, loss_on_prompt=True), {}
    row_len = config.ppo.get("ptx_row_len", 0) or spec.max_len
    return setup.packed_demonstration_rows(
        ptx_source, tokenizer, spec, row_len, per_row, config.seed + 1, loss_on_prompt=True
    )


def _datasets(config, tokenizer: Tokenizer, prompt_source, ptx_rows, ptx_transform):
    """One grain dataset of iteration batches: prompts (+ "ptx_..." pretraining rows)."""
    prompts = pipeline.make_dataset(
        prompt_source,
        pipeline.TokenizePrompt(tokenizer, config.data.max_prompt_len),
        batch_size=config.train.batch_size,
        seed=config.seed,
    )
    samples = config.ppo.get("samples_per_prompt", 1)
    if samples > 1:
        prompts = prompts.map(lambda batch: repeat_prompts(batch, samples))
    if ptx_rows is None:
        return prompts
    ptx = pipeline.make_dataset(
        ptx_rows,
        ptx_transform,
        batch_size=config.ppo.ptx_batch_size,
        seed=config.seed + 1,
    )
    return prompts.map_with_index(
        lambda i, batch: {**batch, **{f"ptx_{k}": v for k, v in ptx[i].items()}}
    )


def write_samples(path: str, title: str, prompts, responses, scores) -> None:
    """Appends a markdown table of held-out samples under the heading `title`."""
    cell = lambda text: text.replace("|", "\\|").replace("\n", " ")[-300:]  # noqa: E731
    lines = [
        f"\n## {title}\n",
        "| prompt (end) | response | score |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {cell(p)} | {cell(r)} | {s:.3f} |"
        for p, r, s in zip(prompts, responses, scores, strict=True)
    ]
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")


def warn_on_negative_kl(kl_per_response: float, where: str) -> None:
    message = ppo.negative_kl_warning(kl_per_response)
    if message:
        logging.warning("%s: %s", where, message)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains and exports; returns the summary dict."""
    workdir = os.path.abspath(workdir)
    setup.write_config(config, workdir)
    sft_dir, policy_config, policy_params, reward_config, reward_params = _load_models(config)
    tokenizer = Tokenizer.from_pretrained(sft_dir, **setup.tokenizer_options(config))
    if setup.is_chief():
        tokenizer.save_pretrained(os.path.join(workdir, "tokenizer"))
    prompt_source = setup.open_split(config.data, config.data.train_split)
    eval_source = setup.open_split(config.data, config.data.eval_split)
    ptx_rows, ptx_transform, ptx_packing = None, None, {}
    if config.ppo.ptx_coef > 0:
        ptx_rows, ptx_transform, ptx_packing = _ptx_rows(
            config, tokenizer, _ptx_source(config, config.ptx.split)
        )

    lora_config = setup.lora_config(config.model)
    if lora_config is not None:
        policy_config = policy_config.replace(lora=lora_config)
    policy, reward_model = CausalLM(policy_config), ScalarModel(reward_config)
    fresh_policy, policy_specs = state_lib.init_variables(policy, 8, config.seed)
    _, reward_specs = state_lib.init_variables(reward_model, 8, config.seed)
    value_kind = config.ppo.get("value_model", "reward")
    if value_kind == "reward":  # a separate value model, a copy of the RM (InstructGPT's choice)
        value, value_params, value_specs = reward_model, reward_params, reward_specs
    elif value_kind == "policy_head":  # a fresh head on the policy's hidden states
        value = ValueHead(policy_config.replace(lora=None))
        value_params, value_specs = state_lib.init_variables(value, 8, config.seed + 2)
    else:
        raise ValueError(f"ppo.value_model must be 'reward' or 'policy_head', got {value_kind!r}.")
    mesh = sharding.mesh_from_config(config.mesh)
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    samples = config.ppo.get("samples_per_prompt", 1)
    for name, rows in (
        ("train.batch_size x ppo.samples_per_prompt", config.train.batch_size * samples),
        ("ppo.ptx_batch_size", config.ppo.ptx_batch_size),
    ):
        if rows % (ways * config.ppo.minibatches):
            raise ValueError(
                f"{name}={rows} must be a multiple of data x fsdp ({ways}) x ppo.minibatches "
                f"({config.ppo.minibatches})."
            )
    # Under LoRA the SFT weights are the policy's frozen base and, without the adapters, the
    # reference: one copy of them, an argument of both compiled programs.
    policy_frozen = policy_frozen_sh = None
    if lora_config is not None:
        policy_frozen_sh = sharding.logical_shardings(
            {"params": policy_specs["params"]}, mesh, shapes=policy_params
        )
        policy_frozen = sharding.put_on_mesh(policy_params, policy_frozen_sh)
        policy_params = {"lora": fresh_policy["lora"]}
        policy_specs = {"lora": policy_specs["lora"]}
    policy_sh = sharding.logical_shardings(policy_specs, mesh, shapes=policy_params)
    reward_sh = sharding.logical_shardings(reward_specs, mesh, shapes=reward_params)
    value_sh = sharding.logical_shardings(value_specs, mesh, shapes=value_params)
    policy_tx = _optimizer(config, config.optim.learning_rate)
    value_tx = _optimizer(config, config.optim.value_learning_rate)
    ppo_config = _ppo_config(config)
    state_sh = ppo.ppo_state_shardings(
        state_lib.state_shardings(policy_sh, policy_tx, policy_params, mesh),
        state_lib.state_shardings(value_sh, value_tx, value_params, mesh),
        mesh,
    )
    state = sharding.put_on_mesh(
        ppo.create_ppo_state(
            policy_params, value_params, policy_tx, value_tx, ppo_config.kl, config.seed
        ),
        state_sh,
    )
    # Own buffers for the frozen models: the update donates the state's, which may alias them.
    copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)  # noqa: E731
    # The policy before PPO: the SFT weights, or under LoRA the fresh (zero) adapters on them.
    initial_policy = copy(sharding.put_on_mesh(policy_params, policy_sh))
    reference, reference_sh = initial_policy, policy_sh
    if policy_frozen is not None:
        reference, reference_sh = policy_frozen, policy_frozen_sh
    # What the policy model reads: its trained params, with the frozen base under LoRA.
    full_policy_sh = steps.model_variables(policy_sh, policy_frozen_sh)
    policy_variables = functools.partial(steps.model_variables, frozen=policy_frozen)

    reward = copy(sharding.put_on_mesh(reward_params, reward_sh))
    # Evaluation reads no values, but the rollout needs some: the initial value variables.
    eval_value = copy(sharding.put_on_mesh(value_params, value_sh))

    models = rollout_lib.RolloutModels(
        policy=policy, value=value, reward=_score_fn(config, reward_model, tokenizer)
    )
    rollout_config = _rollout_config(config, tokenizer)
    rollout_fn = rollout_lib.make_rollout(
        models,
        rollout_config,
        mesh=mesh,
        param_shardings=rollout_lib.RolloutParams(
            full_policy_sh, reference_sh, value_sh, reward_sh
        ),
    )
    update = ppo.make_ppo_update(policy, value, policy_tx, value_tx, ppo_config)
    update_fn = ppo.jit_ppo_update(
        update,
        mesh,
        state_sh,
        policy_frozen=policy_frozen,
        policy_frozen_shardings=policy_frozen_sh,
    )
    step = ppo.make_iteration(
        rollout_fn, update_fn, reference, reward, timed=True, policy_frozen=policy_frozen
    )

    train_data = _datasets(config, tokenizer, prompt_source, ptx_rows, ptx_transform)
    train_iter = iter(train_data.to_iter_dataset())
    state, checkpointer, writer, _ = run.resume_or_start(
        config, workdir, state, state_sh, train_iter
    )

    eval_batches = list(
        pipeline.make_dataset(
            eval_source,
            pipeline.TokenizePrompt(tokenizer, config.data.max_prompt_len),
            batch_size=config.train.batch_size,
            seed=config.seed,
            shuffle=False,
            num_epochs=1,
            drop_remainder=True,
        )
    )[: config.ppo.eval_batches]
    if not eval_batches:
        raise ValueError(
            f"The eval split has fewer prompts than train.batch_size={config.train.batch_size}."
        )
    # The alignment tax: NLL of every token of held-out "pretraining" text under the policy.
    pretrain_nll = run.make_evaluate(
        steps.sft_forward(policy),
        mesh,
        full_policy_sh,
        run.eval_batches(
            _ptx_source(config, config.ptx.get("eval_split") or config.data.eval_split),
            pipeline.TokenizeDemonstration(
                tokenizer, setup.sequence_spec(config.data), loss_on_prompt=True
            ),
            config.ppo.ptx_batch_size,
            config.seed,
        ),
    )
    samples_path = os.path.join(workdir, "samples.md")
    eval_kl_coef = jnp.float32(config.ppo.kl_coef)  # shapes rewards only; eval reports the KL
    evaluations = [0]

    def evaluate(policy_params, label: str = "") -> dict[str, float]:
        """Held-out prompts: mean RM score, KL and length at a fixed sampling key, and the
        held-out pretraining NLL."""
        totals, table = None, None
        params = rollout_lib.RolloutParams(
            policy_variables(policy_params), reference, eval_value, reward
        )
        for i, batch in enumerate(eval_batches):
            placed = pipeline.to_global_arrays(batch, mesh)
            out = rollout_fn(
                params, placed["tokens_bp"], placed["mask_bp"], eval_kl_coef, jax.random.key(i)
            )
            totals = sum_metrics(totals, rollout_lib.rollout_metrics(out))
            if table is None:
                table = jax.device_get((out.tokens_bs, out.response_mask_bn, out.raw_score_b))
        evaluations[0] += 1
        if setup.is_chief():
            tokens, mask, scores = table
            rows = min(config.ppo.sample_rows, len(scores))
            prompt_len = tokens.shape[1] - mask.shape[1]
            prompt_mask = eval_batches[0]["mask_bp"]
            prompts = [
                tokenizer.decode(tokens[i, :prompt_len][prompt_mask[i]]) for i in range(rows)
            ]
            responses = [tokenizer.decode(tokens[i, prompt_len:][mask[i]]) for i in range(rows)]
            title = label or f"evaluation {evaluations[0]}"
            write_samples(samples_path, title, prompts, responses, scores[:rows])
        result = means(totals)
        result["pretrain_nll"] = pretrain_nll(policy_variables(policy_params))["nll"]
        warn_on_negative_kl(result["kl"], "held-out")
        return result

    initial = evaluate(initial_policy, label="the SFT policy (before PPO)")

    def place_batch(batch: dict) -> dict:
        """Prompts and ptx rows have their own batch sizes: placed as two batches."""
        ptx = {k: v for k, v in batch.items() if k.startswith("ptx_")}
        prompts = {k: v for k, v in batch.items() if k not in ptx}
        placed = pipeline.to_global_arrays(prompts, mesh)
        return {**placed, **(pipeline.to_global_arrays(ptx, mesh) if ptx else {})}

    started = time.perf_counter()
    result = train_loop(
        state=state,
        train_step=step,
        train_iter=train_iter,
        place_batch=place_batch,
        config=LoopConfig(
            num_steps=config.train.num_steps,
            log_every=config.train.log_every,
            eval_every=config.train.eval_every,
            checkpoint_every=config.train.checkpoint_every,
            max_nonfinite=config.train.max_nonfinite,
        ),
        checkpointer=checkpointer,
        writer=writer,
        evaluate=evaluate,
        meta={"seed": config.seed},
        on_log=lambda step, train: warn_on_negative_kl(train["rollout/kl"], f"step {step}"),
    )
    train_wall_s = time.perf_counter() - started  # the iterations, compiling and evaluations
    summary = {
        "experiment": "ppo",
        "iteration": int(result.state.step),
        "preempted": result.preempted,
        "ptx_coef": config.ppo.ptx_coef,
        "train_score": result.last_train.get("rollout/score"),
        "train_kl": result.last_train.get("rollout/kl"),
        "kl_coef": float(result.state.kl_coef),
        "eval_score": result.last_eval.get("score_raw"),
        "eval_kl": result.last_eval.get("kl"),
        "eval_response_length": result.last_eval.get("response_length"),
        "eval_duplicate_rate": result.last_eval.get("duplicate_rate"),
        "sft_eval_score": initial["score_raw"],
        "sft_eval_duplicate_rate": initial["duplicate_rate"],
        "eval_pretrain_nll": result.last_eval.get("pretrain_nll"),
        "sft_eval_pretrain_nll": initial["pretrain_nll"],
        "value_model": value_kind,
        "ptx_nll": result.last_train.get("ptx/nll"),
        **{f"ptx_{k}": v for k, v in ptx_packing.items()},
        "generated_tokens_per_s": result.last_train.get("generated_tokens_per_s"),
        "train_wall_s": train_wall_s,
    }
    if not result.preempted:
        run.export_trained_lm(
            workdir,
            policy_config,
            result.state.policy.params,
            tokenizer,
            frozen=policy_frozen,
            base_name=config.model.get("sft_dir", ""),
        )
    checkpointer.close()
    run.finish(
        workdir, writer, summary, ("train/rollout/score", "train/rollout/kl", "eval/score_raw")
    )
    return summary
