r"""SmolLM2-135M-Instruct (the registry wheel's GGUF, converted once) fine-tuned with LoRA on the
shared 1,000-record Alpaca sample, prompts through the model's chat template, on a 2-core CPU.

  python -m experiments.convert_gguf --out=~/.cache/rlhf_jax/smollm2-135m-instruct
  python -m experiments.sft --config=experiments/configs/smollm2_alpaca.py:sft_lora \
      --workdir=/tmp/smollm2_sft

Variants: "sft_lora" (rank 8 on every projection of the 30 layers, base weights frozen) and
"smoke" (the same at a few steps on short rows; what the slow test runs). The run exports the
merged weights (workdir/model, a plain transformers checkpoint) and the adapters in PEFT's format
(workdir/adapter). The held-out split is the last 5% of the file; the base model's held-out NLL
before the first step is in the summary (eval_nll_before).
"""

import ml_collections

from rlhf_jax.trainers.config import default_config

MODEL_DIR = "~/.cache/rlhf_jax/smollm2-135m-instruct"


def get_config(variant: str = "sft_lora") -> ml_collections.ConfigDict:
    if variant not in ("sft_lora", "smoke"):
        raise ValueError(f"Unknown variant {variant!r}; smollm2_alpaca has 'sft_lora', 'smoke'.")
    c = default_config("sft")
    c.data.update(
        name="alpaca/alpaca_1k_chat",
        manual_dir="../shared/data/alpaca-data-1k",
        skip_bad_records=False,
        train_split="train[:95%]",
        eval_split="train[95%:]",
        max_len=256,
        max_prompt_len=128,
        overlong="truncate",
    )
    c.tokenizer.update(path=MODEL_DIR, chat_template="on")
    # The LM head 64 positions at a time: the [8, 256, 49152] float32 logits (384 MiB, and as
    # much again for their gradient) never exist whole.
    c.model.update(
        init="pretrained", name_or_path=MODEL_DIR, dropout_rate=0.0, max_len=256, lm_head_chunk=64
    )
    c.model.lora.update(rank=8, alpha=16.0, dropout=0.05)
    c.optim.update(learning_rate=1e-3, warmup_steps=5, weight_decay=0.0)
    c.train.update(
        batch_size=8,
        num_steps=100,
        log_every=5,
        eval_every=50,
        checkpoint_every=50,
        keep_checkpoints=1,
        eval_before=True,
    )
    if variant == "smoke":
        c.data.update(max_len=96, max_prompt_len=48, eval_split="train[98%:]")
        c.train.update(num_steps=8, log_every=2, eval_every=8, checkpoint_every=8)
    return c
