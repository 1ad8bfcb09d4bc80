"""What `experiments.sft` and `experiments.reward` share: config -> tokenizer, data, model, mesh,
train state (fresh or resumed), and the loop. Everything a run writes goes under its workdir:

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

import jax
import ml_collections
from absl import app, flags, logging
from jax.sharding import Mesh
from ml_collections import config_flags

from rlhf_jax import compilation_cache, sharding
from rlhf_jax.data import packing, pipeline, sources
from rlhf_jax.data.tokenizer import Tokenizer, train_bpe_tokenizer
from rlhf_jax.models import TransformerConfig, hf
from rlhf_jax.training import optim, steps
from rlhf_jax.training import state as state_lib
from rlhf_jax.training.checkpoint import Checkpointer, abstract_like
from rlhf_jax.training.loop import LoopConfig, LoopResult, means, sum_metrics, train_loop
from rlhf_jax.training.metrics_writer import MetricWriter, plot_metrics

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The flags every experiment module takes (defined once here so that modules can be imported
# together, e.g. by tests and by experiments.instructgpt).
CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].")
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")
PRESET = flags.DEFINE_string(
    "preset",
    None,
    "A named preset of the module run (experiments.benchmark: design | tiny; "
    "experiments.instructgpt: default | smoke).",
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() first: one process per host of a TPU slice or GPU "
    "cluster, all started with the same command (addresses from the cluster's environment).",
)
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir",
    compilation_cache.DEFAULT_DIR,
    "JAX's persistent compilation cache: compiled programs are kept here and loaded by later "
    "runs instead of compiling again (same results). Empty: off. JAX_COMPILATION_CACHE_DIR, "
    "when set, wins.",
)


def setup_process() -> None:
    """What every experiment's main does first: quiet orbax's per-file INFO logs, switch on the
    persistent compilation cache (--compilation_cache_dir) and, with --distributed, join the
    other processes so the mesh spans every host's devices."""
    logging.set_verbosity(logging.WARNING)
    compilation_cache.enable_compilation_cache(_COMPILATION_CACHE_DIR.value)
    if _DISTRIBUTED.value:
        sharding.initialize_distributed()


def run_stage_module(run: Callable[[ml_collections.ConfigDict, str], Any]) -> None:
    """The `__main__` of a stage module: `--config` and `--workdir` are required, the process is
    set up (`setup_process`), then `run(config, workdir)`."""

    def main(argv):
        del argv
        setup_process()
        run(CONFIG.value, WORKDIR.value)

    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)


def resolve_path(path: str | None) -> str | None:
    """Relative paths in configs are relative to the repository root (so that the shipped configs
    find ../shared from any working directory)."""
    if not path:
        return None
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(REPO_ROOT, path))


def local_or_hub(name: str) -> str:
    """`name` resolved as a local path (see `resolve_path`) when that exists, else unchanged (a hub
    id such as "gpt2")."""
    path = resolve_path(name)
    return path if os.path.exists(path) else name


def is_chief() -> bool:
    """True on the process that writes run files (config, metrics, model); all processes save
    checkpoints together (orbax coordinates them). The workdir must be one every host sees."""
    return jax.process_index() == 0


def to_host(tree: Any) -> Any:
    """Device arrays -> numpy, gathering shards held by other processes when there are several."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


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


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    if not is_chief():
        return
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))


def open_split(data: ml_collections.ConfigDict, split: str):
    """The configured dataset's `split` as a random-access source."""
    return sources.open_source(
        data.name,
        split,
        data_dir=resolve_path(data.get("data_dir")) or os.path.expanduser("~/tensorflow_datasets"),
        manual_dir=resolve_path(data.get("manual_dir")),
        skip_bad_records=data.get("skip_bad_records", False),
        jsonl_kind=data.get("jsonl_kind"),
        jsonl_files=dict(data.jsonl_files) if data.get("jsonl_files") else None,
        world=data.world.to_dict() if data.get("world") else None,
    )


def record_texts(source, limit: int = 20000) -> list[str]:
    """Prompt and response texts of up to `limit` records (a tokenizer-training corpus)."""
    texts = []
    for i in range(min(len(source), limit)):
        record = source[i]
        texts.append(pipeline.as_text(record["prompt"]))
        if "response" in record:
            texts.append(pipeline.as_text(record["response"]))
        else:
            texts.extend(pipeline.as_text(r) for r in record["responses"])
    return texts


def load_tokenizer(config: ml_collections.ConfigDict, workdir: str, corpus: Callable[[], list]):
    """The tokenizer of this run: workdir/tokenizer when resuming, else `config.tokenizer.path`
    (a directory or hub id), else one trained locally on `corpus()` with the `tokenizers` library.
    It is always saved to workdir/tokenizer."""
    saved = os.path.join(workdir, "tokenizer")
    eos = config.tokenizer.get("eos_token") or None
    if os.path.isdir(saved):
        tokenizer = Tokenizer.from_pretrained(saved, eos_token=eos)
    elif config.tokenizer.get("path"):
        tokenizer = Tokenizer.from_pretrained(local_or_hub(config.tokenizer.path), eos_token=eos)
    else:
        tokenizer = train_bpe_tokenizer(corpus(), vocab_size=config.tokenizer.vocab_size)
    if is_chief():
        tokenizer.save_pretrained(saved)
    return tokenizer


def model_overrides(model: ml_collections.ConfigDict) -> dict:
    """TransformerConfig fields a config sets on any model, pretrained or from scratch: dropout,
    activation/parameter dtypes ("bfloat16" on accelerators) and rematerialisation."""
    return {
        "dropout_rate": model.dropout_rate,
        "dtype": model.get("dtype", "float32"),
        "param_dtype": model.get("param_dtype", "float32"),
        "remat": model.get("remat", False),
    }


def scratch_model_config(model: ml_collections.ConfigDict, vocab_size: int) -> TransformerConfig:
    """A from-scratch TransformerConfig of family `model.family` and the configured sizes."""
    make = getattr(TransformerConfig, model.family)
    return make(
        vocab_size=vocab_size,
        num_layers=model.num_layers,
        num_heads=model.num_heads,
        embed_dim=model.embed_dim,
        mlp_dim=model.mlp_dim,
        max_len=model.max_len,
        **model_overrides(model),
    )


def sequence_spec(data: ml_collections.ConfigDict) -> pipeline.SequenceSpec:
    return pipeline.SequenceSpec(
        max_len=data.max_len,
        max_prompt_len=data.max_prompt_len,
        max_responses=data.get("max_responses", 2),
        overlong=data.get("overlong", "truncate"),
    )


def packed_demonstration_rows(
    source,
    tokenizer: Tokenizer,
    spec: pipeline.SequenceSpec,
    row_len: int,
    per_row: int,
    seed: int,
    loss_on_prompt: bool = False,
) -> tuple[Any, pipeline.TokenizeDemonstrationRow, dict]:
    """(rows, their transform, a summary) for whole records packed up to `per_row` to a row of
    `row_len` tokens (`packing.pack_demonstrations`); prints how full the rows are."""
    rows = packing.pack_demonstrations(
        source, tokenizer, spec, row_len, per_row, seed, loss_on_prompt
    )
    print(
        f"Packed {rows.count} documents into {len(rows)} rows of {row_len} tokens "
        f"({rows.per_row:.2f} per row, {100 * rows.fill:.0f}% of the slots filled).",
        flush=True,
    )
    transform = pipeline.TokenizeDemonstrationRow(tokenizer, spec, row_len, per_row, loss_on_prompt)
    summary = {"train_rows": len(rows), "documents_per_row": rows.per_row, "row_fill": rows.fill}
    return rows, transform, summary


def make_optimizer(optim_config: ml_collections.ConfigDict, learning_rate: float, total_steps: int):
    """AdamW with warm-up + cosine decay over `total_steps` optimizer steps (`training.optim`)."""
    return optim.make_optimizer(
        learning_rate=learning_rate,
        warmup_steps=optim_config.warmup_steps,
        total_steps=total_steps,
        weight_decay=optim_config.weight_decay,
        b1=optim_config.b1,
        b2=optim_config.b2,
        clip_norm=optim_config.clip_norm,
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


def prepare_run(
    *,
    config: ml_collections.ConfigDict,
    workdir: str,
    params: Any,
    logical_specs: Any,
    forward: steps.Forward,
    train_dataset,
) -> Run:
    """Places params on the mesh, builds the optimizer, jitted step and data iterator, and resumes
    from the newest checkpoint in workdir/checkpoints when there is one."""
    mesh = sharding.mesh_from_config(config.mesh)
    batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.train.batch_size % (batch_ways * config.train.grad_accum):
        raise ValueError(
            f"train.batch_size={config.train.batch_size} must be a multiple of data x fsdp "
            f"({batch_ways}) x grad_accum ({config.train.grad_accum})."
        )
    param_shardings = sharding.logical_shardings(logical_specs, mesh, shapes=params)
    tx = make_optimizer(config.optim, config.optim.learning_rate, config.train.num_steps)
    shardings = state_lib.state_shardings(param_shardings, tx, params, mesh)
    state = sharding.put_on_mesh(state_lib.create_state(params, tx, config.seed), shardings)
    step = steps.make_train_step(forward, tx, grad_accum=config.train.grad_accum)
    train_step = steps.jit_train_step(step, mesh, shardings)
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


def write_json_atomically(path: str, value: Any) -> None:
    """`value` as indented JSON at `path`, whole or not at all: a process killed while writing
    leaves the previous file (or none), never a truncated one."""
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(partial, path)


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
