"""Config -> random-access TFDS data source (building the dataset first when needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds

from rlhf_jax.data import builders


def open_source(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    skip_bad_records: bool = False,
    jsonl_kind: str | None = None,
    jsonl_files: Mapping[str, str | Sequence[str]] | None = None,
) -> Sequence[Any]:
    """A TFDS split as a random-access sequence of records (dicts of numpy/bytes).

    Args:
      name: "anthropic_hh/harmless-base", "alpaca/self_instruct_seed", "qa_feedback/comparisons",
        ..., any other registered TFDS builder's name, or "jsonl/<your name>" together with
        `jsonl_kind` and `jsonl_files`. (The instruction world's other seeds and sizes open
        through `rlhf_jax.world.datasets.open_world_source`.)
      split: a TFDS split, slices included ("test[:90%]").
      data_dir: where the prepared array_record files live (TFDS default when None).
      manual_dir: local copies of the raw files (used instead of downloading).
      skip_bad_records: count and skip bad records while building instead of stopping.
      jsonl_kind: "demonstrations" or "comparisons" (jsonl only).
      jsonl_files: {split: path or paths} (jsonl only).
    """
    data_dir = os.fspath(data_dir) if data_dir else None
    if name.startswith("jsonl/"):
        if not jsonl_files or not jsonl_kind:
            raise ValueError("A jsonl dataset needs jsonl_kind and jsonl_files={split: paths}.")
        config = builders.JsonlConfig.make(name.split("/", 1)[1], jsonl_kind, dict(jsonl_files))
        builder = builders.Jsonl(
            config=config, data_dir=data_dir, skip_bad_records=skip_bad_records
        )
    else:
        builder = tfds.builder(name, data_dir=data_dir, skip_bad_records=skip_bad_records)
    return prepare_and_open(builder, split, manual_dir=manual_dir)


def prepare_and_open(
    builder: tfds.core.DatasetBuilder,
    split: str,
    *,
    manual_dir: str | os.PathLike | None = None,
) -> Sequence[Any]:
    """`builder`'s `split` as a random-access source, prepared first when it is not yet."""
    if not builder.is_prepared():
        builders.build(builder, manual_dir=os.fspath(manual_dir) if manual_dir else None)
    return builder.as_data_source(split=split)
