"""Raw records -> the two canonical record shapes, with errors that name the file and record.

Canonical shapes (plain dicts of Python values, what the TFDS builders store):
- demonstration: `{"id": str, "prompt": str, "response": str}`
- comparison: `{"id": str, "prompt": str, "responses": [str, ...] (K >= 2),
  "pairs": [(winner, loser), ...]}`: every strictly labelled pair of one prompt, as indices into
  `responses`. Ties and unlabelled pairs are simply absent, labels need not be transitive, and a
  comparison must keep at least one pair.

`id` is "<file name>:<record number>" (1-based line for JSON-lines files, 1-based position in a JSON
list), so that a later error (an over-long sequence in the pipeline) can still name the record.

Each parser raises `RecordError` on a record it cannot use. `read_records` turns that into an error
naming file and record, or, with `skip_bad=True`, into a counted skip (`ReadStats`).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

ASSISTANT_TURN = "\n\nAssistant:"

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_TEMPLATE_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)

Record = dict[str, Any]


class RecordError(ValueError):
    """A record that cannot be used; the message names the problem (and, once raised by
    `read_records`, the file and record number)."""


@dataclasses.dataclass
class ReadStats:
    """Counts of one `read_records` pass: records read, records kept, records skipped by reason."""

    read: int = 0
    kept: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _open_text_bytes(path: str | os.PathLike):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Data file not found: {path}")
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def iter_raw_records(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yields (record number, parsed JSON value | RecordError) from a .jsonl[.gz] or .json file.

    A `.json` file holds one JSON list (numbered from 1); anything else is JSON lines (numbered by
    line, blank lines skipped). A line that is not UTF-8 or not JSON is yielded as a RecordError, so
    that the caller decides whether it is fatal.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    if path.endswith(".json") or path.endswith(".json.gz"):
        with _open_text_bytes(path) as f:
            raw = f.read()
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise RecordError(f"{name}: not UTF-8 ({e}).") from e
        except json.JSONDecodeError as e:
            raise RecordError(f"{name}: malformed JSON ({e}).") from e
        if not isinstance(data, list):
            raise RecordError(
                f"{name}: expected a JSON list of records, got {type(data).__name__}."
            )
        yield from enumerate(data, start=1)
        return
    with _open_text_bytes(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield line_no, RecordError(f"not UTF-8 ({e.reason} at byte {e.start})")
            except json.JSONDecodeError as e:
                yield line_no, RecordError(f"malformed JSON ({e.msg} at column {e.colno})")


def read_records(
    path: str | os.PathLike,
    parse: Callable[[Any], list[Record]],
    *,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[Record]:
    """Parses every record of `path` with `parse` (one raw record -> canonical records).

    Args:
      path: .jsonl, .jsonl.gz, .json (a list) or .json.gz file.
      parse: a parser from this module (or the user's own), raising RecordError on bad input.
      skip_bad: skip and count bad records instead of raising.
      stats: filled in place with the counts.

    Raises:
      RecordError: "<file>: record <n>: <problem>", unless skip_bad.
    """
    stats = stats if stats is not None else ReadStats()
    name = os.path.basename(os.fspath(path))
    for number, raw in iter_raw_records(path):
        stats.read += 1
        try:
            if isinstance(raw, RecordError):
                raise raw
            if not isinstance(raw, dict):
                raise RecordError(f"expected a JSON object, got {type(raw).__name__}")
            parsed = parse(raw)
        except RecordError as e:
            if not skip_bad:
                raise RecordError(f"{name}: record {number}: {e}") from None
            stats.skip(re.split(r": | \(", str(e), maxsplit=1)[0])
            continue
        for i, record in enumerate(parsed):
            record_id = f"{name}:{number}" if len(parsed) == 1 else f"{name}:{number}.{i}"
            yield {"id": record_id, **record}
        stats.kept += 1


def _text_field(raw: dict, key: str, *, allow_empty: bool = False) -> str:
    if key not in raw:
        raise RecordError(f"missing field {key!r} (fields: {sorted(raw)})")
    value = raw[key]
    if not isinstance(value, str):
        raise RecordError(f"field {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RecordError(f"field {key!r} is empty")
    return value


def check_comparison(prompt: str, responses: list[str], pairs: list[tuple[int, int]]) -> Record:
    """Validates and returns a canonical comparison (see module docstring)."""
    if len(responses) < 2:
        raise RecordError(f"a comparison needs K >= 2 responses, got K = {len(responses)}")
    for i, response in enumerate(responses):
        if not isinstance(response, str):
            raise RecordError(f"response {i} must be a string, got {type(response).__name__}")
        if not response.strip():
            raise RecordError(f"response {i} is empty")
    pairs = [(int(w), int(lo)) for w, lo in pairs]
    for w, lo in pairs:
        if not (0 <= w < len(responses) and 0 <= lo < len(responses)) or w == lo:
            raise RecordError(f"pair ({w}, {lo}) is not a pair of distinct responses")
    if not pairs:
        raise RecordError("no strict preference among the responses (all tied)")
    return {"prompt": prompt, "responses": list(responses), "pairs": pairs}


def split_hh_dialogues(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Splits an HH-RLHF pair into (prompt, chosen response, rejected response).

    The prompt is the longest common prefix of the two dialogues, cut back to its last
    "\\n\\nAssistant:" turn marker. Splitting each string at its own last marker is wrong when a
    reply itself contains "\\n\\nAssistant:" (5 records of the harmless-base test split do): the two
    responses would then get different prompts.
    """
    limit = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        limit += 1
    # The marker must end within the common prefix.
    end = chosen.rfind(ASSISTANT_TURN, 0, limit)
    if end < 0:
        raise RecordError("no shared '\\n\\nAssistant:' turn before the responses differ")
    end += len(ASSISTANT_TURN)
    return chosen[:end], chosen[end:], rejected[end:]


def parse_hh(raw: dict) -> list[Record]:
    """HH-RLHF `{chosen, rejected}` -> one K = 2 comparison (chosen preferred)."""
    chosen = _text_field(raw, "chosen")
    rejected = _text_field(raw, "rejected")
    prompt, chosen_response, rejected_response = split_hh_dialogues(chosen, rejected)
    return [check_comparison(prompt, [chosen_response, rejected_response], [(0, 1)])]


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """Alpaca's prompt template (the no-input variant when `input_text` is blank)."""
    if input_text.strip():
        return ALPACA_TEMPLATE.format(instruction=instruction, input=input_text)
    return ALPACA_TEMPLATE_NO_INPUT.format(instruction=instruction)


def chat_prompt(instruction: str, input_text: str = "") -> str:
    """An instruction and its input as one user message, for a model with a chat template (the
    template supplies the turns Alpaca's prompt template writes out)."""
    return f"{instruction}\n\n{input_text}" if input_text.strip() else instruction


def parse_alpaca_chat(raw: dict) -> list[Record]:
    """`parse_alpaca` with the prompt as a chat message (`chat_prompt`) instead of Alpaca's
    prompt template."""
    return parse_alpaca(raw, template=chat_prompt)


def parse_alpaca(raw: dict, template: Callable[[str, str], str] | None = None) -> list[Record]:
    """Alpaca `{instruction, input, output}` or Self-Instruct seed `{instruction, instances:
    [{input, output}, ...]}` -> demonstrations (one per instance), prompts through `template`
    (default Alpaca's, `alpaca_prompt`)."""
    template = template or alpaca_prompt
    instruction = _text_field(raw, "instruction")
    if "instances" in raw:
        instances = raw["instances"]
        if not isinstance(instances, list) or not instances:
            raise RecordError("field 'instances' must be a non-empty list")
    else:
        instances = [raw]
    records = []
    for instance in instances:
        if not isinstance(instance, dict):
            raise RecordError("each instance must be an object with 'input' and 'output'")
        input_text = _text_field(instance, "input", allow_empty=True) if "input" in instance else ""
        output = _text_field(instance, "output")
        records.append({"prompt": template(instruction, input_text), "response": output})
    return records


def parse_demonstration(raw: dict) -> list[Record]:
    """The user's `{prompt, response}` -> one demonstration."""
    return [{"prompt": _text_field(raw, "prompt"), "response": _text_field(raw, "response")}]


def pairs_from_ranks(ranks: list) -> list[tuple[int, int]]:
    """Ranks (0 = best, equal ranks tie) -> every strict (winner, loser) pair."""
    return [
        (i, j)
        for i, ri in enumerate(ranks)
        for j, rj in enumerate(ranks)
        if ri < rj  # ties give no pair
    ]


def parse_ranking(raw: dict) -> list[Record]:
    """The user's comparisons: `{prompt, responses: [...], ranking: [...]}` where ranking[i] is the
    rank of responses[i] (0 = best, equal ranks are ties), or `{prompt, chosen, rejected}`."""
    prompt = _text_field(raw, "prompt")
    if "chosen" in raw or "rejected" in raw:
        responses = [_text_field(raw, "chosen"), _text_field(raw, "rejected")]
        return [check_comparison(prompt, responses, [(0, 1)])]
    for key in ("responses", "ranking"):
        if key not in raw:
            raise RecordError(
                f"missing field {key!r}: a comparison is {{prompt, responses, ranking}} or "
                "{prompt, chosen, rejected}"
            )
    responses, ranking = raw["responses"], raw["ranking"]
    if not isinstance(responses, list) or not isinstance(ranking, list):
        raise RecordError("'responses' and 'ranking' must be lists")
    if len(ranking) != len(responses):
        raise RecordError(f"{len(responses)} responses but {len(ranking)} ranks")
    if not all(isinstance(r, int | float) and not isinstance(r, bool) for r in ranking):
        raise RecordError("'ranking' must hold numbers (0 = best)")
    return [check_comparison(prompt, responses, pairs_from_ranks(ranking))]


QA_FEEDBACK_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def qa_feedback_prompt(question: str, passages: list) -> str:
    """The qa-feedback model input: question, then each Wikipedia passage's title and text."""
    parts = [f"question: {question} context:"]
    for passage in passages:
        if not isinstance(passage, list) or not passage:
            raise RecordError("each passage must be a non-empty list [title, sentence, ...]")
        title, *sentences = passage
        parts.append(f"wikipage: {title} text: {' '.join(sentences)}")
    return " ".join(parts) + " answer:"


def parse_qa_feedback(raw: dict) -> list[Record]:
    """FineGrainedRLHF qa-feedback -> one K = 4 comparison over "prediction 1".."prediction 4".

    `preference` holds 6 labels in the order 1v2, 1v3, 1v4, 2v3, 2v4, 3v4: 1 = the first is
    preferred, 2 = the second, 0 = tie (no pair).
    """
    prompt = qa_feedback_prompt(_text_field(raw, "question"), raw.get("passages", []))
    responses = [" " + _text_field(raw, f"prediction {i}").strip() for i in range(1, 5)]
    labels = raw.get("preference")
    if not isinstance(labels, list) or len(labels) != 6:
        raise RecordError("field 'preference' must be a list of 6 labels (1v2, 1v3, ..., 3v4)")
    pairs = []
    for (a, b), label in zip(QA_FEEDBACK_PAIRS, labels, strict=True):
        if label == 1:
            pairs.append((a, b))
        elif label == 2:
            pairs.append((b, a))
        elif label != 0:
            raise RecordError(f"preference label {label!r} is not 0, 1 or 2")
    return [check_comparison(prompt, responses, pairs)]


def parse_qa_feedback_gold(raw: dict) -> list[Record]:
    """FineGrainedRLHF qa-feedback -> the human-written gold answer as a demonstration."""
    prompt = qa_feedback_prompt(_text_field(raw, "question"), raw.get("passages", []))
    return [{"prompt": prompt, "response": " " + _text_field(raw, "gold").strip()}]


PARSERS: dict[str, Callable[[dict], list[Record]]] = {
    "hh": parse_hh,
    "alpaca": parse_alpaca,
    "alpaca_chat": parse_alpaca_chat,
    "demonstration": parse_demonstration,
    "ranking": parse_ranking,
    "qa_feedback": parse_qa_feedback,
    "qa_feedback_gold": parse_qa_feedback_gold,
}
