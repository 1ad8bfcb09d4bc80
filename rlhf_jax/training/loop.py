"""The host-side training loop shared by SFT and reward-model training.

It owns everything impure: iterating data, placing batches, logging, evaluation, checkpoints,
SIGTERM and non-finite losses. The step itself is a pure jitted function.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from rlhf_jax.training.checkpoint import Checkpointer
from rlhf_jax.training.metrics_writer import MetricWriter
from rlhf_jax.training.state import TrainState, step_rng


class NonFiniteLossError(FloatingPointError):
    """Too many consecutive steps had a NaN/inf loss or gradient."""


class SigtermFlag:
    """Context manager: SIGTERM sets `.raised` instead of killing the process, so that the loop
    saves a checkpoint and returns (preemptible machines send SIGTERM before stopping)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def _handler(self, signum, frame):
        logging.warning("SIGTERM: saving a checkpoint and stopping.")
        self.raised = True

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)


def sum_metrics(total: dict | None, metrics: dict) -> dict:
    """Adds (sum, count) metric dicts on the host (float64)."""
    host = {k: (float(s), float(c)) for k, (s, c) in jax.device_get(metrics).items()}
    if total is None:
        return host
    return {k: (total[k][0] + s, total[k][1] + c) for k, (s, c) in host.items()}


def means(total: dict) -> dict[str, float]:
    return {k: (s / c if c else float("nan")) for k, (s, c) in total.items()}


@dataclasses.dataclass
class LoopConfig:
    """num_steps: optimizer steps in total; every *_every is in steps (0 disables)."""

    num_steps: int
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 100
    max_nonfinite: int = 0  # skipped (non-finite) steps tolerated per logging window


@dataclasses.dataclass
class LoopResult:
    state: TrainState
    preempted: bool
    last_train: dict[str, float]
    last_eval: dict[str, float]


def train_loop(
    *,
    state: TrainState,
    train_step: Callable,
    train_iter: Iterator[dict[str, np.ndarray]],
    place_batch: Callable[[dict], dict],
    config: LoopConfig,
    checkpointer: Checkpointer | None,
    writer: MetricWriter,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    meta: dict | None = None,
    tokens_in_batch: Callable[[dict], int] = lambda b: 0,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> LoopResult:
    """Runs `train_step` from `state.step` to `config.num_steps`.

    Args:
      state: the (possibly restored) train state, on the mesh.
      train_step: jitted `(state, batch, rng) -> (state, metrics)`.
      train_iter: grain iterator of host batches (saved with checkpoints).
      place_batch: host batch -> sharded device batch.
      config: LoopConfig.
      checkpointer: None disables checkpoints.
      writer: metrics sink; train metrics get prefix "train/", eval "eval/".
      evaluate: `params -> {name: mean}`; run every eval_every steps and at the end.
      meta: JSON-able run metadata stored in each checkpoint.
      tokens_in_batch: host batch -> number of real tokens, for the throughput figure.
      on_log: called as on_log(step, train means) after each logged window (e.g. PPO's checks).
    """
    start = done = int(state.step)
    window, last_train, last_eval, evaluated_at = None, {}, {}, None
    tokens, t0 = 0, time.perf_counter()
    preempted = False
    bar = tqdm(total=config.num_steps, initial=start, desc="train", dynamic_ncols=True)
    with SigtermFlag() as sigterm:
        for step in range(start, config.num_steps):
            host_batch = next(train_iter)
            tokens += tokens_in_batch(host_batch)
            state, metrics = train_step(state, place_batch(host_batch), step_rng(state))
            metrics = {
                **metrics,
                "truncated": (np.sum(host_batch["truncated_b"], dtype=np.float32), 1.0),
                "skipped": (np.sum(host_batch["skipped_b"], dtype=np.float32), 1.0),
            }
            # Summed on device, fetched only when logging, so dispatch stays asynchronous.
            window = (
                metrics
                if window is None
                else jax.tree_util.tree_map(lambda a, b: a + b, window, metrics)
            )
            done = step + 1
            bar.update(1)
            if config.log_every and (done % config.log_every == 0 or done == config.num_steps):
                totals = sum_metrics(None, window)
                elapsed = time.perf_counter() - t0
                last_train = means(totals)
                last_train["tokens_per_s"] = tokens / max(elapsed, 1e-9)
                if "generated_tokens" in totals:  # PPO: sampled response tokens per second
                    last_train["generated_tokens_per_s"] = totals["generated_tokens"][0] / max(
                        elapsed, 1e-9
                    )
                if "generated_tokens" in totals and "time/rollout_s" in totals:
                    last_train["rollout_tokens_per_s"] = totals["generated_tokens"][0] / max(
                        totals["time/rollout_s"][0], 1e-9
                    )
                for count_name in ("truncated", "skipped", "nonfinite"):  # counts, not means
                    last_train[count_name] = totals[count_name][0]
                writer.write(done, last_train, prefix="train/")
                # PPO shows sampled tokens/s; SFT/RM the tokens they trained on.
                shown_rate = last_train.get("generated_tokens_per_s", last_train["tokens_per_s"])
                bar.set_postfix(loss=f"{last_train['loss']:.4f}", tok_s=f"{shown_rate:.0f}")
                if last_train["nonfinite"]:
                    logging.warning(
                        "%d steps up to step %d had a non-finite loss or gradient; their updates "
                        "were skipped.",
                        last_train["nonfinite"],
                        done,
                    )
                if last_train["nonfinite"] > config.max_nonfinite:
                    raise NonFiniteLossError(
                        f"{int(last_train['nonfinite'])} steps of the window up to step {done} "
                        "had a NaN/inf loss or gradient (updates skipped). Lower the "
                        "learning rate or check the data; the last good checkpoint is kept."
                    )
                if on_log:
                    on_log(done, last_train)
                window, tokens, t0 = None, 0, time.perf_counter()
            if evaluate and config.eval_every and done % config.eval_every == 0:
                last_eval, evaluated_at = evaluate(state.params), done
                writer.write(done, last_eval, prefix="eval/")
                logging.info("step %d eval %s", done, last_eval)
            if checkpointer and (
                sigterm.raised
                or (config.checkpoint_every and done % config.checkpoint_every == 0)
                or done == config.num_steps
            ):
                checkpointer.save(done, state, train_iter, {**(meta or {}), "step": done})
            if sigterm.raised:
                preempted = True
                break
    bar.close()
    if done == start:  # the run had already finished: report its last logged figures
        logging.info("The run already finished at step %d; nothing left to train.", done)
        last_train, last_eval = writer.latest("train/"), writer.latest("eval/")
    elif evaluate and not preempted and evaluated_at != done:
        last_eval = evaluate(state.params)
        writer.write(int(state.step), last_eval, prefix="eval/")
    return LoopResult(state=state, preempted=preempted, last_train=last_train, last_eval=last_eval)
