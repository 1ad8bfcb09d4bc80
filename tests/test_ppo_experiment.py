"""experiments.ppo end to end in subprocesses: a run with PPO-ptx, and a run killed with SIGKILL
after a checkpoint and restarted, which must end where the uninterrupted run ends."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import chex
import numpy as np
import pytest

from rlhf_jax.data.tokenizer import train_bpe_tokenizer
from rlhf_jax.models import CausalLM, ScalarModel, TransformerConfig, hf
from rlhf_jax.training import export
from rlhf_jax.training import state as state_lib
from rlhf_jax.training.metrics_writer import read_metrics

from .test_checkpoint_resume import REPO, finished_steps, subprocess_env

ITERATIONS = 8


def write_ppo_run(tmp_path: Path) -> Path:
    """Tiny SFT and RM exports (random weights), comparison data, and a config file."""
    rows = [
        {
            "prompt": f"Human: what is {i} plus {i}?\n\nAssistant:",
            "chosen": f" It is {2 * i}.",
            "rejected": " No idea.",
        }
        for i in range(48)
    ]
    data = tmp_path / "cmp.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = train_bpe_tokenizer([r["prompt"] + r["chosen"] for r in rows] * 2, 300)
    config = TransformerConfig.gpt2(
        vocab_size=300, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, max_len=48
    )
    policy_params, _ = state_lib.init_variables(CausalLM(config), 8, seed=0)
    hf.save_pretrained(
        tmp_path / "sft",
        config,
        policy_params,
        tokenizer=tokenizer.hf,
        bos_token_id=tokenizer.eos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    reward_params, _ = state_lib.init_variables(ScalarModel(config), 8, seed=1)
    export.save_model(tmp_path / "rm", config, reward_params, tokenizer=tokenizer, kind="reward")
    path = tmp_path / "ppo_run.py"
    path.write_text(
        textwrap.dedent(
            f"""
            from experiments.configs import hh_tiny

            def get_config():
                c = hh_tiny.get_config("ppo")
                c.data.update(name="jsonl/ppo_test", jsonl_kind="comparisons",
                              train_split="train[:40]", eval_split="train[40:]",
                              data_dir={str(tmp_path / "tfds")!r}, max_len=40, max_prompt_len=24)
                c.data.jsonl_files = {{"train": {str(data)!r}}}
                c.model.sft_dir = {str(tmp_path / "sft")!r}
                c.model.reward_dir = {str(tmp_path / "rm")!r}
                c.ppo.update(epochs=2, minibatches=2, max_new_tokens=8, ptx_coef=0.5,
                             ptx_batch_size=4, kl_kind="adaptive", kl_horizon=100,
                             missing_eos_penalty=-1.0, eval_batches=1, sample_rows=4)
                c.ptx.update(split="train[:40]", eval_split="train[40:]")
                c.optim.update(learning_rate=1e-3, value_learning_rate=1e-3)
                c.train.update(batch_size=8, num_steps={ITERATIONS}, log_every=1, eval_every=4,
                               checkpoint_every=2, keep_checkpoints=2)
                return c
            """
        )
    )
    return path


def command(config: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.ppo", f"--config={config}", f"--workdir={workdir}"]


@pytest.mark.slow
def test_ppo_experiment_runs_and_resumes_after_sigkill(tmp_path):
    config = write_ppo_run(tmp_path)
    env = subprocess_env()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    subprocess.run(command(config, straight), cwd=REPO, env=env, check=True, capture_output=True)

    summary = json.loads((straight / "summary.json").read_text())
    assert summary["iteration"] == ITERATIONS and not summary["preempted"]
    assert summary["train_wall_s"] > 0
    for key in ("eval_score", "sft_eval_score", "ptx_nll", "eval_pretrain_nll"):
        assert np.isfinite(summary[key]), key
    # The held-out pretraining NLL moved away from the SFT policy's (the alignment-tax figure).
    assert summary["eval_pretrain_nll"] != summary["sft_eval_pretrain_nll"]
    assert summary["kl_coef"] != pytest.approx(0.02)  # the adaptive controller acted
    records = read_metrics(straight / "metrics.jsonl")
    train_keys = set().union(*(r.keys() for r in records if "train/loss" in r))
    for key in (
        "train/rollout/score",
        "train/rollout/kl",
        "train/kl_coef",
        "train/entropy",
        "train/rollout/response_length",
        "train/policy/clipfrac",
        "train/value/value_error",
        "train/ptx/nll",
        "train/generated_tokens_per_s",
        "train/rollout_tokens_per_s",
        "train/time/rollout_s",
        "train/time/update_s",
    ):
        assert key in train_keys, key
    samples = (straight / "samples.md").read_text()
    assert samples.count("## the SFT policy (before PPO)") == 1
    assert samples.count("## evaluation") == 2 and samples.count("\n| ") >= 3 * (4 + 2)
    assert (straight / "metrics.png").exists() and (straight / "model" / "config.json").exists()

    proc = subprocess.Popen(
        command(config, resumed),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        if any(2 <= s < ITERATIONS for s in finished_steps(resumed / "checkpoints")):
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (resumed / "summary.json").exists()
    out = subprocess.run(
        command(config, resumed), cwd=REPO, env=env, check=True, capture_output=True, text=True
    )
    assert "Resumed from" in out.stdout

    _, params_straight = hf.load_pretrained(straight / "model")
    _, params_resumed = hf.load_pretrained(resumed / "model")
    chex.assert_trees_all_close(params_resumed, params_straight, atol=1e-6, rtol=0)
    log_a = [r for r in read_metrics(straight / "metrics.jsonl") if "train/loss" in r]
    log_b = [r for r in read_metrics(resumed / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in log_b] == [r["step"] for r in log_a] == list(range(1, 9))
    for key in ("train/rollout/score", "train/kl_coef", "train/value/loss", "train/ptx/nll"):
        np.testing.assert_allclose([r[key] for r in log_b], [r[key] for r in log_a], rtol=1e-5)


def test_reward_kind_picks_the_rm_or_the_gold_labeler():
    from experiments.configs import hh_tiny
    from rlhf_jax.trainers import ppo as ppo_trainer

    config = hh_tiny.get_config("ppo")
    reward_model = object()
    assert ppo_trainer._score_fn(config, reward_model, None) is reward_model  # the default
    config.ppo.reward = "gold"
    with pytest.raises(ValueError, match="only reads that world's prompts; data.name is 'anthr"):
        ppo_trainer._score_fn(config, reward_model, None)
    config.data.name = "instruction_world/prompts"
    assert callable(ppo_trainer._score_fn(config, reward_model, None))
    config.ppo.reward = "labels"
    with pytest.raises(ValueError, match="ppo.reward must be 'model' or 'gold', got 'labels'"):
        ppo_trainer._score_fn(config, reward_model, None)


def test_repeat_prompts_makes_consecutive_groups_and_keeps_counts_per_prompt():
    from rlhf_jax.trainers import ppo as ppo_trainer

    batch = {
        "tokens_bp": np.array([[1, 2], [3, 4]], np.int32),
        "mask_bp": np.array([[False, True], [True, True]]),
        "truncated_b": np.array([1, 0], np.int32),
        "skipped_b": np.array([0, 1], np.int32),
    }
    out = ppo_trainer.repeat_prompts(batch, 3)
    np.testing.assert_array_equal(out["tokens_bp"], [[1, 2]] * 3 + [[3, 4]] * 3)
    np.testing.assert_array_equal(out["mask_bp"], [[False, True]] * 3 + [[True, True]] * 3)
    np.testing.assert_array_equal(out["truncated_b"], [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["skipped_b"], [0, 0, 0, 1, 0, 0])
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in batch.items()}


@pytest.mark.slow
def test_ppo_with_lora_trains_adapters_on_the_frozen_sft_weights(tmp_path):
    """model.lora.rank > 0 (on 8 fake devices as data 4 x tensor 2): before PPO the policy is the
    SFT model (its held-out evaluation equals a full-weight run's: same score and pretraining
    NLL), only the adapters move, and the merged export is the SFT model plus what they
    learned (untargeted projections unchanged)."""
    import importlib.util

    from rlhf_jax.trainers import ppo as ppo_trainer

    spec = importlib.util.spec_from_file_location("ppo_run", write_ppo_run(tmp_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def config(rank: int, steps: int):
        c = module.get_config()
        c.model.lora.update(rank=rank, targets="query,value,up")
        c.train.update(num_steps=steps, eval_every=steps, checkpoint_every=steps)
        c.mesh.update(data=4, fsdp=1, tensor=2)
        c.ppo.ptx_batch_size = 8
        return c

    lora = ppo_trainer.train_and_evaluate(config(4, 3), str(tmp_path / "ppo_lora"))
    full = ppo_trainer.train_and_evaluate(config(0, 1), str(tmp_path / "ppo_full"))
    assert lora["iteration"] == 3 and np.isfinite(lora["eval_score"])
    for key in ("sft_eval_score", "sft_eval_pretrain_nll", "sft_eval_duplicate_rate"):
        assert lora[key] == full[key], key
    assert lora["eval_kl"] != 0.0  # the adapters moved the policy away from the reference
    _, sft = hf.load_pretrained(tmp_path / "sft")
    _, merged = hf.load_pretrained(tmp_path / "ppo_lora" / "model")
    up = lambda p: p["params"]["decoder"]["layer_0"]["mlp"]["up"]["kernel"]  # noqa: E731
    key = lambda p: p["params"]["decoder"]["layer_0"]["attn"]["key"]["kernel"]  # noqa: E731
    assert not np.allclose(up(merged), up(sft))  # adapted
    np.testing.assert_array_equal(key(merged), key(sft))  # not a target: unchanged
