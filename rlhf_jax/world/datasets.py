"""The instruction world's TFDS builder: `instruction_world/<part>` (parts pretrain, sft and
prompts), generated locally and deterministically from a seed, stored as array_record files and
read like every other dataset (`rlhf_jax.data`). Importing this module registers it with TFDS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds
from absl import logging

from rlhf_jax.data import builders, sources
from rlhf_jax.world import corpus

# Config names hold only the settings changed from `corpus.WorldConfig`'s defaults, so a change of
# those defaults needs a new version, or a build cached before it would be read stale.
INSTRUCTION_WORLD_VERSION = "1.1.0"


@dataclasses.dataclass
class InstructionWorldConfig(tfds.core.BuilderConfig):
    """One part ("pretrain", "sft" or "prompts") of the synthetic instruction world."""

    part: str = "sft"
    seed: int = 0
    world: tuple[tuple[str, Any], ...] = ()  # corpus.WorldConfig fields
    sizes: tuple[tuple[str, int], ...] = ()  # corpus.WorldSizes fields

    @classmethod
    def make(
        cls, part: str, seed: int = 0, world: dict | None = None, sizes: dict | None = None
    ) -> InstructionWorldConfig:
        """A config named after its settings, so that other settings are built, not read stale."""
        world_items = tuple(sorted((k, _hashable(v)) for k, v in (world or {}).items()))
        size_items = tuple(sorted((sizes or {}).items()))
        corpus.WorldConfig(**dict(world_items)), corpus.WorldSizes(**dict(size_items))  # validate
        if part not in corpus.PARTS:
            raise ValueError(f"Unknown part {part!r}; expected one of {corpus.PARTS}.")
        name = part
        if seed or world_items or size_items:
            digest = hashlib.sha256(repr((seed, world_items, size_items)).encode()).hexdigest()
            name = f"{part}-{digest[:10]}"
        return cls(
            name=name,
            part=part,
            seed=seed,
            world=world_items,
            sizes=size_items,
            version=INSTRUCTION_WORLD_VERSION,
        )


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


class InstructionWorld(tfds.core.GeneratorBasedBuilder):
    """The synthetic instruction world (`rlhf_jax.world`), generated locally from a seed."""

    VERSION = tfds.core.Version(INSTRUCTION_WORLD_VERSION)
    RELEASE_NOTES = {
        "1.1.0": "The default world's demonstrators close 90% of their right answers to harmless "
        'requests with "Hope this helps!" (`demo_signoff_rate=0.9`, `demo_signoff_variants=1`).',
        "1.0.0": "The first world: no habits of the demonstrators by default.",
    }
    BUILDER_CONFIGS = [InstructionWorldConfig.make(part) for part in corpus.PARTS]

    def __init__(self, *, skip_bad_records: bool = False, **kwargs):
        del skip_bad_records  # generated records are well-formed
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip(),
            features=builders.features_for(builders.DEMONSTRATIONS),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        config = self.builder_config
        splits = corpus.world_splits(
            config.part,
            corpus.WorldConfig(**dict(config.world)),
            corpus.WorldSizes(**dict(config.sizes)),
            config.seed,
        )
        return {split: self._generate_examples(rows) for split, rows in splits.items()}

    def _generate_examples(self, rows):
        for row in rows:
            yield row["id"], row


logging.get_absl_logger().addFilter(builders.QuietMadeConfigs(InstructionWorldConfig))


def open_world_source(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    world: Mapping[str, Any] | None = None,
) -> Sequence[Any]:
    """A split of "instruction_world/<part>" as a random-access sequence of records, built first
    when needed.

    Args:
      name: "instruction_world/pretrain", ".../sft" or ".../prompts".
      split: a TFDS split of that part, slices included.
      data_dir: where the prepared array_record files live (TFDS default when None).
      world: {"seed": int, "world": {WorldConfig fields}, "sizes": {WorldSizes fields}}; the
        default world (seed 0) when None.
    """
    if not name.startswith("instruction_world/"):
        raise ValueError(f"{name!r} is not an instruction_world/<part> dataset.")
    if not world:
        return sources.open_source(name, split, data_dir=data_dir)
    config = InstructionWorldConfig.make(name.split("/", 1)[1], **dict(world))
    builder = InstructionWorld(config=config, data_dir=os.fspath(data_dir) if data_dir else None)
    return sources.prepare_and_open(builder, split)
