"""experiments.reward end to end on comparisons the test writes (K = 3 with ties)."""

import json

import jax
import numpy as np
import pytest

from experiments import common
from experiments import reward as reward_experiment
from experiments.configs import hh_tiny, qa_feedback_tiny
from rlhf_jax.data import pipeline
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.models import ScalarModel
from rlhf_jax.training import export, reward


@pytest.mark.slow
def test_reward_experiment_runs_and_normalises(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        ranking = [0, 1, 1] if i % 4 else [2, 0, 1]  # ties inside some prompts
        rows.append(
            {
                "prompt": f"Human: say something about {i}.\n\nAssistant:",
                "responses": [f" good answer {i}.", f" meh {rng.integers(9)}", " bad"],
                "ranking": ranking,
            }
        )
    data = tmp_path / "cmp.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = hh_tiny.get_config("reward")
    config.data.update(
        name="jsonl/rm_test",
        jsonl_kind="comparisons",
        train_split="train[:40]",
        eval_split="train[40:]",
        data_dir=str(tmp_path / "tfds"),
        max_len=24,
        max_prompt_len=16,
        max_responses=3,
    )
    config.data.jsonl_files = {"train": str(data)}
    config.reward.reference_split = "train[:40]"
    config.tokenizer.vocab_size = 300
    config.model.update(num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, max_len=24)
    config.train.update(batch_size=8, num_steps=6, log_every=3, eval_every=3, checkpoint_every=3)

    summary = reward_experiment.run(config, str(tmp_path / "rm"))
    assert summary["step"] == 6 and summary["heldout_prompts"] == 8
    # Every strict pair of the held-out prompts is counted once (ties give none).
    heldout = common.open_split(config.data, "train[40:]")
    assert summary["heldout_pairs"] == sum(len(heldout[i]["pairs"]) for i in range(8))
    assert {len(heldout[i]["pairs"]) for i in range(len(heldout))} <= {2, 3}
    low, high = summary["heldout_accuracy_wilson95"]
    assert 0 <= low <= summary["heldout_pairwise_accuracy"] <= high <= 1

    kind, model_config, params = export.load_model(tmp_path / "rm" / "model")
    assert kind == "reward"
    tokenizer = Tokenizer.from_pretrained(tmp_path / "rm" / "model" / "tokenizer")

    reference = common.open_split(config.data, "train[:40]")
    batches = common.eval_batches(
        reference,
        pipeline.TokenizeDemonstration(tokenizer, common.sequence_spec(config.data)),
        8,
        0,
    )
    scorer = jax.jit(reward.make_demonstration_scorer(ScalarModel(model_config)))
    # The saved model's reference responses score mean 0 (the stored bias normalisation).
    assert abs(reward.mean_reference_reward(scorer, params, batches)) < 1e-4
    assert summary["reference_responses"] == 40
    assert (tmp_path / "rm" / "metrics.png").exists()
    assert list((tmp_path / "rm" / "tensorboard").iterdir())


def test_shipped_configs_load():
    for variant in ("sft", "reward"):
        config = hh_tiny.get_config(variant)
        assert config.train.batch_size % config.train.grad_accum == 0
    qa = qa_feedback_tiny.get_config()
    assert qa.data.max_responses == 4 and qa.reward.reference_name == "qa_feedback/gold"
