r"""Supervised fine-tuning (InstructGPT step 1): response-only NLL on demonstrations.

  python -m experiments.sft --config=experiments/configs/hh_tiny.py:sft --workdir=/tmp/sft
  python -m experiments.sft --config=experiments/configs/hh_tiny.py:sft --workdir=/tmp/sft \
      --config.train.num_steps=50 --config.optim.learning_rate=1e-3

or from Python, `rlhf_jax.trainers.sft.train_and_evaluate(config, workdir)`. Rerunning on a
workdir with checkpoints resumes from the newest one. `rlhf_jax.trainers.run` says what the workdir
holds; the final model is a transformers-format directory (workdir/model) that the reward trainer
and `transformers` load.

With `model.lora.rank` > 0 (a pretrained model), only low-rank adapters are trained: the base
weights are a frozen argument of the step, the optimizer and checkpoints hold the adapters, and
the run exports the merged weights (workdir/model) and the adapters in PEFT's format
(workdir/adapter).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import ml_collections
import numpy as np

from rlhf_jax import losses
from rlhf_jax.data import packing, pipeline
from rlhf_jax.models import CausalLM, hf, lora
from rlhf_jax.trainers import run, setup
from rlhf_jax.training import state as state_lib
from rlhf_jax.training import steps


def _train_rows(config, train_source, tokenizer, spec, transform) -> tuple[Any, Any, dict]:
    """(training rows, their transform, a summary of the packing) for the data options:
    `pack_documents` (a stream cut into full rows), `documents_per_row` > 1 (whole records
    grouped in rows of `packed_row_len` tokens, default max_len, each attending to itself;
    `train.batch_size` then counts rows) or neither (one padded row per record)."""
    per_row = config.data.get("documents_per_row", 1)
    if per_row < 1:
        raise ValueError(f"data.documents_per_row must be >= 1, got {per_row}.")
    if config.data.get("pack_documents", False):
        if per_row > 1:
            raise ValueError(
                "data.pack_documents excludes data.documents_per_row > 1: set one of them "
                "(in the InstructGPT recipe, --config.pretrain.documents_per_row=1)."
            )
        packed = packing.pack_documents(train_source, tokenizer, spec.max_len, config.seed)
        return packed, packing.RowToElement(), {"train_rows": len(packed)}
    if per_row == 1:
        return train_source, transform, {}
    row_len = config.data.get("packed_row_len", 0) or spec.max_len
    return setup.packed_demonstration_rows(
        train_source, tokenizer, spec, row_len, per_row, config.seed
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains, evaluates and exports; returns the summary dict."""
    if config.model.init == "scratch" and setup.lora_config(config.model) is not None:
        raise ValueError(
            "model.lora.rank > 0 adapts a pretrained model: set model.init='pretrained'."
        )
    workdir = os.path.abspath(workdir)
    setup.write_config(config, workdir)
    train_source = setup.open_split(config.data, config.data.train_split)
    eval_source = setup.open_split(config.data, config.data.eval_split)
    tokenizer = setup.load_tokenizer(config, workdir, lambda: setup.record_texts(train_source))

    if config.model.init == "scratch":
        model_config = setup.scratch_model_config(config.model, tokenizer.vocab_size)
        model = CausalLM(model_config)
        params, specs = state_lib.init_variables(model, config.data.max_len, config.seed)
    elif config.model.init == "pretrained":
        model_config, params = hf.load_pretrained(
            setup.local_or_hub(config.model.name_or_path),
            **setup.model_overrides(config.model),
            lora=setup.lora_config(config.model),
        )
        model = CausalLM(model_config)
        fresh, specs = state_lib.init_variables(model, 8, config.seed)
    else:
        raise ValueError(f"model.init={config.model.init!r}; expected 'scratch' or 'pretrained'.")
    frozen, lora_summary = None, {}
    if model_config.lora is not None:
        # Only the adapters are trained (and held by the optimizer); the base is read.
        frozen, params = params, {"lora": fresh["lora"]}
        lora_summary = {
            "trained_parameters": lora.parameter_count(params),
            "frozen_parameters": lora.parameter_count(frozen),
        }
        print(
            f"LoRA rank {model_config.lora.rank} on {', '.join(model_config.lora.targets)}: "
            f"{lora_summary['trained_parameters']:,} trained parameters, "
            f"{lora_summary['frozen_parameters']:,} frozen.",
            flush=True,
        )
    if model_config.vocab_size < tokenizer.vocab_size:
        raise ValueError(
            f"The model's vocabulary ({model_config.vocab_size}) is smaller than the tokenizer's "
            f"({tokenizer.vocab_size})."
        )

    spec = setup.sequence_spec(config.data)
    transform = pipeline.TokenizeDemonstration(tokenizer, spec)
    train_rows, train_transform, packing_summary = _train_rows(
        config, train_source, tokenizer, spec, transform
    )
    train_dataset = pipeline.make_dataset(
        train_rows, train_transform, batch_size=config.train.batch_size, seed=config.seed
    )
    loss_fn = losses.LOSSES[config.loss]
    forward = steps.sft_forward(model, loss_fn, lm_head_chunk=config.model.get("lm_head_chunk", 0))
    run_ = run.prepare_run(
        config=config,
        workdir=workdir,
        params=params,
        logical_specs=specs,
        forward=forward,
        train_dataset=train_dataset,
        frozen=frozen,
    )
    eval_data = run.eval_batches(eval_source, transform, config.train.batch_size, config.seed)
    eval_means = run.make_evaluate(forward, run_.mesh, run_.variable_shardings, eval_data)

    def evaluate(params) -> dict[str, float]:
        result = eval_means(run_.variables(params))
        result["perplexity"] = math.exp(min(result["nll"], 50.0))
        return result

    # The held-out figures before the first step (the base model under fresh adapters), kept in
    # the workdir so that a resumed run reports the same.
    before = {}
    if config.train.get("eval_before", False):
        path = os.path.join(workdir, "eval_before.json")
        if os.path.exists(path):
            with open(path) as f:
                before = json.load(f)
        elif run_.resumed_from is None:
            before = evaluate(run_.state.params)
            if setup.is_chief():
                setup.write_json_atomically(path, before)
    started = time.perf_counter()
    result = run.train(
        run_, config, evaluate=evaluate, tokens_in_batch=lambda b: int(np.sum(b["mask_bt"]))
    )
    train_wall_s = time.perf_counter() - started  # the steps, compiling and evaluations
    summary = {
        "experiment": "sft",
        "step": int(result.state.step),
        "preempted": result.preempted,
        "train_loss": result.last_train.get("loss"),
        "eval_nll": result.last_eval.get("nll"),
        "eval_perplexity": result.last_eval.get("perplexity"),
        "eval_token_accuracy": result.last_eval.get("accuracy"),
        **({"eval_nll_before": before["nll"]} if before else {}),
        "train_examples": len(train_source),
        "train_packed_rows": packing_summary.get("train_rows"),
        **{k: v for k, v in packing_summary.items() if k != "train_rows"},
        "eval_examples": len(eval_source),
        "train_wall_s": train_wall_s,
        **lora_summary,
    }
    if not result.preempted:
        run.export_trained_lm(
            workdir,
            model_config,
            result.state.params,
            tokenizer,
            frozen=frozen,
            base_name=config.model.get("name_or_path", ""),
        )
    run_.checkpointer.close()
    run.finish(workdir, run_.writer, summary, ("train/loss", "eval/nll", "train/tokens_per_s"))
    return summary
