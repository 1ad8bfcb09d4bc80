r"""A tiny model trained from scratch on the shared HH-RLHF harmless-base file, on a 2-core CPU.

The only HH split available offline is harmless-base/test (2,312 comparisons, 4 with an empty
reply skipped and counted); it is split once, by TFDS slicing, into 90% train / 10% held out.

  python -m experiments.sft --config=experiments/configs/hh_tiny.py:sft --workdir=/tmp/hh_sft
  python -m experiments.reward --config=experiments/configs/hh_tiny.py:reward \
      --workdir=/tmp/hh_rm --config.model.sft_dir=/tmp/hh_sft/model

  python -m experiments.ppo --config=experiments/configs/hh_tiny.py:ppo --workdir=/tmp/hh_ppo \
      --config.model.sft_dir=/tmp/hh_sft/model --config.model.reward_dir=/tmp/hh_rm/model

Variants: "sft" (chosen replies as demonstrations), "reward" (K = 2 comparisons; from the SFT
model when model.sft_dir is set, else from scratch with a locally trained tokenizer), "ppo"
(prompts of the training split; PPO-ptx with --config.ppo.ptx_coef=1.0).
"""

import ml_collections

from rlhf_jax.trainers.config import base_config, default_config

__all__ = ["base_config", "get_config"]


def get_config(variant: str = "sft") -> ml_collections.ConfigDict:
    """The trainers' defaults (`rlhf_jax.trainers.config`) of stage `variant`."""
    return default_config(variant)
