"""Sampling with a KV cache over left-padded prompts, as one compiled program.

`sample` is a pure, traceable function (the fused rollout calls it inside its own jit);
`make_sampler` jits it over a mesh with explicit shardings. The prompt is prefilled in one pass,
then a `lax.while_loop` decodes one token per iteration for every row until all rows have emitted
EOS or `max_new_tokens` is reached. There is no Python loop over tokens.

Log-probability convention: `response_logprobs_bn[:, t]` is the log-probability of response token
`t` under the temperature-scaled policy softmax(logits / temperature), before top-k/top-p filtering
(greedy decoding uses temperature 1). Everything after a row's first EOS is `pad_id`, has mask False
and log-prob 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from rlhf_jax import sharding
from rlhf_jax.models.heads import CausalLM
from rlhf_jax.models.kv_cache import KVCache, init_cache
from rlhf_jax.models.partitioning import LogicalRules, activation_sharding, constrain


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample responses."""

    max_new_tokens: int  # response length limit, in tokens
    temperature: float = 1.0  # softmax temperature; 0 means greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 disables
    top_p: float = 1.0  # nucleus: smallest set of tokens with this much mass; 1.0 disables
    eos_ids: tuple[int, ...] = ()  # any of these ends a row (included in the response)
    pad_id: int = 0  # written after a row ends

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))


@flax.struct.dataclass
class GenerationOutput:
    """Prompts and sampled responses (B rows, P prompt slots, N response slots).

    tokens_bs: int32 [B, P + N], left-padded prompt followed by the response.
    attention_mask_bs: bool [B, P + N], True on real prompt and response tokens.
    response_tokens_bn: int32 [B, N]; `pad_id` after EOS.
    response_mask_bn: bool [B, N], True up to and including the first EOS.
    response_logprobs_bn: float32 [B, N], see the module docstring; 0 where masked.
    """

    tokens_bs: jax.Array
    attention_mask_bs: jax.Array
    response_tokens_bn: jax.Array
    response_mask_bn: jax.Array
    response_logprobs_bn: jax.Array


@flax.struct.dataclass
class SamplingState:
    """The decode loop's carry."""

    step: jax.Array  # int32 scalar, response tokens produced so far
    tokens_bn: jax.Array
    mask_bn: jax.Array
    logprobs_bn: jax.Array
    done_b: jax.Array  # bool [B], row has emitted EOS
    next_logits_bv: jax.Array  # float32 [B, V], logits for the next token
    cache: KVCache


def _gumbel_argmax(rng: jax.Array, logits_bv: jax.Array) -> jax.Array:
    """One exact draw per row from softmax(logits_bv) by the Gumbel-max trick: int [B]."""
    # Same distribution as jax.random.categorical, which on CPU costs ~2.5x more per decode step
    # (`rlhf_jax.benchmarks` workload c); -inf logits are never chosen.
    noise_bv = jax.random.gumbel(rng, logits_bv.shape, jnp.float32)
    return jnp.argmax(logits_bv + noise_bv, axis=-1)


def sample_from_logits(
    rng: jax.Array, logits_bv: jax.Array, config: SamplingConfig
) -> tuple[jax.Array, jax.Array]:
    """Draws one token per row.

    Args:
      rng: PRNG key.
      logits_bv: float32 [B, V].
      config: temperature / top-k / top-p.

    Returns:
      (tokens int32 [B], log-probs float32 [B]) with the log-prob convention of this module.
    """
    logits_bv = logits_bv.astype(jnp.float32)
    if config.temperature == 0.0:
        tokens_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
        logprobs_bv = jax.nn.log_softmax(logits_bv, axis=-1)
    else:
        scaled_bv = logits_bv / config.temperature
        logprobs_bv = jax.nn.log_softmax(scaled_bv, axis=-1)
        vocab = logits_bv.shape[-1]
        if config.top_k or config.top_p < 1.0:
            k = min(config.top_k or vocab, vocab)
            top_bk, top_ids_bk = jax.lax.top_k(scaled_bv, k)  # sorted, most likely first
            if config.top_p < 1.0:
                probs_bk = jax.nn.softmax(top_bk, axis=-1)
                mass_before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
                # The smallest prefix with mass >= top_p; the first token always survives.
                top_bk = jnp.where(mass_before_bk < config.top_p, top_bk, -jnp.inf)
            choice_b = _gumbel_argmax(rng, top_bk)
            tokens_b = jnp.take_along_axis(top_ids_bk, choice_b[:, None], axis=-1)[:, 0]
        else:
            tokens_b = _gumbel_argmax(rng, scaled_bv)
        tokens_b = tokens_b.astype(jnp.int32)
    logprobs_b = jnp.take_along_axis(logprobs_bv, tokens_b[:, None], axis=-1)[:, 0]
    return tokens_b, logprobs_b


def sample(
    model: CausalLM,
    params,
    prompt_tokens_bp: jax.Array,
    prompt_mask_bp: jax.Array,
    rng: jax.Array,
    config: SamplingConfig,
) -> GenerationOutput:
    """Samples responses for a batch of left-padded prompts (traceable; jit it or call inside jit).

    Args:
      model: the CausalLM.
      params: its variables, `{"params": ...}`.
      prompt_tokens_bp: int32 [B, P], left-padded; every row needs at least one real token.
      prompt_mask_bp: bool [B, P], True on real tokens (a contiguous block at the right end).
      rng: PRNG key; token t of every row uses `fold_in(rng, t)`.
      config: the SamplingConfig.

    Returns:
      GenerationOutput with N = config.max_new_tokens response slots.
    """
    batch, prompt_len = prompt_tokens_bp.shape
    n_new = config.max_new_tokens
    prompt_mask_bp = prompt_mask_bp.astype(jnp.bool_)
    cache = init_cache(model.config, batch, prompt_len + n_new)
    prefill = model.apply(params, prompt_tokens_bp, prompt_mask_bp, cache=cache)
    eos_ids = jnp.asarray(config.eos_ids or (-1,), jnp.int32)

    def cond(state: SamplingState) -> jax.Array:
        return (state.step < n_new) & ~jnp.all(state.done_b)

    def body(state: SamplingState) -> SamplingState:
        token_b, logprob_b = sample_from_logits(
            jax.random.fold_in(rng, state.step), state.next_logits_bv, config
        )
        live_b = ~state.done_b
        token_b = jnp.where(live_b, token_b, config.pad_id)
        logprob_b = jnp.where(live_b, logprob_b, 0.0)
        out = model.apply(params, token_b[:, None], live_b[:, None], cache=state.cache)
        write = lambda buf, col: jax.lax.dynamic_update_slice(buf, col[:, None], (0, state.step))
        return SamplingState(
            step=state.step + 1,
            tokens_bn=write(state.tokens_bn, token_b),
            mask_bn=write(state.mask_bn, live_b),
            logprobs_bn=write(state.logprobs_bn, logprob_b),
            done_b=state.done_b | (live_b & jnp.isin(token_b, eos_ids)),
            next_logits_bv=constrain(out.logits_btv[:, 0], ("batch", "vocab")),
            cache=out.cache,
        )

    state = SamplingState(
        step=jnp.zeros((), jnp.int32),
        tokens_bn=jnp.full((batch, n_new), config.pad_id, jnp.int32),
        mask_bn=jnp.zeros((batch, n_new), jnp.bool_),
        logprobs_bn=jnp.zeros((batch, n_new), jnp.float32),
        done_b=jnp.zeros((batch,), jnp.bool_),
        next_logits_bv=constrain(prefill.logits_btv[:, -1], ("batch", "vocab")),
        cache=prefill.cache,
    )
    state = jax.lax.while_loop(cond, body, state)
    return GenerationOutput(
        tokens_bs=jnp.concatenate([prompt_tokens_bp.astype(jnp.int32), state.tokens_bn], axis=1),
        attention_mask_bs=jnp.concatenate([prompt_mask_bp, state.mask_bn], axis=1),
        response_tokens_bn=state.tokens_bn,
        response_mask_bn=state.mask_bn,
        response_logprobs_bn=state.logprobs_bn,
    )


def check_prompts(prompt_tokens_bp: np.ndarray, prompt_mask_bp: np.ndarray) -> None:
    """Host-side validation of a prompt batch (jitted code cannot raise on values).

    Raises:
      ValueError: shape mismatch, an empty prompt row, or a row that is not left-padded.
    """
    tokens, mask = np.asarray(prompt_tokens_bp), np.asarray(prompt_mask_bp).astype(bool)
    if tokens.ndim != 2 or tokens.shape != mask.shape:
        raise ValueError(
            f"Prompt tokens {tokens.shape} and mask {mask.shape} must be equal [batch, length]."
        )
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"Prompt rows {empty.tolist()[:8]} have no real token.")
    # Left padding: once a row's mask turns True it stays True.
    not_left_padded = np.flatnonzero((np.diff(mask.astype(np.int8), axis=1) < 0).any(axis=1))
    if not_left_padded.size:
        raise ValueError(
            f"Prompt rows {not_left_padded.tolist()[:8]} are not left-padded (padding after a real "
            "token); use rlhf_jax.data.tokenizer to pad prompts on the left."
        )


def make_sampler(
    model: CausalLM,
    config: SamplingConfig,
    *,
    mesh: Mesh | None = None,
    param_shardings=None,
    rules: LogicalRules | None = None,
) -> Callable[..., GenerationOutput]:
    """`sample` jitted once for `config`, optionally over a mesh with explicit shardings.

    Args:
      model, config: as for `sample`.
      mesh: when given, prompts and outputs are batch-sharded over (data, fsdp).
      param_shardings: NamedSharding tree for params (required with a mesh).
      rules: logical-axis rules for activation constraints (default `sharding.DEFAULT_RULES`).

    Returns:
      fn(params, prompt_tokens_bp, prompt_mask_bp, rng) -> GenerationOutput. Compiled code cannot
      raise on values: validate batches that did not come from `Tokenizer.encode_prompts` with
      `check_prompts` first.
    """

    def fn(params, prompt_tokens_bp, prompt_mask_bp, rng):
        return sample(model, params, prompt_tokens_bp, prompt_mask_bp, rng, config)

    if mesh is None:
        return jax.jit(fn)
    if param_shardings is None:
        raise ValueError("make_sampler(mesh=...) also needs param_shardings.")
    rules = sharding.DEFAULT_RULES if rules is None else rules
    batch2 = sharding.batch_sharding(mesh, 2)

    def sharded_fn(params, prompt_tokens_bp, prompt_mask_bp, rng):
        with activation_sharding(mesh, rules):
            return fn(params, prompt_tokens_bp, prompt_mask_bp, rng)

    return jax.jit(
        sharded_fn,
        in_shardings=(param_shardings, batch2, batch2, sharding.replicated(mesh)),
        out_shardings=batch2,
    )


def generate_texts(
    sampler: Callable[..., GenerationOutput],
    params,
    tokenizer,
    prompts: list[str],
    *,
    batch_size: int,
    max_prompt_len: int,
    rng: jax.Array,
    progress: str | None = None,
    sort_by_length: bool = False,
    width_multiple: int = 16,
) -> list[str]:
    """Response texts (EOS dropped) of `sampler` (from `make_sampler`) for every prompt, in the
    order of `prompts`.

    Prompts go in batches of `batch_size` rows (the last one filled with repeats of its last
    prompt, whose outputs are dropped), each batch with its own key folded from `rng`.

    Args:
      sampler: fn(params, tokens_bp, mask_bp, rng) -> GenerationOutput.
      tokenizer: a `rlhf_jax.data.Tokenizer` (prompts are left-padded; longer ones keep their
        last tokens).
      max_prompt_len: P, the prompt budget in tokens (prefix included).
      progress: if given, a progress bar with this label counts the prompts answered.
      sort_by_length: batch the prompts shortest first (a stable sort) and pad each batch only
        to its longest prompt, rounded up to `width_multiple` (at most P) instead of to P:
        prefill and cache then cost about the batch's own length. Greedy answers are those of
        unsorted batches (up to float round-off); sampled ones are other draws of the same
        distribution, since batches and their keys hold other prompts. Compiles one program per
        width used (at most P / width_multiple).
    """
    order = list(range(len(prompts)))
    if sort_by_length:
        # Each distinct prompt tokenized once (the rank stage repeats each prompt K times).
        known = {p: len(tokenizer.prompt_ids(p)[0]) for p in dict.fromkeys(prompts)}
        lengths = [known[p] for p in prompts]
        order.sort(key=lengths.__getitem__)
    texts: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc=progress, unit="prompt", disable=progress is None)
    for index, start in enumerate(range(0, len(prompts), batch_size)):
        indices = order[start : start + batch_size]
        chunk = [prompts[i] for i in indices]
        rows = len(chunk)
        chunk += chunk[-1:] * (batch_size - rows)
        width = max_prompt_len
        if sort_by_length:
            longest = max(lengths[i] for i in indices)
            width = min(max_prompt_len, -(-longest // width_multiple) * width_multiple)
        batch = tokenizer.encode_prompts(chunk, width)
        out = sampler(params, batch.tokens_bp, batch.mask_bp, jax.random.fold_in(rng, index))
        tokens, mask = jax.device_get((out.response_tokens_bn, out.response_mask_bn))
        for row, i in enumerate(indices):
            texts[i] = tokenizer.decode(tokens[row][mask[row]])
        bar.update(rows)
    bar.close()
    return texts
