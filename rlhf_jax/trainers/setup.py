"""What every trainer does before its first step: config -> tokenizer, data sources, model
config, sequence layout and optimizer; plus the few process-level helpers (which process writes
files, gathering arrays to the host). Paths in configs are relative to the repository root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from rlhf_jax.data import packing, pipeline, sources
from rlhf_jax.data.tokenizer import Tokenizer, train_bpe_tokenizer
from rlhf_jax.models import LoRAConfig, TransformerConfig
from rlhf_jax.training import optim
from rlhf_jax.world import datasets as world_datasets  # registers instruction_world with TFDS

# The checkout this package sits in (rlhf_jax/trainers/setup.py -> the repository root).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    if not is_chief():
        return
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))


def write_json_atomically(path: str, value: Any) -> None:
    """`value` as indented JSON at `path`, whole or not at all: a process killed while writing
    leaves the previous file (or none), never a truncated one."""
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(partial, path)


def open_split(data: ml_collections.ConfigDict, split: str):
    """The configured dataset's `split` as a random-access source: the instruction world of
    `data.world` (`rlhf_jax.world.datasets`), else any registered or jsonl dataset."""
    data_dir = resolve_path(data.get("data_dir")) or os.path.expanduser("~/tensorflow_datasets")
    if data.name.startswith("instruction_world/") and data.get("world"):
        return world_datasets.open_world_source(
            data.name, split, data_dir=data_dir, world=data.world.to_dict()
        )
    return sources.open_source(
        data.name,
        split,
        data_dir=data_dir,
        manual_dir=resolve_path(data.get("manual_dir")),
        skip_bad_records=data.get("skip_bad_records", False),
        jsonl_kind=data.get("jsonl_kind"),
        jsonl_files=dict(data.jsonl_files) if data.get("jsonl_files") else None,
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


def tokenizer_options(config: ml_collections.ConfigDict) -> dict:
    """The `Tokenizer` arguments `config.tokenizer` sets (EOS override, chat template use)."""
    return {
        "eos_token": config.tokenizer.get("eos_token") or None,
        "chat_template": config.tokenizer.get("chat_template", "auto"),
    }


def load_tokenizer(config: ml_collections.ConfigDict, workdir: str, corpus: Callable[[], list]):
    """The tokenizer of this run: workdir/tokenizer when resuming, else `config.tokenizer.path`
    (a directory or hub id), else one trained locally on `corpus()` with the `tokenizers` library.
    It is always saved to workdir/tokenizer."""
    saved = os.path.join(workdir, "tokenizer")
    options = tokenizer_options(config)
    if os.path.isdir(saved):
        tokenizer = Tokenizer.from_pretrained(saved, **options)
    elif config.tokenizer.get("path"):
        tokenizer = Tokenizer.from_pretrained(local_or_hub(config.tokenizer.path), **options)
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


def lora_config(model: ml_collections.ConfigDict) -> LoRAConfig | None:
    """The `LoRAConfig` of `model.lora`, or None when its rank is 0 (every weight trained)."""
    lora = model.get("lora")
    if lora is None or not lora.rank:
        return None
    return LoRAConfig(
        rank=lora.rank,
        alpha=lora.alpha,
        dropout=lora.dropout,
        targets=tuple(t.strip() for t in lora.targets.split(",") if t.strip()),
        rslora=lora.rslora,
    )


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
