r"""A Llama-family model (Llama 3.1 8B) on a TPU pod slice: a real config, documented but not run
here (gated hub weights; a v4-64 / v5e-64 or larger slice).

Run the same command on every host of the slice (e.g. `gcloud compute tpus tpu-vm ssh $TPU
--worker=all --command=...`); with --distributed, `jax.distributed.initialize()` finds the other
hosts through the TPU runtime and the mesh spans all chips. The workdir must be a directory every
host sees (a gcsfuse mount or NFS): all hosts write checkpoints together, host 0 the rest.

  python -m experiments.sft --distributed --config=experiments/configs/llama_tpu.py:sft \
      --workdir=/mnt/shared/sft
  python -m experiments.reward --distributed --config=experiments/configs/llama_tpu.py:reward \
      --workdir=/mnt/shared/rm --config.model.sft_dir=/mnt/shared/sft/model
  python -m experiments.ppo --distributed --config=experiments/configs/llama_tpu.py:ppo \
      --workdir=/mnt/shared/ppo --config.model.sft_dir=/mnt/shared/sft/model \
      --config.model.reward_dir=/mnt/shared/rm/model [--config.ppo.ptx_coef=1.0]

Layout: parameters, gradients and Adam moments are sharded over `fsdp` (all chips but the tensor
axis) and heads/MLP over `tensor` (4 chips, within a host's ICI neighbourhood); activations are
bfloat16 with float32 master weights, and each block is rematerialised in the backward pass.
SFT uses Alpaca's 52k demonstrations; the RM uses HH-RLHF helpful-base; PPO its prompts, with
Alpaca as PPO-ptx's stand-in for pretraining text. Batch sizes (and PPO's minibatches) must be
multiples of data x fsdp (16 on 64 chips, 64 on 256 chips).
"""

import ml_collections

from experiments.configs import hh_tiny

MODEL = "meta-llama/Llama-3.1-8B"


def get_config(variant: str = "sft") -> ml_collections.ConfigDict:
    if variant not in ("sft", "reward", "ppo"):
        raise ValueError(f"Unknown variant {variant!r}; llama_tpu has 'sft', 'reward' and 'ppo'.")
    c = hh_tiny.get_config(variant)
    if variant == "sft":
        c.data.update(name="alpaca/alpaca", train_split="train[:98%]", eval_split="train[98%:]")
    elif variant == "ppo":
        c.data.update(name="anthropic_hh/helpful-base", train_split="train", eval_split="test")
        c.ptx.update(name="alpaca/alpaca", split="train[:98%]", eval_split="train[98%:]")
    else:
        c.data.update(name="anthropic_hh/helpful-base", train_split="train", eval_split="test")
        c.reward.reference_split = "train"
    c.data.update(manual_dir="", max_len=2048, max_prompt_len=1536, overlong="truncate")
    # The base model: prompts as plain text (its tokenizer also ships a chat template).
    c.tokenizer.update(path=MODEL, eos_token="<|end_of_text|>", chat_template="off")
    c.model.update(
        init="pretrained",
        name_or_path=MODEL,
        dropout_rate=0.0,
        max_len=8192,
        dtype="bfloat16",
        param_dtype="float32",
        remat=True,
    )
    c.mesh.update(data=1, fsdp=-1, tensor=4)
    c.train.update(
        batch_size=64,
        grad_accum=1,
        log_every=10,
        eval_every=200,
        checkpoint_every=200,
        keep_checkpoints=2,
    )
    if variant == "sft":
        c.optim.update(learning_rate=1e-5, warmup_steps=50, weight_decay=0.0)
        c.train.num_steps = 3 * 51_000 // c.train.batch_size  # 3 epochs, as Alpaca
    elif variant == "ppo":
        c.data.max_prompt_len = 1536  # + 512 new tokens = max_len
        c.optim.update(learning_rate=1e-6, value_learning_rate=5e-6, warmup_steps=10)
        # 256 prompts per iteration, 4 minibatches of 64: both split over 64 or 256 chips.
        c.train.update(batch_size=256, num_steps=256, eval_every=32, checkpoint_every=32)
        c.ppo.update(max_new_tokens=512, minibatches=4, ptx_batch_size=64, kl_coef=0.02)
    else:
        c.optim.update(learning_rate=5e-6, warmup_steps=20, weight_decay=0.0)
        c.train.num_steps = 43_835 // c.train.batch_size  # one epoch
    return c
