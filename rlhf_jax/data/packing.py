"""Packing: pretraining documents end to end in full rows (GPT-2/3 style), and reward-model
comparisons several to a row.

Right-padding each document to `max_len` spends most of a step on padding when documents are
short (the instruction world's pretraining documents average ~40 of 96 tokens). Packing instead
concatenates every document, each as `[prefix ids] + text + [EOS]`, in a seeded order, and cuts
the stream into rows of exactly `max_len` tokens; every token is a target. A document may start
mid-row and continue in the next row, and attention crosses document boundaries (the EOS marks
them), as in GPT-2/3 pretraining. The tail that does not fill a row is dropped.

`PackedRows` is a random-access source of those rows and `RowToElement` turns one into the SFT
element of `pipeline.TokenizeDemonstration`, so `pipeline.make_dataset` batches, shuffles and
resumes them exactly as it does unpacked data.

Reward-model comparisons are short too: in a shared-prompt row (the prompt once, then every
response; `pipeline.TokenizeComparisonSharedPrompt`) the instruction world's comparisons fill ~43%
of 112 tokens. `pack_comparisons` groups them, whole, several to a row by best-fit decreasing, and
`pipeline.TokenizeComparisonRow` lays each group out with per-comparison attention
(`documents_bt`), so every response scores exactly as in its own row while a step computes about
half the row slots. A batch is then a number of rows, each holding one or more comparisons.

Demonstrations and pretraining documents are packed the same way (`pack_demonstrations`,
`pipeline.TokenizeDemonstrationRow`): whole documents, each attending only to itself with
positions restarting, so every token has the loss it would have in its own padded row; unlike
`pack_documents`, nothing is cut at a row's end and no document sees another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from tqdm.auto import tqdm

from rlhf_jax.data.pipeline import (
    SequenceSpec,
    TokenizeDemonstration,
    as_text,
    shared_prompt_comparison,
)
from rlhf_jax.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class PackedRows:
    """Rows of packed token ids; `rows_nt` is int32 [N, T]. `documents` and `tokens` count what
    went in (tokens including prefix and EOS ids, before the dropped tail)."""

    rows_nt: np.ndarray
    documents: int
    tokens: int

    def __len__(self) -> int:
        return len(self.rows_nt)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.rows_nt[index]


def pack_documents(
    records: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, max_len: int, seed: int
) -> PackedRows:
    """Packs the text (prompt + response) of every record into rows of `max_len` token ids.

    Args:
      records: random-access records with "prompt" and "response" (a TFDS split or a list).
      tokenizer: adds the prefix and EOS ids; user text never becomes special tokens.
      max_len: T, tokens per row.
      seed: the document order (a permutation drawn from it).

    Raises:
      ValueError: when the documents do not fill one row.
    """
    order = np.random.default_rng([seed, 17]).permutation(len(records))
    prefix, eos = list(tokenizer.prefix_ids), [tokenizer.eos_id]
    stream: list[int] = []
    for index in order:
        record = records[int(index)]
        text = as_text(record["prompt"]) + as_text(record["response"])
        stream += prefix + tokenizer.encode(text) + eos
    rows = len(stream) // max_len
    if rows == 0:
        raise ValueError(
            f"{len(records)} documents hold {len(stream)} tokens, fewer than one row of "
            f"max_len={max_len}."
        )
    rows_nt = np.asarray(stream[: rows * max_len], np.int32).reshape(rows, max_len)
    return PackedRows(rows_nt=rows_nt, documents=len(records), tokens=len(stream))


@dataclasses.dataclass(frozen=True)
class RowToElement(grain.transforms.Map):
    """A packed row -> the SFT element (every token attended to and a target; nothing cut)."""

    def map(self, row: np.ndarray) -> dict[str, np.ndarray]:
        full = np.ones(row.shape, bool)
        return {
            "tokens_t": np.asarray(row, np.int32),
            "mask_t": full,
            "loss_mask_t": full.copy(),
            "truncated": np.int32(0),
            "skipped": np.int32(0),
        }


@dataclasses.dataclass(frozen=True)
class PackedRecords:
    """A random-access source of rows of records: item i is the list of records of row i
    (`groups[i]` holds their indices in `records`). `tokens` counts the tokens they take (for a
    comparison, its prompt once), so `fill` = tokens / (rows x row_len)."""

    records: Sequence[Mapping[str, Any]]
    groups: tuple[tuple[int, ...], ...]
    tokens: int
    row_len: int

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> list[Mapping[str, Any]]:
        return [self.records[i] for i in self.groups[index]]

    @property
    def count(self) -> int:
        """Records placed in the rows (every record, exactly once)."""
        return sum(map(len, self.groups))

    @property
    def per_row(self) -> float:
        """Mean records per row."""
        return self.count / max(len(self.groups), 1)

    @property
    def fill(self) -> float:
        return self.tokens / max(len(self.groups) * self.row_len, 1)


def _best_fit_decreasing(
    lengths: np.ndarray, row_len: int, per_row: int, order: np.ndarray
) -> tuple[tuple[int, ...], ...]:
    """Groups record indices into rows of `row_len` tokens, at most `per_row` to a row: longest
    first (ties in `order`, a permutation), each into the open row it leaves least room in."""
    order = order[np.argsort(-lengths[order], kind="stable")]
    members: list[list[int]] = []
    room: list[int] = []
    open_by_room: list[list[int]] = [[] for _ in range(row_len + 1)]  # row ids by free tokens
    for index in order.tolist():
        need = int(lengths[index])
        fits = next((r for r in range(need, row_len + 1) if open_by_room[r]), None)
        if fits is None:
            row = len(members)
            members.append([])
            room.append(row_len)
        else:
            row = open_by_room[fits].pop()
        members[row].append(index)
        room[row] -= need
        if len(members[row]) < per_row:
            open_by_room[room[row]].append(row)
    return tuple(tuple(m) for m in members)


def _pack(
    records: Sequence[Mapping[str, Any]],
    length: Callable[[Mapping[str, Any]], int],
    what: str,
    row_len: int,
    per_row: int,
    order_seed: list[int],
) -> PackedRecords:
    """Measures every record with `length` and groups them by `_best_fit_decreasing`, ties in
    an order drawn from `order_seed`; `what` names the records in errors and the progress bar."""
    if per_row < 1:
        raise ValueError(f"per_row must be >= 1, got {per_row}.")
    if len(records) == 0:
        raise ValueError(f"No {what} records to pack.")
    measuring = tqdm(
        range(len(records)),
        desc=f"packing {what}s",
        unit=what,
        disable=len(records) < 20_000,  # a bar only where measuring takes seconds
        leave=False,
    )
    lengths = np.asarray([length(records[i]) for i in measuring], np.int64)
    order = np.random.default_rng(order_seed).permutation(len(records))
    return PackedRecords(
        records=records,
        groups=_best_fit_decreasing(lengths, row_len, per_row, order),
        tokens=int(lengths.sum()),
        row_len=row_len,
    )


def pack_comparisons(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    spec: SequenceSpec,
    row_len: int,
    per_row: int,
    seed: int,
) -> PackedRecords:
    """Groups comparison records into rows of `row_len` tokens, at most `per_row` to a row.

    Each record's length is that of its shared-prompt layout after the cutting rules
    (`pipeline.shared_prompt_comparison`; a skipped record takes a slot and no tokens). Best-fit
    decreasing: longest first (ties in an order drawn from `seed`), each into the open row it
    leaves least room in. On the instruction world's comparisons (~48 of 112 tokens) with
    `per_row` = 4 it fills ~96% of the row slots, against ~43% one per row.

    Raises:
      ValueError: when `per_row` < 1 or `records` is empty.
      RecordError: for a bad record, as `pipeline.TokenizeComparisonSharedPrompt` would.
    """
    length = lambda r: shared_prompt_comparison(tokenizer, spec, row_len, r).length  # noqa: E731
    return _pack(records, length, "comparison", row_len, per_row, [seed, 23])


def pack_demonstrations(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    spec: SequenceSpec,
    row_len: int,
    per_row: int,
    seed: int,
    loss_on_prompt: bool = False,
) -> PackedRecords:
    """Groups demonstration records (or documents) into rows of `row_len` tokens, at most
    `per_row` to a row, for `pipeline.TokenizeDemonstrationRow`.

    Each record's length is that of its `pipeline.TokenizeDemonstration` row after the cutting
    rules (a skipped record takes a slot and no tokens); grouping as in `pack_comparisons`. The
    instruction world's pretraining documents fill ~41% of a 96-token row and its demonstrations
    ~32%, so a step over packed rows computes well under half the row slots for the same
    documents.

    Raises:
      ValueError: when `per_row` < 1, `records` is empty or `row_len` < `spec.max_len` (a
        document of `max_len` tokens would not fit).
      RecordError: for a bad record, as `pipeline.TokenizeDemonstration` would.
    """
    if row_len < spec.max_len:
        raise ValueError(f"row_len={row_len} must be >= max_len={spec.max_len}.")
    single = TokenizeDemonstration(tokenizer, spec, loss_on_prompt)
    length = lambda r: int(single.map(r)["mask_t"].sum())  # noqa: E731
    return _pack(records, length, "demonstration", row_len, per_row, [seed, 29])
