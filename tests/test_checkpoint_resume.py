"""Checkpoints: kill -9 and resume to the same params, restore on another mesh, corrupted files."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import chex
import grain
import jax
import numpy as np
import pytest

from rlhf_jax import sharding
from rlhf_jax.models import CausalLM, hf
from rlhf_jax.training import checkpoint, optim
from rlhf_jax.training import state as state_lib
from rlhf_jax.training.metrics_writer import read_metrics

from .test_training import T, tiny_config

REPO = Path(__file__).resolve().parents[1]


def write_run_config(tmp_path: Path, documents_per_row: int = 1) -> Path:
    rows = [
        {"prompt": f"Human: what is {i} plus {i}?\n\nAssistant:", "response": f" It is {2 * i}."}
        for i in range(64)
    ]
    data = tmp_path / "demos.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "tiny_run.py"
    config.write_text(
        textwrap.dedent(
            f"""
            from experiments.configs import hh_tiny

            def get_config():
                c = hh_tiny.get_config("sft")
                c.data.name = "jsonl/resume_test"
                c.data.jsonl_kind = "demonstrations"
                c.data.jsonl_files = {{"train": {str(data)!r}}}
                c.data.train_split = "train[:56]"
                c.data.eval_split = "train[56:]"
                c.data.data_dir = {str(tmp_path / "tfds")!r}
                c.data.max_len = 24
                c.data.max_prompt_len = 16
                c.tokenizer.vocab_size = 300
                c.model.update(num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, max_len=24)
                c.model.dropout_rate = 0.1
                c.train.update(batch_size=8, num_steps=24, log_every=2, eval_every=0,
                               checkpoint_every=2, keep_checkpoints=2)
                c.data.documents_per_row = {documents_per_row}
                c.data.packed_row_len = 48
                return c
            """
        )
    )
    return config


def finished_steps(directory: Path) -> list[int]:
    """Finalised checkpoint steps (orbax renames `<step>.orbax-checkpoint-tmp` when done)."""
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def run_command(config: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.sft", f"--config={config}", f"--workdir={workdir}"]


def subprocess_env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one CPU device: the same mesh before and after the kill
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.mark.slow
@pytest.mark.parametrize("documents_per_row", [1, 3])  # padded rows; whole records packed
def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted(tmp_path, documents_per_row):
    config = write_run_config(tmp_path, documents_per_row)
    env = subprocess_env()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    subprocess.run(
        run_command(config, straight), cwd=REPO, env=env, check=True, capture_output=True
    )

    proc = subprocess.Popen(
        run_command(config, resumed),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint_dir = resumed / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline:
        steps = finished_steps(checkpoint_dir)
        if any(2 <= s < 24 for s in steps):
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (resumed / "summary.json").exists()
    killed_at = max(finished_steps(checkpoint_dir))
    assert killed_at < 24

    out = subprocess.run(
        run_command(config, resumed), cwd=REPO, env=env, check=True, capture_output=True, text=True
    )
    assert f"Resumed from {checkpoint_dir} at step" in out.stdout

    _, params_straight = hf.load_pretrained(straight / "model")
    _, params_resumed = hf.load_pretrained(resumed / "model")
    chex.assert_trees_all_close(params_resumed, params_straight, atol=1e-6, rtol=0)
    # Same data order and losses: the metric logs agree step for step (the killed run's records
    # after its last checkpoint were dropped on resume).
    log_a = [r for r in read_metrics(straight / "metrics.jsonl") if "train/loss" in r]
    log_b = [r for r in read_metrics(resumed / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b] == list(range(2, 25, 2))
    np.testing.assert_allclose(
        [r["train/loss"] for r in log_b], [r["train/loss"] for r in log_a], rtol=1e-6
    )
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["step"] == 24 and not summary["preempted"]
    if documents_per_row > 1:
        assert summary["train_packed_rows"] < 56 and summary["documents_per_row"] > 1


@pytest.mark.slow
def test_sigterm_saves_and_stops(tmp_path):
    config = write_run_config(tmp_path)
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        run_command(config, workdir) + ["--config.train.checkpoint_every=0"],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (workdir / "metrics.jsonl").exists():
        time.sleep(0.02)
    while time.time() < deadline and not (workdir / "metrics.jsonl").read_text():
        time.sleep(0.02)  # training has started
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["preempted"] and summary["step"] < 24
    saved = finished_steps(workdir / "checkpoints")
    assert saved == [summary["step"]]  # checkpoint_every=0: only the SIGTERM save


def _state_and_iterator(mesh):
    model = CausalLM(tiny_config())
    params, specs = state_lib.init_variables(model, T, seed=0)
    tx = optim.make_optimizer(learning_rate=1e-3, warmup_steps=1, total_steps=4)
    shardings = state_lib.state_shardings(
        sharding.logical_shardings(specs, mesh, shapes=params), tx, params, mesh
    )
    state = sharding.put_on_mesh(state_lib.create_state(params, tx, seed=0), shardings)
    iterator = iter(grain.MapDataset.range(100).shuffle(seed=1).batch(4).to_iter_dataset())
    return state, shardings, iterator


def test_restore_onto_a_different_mesh(tmp_path):
    state, _, iterator = _state_and_iterator(sharding.make_mesh(data=8))
    next(iterator)
    expected_next = next(iterator)
    state_first, _, iterator_a = _state_and_iterator(sharding.make_mesh(data=8))
    next(iterator_a)
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, state_first, iterator_a, {"note": "saved on data=8"})

    other_mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    target, target_shardings, fresh_iterator = _state_and_iterator(other_mesh)
    restored, meta = ckpt.restore(
        checkpoint.abstract_like(target, target_shardings), fresh_iterator
    )
    assert meta["note"] == "saved on data=8"
    chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(state))
    kernel = restored.params["params"]["decoder"]["layer_0"]["mlp"]["up"]["kernel"]
    assert kernel.sharding.mesh.shape == other_mesh.shape
    assert (
        kernel.sharding.spec
        == target_shardings.params["params"]["decoder"]["layer_0"]["mlp"]["up"]["kernel"].spec
    )
    np.testing.assert_array_equal(next(fresh_iterator), expected_next)  # data position restored


def test_corrupted_newest_checkpoint_falls_back_then_fails_clearly(tmp_path):
    mesh = sharding.make_mesh(data=8)
    state, shardings, iterator = _state_and_iterator(mesh)
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", keep=3)
    ckpt.save(1, state, iterator, {})
    ckpt.save(2, state.replace(step=state.step + 1), iterator, {})
    # Corrupt step 2: its state files are gone (a disk error, a partial copy).
    shutil.rmtree(tmp_path / "ckpt" / "2" / "state")
    abstract = checkpoint.abstract_like(state, shardings)
    restored, _ = checkpoint.Checkpointer(tmp_path / "ckpt").restore(abstract, iterator)
    assert int(restored.step) == 0  # step 1's checkpoint holds the state at step 0
    shutil.rmtree(tmp_path / "ckpt" / "1" / "state")
    with pytest.raises(checkpoint.CheckpointError, match="No checkpoint in .* could be restored"):
        checkpoint.Checkpointer(tmp_path / "ckpt").restore(abstract, iterator)
    assert checkpoint.Checkpointer(tmp_path / "empty").restore(abstract, iterator) is None
