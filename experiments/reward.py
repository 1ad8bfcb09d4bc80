r"""Reward-model training (InstructGPT step 2): `rlhf_jax.trainers.reward.train_and_evaluate`.

  python -m experiments.reward --config=experiments/configs/hh_tiny.py:reward --workdir=/tmp/rm \
      [--config.model.sft_dir=/tmp/sft/model]

Rerunning the same command on a workdir with checkpoints resumes from the newest one.
"""

from experiments import cli
from rlhf_jax.trainers import reward

if __name__ == "__main__":
    cli.run_stage_module(reward.train_and_evaluate)
