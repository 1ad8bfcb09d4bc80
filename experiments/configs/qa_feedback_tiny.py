r"""Reward model on real K = 4 data: FineGrainedRLHF qa-feedback dev (500 questions, all 6 pairs
human-labelled; 12 all-tied questions are skipped and counted, ties inside a question give no
pair). Split once by TFDS slicing into 90% train / 10% held out; tiny model from scratch.

  python -m experiments.reward --config=experiments/configs/qa_feedback_tiny.py \
      --workdir=/tmp/qa_rm

Prompts (question + Wikipedia passages) are long: they keep their last max_prompt_len tokens
(the truncation count is logged as train/truncated).
"""

import ml_collections

from experiments.configs import hh_tiny


def get_config(variant: str = "reward") -> ml_collections.ConfigDict:
    if variant != "reward":
        raise ValueError(f"Unknown variant {variant!r}; qa_feedback_tiny has only 'reward'.")
    c = hh_tiny.get_config("reward")
    c.data.name = "qa_feedback/comparisons"
    c.data.manual_dir = "../shared/data/finegrained-rlhf-qa-feedback"
    c.data.train_split = "dev[:90%]"
    c.data.eval_split = "dev[90%:]"
    c.data.max_len = 256
    c.data.max_prompt_len = 128
    c.data.max_responses = 4
    c.model.max_len = 256
    c.train.batch_size = 8
    c.train.num_steps = 165  # ~3 epochs of 439 questions
    c.train.eval_every = 55
    c.train.checkpoint_every = 55
    c.tokenizer.vocab_size = 2048
    # Reference responses for the mean-0 normalisation: the human-written gold answers.
    c.reward.reference_name = "qa_feedback/gold"
    c.reward.reference_split = "dev[:90%]"
    return c
