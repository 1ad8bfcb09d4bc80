"""The InstructGPT recipe as a job of named stages, each in its own folder of the workdir:

  world           the world's TFDS datasets (workdir/tfds) and a BPE tokenizer trained on them
  pretrain_<size> base models on the pretraining corpus (the SFT trainer, loss on every token)
  sft_<size>      SFT from each base model on the demonstrations
  rank            K = 4..9 samples of the small SFT model per prompt, ranked by a noisy labeler
                  whose temperature gives the target inter-labeler agreement
  rm              the reward model from the small SFT model
  rm_families     its held-out accuracy per task family, beside the gold ordering's
  best_of_n       N samples of the small SFT model per held-out prompt: the RM's pick and the
                  gold labeler's pick against SFT's greedy answer (what reranking can gain)
  ppo, ppo_ptx    PPO and PPO-ptx from the small SFT model
  evaluate        every model answers the held-out prompts; the gold labeler judges
  report          report.md, metrics.json and PNG plots in the workdir

`run(config, workdir)` runs them all (what `python -m experiments.instructgpt` calls); a notebook
calls them one group at a time: `build_world`, `pretrain`, `train_sft`, `sample_and_rank`,
`train_reward_models`, `best_of_n`, `train_policies`, `evaluate`, `write_report`. A stage whose
folder holds its `summary.json` is finished and skipped when called again (summaries are written
whole or not at all; one that cannot be read runs its stage again); a stage killed midway resumes
from its checkpoints. Wall time per stage, and the part of it spent in XLA's compiler, is printed
and reported.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable

import jax
import ml_collections

from rlhf_jax.recipes.instructgpt import presets, report
from rlhf_jax.recipes.instructgpt.labeler_stages import (
    evaluated_models,
    extra_models,
    stage_best_of_n,
    stage_evaluate,
    stage_rank,
    stage_rm_families,
    stage_world,
)
from rlhf_jax.recipes.instructgpt.stage_configs import (
    ppo_config,
    pretrain_config,
    reward_config,
    sft_config,
)
from rlhf_jax.trainers import ppo, reward, setup, sft
from rlhf_jax.world import corpus


def stages(config, workdir: str) -> list[tuple[str, Callable[[str], dict]]]:
    """(name, `fn(out_dir) -> summary`) of every stage, in order. A trainer's config is made when
    its stage runs."""

    def trainer(train_and_evaluate, make_config, *args) -> Callable[[str], dict]:
        return lambda out: train_and_evaluate(make_config(config, workdir, *args), out)

    items = [("world", lambda out: stage_world(config, workdir, out))]
    for size in config.sizes:
        items.append((f"pretrain_{size}", trainer(sft.train_and_evaluate, pretrain_config, size)))
    for size in config.sizes:
        items.append((f"sft_{size}", trainer(sft.train_and_evaluate, sft_config, size)))
    items += [
        ("rank", lambda out: stage_rank(config, workdir, out)),
        ("rm", trainer(reward.train_and_evaluate, reward_config)),
        ("rm_families", lambda out: stage_rm_families(config, workdir, out)),
        ("best_of_n", lambda out: stage_best_of_n(config, workdir, out)),
        ("ppo", trainer(ppo.train_and_evaluate, ppo_config, False)),
        ("ppo_ptx", trainer(ppo.train_and_evaluate, ppo_config, True)),
        ("evaluate", lambda out: stage_evaluate(config, workdir, out)),
    ]
    return items


def _outdated(stage: str, finished: dict, config) -> str | None:
    """Why a finished stage's summary no longer answers `config` (None: it does). Only the
    evaluation has such a setting: the models it judges beside the run's own."""
    if stage == "evaluate" and finished.get("extra_models", {}) != dict(extra_models(config)):
        return "eval.extra_models changed, so it runs again"
    return None


def _read_summary(name: str, path: str) -> dict | None:
    """A stage's `summary.json`, or None where there is none or it cannot be read (the stage then
    runs again; a training stage resumes from its last checkpoint)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:  # ValueError covers JSONDecodeError and bad UTF-8
        print(f"[instructgpt] {name}: {path} is unreadable ({e}), so it runs again.", flush=True)
        return None
    if not isinstance(summary, dict):
        print(f"[instructgpt] {name}: {path} holds no summary, so it runs again.", flush=True)
        return None
    return summary


class _CompileClock:
    """Seconds this process has spent in XLA's compiler, or loading a compiled program from the
    persistent cache, since the clock was made (jax.monitoring's compile-duration events)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration_s: float, **kwargs) -> None:
        if event == self.EVENT:
            self.seconds += duration_s


@functools.cache
def _compile_clock() -> _CompileClock:
    """The process's one clock (a listener cannot be taken back, so it is registered once)."""
    return _CompileClock()


def _check(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Settings that would fail late fail now, before any stage runs."""
    evaluated_models(config, workdir)  # a bad eval.extra_models
    corpus.WorldConfig(**presets.world_settings(config))  # a world rate outside [0, 1]


def _run_stage(
    config: ml_collections.ConfigDict, workdir: str, name: str, fn: Callable[[str], dict]
) -> dict:
    """Stage `name`'s summary: read from its folder when it finished earlier, else from running
    `fn(out_dir)`, timed, with the seconds spent compiling, and saved as its summary.json."""
    out = os.path.join(workdir, name)
    path = os.path.join(out, "summary.json")
    finished = _read_summary(name, path)
    if finished is not None:
        outdated = _outdated(name, finished, config)
        if not finished.get("preempted") and not outdated:
            print(f"[instructgpt] {name}: finished earlier, skipped.", flush=True)
            return finished
        if outdated:
            print(f"[instructgpt] {name}: finished earlier, but {outdated}.", flush=True)
    os.makedirs(out, exist_ok=True)
    print(f"[instructgpt] {name} ...", flush=True)
    start, compiled = time.perf_counter(), _compile_clock().seconds
    summary = dict(fn(out))
    if summary.get("preempted"):
        raise SystemExit(f"[instructgpt] {name} was stopped; rerun the command to resume.")
    summary["wall_s"] = time.perf_counter() - start
    summary["compile_s"] = _compile_clock().seconds - compiled
    if setup.is_chief():
        setup.write_json_atomically(path, summary)
    print(
        f"[instructgpt] {name}: {summary['wall_s']:.1f} s "
        f"(XLA compiling: {summary['compile_s']:.1f} s)",
        flush=True,
    )
    return summary


def run(config: ml_collections.ConfigDict, workdir: str, until: str | None = None) -> dict:
    """Runs (or finishes) every stage and writes the report; returns the report's metrics.

    With `until` (a stage name), stops after that stage and returns {stage: summary} of the
    stages so far, without a report (e.g. `until="rank"` makes the ranked data for a new reward
    model loss).
    """
    workdir = os.path.abspath(workdir)
    all_stages = stages(config, workdir)
    names = [name for name, _ in all_stages]
    if until is not None and until not in names:
        raise ValueError(f"Unknown stage until={until!r}; the stages are {names}.")
    _check(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    setup.write_config(config, workdir)
    summaries = {}
    for name, fn in all_stages[: names.index(until) + 1 if until else len(all_stages)]:
        summaries[name] = _run_stage(config, workdir, name, fn)
    if until is not None:
        return summaries
    return _report(config, workdir, summaries)


def _report(config: ml_collections.ConfigDict, workdir: str, summaries: dict) -> dict:
    seconds = {name: summary.get("wall_s") for name, summary in summaries.items()}
    metrics = report.write_report(config, workdir, summaries, seconds)
    print(json.dumps(metrics["headline"]), flush=True)
    return metrics


# ---------------------------------------------------------------------------------------------
# The stages one group at a time (a notebook's view of the same job)
# ---------------------------------------------------------------------------------------------


def run_stages(config: ml_collections.ConfigDict, workdir: str, names: list[str]) -> dict:
    """{name: summary} of the stages `names`, run (or read where they finished earlier) in the
    job's order. Every stage before them must have finished: a ValueError names the first that
    has not."""
    workdir = os.path.abspath(workdir)
    all_stages = stages(config, workdir)
    order = [name for name, _ in all_stages]
    if unknown := [name for name in names if name not in order]:
        raise ValueError(f"Unknown stages {unknown}; the stages are {order}.")
    first = min(order.index(name) for name in names)
    for name in order[:first]:
        if _read_summary(name, os.path.join(workdir, name, "summary.json")) is None:
            raise ValueError(f"Stage {name!r} has not finished in {workdir}: run it first.")
    _check(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    setup.write_config(config, workdir)
    return {name: _run_stage(config, workdir, name, fn) for name, fn in all_stages if name in names}


def build_world(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The world's datasets and tokenizer: the `world` stage's summary."""
    return run_stages(config, workdir, ["world"])["world"]


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """{size: summary} of the base models pretrained on the world's corpus."""
    out = run_stages(config, workdir, [f"pretrain_{size}" for size in config.sizes])
    return {size: out[f"pretrain_{size}"] for size in config.sizes}


def train_sft(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """{size: summary} of the SFT models fine-tuned from each base model."""
    out = run_stages(config, workdir, [f"sft_{size}" for size in config.sizes])
    return {size: out[f"sft_{size}"] for size in config.sizes}


def sample_and_rank(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The `rank` stage: K samples per prompt ranked by a noisy labeler (workdir/rank/*.jsonl)."""
    return run_stages(config, workdir, ["rank"])["rank"]


def train_reward_models(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """{"rm": the reward model's summary, "rm_families": its accuracy per task family}."""
    return run_stages(config, workdir, ["rm", "rm_families"])


def best_of_n(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The `best_of_n` stage: what reranking N samples with the RM or the gold labeler gains."""
    return run_stages(config, workdir, ["best_of_n"])["best_of_n"]


def train_policies(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """{"ppo": summary, "ppo_ptx": summary} of the two policies trained against the RM."""
    return run_stages(config, workdir, ["ppo", "ppo_ptx"])


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The `evaluate` stage: every model answers the held-out prompts; the gold labeler judges."""
    return run_stages(config, workdir, ["evaluate"])["evaluate"]


def write_report(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """report.md, metrics.json and the plots from every stage's saved summary; returns the
    metrics (the same as `run`'s once every stage has finished)."""
    workdir = os.path.abspath(workdir)
    names = [name for name, _ in stages(config, workdir)]
    summaries = {}
    for name in names:
        summary = _read_summary(name, os.path.join(workdir, name, "summary.json"))
        if summary is None or summary.get("preempted"):
            raise ValueError(f"Stage {name!r} has not finished in {workdir}: run it first.")
        summaries[name] = summary
    return _report(config, workdir, summaries)
