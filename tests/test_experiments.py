"""experiments.reward end to end on comparisons the test writes (K = 3 with ties)."""

import json

import jax
import numpy as np
import pytest

from experiments.configs import gpt2_hh, hh_tiny, llama_tpu, qa_feedback_tiny
from rlhf_jax.data import pipeline
from rlhf_jax.data.tokenizer import Tokenizer, train_bpe_tokenizer
from rlhf_jax.models import ScalarModel, hf
from rlhf_jax.trainers import reward as reward_trainer
from rlhf_jax.trainers import run as trainer_run
from rlhf_jax.trainers import setup
from rlhf_jax.trainers import sft as sft_trainer
from rlhf_jax.training import export, reward
from tests.hf_reference import reference_model


def use_jsonl_rows(config, tmp_path, name: str, kind: str, rows: list, train: int, **data) -> None:
    """Points `config.data` at `rows` written as a JSONL file: jsonl/`name` of `kind`, the first
    `train` records for training and the rest for evaluation, plus the other `data` fields."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config.data.update(
        name=f"jsonl/{name}",
        jsonl_kind=kind,
        train_split=f"train[:{train}]",
        eval_split=f"train[{train}:]",
        data_dir=str(tmp_path / "tfds"),
        **data,
    )
    config.data.jsonl_files = {"train": str(path)}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["response_rows", "packed_rows"])
def test_reward_experiment_runs_and_normalises(tmp_path, layout):
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
    config = hh_tiny.get_config("reward")
    use_jsonl_rows(
        config,
        tmp_path,
        "rm_test",
        "comparisons",
        rows,
        40,
        max_len=24,
        max_prompt_len=16,
        max_responses=3,
    )
    config.reward.reference_split = "train[:40]"
    config.tokenizer.vocab_size = 300
    config.model.update(num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, max_len=24)
    config.train.update(batch_size=8, num_steps=6, log_every=3, eval_every=3, checkpoint_every=3)
    if layout == "packed_rows":  # several comparisons per row; batch_size then counts rows
        config.data.update(shared_prompt_row_len=48, comparisons_per_row=4)

    summary = reward_trainer.train_and_evaluate(config, str(tmp_path / "rm"))
    assert summary["step"] == 6 and summary["heldout_prompts"] == 8 and summary["train_wall_s"] > 0
    if layout == "packed_rows":
        assert summary["comparisons_per_row"] > 1.3 and summary["train_rows"] < 40 / 1.3
        assert 0 < summary["row_fill"] <= 1
    # Every strict pair of the held-out prompts is counted once (ties give none).
    heldout = setup.open_split(config.data, "train[40:]")
    assert summary["heldout_pairs"] == sum(len(heldout[i]["pairs"]) for i in range(8))
    assert {len(heldout[i]["pairs"]) for i in range(len(heldout))} <= {2, 3}
    low, high = summary["heldout_accuracy_wilson95"]
    assert 0 <= low <= summary["heldout_pairwise_accuracy"] <= high <= 1

    kind, model_config, params = export.load_model(tmp_path / "rm" / "model")
    assert kind == "reward"
    tokenizer = Tokenizer.from_pretrained(tmp_path / "rm" / "model" / "tokenizer")

    reference = setup.open_split(config.data, "train[:40]")
    batches = trainer_run.eval_batches(
        reference,
        pipeline.TokenizeDemonstration(tokenizer, setup.sequence_spec(config.data)),
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


def test_real_configs_are_complete_and_consistent():
    """gpt2_hh and llama_tpu are documented, not run here: check what can be checked offline."""
    for variant in ("sft", "reward"):
        gpt2 = gpt2_hh.get_config(variant)
        assert gpt2.model.init == "pretrained" and gpt2.model.name_or_path == "gpt2"
        assert gpt2.tokenizer.path == "gpt2" and gpt2.data.name == "anthropic_hh/helpful-base"
        assert not gpt2.data.manual_dir  # downloads from GitHub
        assert gpt2.data.max_len <= gpt2.model.max_len == 1024  # GPT-2's position table
        assert gpt2.model.dropout_rate == 0.2  # InstructGPT's SFT dropout

        llama = llama_tpu.get_config(variant)
        assert llama.model.dtype == "bfloat16" and llama.model.param_dtype == "float32"
        assert llama.model.remat and llama.mesh.tensor == 4 and llama.mesh.fsdp == -1
        for chips in (64, 256):  # every slice size the docstring names splits the batch evenly
            fsdp = chips // llama.mesh.tensor
            assert llama.train.batch_size % (llama.mesh.data * fsdp * llama.train.grad_accum) == 0
        # The Llama-3.1 8B geometry divides over the tensor axis (32 heads, 8 KV heads).
        assert 8 % llama.mesh.tensor == 0 and 14336 % llama.mesh.tensor == 0
    assert llama_tpu.get_config("sft").data.name == "alpaca/alpaca"
    assert gpt2_hh.get_config("reward").loss == "kwise_ranking"
    with pytest.raises(ValueError, match="variant"):
        gpt2_hh.get_config("dpo")
    for ppo in (gpt2_hh.get_config("ppo"), llama_tpu.get_config("ppo")):
        assert ppo.loss == "ppo_policy" and ppo.model.dropout_rate == 0.0
        # prompt + response fit the sequence length the models were trained at
        assert ppo.data.max_prompt_len + ppo.ppo.max_new_tokens <= ppo.data.max_len
        assert ppo.train.batch_size % ppo.ppo.minibatches == 0
    llama = llama_tpu.get_config("ppo")
    assert llama.ptx.name == "alpaca/alpaca" and llama.data.name == "anthropic_hh/helpful-base"
    for chips in (64, 256):  # rollout batches and PPO minibatches split over data x fsdp
        ways = llama.mesh.data * chips // llama.mesh.tensor
        minibatch = llama.train.batch_size // llama.ppo.minibatches
        assert llama.train.batch_size % ways == 0 and minibatch % ways == 0
        assert llama.ppo.ptx_batch_size % ways == 0


def test_llama_tpu_model_fields_reach_the_loaded_model(tmp_path):
    torch_model, _, _ = reference_model("llama")
    torch_model.save_pretrained(tmp_path / "llama")
    model_config, params = hf.load_pretrained(
        tmp_path / "llama", **setup.model_overrides(llama_tpu.get_config("sft").model)
    )
    assert (model_config.dtype, model_config.param_dtype) == ("bfloat16", "float32")
    assert model_config.remat and model_config.dropout_rate == 0.0
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))


@pytest.mark.slow
def test_gpt2_config_runs_sft_from_a_local_checkpoint(tmp_path):
    """The gpt2_hh SFT path (pretrained init, tokenizer from a path, transformers export) with a
    tiny local GPT-2 and tokenizer standing in for the hub's and jsonl data for HH's."""
    rows = [
        {
            "prompt": f"Human: count to {i}.\n\nAssistant:",
            "response": " " + " ".join("123"[: i % 3 + 1]),
        }
        for i in range(24)
    ]
    tokenizer = train_bpe_tokenizer([r["prompt"] + r["response"] for r in rows] * 4, 300)
    tokenizer.save_pretrained(tmp_path / "tok")
    torch_model, _, _ = reference_model("gpt2", vocab_size=300, n_positions=64)
    torch_model.save_pretrained(tmp_path / "gpt2")

    config = gpt2_hh.get_config("sft")
    config.model.update(name_or_path=str(tmp_path / "gpt2"), max_len=64)
    config.tokenizer.update(path=str(tmp_path / "tok"))
    use_jsonl_rows(
        config, tmp_path, "gpt2_test", "demonstrations", rows, 16, max_len=32, max_prompt_len=24
    )
    config.train.update(
        batch_size=16, grad_accum=2, num_steps=3, log_every=1, eval_every=3, checkpoint_every=3
    )
    summary = sft_trainer.train_and_evaluate(config, str(tmp_path / "sft"))
    assert summary["step"] == 3 and np.isfinite(summary["eval_nll"])
    # Rerunning a finished run trains nothing and reports the same figures (not nulls).
    again = sft_trainer.train_and_evaluate(config, str(tmp_path / "sft"))
    again.pop("train_wall_s"), summary.pop("train_wall_s")
    assert again == summary
    exported_config, exported = hf.load_pretrained(tmp_path / "sft" / "model")
    _, initial = hf.load_pretrained(tmp_path / "gpt2")
    assert exported_config.vocab_size == 300 and exported_config.dropout_rate == 0.0
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), exported, initial)
    assert any(jax.tree.leaves(changed))  # trained from the checkpoint, not from scratch


def test_a_batch_that_does_not_split_over_the_mesh_is_a_clear_error(tmp_path):
    """experiments.sft refuses a batch size that data x fsdp x grad_accum does not divide, before
    any step runs (8 fake devices here: the mesh's data axis takes all 8)."""
    rows = [{"prompt": f"Human: say {i}.", "response": f" {i}"} for i in range(24)]
    config = hh_tiny.get_config("sft")
    use_jsonl_rows(
        config, tmp_path, "mesh_test", "demonstrations", rows, 16, max_len=16, max_prompt_len=8
    )
    config.tokenizer.vocab_size = 300
    config.model.update(num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, max_len=16)
    config.train.update(batch_size=12, grad_accum=1, num_steps=2)
    message = r"train.batch_size=12 must be a multiple of data x fsdp \(8\) x grad_accum \(1\)"
    with pytest.raises(ValueError, match=message):
        sft_trainer.train_and_evaluate(config, str(tmp_path / "sft"))
    assert not (tmp_path / "sft" / "checkpoints").exists()


def test_sft_row_layouts_and_their_errors():
    """experiments.sft's data options: one padded row each, whole records packed per row (the
    summary counts them), a stream cut into rows; the two packings exclude each other."""
    records = [{"prompt": f"say {i}", "response": f" {i} {i + 1}"} for i in range(40)]
    tokenizer = train_bpe_tokenizer([r["prompt"] + r["response"] for r in records], 200)
    config = hh_tiny.get_config("sft")
    config.data.update(max_len=32, max_prompt_len=16)
    spec = setup.sequence_spec(config.data)
    transform = pipeline.TokenizeDemonstration(tokenizer, spec)
    rows, used, summary = sft_trainer._train_rows(config, records, tokenizer, spec, transform)
    assert rows is records and used is transform and summary == {}
    config.data.documents_per_row = 3
    rows, used, summary = sft_trainer._train_rows(config, records, tokenizer, spec, transform)
    assert isinstance(used, pipeline.TokenizeDemonstrationRow) and used.row_len == 32
    assert summary["train_rows"] == len(rows) < 40 and rows.count == 40
    assert summary["documents_per_row"] == pytest.approx(40 / len(rows))
    config.data.pack_documents = True
    with pytest.raises(ValueError, match="pack_documents excludes data.documents_per_row"):
        sft_trainer._train_rows(config, records, tokenizer, spec, transform)
    config.data.documents_per_row = 0
    with pytest.raises(ValueError, match="documents_per_row must be >= 1"):
        sft_trainer._train_rows(config, records, tokenizer, spec, transform)
    config.data.documents_per_row = 1
    rows, used, summary = sft_trainer._train_rows(config, records, tokenizer, spec, transform)
    assert summary == {"train_rows": len(rows)} and rows.rows_nt.shape[1] == 32


def test_ppo_ptx_row_layouts_and_their_errors():
    """experiments.ppo's pretraining rows: one padded row per document with a loss on every token,
    or whole documents packed per row (`ppo.ptx_documents_per_row`, every token a target too)."""
    from rlhf_jax.trainers import ppo as ppo_trainer

    records = [{"prompt": "", "response": f"{i} {i + 1}"} for i in range(40)]
    tokenizer = train_bpe_tokenizer([r["response"] for r in records], 200)
    config = hh_tiny.get_config("ppo")
    config.data.update(max_len=32, max_prompt_len=16)
    rows, transform, summary = ppo_trainer._ptx_rows(config, tokenizer, records)
    assert rows is records and summary == {}
    one = transform.map(records[0])
    assert one["loss_mask_t"].sum() == one["mask_t"].sum()  # every token, not only a response
    config.ppo.ptx_documents_per_row = 3
    rows, transform, summary = ppo_trainer._ptx_rows(config, tokenizer, records)
    assert isinstance(transform, pipeline.TokenizeDemonstrationRow) and transform.loss_on_prompt
    assert summary["train_rows"] == len(rows) < 40 and rows.count == 40
    row = transform.map(rows[0])
    starts = (row["positions_t"] == 0) & (row["documents_t"] >= 0)
    # Every token of each document but its first is a target.
    assert row["loss_mask_t"].sum() == (row["documents_t"] >= 0).sum() - starts.sum() > 0
    config.ppo.ptx_documents_per_row = 0
    with pytest.raises(ValueError, match="ptx_documents_per_row must be >= 1"):
        ppo_trainer._ptx_rows(config, tokenizer, records)


def test_lora_needs_a_pretrained_model_and_the_reward_trainer_refuses_it(tmp_path):
    config = hh_tiny.get_config("sft")
    config.model.lora.rank = 4
    with pytest.raises(ValueError, match="adapts a pretrained model: set model.init='pretrained'"):
        sft_trainer.train_and_evaluate(config, str(tmp_path / "sft"))
    config = hh_tiny.get_config("reward")
    config.model.lora.rank = 4
    with pytest.raises(ValueError, match="the reward trainer trains every weight so far"):
        reward_trainer.train_and_evaluate(config, str(tmp_path / "rm"))
