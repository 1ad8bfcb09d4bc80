"""grain pipelines: records -> fixed-shape token batches, deterministic from a seed.

Sequence layout (one row per response): `[prefix ids] + prompt + response + [EOS]`, right-padded
with the pad id to exactly `max_len` columns.

Truncation rule (`SequenceSpec`):
1. A prompt longer than `max_prompt_len` tokens keeps the tokenizer prefix (BOS) and its *last*
   tokens, since the end of a prompt is what the response continues.
2. A response that does not fit in what the prompt leaves of `max_len` is cut at the right (its EOS
   is then lost).
With `overlong="truncate"` (default) both are applied and counted per element (`truncated`); with
"skip" an element that would need either is kept at weight 0 (all-False masks, `skipped` = 1),
which keeps the shapes fixed and the data order unchanged; with "error" it raises a RecordError
naming the record.

Batches are dicts of numpy arrays with a leading batch axis. SFT: `tokens_bt`, `mask_bt`
(attention), `loss_mask_bt` (response + EOS), `truncated_b`, `skipped_b`; several demonstrations
per row (`TokenizeDemonstrationRow`) add `positions_bt` and `documents_bt`. Reward model:
`tokens_bkt`, `mask_bkt`, `prefers_bkk` ([b, i, j] = response i preferred to j), `valid_bk`,
`truncated_b`, `skipped_b`; or, one row per comparison (`TokenizeComparisonSharedPrompt`),
`tokens_bt`, `mask_bt`, `positions_bt`, `segments_bt`, `last_bk` with the same `prefers_bkk`,
`valid_bk`, `truncated_b`, `skipped_b`; or, several comparisons per row (`TokenizeComparisonRow`),
the same row arrays with `documents_bt`, and per slot e of a row `last_bek`, `prefers_bekk`,
`valid_bek` (`truncated_b` and `skipped_b` then count each row's comparisons).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from rlhf_jax.data.records import RecordError
from rlhf_jax.data.tokenizer import Tokenizer

OVERLONG_POLICIES = ("truncate", "skip", "error")


@dataclasses.dataclass(frozen=True)
class SequenceSpec:
    """Fixed shapes and the over-long policy (see module docstring).

    Attributes:
      max_len: tokens per sequence (prompt + response), T.
      max_prompt_len: prompt budget in tokens, including the prefix; must be < max_len.
      max_responses: K budget for comparisons (prompts with fewer are padded with invalid rows).
      overlong: "truncate", "skip" or "error".
    """

    max_len: int
    max_prompt_len: int
    max_responses: int = 2
    overlong: str = "truncate"

    def __post_init__(self):
        if self.overlong not in OVERLONG_POLICIES:
            raise ValueError(f"overlong={self.overlong!r}; expected one of {OVERLONG_POLICIES}.")
        if not 0 < self.max_prompt_len < self.max_len:
            raise ValueError(
                f"max_prompt_len={self.max_prompt_len} must be in (0, max_len={self.max_len})."
            )
        if self.max_responses < 2:
            raise ValueError(f"max_responses={self.max_responses} must be >= 2.")


def as_text(value: Any) -> str:
    """A record's text field (TFDS gives UTF-8 bytes, Python records give str) as str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def encode_pair(
    tokenizer: Tokenizer, spec: SequenceSpec, prompt: str, response: str, record_id: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, bool]:
    """One prompt + response -> (tokens_t, mask_t, loss_mask_t, truncated, overlong).

    `overlong` says that the sequence needed truncation; `truncated` that it was truncated (only
    under the "truncate" policy). Under "error" an over-long sequence raises RecordError.
    """
    prompt_ids, prompt_cut = _prompt_ids(tokenizer, spec, prompt)
    response_ids, response_cut = _response_ids(tokenizer, spec, response, len(prompt_ids))
    overlong = prompt_cut or response_cut
    _check_overlong(spec, overlong, record_id)
    ids = prompt_ids + response_ids
    tokens = np.full(spec.max_len, tokenizer.pad_id, np.int32)
    tokens[: len(ids)] = ids
    mask = np.zeros(spec.max_len, bool)
    mask[: len(ids)] = True
    loss_mask = np.zeros(spec.max_len, bool)
    loss_mask[len(prompt_ids) : len(ids)] = True
    truncated = overlong and spec.overlong == "truncate"
    return tokens, mask, loss_mask, truncated, overlong


def _prompt_ids(tokenizer: Tokenizer, spec: SequenceSpec, prompt: str) -> tuple[list[int], bool]:
    """(the prompt's ids as the model reads it, whether cut): an over-long prompt keeps the
    prefix, or the chat template's turns, and its last tokens (rule 1; `Tokenizer.prompt_ids`)."""
    return tokenizer.prompt_ids(prompt, spec.max_prompt_len)


def _response_ids(
    tokenizer: Tokenizer, spec: SequenceSpec, response: str, prompt_len: int
) -> tuple[list[int], bool]:
    """(response + EOS ids cut to what the prompt leaves of max_len (rule 2), whether cut)."""
    response_ids = tokenizer.encode(response) + [tokenizer.eos_id]
    room = spec.max_len - prompt_len
    return response_ids[:room], len(response_ids) > room


def _check_overlong(spec: SequenceSpec, overlong: bool, record_id: str) -> None:
    if overlong and spec.overlong == "error":
        raise RecordError(
            f"record {record_id}: sequence longer than max_len={spec.max_len} "
            f"(max_prompt_len={spec.max_prompt_len}); raise the limits, or set "
            "overlong='truncate' or 'skip'"
        )


def best_response(responses: Sequence[Any], pairs: np.ndarray) -> int:
    """Index of the response with the most wins minus losses (lowest index on a tie)."""
    score = np.zeros(len(responses), np.int64)
    for winner, loser in np.asarray(pairs).reshape(-1, 2):
        score[winner] += 1
        score[loser] -= 1
    return int(np.argmax(score))


@dataclasses.dataclass(frozen=True)
class TokenizeDemonstration(grain.transforms.Map):
    """Demonstration record (or comparison: its best response) -> SFT element.

    With `loss_on_prompt`, every real token is a target (a language-modelling NLL over the whole
    text, as for PPO-ptx's pretraining term); by default only the response is.
    """

    tokenizer: Tokenizer
    spec: SequenceSpec
    loss_on_prompt: bool = False

    def map(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if "response" in record:
            response = record["response"]
        else:
            response = record["responses"][best_response(record["responses"], record["pairs"])]
        tokens, mask, loss_mask, truncated, overlong = encode_pair(
            self.tokenizer,
            self.spec,
            as_text(record["prompt"]),
            as_text(response),
            as_text(record.get("id", "?")),
        )
        if self.loss_on_prompt:
            loss_mask = mask.copy()
        skipped = overlong and self.spec.overlong == "skip"
        if skipped:
            mask[:] = False
            loss_mask[:] = False
        return {
            "tokens_t": tokens,
            "mask_t": mask,
            "loss_mask_t": loss_mask,
            "truncated": np.int32(truncated),
            "skipped": np.int32(skipped),
        }


@dataclasses.dataclass(frozen=True)
class TokenizeDemonstrationRow(grain.transforms.Map):
    """A group of up to `per_row` demonstration records (`packing.pack_demonstrations`) -> one row
    of `row_len` tokens holding each as `TokenizeDemonstration` lays it out, one after another.

    `documents_t` is record e's slot index e on its tokens (-1 on padding), so a token attends only
    within its own record (`Decoder`'s `documents_bt`); `positions_t` restarts at each record, and
    a record's first token is never a target (nothing in its own row predicts it), so every token
    has the loss it has in its own row. `truncated` and `skipped` count the row's records.

    Raises:
      ValueError: when the group holds more than `per_row` records or needs more than `row_len`
        tokens (the packer's mistake, never the data's).
    """

    tokenizer: Tokenizer
    spec: SequenceSpec
    row_len: int
    per_row: int
    loss_on_prompt: bool = False

    def map(self, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        single = TokenizeDemonstration(self.tokenizer, self.spec, self.loss_on_prompt)
        elements = [single.map(record) for record in records]
        lengths = [int(element["mask_t"].sum()) for element in elements]
        if len(elements) > self.per_row or sum(lengths) > self.row_len:
            raise ValueError(
                f"{len(elements)} records of {sum(lengths)} tokens do not fit one row of "
                f"{self.per_row} records and row_len={self.row_len}."
            )
        row = {
            "tokens_t": np.full(self.row_len, self.tokenizer.pad_id, np.int32),
            "loss_mask_t": np.zeros(self.row_len, bool),
            "positions_t": np.zeros(self.row_len, np.int32),
            "documents_t": np.full(self.row_len, -1, np.int32),
        }
        start = 0
        for slot, (element, length) in enumerate(zip(elements, lengths, strict=True)):
            columns = slice(start, start + length)
            row["tokens_t"][columns] = element["tokens_t"][:length]
            row["loss_mask_t"][columns] = element["loss_mask_t"][:length]
            if length:
                row["loss_mask_t"][start] = False
            row["positions_t"][columns] = np.arange(length)
            row["documents_t"][columns] = slot
            start += length
        return {
            **row,
            "mask_t": row["documents_t"] >= 0,
            "truncated": np.int32(sum(int(e["truncated"]) for e in elements)),
            "skipped": np.int32(sum(int(e["skipped"]) for e in elements)),
        }


@dataclasses.dataclass(frozen=True)
class TokenizePrompt(grain.transforms.Map):
    """Any record's prompt -> a left-padded PPO prompt of `max_prompt_len` tokens (an over-long
    prompt keeps its last tokens, counted in `truncated`; see `Tokenizer.encode_prompts`)."""

    tokenizer: Tokenizer
    max_prompt_len: int

    def map(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        encoded = self.tokenizer.encode_prompts([as_text(record["prompt"])], self.max_prompt_len)
        return {
            "tokens_p": encoded.tokens_bp[0],
            "mask_p": encoded.mask_bp[0],
            "truncated": np.int32(encoded.num_truncated),
            "skipped": np.int32(0),
        }


@dataclasses.dataclass(frozen=True)
class TokenizeComparison(grain.transforms.Map):
    """Comparison record -> reward-model element with K = spec.max_responses rows."""

    tokenizer: Tokenizer
    spec: SequenceSpec

    def map(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        record_id = as_text(record.get("id", "?"))
        responses = [as_text(r) for r in record["responses"]]
        k_max, t = self.spec.max_responses, self.spec.max_len
        if len(responses) > k_max:
            raise RecordError(
                f"record {record_id}: {len(responses)} responses but max_responses={k_max}"
            )
        tokens = np.full((k_max, t), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((k_max, t), bool)
        valid = np.zeros(k_max, bool)
        truncated = overlong = False
        prompt = as_text(record["prompt"])
        for k, response in enumerate(responses):
            tokens[k], mask[k], _, trunc_k, over_k = encode_pair(
                self.tokenizer, self.spec, prompt, response, record_id
            )
            valid[k] = True
            truncated |= trunc_k
            overlong |= over_k
        prefers = np.zeros((k_max, k_max), bool)
        for winner, loser in np.asarray(record["pairs"]).reshape(-1, 2):
            prefers[winner, loser] = True
        skipped = overlong and self.spec.overlong == "skip"
        if skipped:
            mask[:] = False
            valid[:] = False
            prefers[:] = False
        return {
            "tokens_kt": tokens,
            "mask_kt": mask,
            "prefers_kk": prefers,
            "valid_k": valid,
            "truncated": np.int32(truncated),
            "skipped": np.int32(skipped),
        }


@dataclasses.dataclass(frozen=True)
class SharedPromptComparison:
    """One comparison cut to fit a shared-prompt row: `prompt_ids` (prefix + prompt), one id list
    per response (each ending in EOS unless cut), the labelled (winner, loser) `pairs` [N, 2], and
    whether it was cut (`truncated`) or is kept at weight 0 (`skipped`, then it takes no tokens)."""

    prompt_ids: list[int]
    response_ids: list[list[int]]
    pairs: np.ndarray
    truncated: bool
    skipped: bool

    @property
    def length(self) -> int:
        """Tokens the comparison takes in a row: prompt once plus every response (0 if skipped)."""
        if self.skipped:
            return 0
        return len(self.prompt_ids) + sum(map(len, self.response_ids))


def shared_prompt_comparison(
    tokenizer: Tokenizer, spec: SequenceSpec, row_len: int, record: Mapping[str, Any]
) -> SharedPromptComparison:
    """Tokenizes a comparison record for a shared-prompt row of `row_len` tokens.

    Prompt and responses are cut by the rules of the module docstring first. When they still do
    not fit in `row_len`, "truncate" cuts every response at the right to one common length, the
    longest that fits, "skip" keeps the element at weight 0 and "error" raises a RecordError.
    """
    record_id = as_text(record.get("id", "?"))
    responses = [as_text(r) for r in record["responses"]]
    if len(responses) > spec.max_responses:
        raise RecordError(
            f"record {record_id}: {len(responses)} responses but max_responses={spec.max_responses}"
        )
    prompt_ids, overlong = _prompt_ids(tokenizer, spec, as_text(record["prompt"]))
    response_ids = []
    for response in responses:
        ids, cut = _response_ids(tokenizer, spec, response, len(prompt_ids))
        response_ids.append(ids)
        overlong |= cut
    _check_overlong(spec, overlong, record_id)
    room = row_len - len(prompt_ids)
    if sum(map(len, response_ids)) > room:
        overlong = True
        if spec.overlong == "error":
            raise RecordError(
                f"record {record_id}: prompt and {len(responses)} responses need "
                f"{len(prompt_ids) + sum(map(len, response_ids))} tokens, more than "
                f"row_len={row_len}; raise it, or set overlong='truncate' or 'skip'"
            )
        cap = 0
        while sum(min(len(r), cap + 1) for r in response_ids) <= room:
            cap += 1
        response_ids = [r[:cap] for r in response_ids]
    # Skipped: by the policy, or when the row leaves no token for some response.
    skipped = (overlong and spec.overlong == "skip") or not all(response_ids)
    return SharedPromptComparison(
        prompt_ids=prompt_ids,
        response_ids=response_ids,
        pairs=np.asarray(record["pairs"]).reshape(-1, 2),
        truncated=overlong and spec.overlong == "truncate" and not skipped,
        skipped=skipped,
    )


def _comparison_row(
    comparisons: Sequence[SharedPromptComparison], row_len: int, slots: int, k_max: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Lays comparisons out one after another in a row of `row_len` tokens: tokens, segments (0
    on a prompt, k + 1 on response k, -1 on padding), positions (restarting at each comparison,
    each response continuing from its prompt's end) and documents (slot e on comparison e's
    tokens, -1 on padding); per slot, `last_ek` (response k's last token), `valid_ek` and
    `prefers_ekk`. A skipped comparison keeps its slot empty."""
    row = {
        "tokens_t": np.full(row_len, pad_id, np.int32),
        "positions_t": np.zeros(row_len, np.int32),
        "segments_t": np.full(row_len, -1, np.int32),
        "documents_t": np.full(row_len, -1, np.int32),
        "last_ek": np.zeros((slots, k_max), np.int32),
        "valid_ek": np.zeros((slots, k_max), bool),
        "prefers_ekk": np.zeros((slots, k_max, k_max), bool),
    }
    end = 0
    for slot, comparison in enumerate(comparisons):
        if comparison.skipped:
            continue
        start, p = end, len(comparison.prompt_ids)
        row["tokens_t"][start : start + p] = comparison.prompt_ids
        row["segments_t"][start : start + p] = 0
        row["positions_t"][start : start + p] = np.arange(p)
        end = start + p
        for k, ids in enumerate(comparison.response_ids):
            columns = slice(end, end + len(ids))
            row["tokens_t"][columns], row["segments_t"][columns] = ids, k + 1
            row["positions_t"][columns] = np.arange(p, p + len(ids))
            end += len(ids)
            row["last_ek"][slot, k], row["valid_ek"][slot, k] = end - 1, True
        for winner, loser in comparison.pairs:
            row["prefers_ekk"][slot, winner, loser] = True
        row["documents_t"][start:end] = slot
    row["mask_t"] = row["segments_t"] >= 0
    return row


@dataclasses.dataclass(frozen=True)
class TokenizeComparisonSharedPrompt(grain.transforms.Map):
    """Comparison record -> one row holding the prompt once and then every response.

    Row layout (`row_len` tokens): `[prefix ids] + prompt`, then each response + EOS in turn, then
    padding. `segments_t` is 0 on the prompt, k + 1 on response k and -1 on padding; a response
    attends to the prompt and to itself only (`Decoder`'s `segments_bt`), and `positions_t`
    continues each response from the prompt's end, so every response is scored exactly as in its
    own `TokenizeComparison` row, for about (P + sum of response lengths) tokens instead of
    K x max_len. `last_k` is the index of response k's last token (its EOS) in the row.

    Cutting to fit `row_len`: `shared_prompt_comparison` (counted in `truncated`; "skip" keeps the
    element at weight 0).
    """

    tokenizer: Tokenizer
    spec: SequenceSpec
    row_len: int

    def map(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        comparison = shared_prompt_comparison(self.tokenizer, self.spec, self.row_len, record)
        row = _comparison_row(
            [comparison], self.row_len, 1, self.spec.max_responses, self.tokenizer.pad_id
        )
        return {
            "tokens_t": row["tokens_t"],
            "mask_t": row["mask_t"],
            "positions_t": row["positions_t"],
            "segments_t": row["segments_t"],
            "last_k": row["last_ek"][0],
            "prefers_kk": row["prefers_ekk"][0],
            "valid_k": row["valid_ek"][0],
            "truncated": np.int32(comparison.truncated),
            "skipped": np.int32(comparison.skipped),
        }


@dataclasses.dataclass(frozen=True)
class TokenizeComparisonRow(grain.transforms.Map):
    """A group of up to `per_row` comparison records (`packing.pack_comparisons`) -> one row
    holding each of them in the layout of `TokenizeComparisonSharedPrompt`, one after another.

    `documents_t` is comparison e's slot index e on its tokens (-1 on padding), so a token attends
    only within its own comparison (`Decoder`'s `documents_bt`), and positions restart at each
    comparison: every response scores as in its own row. Per-slot arrays: `last_ek`, `valid_ek`,
    `prefers_ekk` (all False on empty slots, which then weigh nothing in the loss); `truncated`
    and `skipped` count the row's comparisons.

    Raises:
      ValueError: when the group holds more than `per_row` comparisons or needs more than
        `row_len` tokens (the packer's mistake, never the data's).
    """

    tokenizer: Tokenizer
    spec: SequenceSpec
    row_len: int
    per_row: int

    def map(self, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        k_max = self.spec.max_responses
        comparisons = [
            shared_prompt_comparison(self.tokenizer, self.spec, self.row_len, record)
            for record in records
        ]
        needed = sum(c.length for c in comparisons)
        if len(comparisons) > self.per_row or needed > self.row_len:
            raise ValueError(
                f"{len(comparisons)} comparisons of {needed} tokens do not fit one row of "
                f"{self.per_row} comparisons and row_len={self.row_len}."
            )
        row = _comparison_row(comparisons, self.row_len, self.per_row, k_max, self.tokenizer.pad_id)
        return {
            **row,
            "truncated": np.int32(sum(c.truncated for c in comparisons)),
            "skipped": np.int32(sum(c.skipped for c in comparisons)),
        }


def _rename_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Element names (tokens_t) -> batch names (tokens_bt)."""
    renamed = {}
    for key, value in batch.items():
        if "_" in key:
            name, axes = key.rsplit("_", 1)
            renamed[f"{name}_b{axes}"] = value
        else:
            renamed[f"{key}_b"] = value
    return renamed


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Pads a short last batch with all-zero (weight 0) elements to `batch_size` rows."""
    size = len(next(iter(batch.values())))
    if size == batch_size:
        return batch
    return {
        k: np.concatenate([v, np.zeros((batch_size - size, *v.shape[1:]), v.dtype)])
        for k, v in batch.items()
    }


def make_dataset(
    source: Sequence[Any],
    transform: grain.transforms.Map,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """Records -> this process's batches, as a grain MapDataset (random access, deterministic).

    Args:
      source: random-access records (a `tfds.data_source` split, or a list of dicts).
      transform: `TokenizeDemonstration` or `TokenizeComparison`.
      batch_size: global batch size; each of `process_count` processes gets an equal slice.
      seed: shuffle seed; the order is reshuffled every epoch and depends on nothing else.
      shuffle: False for evaluation.
      num_epochs: None repeats forever.
      drop_remainder: False keeps (and pads, see `pad_batch`) a short last batch.

    Returns:
      MapDataset of batches (dicts named as in the module docstring, `[batch_size / processes]`).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % process_count:
        raise ValueError(f"batch_size={batch_size} does not divide over {process_count} processes.")
    if len(source) == 0:
        raise ValueError("The data source is empty.")
    local_batch = batch_size // process_count
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    if process_count > 1:
        ds = ds[process_index::process_count]
    ds = ds.map(transform).batch(local_batch, drop_remainder=drop_remainder)
    return ds.map(lambda b: pad_batch(_rename_batch(b), local_batch))


def to_global_arrays(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """This process's slice of a batch -> global arrays sharded over the mesh's batch axes."""
    from rlhf_jax.sharding import batch_sharding, put_batch

    if jax.process_count() == 1:
        return put_batch(batch, mesh)
    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
        for k, v in batch.items()
    }
