r"""GPT-2 (124M) on Anthropic HH-RLHF helpful-base: a real config, documented but not run here (it
needs the hub for the `gpt2` weights/tokenizer and GitHub for the data; a GPU or more).

  python -m experiments.sft --config=experiments/configs/gpt2_hh.py:sft --workdir=$W/sft
  python -m experiments.reward --config=experiments/configs/gpt2_hh.py:reward --workdir=$W/rm \
      --config.model.sft_dir=$W/sft/model
  python -m experiments.ppo --config=experiments/configs/gpt2_hh.py:ppo --workdir=$W/ppo \
      --config.model.sft_dir=$W/sft/model --config.model.reward_dir=$W/rm/model
  # PPO-ptx: add --config.ppo.ptx_coef=1.0 (ptx text: the chosen dialogues, or set
  # --config.ptx.name to another demonstrations dataset, e.g. alpaca/alpaca)

Data: TFDS `anthropic_hh/helpful-base` (43,835 train / 2,354 test comparisons), downloaded from
github.com/anthropics/hh-rlhf on first use; set --config.data.manual_dir to a local copy of the
repository's folders instead. SFT trains on the chosen replies, the RM on the comparisons, PPO on
the prompts of the training comparisons (256 iterations x 64 prompts, 128 new tokens).
Hyper-parameters follow InstructGPT where it states them (dropout 0.2, cosine decay, RM for one
epoch at a small learning rate); batch sizes are for one 16-24 GB GPU.
"""

import ml_collections

from experiments.configs import hh_tiny

TRAIN_COMPARISONS = 43_835


def get_config(variant: str = "sft") -> ml_collections.ConfigDict:
    if variant not in ("sft", "reward", "ppo"):
        raise ValueError(f"Unknown variant {variant!r}; gpt2_hh has 'sft', 'reward' and 'ppo'.")
    c = hh_tiny.get_config(variant)
    c.data.update(
        name="anthropic_hh/helpful-base",
        manual_dir="",
        train_split="train",
        eval_split="test",
        max_len=512,
        max_prompt_len=384,
        overlong="truncate",
    )
    c.tokenizer.update(path="gpt2", eos_token="<|endoftext|>")
    c.model.update(init="pretrained", name_or_path="gpt2", dropout_rate=0.2, max_len=1024)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    c.train.update(
        batch_size=32,
        grad_accum=2,
        log_every=50,
        eval_every=500,
        checkpoint_every=500,
        keep_checkpoints=3,
    )
    epoch = TRAIN_COMPARISONS // c.train.batch_size
    if variant == "sft":
        c.optim.update(learning_rate=2e-5, warmup_steps=100, weight_decay=0.0)
        c.train.num_steps = 2 * epoch
    elif variant == "ppo":
        c.data.max_prompt_len = 384  # + 128 new tokens = max_len
        c.model.dropout_rate = 0.0  # PPO's ratios need the same function at rollout and update
        c.optim.update(learning_rate=1e-6, value_learning_rate=5e-6, warmup_steps=10)
        c.train.update(batch_size=64, grad_accum=1, num_steps=256, eval_every=32)
        c.train.checkpoint_every = 32
        c.ppo.update(max_new_tokens=128, minibatches=8, ptx_batch_size=8, kl_coef=0.02)
        c.ptx.update(split="train", eval_split="test")
    else:
        c.optim.update(learning_rate=9e-6, warmup_steps=50, weight_decay=0.0)
        c.train.num_steps = epoch  # InstructGPT trains the RM for a single epoch (overfits after)
        c.reward.reference_split = "train"
    return c
