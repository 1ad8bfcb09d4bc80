r"""Presets of the end-to-end InstructGPT job on the synthetic instruction world
(`rlhf_jax.recipes.instructgpt.presets`, where every field is commented).

  python -m experiments.instructgpt --workdir=/tmp/igpt                  # default preset
  python -m experiments.instructgpt --workdir=/tmp/igpt_smoke --preset=smoke
  python -m experiments.instructgpt --workdir=/tmp/igpt \
      --config=experiments/configs/instructgpt.py:smoke --config.ppo.iterations=8

"default" is the README's main job; "smoke" runs every stage in about 2 minutes and checks only
that the pipeline and its report work. Any field can be overridden with --config.<field>=value.
"""

import ml_collections

from rlhf_jax.recipes.instructgpt.presets import WORLD_SETTINGS, world_settings
from rlhf_jax.recipes.instructgpt.presets import get_config as _preset

__all__ = ["WORLD_SETTINGS", "get_config", "world_settings"]


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    """The preset `preset` ("default" or "smoke")."""
    return _preset(preset)
