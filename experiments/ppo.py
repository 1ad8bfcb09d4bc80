r"""PPO and PPO-ptx (InstructGPT step 3): `rlhf_jax.trainers.ppo.train_and_evaluate`.

  python -m experiments.ppo --config=experiments/configs/hh_tiny.py:ppo --workdir=/tmp/hh_ppo \
      --config.model.sft_dir=/tmp/hh_sft/model --config.model.reward_dir=/tmp/hh_rm/model
  # PPO-ptx: add --config.ppo.ptx_coef=1.0

Rerunning the same command on a workdir with checkpoints resumes from the newest one.
"""

from experiments import cli
from rlhf_jax.trainers import ppo

if __name__ == "__main__":
    cli.run_stage_module(ppo.train_and_evaluate)
