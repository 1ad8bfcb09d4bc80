r"""A tiny model trained from scratch on the shared HH-RLHF harmless-base file, on a 2-core CPU.

The only HH split available offline is harmless-base/test (2,312 comparisons, 4 with an empty
reply skipped and counted); it is split once, by TFDS slicing, into 90% train / 10% held out.

  python -m experiments.sft --config=experiments/configs/hh_tiny.py:sft --workdir=/tmp/hh_sft
  python -m experiments.reward --config=experiments/configs/hh_tiny.py:reward \
      --workdir=/tmp/hh_rm --config.model.sft_dir=/tmp/hh_sft/model

Variants: "sft" (chosen replies as demonstrations), "reward" (K = 2 comparisons; from the SFT
model when model.sft_dir is set, else from scratch with a locally trained tokenizer).
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(
        dict(
            name="anthropic_hh/harmless-base",
            manual_dir="../shared/data/hh-rlhf",  # relative to the repository root
            data_dir="~/tensorflow_datasets",
            skip_bad_records=True,
            train_split="test[:90%]",
            eval_split="test[90%:]",
            max_len=192,
            max_prompt_len=128,
            max_responses=2,
            overlong="truncate",
            jsonl_kind="",
            jsonl_files=ml_collections.ConfigDict(),
        )
    )
    c.tokenizer = ml_collections.ConfigDict(dict(path="", vocab_size=2048, eos_token=""))
    c.model = ml_collections.ConfigDict(
        dict(
            init="scratch",
            name_or_path="",
            sft_dir="",
            family="gpt2",
            num_layers=2,
            num_heads=4,
            embed_dim=128,
            mlp_dim=512,
            max_len=192,
            dropout_rate=0.1,
            dtype="float32",  # activations; "bfloat16" on TPU/GPU
            param_dtype="float32",
            remat=False,  # recompute block activations in the backward pass
        )
    )
    c.optim = ml_collections.ConfigDict(
        dict(learning_rate=1e-3, warmup_steps=20, weight_decay=0.01, b1=0.9, b2=0.95, clip_norm=1.0)
    )
    c.train = ml_collections.ConfigDict(
        dict(
            batch_size=16,
            grad_accum=1,
            num_steps=250,
            log_every=10,
            eval_every=50,
            checkpoint_every=50,
            keep_checkpoints=2,
            max_nonfinite=0,
        )
    )
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    return c


def get_config(variant: str = "sft") -> ml_collections.ConfigDict:
    c = base_config()
    if variant == "sft":
        c.loss = "sft_nll"
    elif variant == "reward":
        c.loss = "kwise_ranking"
        c.optim.learning_rate = 3e-4
        c.train.num_steps = 250
        c.reward = ml_collections.ConfigDict(
            # Reference responses for the mean-0 normalisation: the best (chosen) response of each
            # training comparison, InstructGPT's "labeler demonstrations" stand-in.
            dict(reference_split="test[:90%]", reference_name="")
        )
    else:
        raise ValueError(f"Unknown variant {variant!r}; expected 'sft' or 'reward'.")
    return c
