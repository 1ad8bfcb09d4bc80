r"""InstructGPT end to end on the synthetic instruction world, with the paper's evaluations:
`rlhf_jax.recipes.instructgpt.run` (its docstring lists the stages and the workdir's folders).

  python -m experiments.instructgpt --workdir=/tmp/igpt                  # the main job
  python -m experiments.instructgpt --workdir=/tmp/igpt_smoke --preset=smoke
  python -m experiments.instructgpt --workdir=/tmp/igpt \
      --config=experiments/configs/instructgpt.py --config.ppo.iterations=100    # overrides

A finished stage is skipped when the command is rerun; a stage killed midway resumes from its
checkpoints. `--until=<stage>` stops after that stage (no report); a later run without it goes on.
"""

from absl import app, flags, logging

from experiments import cli
from rlhf_jax.recipes import instructgpt

_UNTIL = flags.DEFINE_string(
    "until", None, "Stop after this stage (e.g. rank), without the report; rerun to go on."
)


def main(argv):
    del argv
    cli.setup_process()
    if cli.CONFIG.value is not None and cli.PRESET.value:
        raise app.UsageError("Give --preset or --config, not both.")
    config = cli.CONFIG.value or instructgpt.get_config(cli.PRESET.value or "default")
    logging.set_verbosity(logging.WARNING)
    instructgpt.run(config, cli.WORKDIR.value, until=_UNTIL.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
