r"""Supervised fine-tuning (InstructGPT step 1): `rlhf_jax.trainers.sft.train_and_evaluate`.

  python -m experiments.sft --config=experiments/configs/hh_tiny.py:sft --workdir=/tmp/sft
  python -m experiments.sft --config=experiments/configs/hh_tiny.py:sft --workdir=/tmp/sft \
      --config.train.num_steps=50 --config.optim.learning_rate=1e-3

Rerunning the same command on a workdir with checkpoints resumes from the newest one.
"""

from experiments import cli
from rlhf_jax.trainers import sft

if __name__ == "__main__":
    cli.run_stage_module(sft.train_and_evaluate)
