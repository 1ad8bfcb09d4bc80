"""Saving and loading trained models outside of training checkpoints.

A causal LM is saved in transformers' format (`rlhf_jax.models.hf.save_pretrained`), so both
rlhf_jax and transformers load it. A reward model (decoder + scalar head, whose bias carries the
reference normalisation) is saved as `transformer_config.json` + orbax params + the tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import orbax.checkpoint as ocp

from rlhf_jax.models.config import RopeScaling, TransformerConfig


def config_to_dict(config: TransformerConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(values: dict) -> TransformerConfig:
    values = dict(values)
    if values.get("rope_scaling"):
        values["rope_scaling"] = RopeScaling(**values["rope_scaling"])
    return TransformerConfig(**values)


def save_model(
    directory: str | os.PathLike,
    config: TransformerConfig,
    params: Any,
    *,
    tokenizer=None,
    kind: str = "reward",
) -> None:
    """Writes `directory/{transformer_config.json, params/, tokenizer/}` (host params)."""
    directory = os.path.abspath(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "transformer_config.json"), "w") as f:
        json.dump({"kind": kind, "config": config_to_dict(config)}, f, indent=2)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, "params"), params, force=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(os.path.join(directory, "tokenizer"))


def load_model(directory: str | os.PathLike) -> tuple[str, TransformerConfig, Any]:
    """(kind, config, params) of a directory written by `save_model`."""
    directory = os.path.abspath(os.fspath(directory))
    path = os.path.join(directory, "transformer_config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} is not a saved model (no transformer_config.json).")
    with open(path) as f:
        meta = json.load(f)
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(os.path.join(directory, "params"))
    return meta["kind"], config_from_dict(meta["config"]), params
