"""The trainers' default configs: every field `rlhf_jax.trainers.{sft,reward,ppo}` read, with a
comment on each, at the sizes of a tiny model trained from scratch on the shared HH-RLHF
harmless-base file on a 2-core CPU. Config files (`experiments/configs/`) start from these and
change what their run needs; relative paths are relative to the repository root.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Every field the trainers read, at the sizes of a tiny model on the shared HH-RLHF file."""
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
            # experiments.sft: train on whole texts packed end to end in full rows
            # (rlhf_jax.data.packing; language-model pretraining), not one padded row each.
            pack_documents=False,
            # experiments.sft: > 1 packs up to this many whole records in each row of
            # packed_row_len tokens (0: max_len), each attending only to itself
            # (rlhf_jax.data.packing.pack_demonstrations: the loss of one padded row per record
            # for a fraction of the compute); train.batch_size then counts rows.
            documents_per_row=1,
            packed_row_len=0,
            # experiments.reward: > 0 lays each comparison out as one row of this many tokens,
            # the prompt once and then every response (pipeline.TokenizeComparisonSharedPrompt;
            # the same rewards for a fraction of the compute when responses are short).
            shared_prompt_row_len=0,
            # > 1 (with shared_prompt_row_len): pack up to this many whole comparisons in each row
            # (rlhf_jax.data.packing.pack_comparisons); train.batch_size then counts rows.
            comparisons_per_row=1,
            jsonl_kind="",
            jsonl_files=ml_collections.ConfigDict(),
        )
    )
    c.tokenizer = ml_collections.ConfigDict(
        dict(
            path="",  # a tokenizer directory or hub id; empty: trained locally on the data
            vocab_size=2048,  # tokens, for a tokenizer trained locally
            eos_token="",  # overrides the tokenizer's EOS token (a string); empty: its own
            # "auto": prompts through the tokenizer's chat template when it has one (the user's
            # message, the assistant's turn opened); "on": require one; "off": plain text.
            chat_template="auto",
        )
    )
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
            # SFT: > 0 applies the LM head this many positions at a time inside the loss, so the
            # [batch, length, vocab] logits never exist whole (for large vocabularies).
            lm_head_chunk=0,
            # Low-rank adapters (SFT on a pretrained model): rank 0 trains every weight; > 0
            # trains only adapters of this rank on the `targets` projections (comma-separated,
            # transformers' names or ours), scaled by alpha / rank (alpha / sqrt(rank) with
            # rslora), with dropout on their input.
            lora=ml_collections.ConfigDict(
                dict(
                    rank=0,
                    alpha=16.0,
                    dropout=0.0,
                    targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                    rslora=False,
                )
            ),
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
            eval_before=False,  # the SFT trainer: also evaluate before the first step
        )
    )
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    return c


def default_config(stage: str = "sft") -> ml_collections.ConfigDict:
    """`base_config` with the fields of one trainer: "sft", "reward" or "ppo"."""
    c = base_config()
    if stage == "sft":
        c.loss = "sft_nll"
    elif stage == "reward":
        c.loss = "kwise_ranking"
        c.optim.learning_rate = 3e-4
        c.train.num_steps = 250
        c.reward = ml_collections.ConfigDict(
            # Reference responses for the mean-0 normalisation: the best (chosen) response of each
            # training comparison, InstructGPT's "labeler demonstrations" stand-in.
            dict(reference_split="test[:90%]", reference_name="")
        )
    elif stage == "ppo":
        c.loss = "ppo_policy"
        c.model.reward_dir = ""  # an experiments.reward workdir/model
        c.model.dropout_rate = 0.0
        c.data.max_prompt_len = 96
        c.optim.update(learning_rate=1e-5, value_learning_rate=1e-5, warmup_steps=5)
        c.train.update(batch_size=16, num_steps=60, log_every=5, eval_every=20, checkpoint_every=20)
        c.ppo = ml_collections.ConfigDict(
            dict(
                epochs=4,
                minibatches=4,
                clip_eps=0.2,
                value_clip=0.2,
                gamma=1.0,
                lam=0.95,
                whiten_advantages=True,
                entropy_coef=0.0,
                ptx_coef=0.0,  # > 0 for PPO-ptx
                ptx_batch_size=16,  # rows
                # > 1: whole ptx documents packed up to this many to a row of ptx_row_len
                # tokens (0: data.max_len), each attending only to itself.
                ptx_documents_per_row=1,
                ptx_row_len=0,
                temperature=1.0,
                max_new_tokens=48,
                kl_kind="fixed",  # or "adaptive"
                kl_coef=0.02,  # InstructGPT's beta
                kl_target=6.0,
                kl_horizon=10_000,
                score_clip=0.0,  # 0 disables
                missing_eos_penalty=0.0,  # 0 disables; e.g. -1.0
                # "reward": a separate value model initialised from the RM (InstructGPT);
                # "policy_head": a ValueHead on the policy's backbone (one forward, joint loss).
                value_model="reward",
                value_coef=0.1,  # weight of the value loss in the joint loss (policy_head only)
                # "model": the RM at model.reward_dir; "gold": the instruction world's gold
                # labeler (a diagnostic: PPO with a perfect reward; world prompts only).
                reward="model",
                # "gae" (InstructGPT) or "leave_one_out": each response's return minus the mean
                # of the other samples_per_prompt - 1 responses to its prompt (RLOO).
                advantage="gae",
                samples_per_prompt=1,  # rollout rows per prompt (>= 2 for leave_one_out)
                eval_batches=2,
                sample_rows=8,
            )
        )
        # PPO-ptx's "pretraining" stand-in here: the HH chosen dialogues (loss on every token).
        c.ptx = ml_collections.ConfigDict(
            dict(name="", split="test[:90%]", eval_split="test[90%:]")
        )
    else:
        raise ValueError(f"Unknown stage {stage!r}; expected 'sft', 'reward' or 'ppo'.")
    return c
