r"""Reward-model training (InstructGPT step 2): K-wise ranking loss over all labelled pairs.

  python -m experiments.reward --config=experiments/configs/hh_tiny.py:reward --workdir=/tmp/rm \
      [--config.model.sft_dir=/tmp/sft/model]

The model is a scalar head on the SFT backbone (LM head dropped) when model.sft_dir is set, else a
from-scratch decoder. Each response of a prompt is scored once per step. After training, the head's
bias is shifted so that the reference responses score mean 0, and the held-out pairwise accuracy
is reported with two 95% intervals: Wilson over pairs, and a bootstrap over prompts (pairs of one
prompt are not independent when K > 2).

Layouts (all score every response exactly alike): one padded row per response (default); with
data.shared_prompt_row_len=L, one row of L tokens per comparison, the prompt once and then every
response; with data.comparisons_per_row=N as well, up to N whole comparisons per row (packed
best-fit; train.batch_size then counts rows).
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from rlhf_jax import losses
from rlhf_jax.data import packing, pipeline
from rlhf_jax.models import ScalarModel, hf
from rlhf_jax.trainers import run, setup
from rlhf_jax.training import export, reward, stats, steps
from rlhf_jax.training import state as state_lib


def _model_and_params(config, tokenizer_vocab: int):
    """(model config, ScalarModel, params, logical specs): from the SFT model or from scratch."""
    sft_dir = setup.resolve_path(config.model.get("sft_dir"))
    if sft_dir:
        model_config, lm_params = hf.load_pretrained(sft_dir, **setup.model_overrides(config.model))
        model = ScalarModel(model_config)
        fresh, specs = state_lib.init_variables(model, 8, config.seed)
        return model_config, model, reward.reward_params_from_lm(lm_params, fresh), specs
    model_config = setup.scratch_model_config(config.model, tokenizer_vocab)
    model = ScalarModel(model_config)
    params, specs = state_lib.init_variables(model, config.data.max_len, config.seed)
    return model_config, model, params, specs


def heldout_pairwise_accuracy(score_fn, params, batches, mesh) -> dict:
    """Scores every held-out response once and counts correct strict pairs per prompt."""
    correct, pairs = [], []
    for batch in batches:
        placed = pipeline.to_global_arrays(batch, mesh)
        scores_bk = np.asarray(setup.to_host(score_fn(params, placed)))
        prefers_bkk = steps.comparison_prefers(batch)
        margin_bkk = scores_bk[:, :, None] - scores_bk[:, None, :]
        correct.extend(np.sum((margin_bkk > 0) & prefers_bkk, axis=(1, 2)).tolist())
        pairs.extend(np.sum(prefers_bkk, axis=(1, 2)).tolist())
    correct, pairs = np.asarray(correct), np.asarray(pairs)
    keep = pairs > 0
    correct, pairs = correct[keep], pairs[keep]
    accuracy = correct.sum() / pairs.sum()
    wilson = stats.wilson_interval(int(correct.sum()), int(pairs.sum()))
    boot = stats.cluster_bootstrap_interval(correct, pairs, seed=0)
    return {
        "heldout_pairwise_accuracy": float(accuracy),
        "heldout_accuracy_wilson95": list(wilson),
        "heldout_accuracy_prompt_bootstrap95": list(boot),
        "heldout_pairs": int(pairs.sum()),
        "heldout_prompts": int(len(pairs)),
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    if setup.lora_config(config.model) is not None:
        raise ValueError(
            "model.lora.rank > 0: the reward trainer trains every weight so far (LoRA is in the "
            "SFT and PPO trainers); set model.lora.rank=0."
        )
    workdir = os.path.abspath(workdir)
    setup.write_config(config, workdir)
    train_source = setup.open_split(config.data, config.data.train_split)
    eval_source = setup.open_split(config.data, config.data.eval_split)
    if config.model.get("sft_dir") and not config.tokenizer.get("path"):
        config.tokenizer.path = config.model.sft_dir  # the SFT run saved its tokenizer there
    tokenizer = setup.load_tokenizer(config, workdir, lambda: setup.record_texts(train_source))
    model_config, model, params, specs = _model_and_params(config, tokenizer.vocab_size)

    spec = setup.sequence_spec(config.data)
    row_len = config.data.get("shared_prompt_row_len", 0)
    per_row = config.data.get("comparisons_per_row", 1)
    if per_row < 1:
        raise ValueError(f"data.comparisons_per_row must be >= 1, got {per_row}.")
    train_rows, eval_rows, packing_summary = train_source, eval_source, {}
    if row_len and per_row > 1:
        transform = pipeline.TokenizeComparisonRow(tokenizer, spec, row_len, per_row)
        train_rows, eval_rows = (
            packing.pack_comparisons(source, tokenizer, spec, row_len, per_row, config.seed)
            for source in (train_source, eval_source)
        )
        packing_summary = {
            "comparisons_per_row": train_rows.per_row,
            "train_rows": len(train_rows),
            "row_fill": train_rows.fill,
        }
        print(
            f"Packed {train_rows.count} comparisons into {len(train_rows)} rows of "
            f"{row_len} tokens ({packing_summary['comparisons_per_row']:.2f} per row, "
            f"{100 * train_rows.fill:.0f}% of the slots filled).",
            flush=True,
        )
    elif row_len:
        transform = pipeline.TokenizeComparisonSharedPrompt(tokenizer, spec, row_len)
    else:
        if per_row > 1:
            raise ValueError("comparisons_per_row > 1 needs shared_prompt_row_len > 0.")
        transform = pipeline.TokenizeComparison(tokenizer, spec)
    train_dataset = pipeline.make_dataset(
        train_rows, transform, batch_size=config.train.batch_size, seed=config.seed
    )
    forward = steps.reward_forward(model, losses.LOSSES[config.loss])
    run_ = run.prepare_run(
        config=config,
        workdir=workdir,
        params=params,
        logical_specs=specs,
        forward=forward,
        train_dataset=train_dataset,
    )
    mesh = run_.mesh
    eval_data = run.eval_batches(eval_rows, transform, config.train.batch_size, config.seed)
    evaluate = run.make_evaluate(forward, run_.mesh, run_.param_shardings, eval_data)

    def tokens(batch):
        return int(np.sum(batch["mask_bkt" if "mask_bkt" in batch else "mask_bt"]))

    started = time.perf_counter()
    result = run.train(run_, config, evaluate=evaluate, tokens_in_batch=tokens)
    train_wall_s = time.perf_counter() - started  # the steps, compiling and evaluations
    summary = {
        "experiment": "reward",
        "step": int(result.state.step),
        "preempted": result.preempted,
        "train_loss": result.last_train.get("loss"),
        "eval_loss": result.last_eval.get("loss"),
        "train_comparisons": len(train_source),
        "eval_comparisons": len(eval_source),
        **packing_summary,
        "train_wall_s": train_wall_s,
    }
    if not result.preempted:
        params = result.state.params
        score_fn = jax.jit(lambda p, b: steps.comparison_scores(model, p, b))
        summary.update(heldout_pairwise_accuracy(score_fn, params, eval_data, mesh))
        # The paper's normalisation: reference responses score mean 0 (bias stored in params).
        reference_name = config.reward.get("reference_name") or config.data.name
        reference_data = ml_collections.ConfigDict(config.data.to_dict())
        reference_data.name = reference_name
        reference_source = setup.open_split(reference_data, config.reward.reference_split)
        reference_batches = run.eval_batches(
            reference_source,
            pipeline.TokenizeDemonstration(tokenizer, spec),
            config.train.batch_size,
            config.seed,
        )
        scorer = jax.jit(reward.make_demonstration_scorer(model))
        placed = (pipeline.to_global_arrays(b, mesh) for b in reference_batches)
        mean_before = reward.mean_reference_reward(scorer, params, placed)
        params = reward.shift_reward_bias(params, mean_before)
        summary["reference_mean_reward_before_normalisation"] = mean_before
        summary["reference_responses"] = len(reference_source)
        host_params = setup.to_host(params)
        if setup.is_chief():
            export.save_model(
                os.path.join(workdir, "model"),
                model_config,
                host_params,
                tokenizer=tokenizer,
                kind="reward",
            )
    run_.checkpointer.close()
    run.finish(workdir, run_.writer, summary, ("train/loss", "eval/accuracy", "eval/margin"))
    return summary
