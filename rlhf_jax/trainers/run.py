"""The run machinery every trainer shares: the train state placed on the mesh, the resume order
(the newest readable checkpoint in workdir/checkpoints, else the state as given), the generic loop,
evaluation passes, the final export and the summary. Everything a run writes goes under its
workdir:

  workdir/config.json        the resolved config
  workdir/tokenizer/         the tokenizer (trained locally, or copied from the checkpoint used)
  workdir/checkpoints/<step> orbax checkpoints (state, data-iterator position, metadata)
  workdir/metrics.jsonl      train/ and eval/ scalars; workdir/tensorboard/ the same as events
  workdir/metrics.png        curves of the main scalars
  workdir/model/             the final model
  workdir/summary.json       the final figures (also printed as one JSON line)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections
from jax.sharding import Mesh

from rlhf_jax import sharding
from rlhf_jax.data import pipeline
from rlhf_jax.models import TransformerConfig, hf, lora
from rlhf_jax.trainers.setup import is_chief, make_optimizer, to_host, write_json_atomically
from rlhf_jax.training import state as state_lib
from rlhf_jax.training import steps
from rlhf_jax.training.checkpoint import Checkpointer, abstract_like
from rlhf_jax.training.loop import LoopConfig, LoopResult, means, sum_metrics, train_loop
from rlhf_jax.training.metrics_writer import MetricWriter, plot_metrics


def export_causal_lm(workdir: str, model_config: TransformerConfig, params: Any, tokenizer) -> None:
    """Gathers `params` and, on the chief, writes them with the tokenizer as a transformers
    directory at workdir/model (EOS doubles as BOS, as in GPT-2)."""
    host_params = to_host(params)
    if is_chief():
        hf.save_pretrained(
            os.path.join(workdir, "model"),
            model_config,
            host_params,
            tokenizer=tokenizer.hf,
            bos_token_id=tokenizer.eos_id,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
        )


def export_trained_lm(
    workdir: str,
    model_config: TransformerConfig,
    params: Any,
    tokenizer,
    *,
    frozen: Any = None,
    base_name: str = "",
) -> None:
    """The trained causal LM at workdir/model; under LoRA (`frozen` holds the base, `params` the
    adapters) the merged weights there and, for the families PEFT names like transformers
    (`lora.PEFT_FAMILIES`), the adapters in PEFT's format at workdir/adapter."""
    if frozen is None:
        export_causal_lm(workdir, model_config, params, tokenizer)
        return
    variables = to_host(steps.model_variables(params, frozen))
    plain = model_config.replace(lora=None)
    export_causal_lm(workdir, plain, lora.merge(model_config, variables), tokenizer)
    if is_chief() and model_config.family in lora.PEFT_FAMILIES:
        lora.save_peft(
            os.path.join(workdir, "adapter"),
            model_config,
            variables["lora"],
            base_model_name_or_path=base_name,
        )


def resume_or_start(config: ml_collections.ConfigDict, workdir: str, state, shardings, data_iter):
    """(state, checkpointer, writer, resumed_from): the newest readable checkpoint in
    workdir/checkpoints restored onto `shardings` (and `data_iter` moved to its position), or
    `state` as given when there is none; the metric writer drops records after the resume point."""
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints
    )
    restored = checkpointer.restore(abstract_like(state, shardings), data_iter)
    resumed_from = None
    if restored is not None:
        state, _ = restored
        resumed_from = int(state.step)
        print(f"Resumed from {checkpointer.directory} at step {resumed_from}.", flush=True)
    writer = MetricWriter(workdir, resume_step=resumed_from or 0, active=is_chief())
    return state, checkpointer, writer, resumed_from


@dataclasses.dataclass
class Run:
    """A prepared run: what `train` needs, after restoring from a checkpoint if there is one."""

    state: state_lib.TrainState
    param_shardings: Any
    train_step: Callable
    train_iter: Any
    checkpointer: Checkpointer
    writer: MetricWriter
    mesh: Any
    resumed_from: int | None
    frozen: Any = None  # variables read but not trained (e.g. {"params": base} under LoRA)
    frozen_shardings: Any = None

    def variables(self, params: Any) -> Any:
        """What the model reads: the trained `params` with the frozen variables beside them."""
        return steps.model_variables(params, self.frozen)

    @property
    def variable_shardings(self) -> Any:
        """Shardings of `variables(params)`."""
        return steps.model_variables(self.param_shardings, self.frozen_shardings)


def prepare_run(
    *,
    config: ml_collections.ConfigDict,
    workdir: str,
    params: Any,
    logical_specs: Any,
    forward: steps.Forward,
    train_dataset,
    frozen: Any = None,
) -> Run:
    """Places params on the mesh, builds the optimizer, jitted step and data iterator, and resumes
    from the newest checkpoint in workdir/checkpoints when there is one.

    With `frozen` (variable collections the model reads but does not train, e.g. {"params": base}
    beside LoRA's {"lora": adapters} in `params`), only `params` are in the train state, the
    optimizer and the checkpoints; `logical_specs` covers both."""
    mesh = sharding.mesh_from_config(config.mesh)
    batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.train.batch_size % (batch_ways * config.train.grad_accum):
        raise ValueError(
            f"train.batch_size={config.train.batch_size} must be a multiple of data x fsdp "
            f"({batch_ways}) x grad_accum ({config.train.grad_accum})."
        )
    trained_specs = {name: logical_specs[name] for name in params}
    param_shardings = sharding.logical_shardings(trained_specs, mesh, shapes=params)
    frozen_shardings = None
    if frozen is not None:
        frozen_specs = {name: logical_specs[name] for name in frozen}
        frozen_shardings = sharding.logical_shardings(frozen_specs, mesh, shapes=frozen)
        frozen = sharding.put_on_mesh(frozen, frozen_shardings)
    tx = make_optimizer(config.optim, config.optim.learning_rate, config.train.num_steps)
    shardings = state_lib.state_shardings(param_shardings, tx, params, mesh)
    state = sharding.put_on_mesh(state_lib.create_state(params, tx, config.seed), shardings)
    step = steps.make_train_step(forward, tx, grad_accum=config.train.grad_accum)
    train_step = steps.jit_train_step(
        step, mesh, shardings, frozen=frozen, frozen_shardings=frozen_shardings
    )
    train_iter = iter(train_dataset.to_iter_dataset())
    state, checkpointer, writer, resumed_from = resume_or_start(
        config, workdir, state, shardings, train_iter
    )
    return Run(
        state=state,
        param_shardings=param_shardings,
        train_step=train_step,
        train_iter=train_iter,
        checkpointer=checkpointer,
        writer=writer,
        mesh=mesh,
        resumed_from=resumed_from,
        frozen=frozen,
        frozen_shardings=frozen_shardings,
    )


def train(
    run: Run,
    config: ml_collections.ConfigDict,
    *,
    evaluate: Callable | None,
    tokens_in_batch: Callable[[dict], int],
) -> LoopResult:
    result = train_loop(
        state=run.state,
        train_step=run.train_step,
        train_iter=run.train_iter,
        place_batch=lambda b: pipeline.to_global_arrays(b, run.mesh),
        config=LoopConfig(
            num_steps=config.train.num_steps,
            log_every=config.train.log_every,
            eval_every=config.train.eval_every,
            checkpoint_every=config.train.checkpoint_every,
            max_nonfinite=config.train.max_nonfinite,
        ),
        checkpointer=run.checkpointer,
        writer=run.writer,
        evaluate=evaluate,
        meta={"seed": config.seed},
        tokens_in_batch=tokens_in_batch,
    )
    return result


def finish(workdir: str, writer: MetricWriter, summary: dict, plot_keys: tuple[str, ...]) -> None:
    """Closes the writer, plots the curves and prints/saves the summary line (chief only)."""
    writer.close()
    if not is_chief():
        return
    plot_metrics(
        os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "metrics.png"), plot_keys
    )
    write_json_atomically(os.path.join(workdir, "summary.json"), summary)
    print(json.dumps(summary), flush=True)


def eval_batches(source, transform, batch_size: int, seed: int):
    """One ordered pass over `source`, last batch padded with weightless rows."""
    return pipeline.make_dataset(
        source,
        transform,
        batch_size=batch_size,
        seed=seed,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
    )


def make_evaluate(
    forward: steps.Forward, mesh: Mesh, param_shardings: Any, batches
) -> Callable[[Any], dict[str, float]]:
    """`evaluate(params) -> {metric: mean}` over `batches` (host batches, e.g. `eval_batches`),
    with the forward jitted on `mesh` (params placed as `param_shardings`) and without dropout."""
    eval_step = steps.jit_eval_step(steps.make_eval_step(forward), mesh, param_shardings)

    def evaluate(params) -> dict[str, float]:
        totals = None
        for batch in batches:
            totals = sum_metrics(totals, eval_step(params, pipeline.to_global_arrays(batch, mesh)))
        return means(totals)

    return evaluate
