"""Records, TFDS builders and grain pipelines, on data the tests write (and the shared files)."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from rlhf_jax.data import pipeline, records, sources
from rlhf_jax.data.tokenizer import train_bpe_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.exists(), reason="../shared/data is absent (only this workspace ships it)"
)


def write_jsonl(path, rows, *, raw_lines=()):
    with open(path, "wb") as f:
        for row in rows:
            f.write((json.dumps(row) + "\n").encode())
        for line in raw_lines:
            f.write(line + b"\n")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"Human: question {i}? Assistant: answer number {i}." for i in range(200)]
    return train_bpe_tokenizer(corpus, vocab_size=300)


# ---------------------------------------------------------------------------------------------
# Parsers and bad input
# ---------------------------------------------------------------------------------------------

GOOD_RANKING = {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [1, 0, 2]}

BAD_RECORDS = [
    ({"prompt": "p", "responses": ["a", "b"]}, "missing field 'ranking'"),
    ({"prompt": "p", "chosen": "a", "rejected": "  "}, "field 'rejected' is empty"),
    ({"prompt": "p", "responses": ["a", ""], "ranking": [0, 1]}, "response 1 is empty"),
    ({"prompt": "p", "responses": ["a"], "ranking": [0]}, "K >= 2"),
    ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [1, 1, 1]}, "all tied"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0]}, "2 responses but 1 ranks"),
]


@pytest.mark.parametrize("bad, message", BAD_RECORDS)
def test_bad_comparison_names_file_and_record(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "mine.jsonl", [GOOD_RANKING, bad])
    with pytest.raises(records.RecordError, match=rf"mine\.jsonl: record 2: .*{message}"):
        list(records.read_records(path, records.parse_ranking))
    stats = records.ReadStats()
    kept = list(records.read_records(path, records.parse_ranking, skip_bad=True, stats=stats))
    assert len(kept) == 1 and stats.read == 2 and sum(stats.skipped.values()) == 1


@pytest.mark.parametrize(
    "line, message",
    [(b'{"prompt": "p", "response": "r"', "malformed JSON"), (b"\xff\xfe{}", "not UTF-8")],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = write_jsonl(
        tmp_path / "demos.jsonl", [{"prompt": "p", "response": "r"}], raw_lines=[line]
    )
    with pytest.raises(records.RecordError, match=rf"demos\.jsonl: record 2: {message}"):
        list(records.read_records(path, records.parse_demonstration))
    stats = records.ReadStats()
    kept = list(records.read_records(path, records.parse_demonstration, skip_bad=True, stats=stats))
    assert [r["id"] for r in kept] == ["demos.jsonl:1"] and stats.skipped


QA = {
    "question": "q?",
    "passages": [["Title", "A sentence."]],
    **{f"prediction {i}": f"answer {i}" for i in range(1, 5)},
    "preference": [1, 1, 1, 0, 2, 1],
}
BAD_RECORDS_BY_PARSER = [
    ("ranking", [1, 2], "expected a JSON object, got list"),
    ("ranking", {"prompt": 3, "chosen": "a", "rejected": "b"}, "field 'prompt' must be a string"),
    ("ranking", {"prompt": "p", "responses": "ab", "ranking": [0, 1]}, "must be lists"),
    ("ranking", {"prompt": "p", "responses": ["a", 2], "ranking": [0, 1]}, "response 1 must be"),
    ("ranking", {"prompt": "p", "responses": ["a", "b"], "ranking": [True, 0]}, "hold numbers"),
    ("hh", {"chosen": "Human: a", "rejected": "Human: b"}, "no shared"),
    ("alpaca", {"instruction": "i", "instances": []}, "'instances' must be a non-empty list"),
    ("alpaca", {"instruction": "i", "instances": ["x"]}, "each instance must be an object"),
    ("alpaca", {"instruction": "i", "input": "", "output": " "}, "field 'output' is empty"),
    ("demonstration", {"prompt": "p"}, "missing field 'response'"),
    ("qa_feedback", {**QA, "passages": [[]]}, "each passage must be a non-empty list"),
    ("qa_feedback", {**QA, "preference": [1, 1]}, "a list of 6 labels"),
    ("qa_feedback", {**QA, "preference": [1, 1, 1, 0, 2, 3]}, "label 3 is not 0, 1 or 2"),
    ("qa_feedback", {**QA, "preference": [0] * 6}, "all tied"),
    ("qa_feedback_gold", {**QA, "gold": ""}, "field 'gold' is empty"),
]


@pytest.mark.parametrize("parser, bad, message", BAD_RECORDS_BY_PARSER)
def test_every_parser_names_what_is_wrong_with_a_record(tmp_path, parser, bad, message):
    good = {
        "ranking": GOOD_RANKING,
        "hh": {
            "chosen": "\n\nHuman: hi\n\nAssistant: yes",
            "rejected": "\n\nHuman: hi\n\nAssistant: no",
        },
        "alpaca": {"instruction": "i", "input": "", "output": "o"},
        "demonstration": {"prompt": "p", "response": "r"},
        "qa_feedback": QA,
        "qa_feedback_gold": {**QA, "gold": "g"},
    }[parser]
    parse = records.PARSERS[parser]
    assert parse(good)  # the good record parses, so the bad one fails for the reason named
    path = write_jsonl(tmp_path / "data.jsonl", [good, bad])
    with pytest.raises(records.RecordError, match=rf"data\.jsonl: record 2: .*{message}"):
        list(records.read_records(path, parse))
    stats = records.ReadStats()
    kept = list(records.read_records(path, parse, skip_bad=True, stats=stats))
    assert kept and all(r["id"].partition(":")[2].split(".")[0] == "1" for r in kept)
    assert stats.kept == 1 and sum(stats.skipped.values()) == 1


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe[]", "not UTF-8"),
        (b'[{"prompt": "p"', "malformed JSON"),
        (b'{"prompt": "p", "response": "r"}', "expected a JSON list of records, got dict"),
    ],
)
def test_bad_json_list_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "records.json"
    path.write_bytes(content)
    with pytest.raises(records.RecordError, match=rf"records\.json: {message}"):
        list(records.read_records(path, records.parse_demonstration))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list(records.read_records(tmp_path / "nope.jsonl", records.parse_ranking))


def test_ranking_pairs_skip_ties_and_chosen_rejected():
    (rec,) = records.parse_ranking(
        {"prompt": "p", "responses": list("abcd"), "ranking": [0, 1, 1, 2]}
    )
    assert sorted(rec["pairs"]) == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]  # 1 and 2 tie
    (rec,) = records.parse_ranking({"prompt": "p", "chosen": "a", "rejected": "b"})
    assert rec["responses"] == ["a", "b"] and rec["pairs"] == [(0, 1)]


def test_hh_split_at_common_prefix_when_reply_contains_turn_marker():
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: list words"
    chosen = prompt + "\n\nAssistant: Sure.\n\nAssistant: and more"
    rejected = prompt + "\n\nAssistant: No."
    # Splitting each string at its own last marker would give the two different prompts.
    assert chosen.rsplit("\n\nAssistant:", 1)[0] != rejected.rsplit("\n\nAssistant:", 1)[0]
    (rec,) = records.parse_hh({"chosen": chosen, "rejected": rejected})
    assert rec["prompt"] == prompt + "\n\nAssistant:"
    assert rec["responses"] == [" Sure.\n\nAssistant: and more", " No."]


def test_qa_feedback_labels_to_pairs():
    raw = {
        "question": "q?",
        "passages": [["Title", "One.", "Two."]],
        **{f"prediction {i}": f"answer {i}" for i in range(1, 5)},
        "preference": [0, 1, 2, 1, 0, 2],  # 1v2 tie, 1>3, 4>1, 2>3, 2v4 tie, 4>3
    }
    (rec,) = records.parse_qa_feedback(raw)
    assert rec["pairs"] == [(0, 2), (3, 0), (1, 2), (3, 2)]
    assert rec["prompt"] == "question: q? context: wikipage: Title text: One. Two. answer:"
    with pytest.raises(records.RecordError, match="all tied"):
        records.parse_qa_feedback({**raw, "preference": [0] * 6})


def test_alpaca_and_self_instruct_shapes():
    (demo,) = records.parse_alpaca({"instruction": "Add.", "input": "1+1", "output": "2"})
    assert "### Input:\n1+1" in demo["prompt"] and demo["response"] == "2"
    seed = {
        "instruction": "Say hi.",
        "instances": [{"input": "", "output": "hi"}, {"output": "yo"}],
    }
    demos = records.parse_alpaca(seed)
    assert len(demos) == 2 and "### Input" not in demos[0]["prompt"]


@needs_shared
def test_shared_hh_five_records_with_markers_in_replies():
    path = SHARED / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    tricky = []
    with gzip.open(path, "rt") as f:
        for number, line in enumerate(f, start=1):
            row = json.loads(line)
            c, r = row["chosen"], row["rejected"]
            if c[: c.rfind("\n\nAssistant:")] != r[: r.rfind("\n\nAssistant:")]:
                tricky.append((number, row))
    assert len(tricky) == 5
    for _, row in tricky:
        (rec,) = records.parse_hh(row)
        assert row["chosen"] == rec["prompt"] + rec["responses"][0]
        assert row["rejected"] == rec["prompt"] + rec["responses"][1]
        assert rec["prompt"].endswith("\n\nAssistant:")
    stats = records.ReadStats()
    kept = list(records.read_records(path, records.parse_hh, skip_bad=True, stats=stats))
    # 4 records have an empty chosen reply; they are counted, not silently dropped.
    assert (stats.read, len(kept), stats.skipped) == (2312, 2308, {"response 0 is empty": 4})


@needs_shared
def test_shared_qa_feedback_counts():
    path = SHARED / "finegrained-rlhf-qa-feedback" / "dev_feedback.json"
    stats = records.ReadStats()
    kept = list(records.read_records(path, records.parse_qa_feedback, skip_bad=True, stats=stats))
    assert sum(len(r["pairs"]) for r in kept) == 2616  # the README's strict comparisons
    assert len(kept) + sum(stats.skipped.values()) == 500


# ---------------------------------------------------------------------------------------------
# TFDS builders
# ---------------------------------------------------------------------------------------------


def test_jsonl_builder_round_trip(tmp_path):
    rows = [
        {
            "prompt": f"p{i}",
            "responses": ["a", "b", "c"][: 2 + i % 2],
            "ranking": [1, 0, 2][: 2 + i % 2],
        }
        for i in range(6)
    ]
    path = write_jsonl(tmp_path / "cmp.jsonl", rows)
    source = sources.open_source(
        "jsonl/mine",
        "train",
        data_dir=tmp_path / "tfds",
        jsonl_kind="comparisons",
        jsonl_files={"train": str(path)},
    )
    assert len(source) == 6
    got = sorted((r["id"].decode(), r["pairs"].tolist()) for r in (source[i] for i in range(6)))
    assert got[0] == ("cmp.jsonl:1", [[1, 0]])
    assert got[1] == ("cmp.jsonl:2", [[0, 2], [1, 0], [1, 2]])


def test_jsonl_builder_bad_record_stops_or_counts(tmp_path):
    path = write_jsonl(tmp_path / "cmp.jsonl", [GOOD_RANKING, {"prompt": "p", "responses": ["a"]}])
    kwargs = dict(jsonl_kind="comparisons", jsonl_files={"train": str(path)})
    with pytest.raises(Exception, match=r"cmp\.jsonl: record 2: missing field 'ranking'"):
        sources.open_source("jsonl/bad", "train", data_dir=tmp_path / "a", **kwargs)
    source = sources.open_source(
        "jsonl/bad", "train", data_dir=tmp_path / "b", skip_bad_records=True, **kwargs
    )
    assert len(source) == 1
    assert source.dataset_info.metadata["skipped"] == {"missing field 'ranking'": 1}


@needs_shared
def test_anthropic_hh_builder_from_manual_dir(tmp_path):
    source = sources.open_source(
        "anthropic_hh/harmless-base",
        "test",
        data_dir=tmp_path,
        manual_dir=SHARED / "hh-rlhf",
        skip_bad_records=True,
    )
    assert len(source) == 2308
    record = source[0]
    assert record["prompt"].decode().endswith("\n\nAssistant:")
    assert record["pairs"].tolist() == [[0, 1]]


def test_alpaca_builder_from_manual_dir(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    rows = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Broken.", "input": "", "output": ""},  # empty response
    ]
    (manual / "alpaca_data.json").write_text(json.dumps(rows))
    with pytest.raises(Exception, match=r"alpaca_data.json: record 3: field .output. is empty"):
        sources.open_source("alpaca/alpaca", "train", data_dir=tmp_path / "a", manual_dir=manual)
    source = sources.open_source(
        "alpaca/alpaca",
        "train",
        data_dir=tmp_path / "b",
        manual_dir=manual,
        skip_bad_records=True,
    )
    assert len(source) == 2
    by_response = {source[i]["response"].decode(): source[i] for i in range(2)}
    with_input = by_response["5"]["prompt"].decode()
    assert (
        "### Instruction:\nAdd the numbers." in with_input and "### Input:\n2 and 3" in with_input
    )
    assert with_input.endswith("### Response:\n")
    assert "### Input:" not in by_response["Blue."]["prompt"].decode()
    assert sum(source.dataset_info.metadata["skipped"].values()) == 1


@needs_shared
def test_qa_feedback_builders_on_shared_dev_file(tmp_path):
    """qa_feedback/comparisons and qa_feedback/gold from the shared dev file (the train file is
    optional: no train split without it)."""
    manual = SHARED / "finegrained-rlhf-qa-feedback"
    comparisons = sources.open_source(
        "qa_feedback/comparisons",
        "dev",
        data_dir=tmp_path,
        manual_dir=manual,
        skip_bad_records=True,
    )
    skipped = sum(comparisons.dataset_info.metadata["skipped"].values())
    assert len(comparisons) + skipped == 500
    assert sum(len(comparisons[i]["pairs"]) for i in range(len(comparisons))) == 2616
    record = comparisons[0]
    assert record["prompt"].decode().startswith("question: ")
    assert record["prompt"].decode().endswith(" answer:") and len(record["responses"]) == 4
    gold = sources.open_source("qa_feedback/gold", "dev", data_dir=tmp_path, manual_dir=manual)
    assert len(gold) == 500 and gold[0]["response"].decode().startswith(" ")
    with pytest.raises(ValueError, match=r"Unknown split 'train'. Should be one of \['dev'\]"):
        sources.open_source("qa_feedback/gold", "train", data_dir=tmp_path, manual_dir=manual)


@needs_shared
def test_self_instruct_seed_builder_on_shared_file(tmp_path):
    source = sources.open_source(
        "alpaca/self_instruct_seed",
        "train",
        data_dir=tmp_path,
        manual_dir=SHARED / "self-instruct-seed",
    )
    assert len(source) == 175
    ids = {source[i]["id"].decode() for i in range(len(source))}
    assert len(ids) == 175 and all(i.startswith("seed_tasks.jsonl:") for i in ids)
    assert all(source[i]["response"] for i in range(len(source)))


# ---------------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------------


def comparisons(n=10):
    return [
        {
            "id": f"r{i}",
            "prompt": f"Human: question {i}?",
            "responses": [f" answer number {i}.", " no", " maybe"][: 2 + i % 2],
            "pairs": np.array([[0, 1]] + ([[2, 1]] if i % 2 else []), np.int32),
        }
        for i in range(n)
    ]


def test_comparison_batch_layout(tokenizer):
    spec = pipeline.SequenceSpec(max_len=24, max_prompt_len=12, max_responses=3)
    ds = pipeline.make_dataset(
        comparisons(),
        pipeline.TokenizeComparison(tokenizer, spec),
        batch_size=4,
        seed=0,
        shuffle=False,
    )
    batch = ds[0]
    assert batch["tokens_bkt"].shape == (4, 3, 24) and batch["prefers_bkk"].shape == (4, 3, 3)
    assert batch["valid_bk"].tolist()[:2] == [[True, True, False], [True, True, True]]
    row = batch["tokens_bkt"][1, 0][batch["mask_bkt"][1, 0]]
    assert tokenizer.decode(row.tolist()) == "Human: question 1? answer number 1."
    assert row[-1] == tokenizer.eos_id
    assert batch["prefers_bkk"][1].tolist() == [[0, 1, 0], [0, 0, 0], [0, 1, 0]]


def test_truncation_rule_is_counted(tokenizer):
    long_prompt = "Human: " + " ".join(f"question {i}?" for i in range(30))
    record = {"id": "x", "prompt": long_prompt, "response": " answer number 3."}
    spec = pipeline.SequenceSpec(max_len=16, max_prompt_len=8)
    element = pipeline.TokenizeDemonstration(tokenizer, spec).map(record)
    assert element["truncated"] == 1 and element["skipped"] == 0
    prompt_ids = tokenizer.encode(long_prompt)
    np.testing.assert_array_equal(element["tokens_t"][:8], prompt_ids[-8:])  # the prompt's end
    response_len = len(tokenizer.encode(" answer number 3.")) + 1  # + EOS
    expected = np.zeros(16, bool)
    expected[8 : 8 + response_len] = True
    np.testing.assert_array_equal(element["loss_mask_t"], expected)
    # A response longer than what the prompt leaves is cut at the right.
    long = pipeline.TokenizeDemonstration(tokenizer, spec).map({**record, "response": long_prompt})
    assert long["loss_mask_t"][8:].all() and long["tokens_t"][-1] != tokenizer.eos_id

    skip = pipeline.TokenizeDemonstration(tokenizer, pipeline.SequenceSpec(16, 8, overlong="skip"))
    skipped = skip.map(record)
    assert (
        skipped["skipped"] == 1 and not skipped["mask_t"].any() and not skipped["loss_mask_t"].any()
    )

    error = pipeline.TokenizeDemonstration(
        tokenizer, pipeline.SequenceSpec(16, 8, overlong="error")
    )
    with pytest.raises(records.RecordError, match="record x: sequence longer than max_len=16"):
        error.map(record)
    fits = error.map({"id": "y", "prompt": "Human: hi", "response": " yo"})
    assert fits["truncated"] == 0


def test_pipeline_is_deterministic_and_resumable(tokenizer):
    spec = pipeline.SequenceSpec(max_len=24, max_prompt_len=12, max_responses=3)
    make = lambda seed: pipeline.make_dataset(  # noqa: E731
        comparisons(10), pipeline.TokenizeComparison(tokenizer, spec), batch_size=4, seed=seed
    )
    first = [make(0)[i]["tokens_bkt"] for i in range(6)]
    again = [make(0)[i]["tokens_bkt"] for i in range(6)]
    other = [make(1)[i]["tokens_bkt"] for i in range(6)]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # Iterator state round trip: resume after 3 batches gives batches 3, 4, 5.
    iterator = iter(make(0).to_iter_dataset())
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()
    resumed = iter(make(0).to_iter_dataset())
    resumed.set_state(state)
    for i in range(3, 6):
        np.testing.assert_array_equal(next(resumed)["tokens_bkt"], first[i])


def test_processes_get_disjoint_slices(tokenizer):
    spec = pipeline.SequenceSpec(max_len=24, max_prompt_len=12)
    transform = pipeline.TokenizeDemonstration(tokenizer, spec)
    data = [{"id": str(i), "prompt": f"Human: question {i}?", "response": " yo"} for i in range(8)]
    whole = pipeline.make_dataset(data, transform, batch_size=4, seed=0)[0]["tokens_bt"]
    parts = [
        pipeline.make_dataset(
            data, transform, batch_size=4, seed=0, process_index=p, process_count=2
        )[0]["tokens_bt"]
        for p in range(2)
    ]
    assert parts[0].shape == (2, 24)
    assert sorted(map(tuple, np.concatenate(parts))) == sorted(map(tuple, whole))


def test_eval_pads_last_batch_with_weightless_rows(tokenizer):
    spec = pipeline.SequenceSpec(max_len=24, max_prompt_len=12)
    data = [{"id": str(i), "prompt": "Human: hi", "response": " yo"} for i in range(5)]
    ds = pipeline.make_dataset(
        data,
        pipeline.TokenizeDemonstration(tokenizer, spec),
        batch_size=4,
        seed=0,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
    )
    assert len(ds) == 2
    last = ds[1]
    assert last["tokens_bt"].shape == (4, 24)
    assert last["loss_mask_bt"].any(axis=1).tolist() == [True, False, False, False]


def test_too_many_responses_is_an_error(tokenizer):
    spec = pipeline.SequenceSpec(max_len=24, max_prompt_len=12, max_responses=2)
    with pytest.raises(records.RecordError, match="record r1: 3 responses but max_responses=2"):
        pipeline.TokenizeComparison(tokenizer, spec).map(comparisons(2)[1])


def test_prompt_rows_are_left_padded_and_an_overlong_prompt_keeps_its_end(tokenizer):
    transform = pipeline.TokenizePrompt(tokenizer, max_prompt_len=8)
    short = transform.map({"prompt": "Human: hi"})
    ids = [*tokenizer.prefix_ids, *tokenizer.encode("Human: hi")]
    assert short["mask_p"].tolist() == [False] * (8 - len(ids)) + [True] * len(ids)
    assert short["tokens_p"][-len(ids) :].tolist() == ids and short["truncated"] == 0
    assert (short["tokens_p"][: 8 - len(ids)] == tokenizer.pad_id).all()
    long_prompt = "Human: " + " ".join(f"question {i}?" for i in range(30))
    long = transform.map({"prompt": long_prompt})
    assert long["mask_p"].all() and long["truncated"] == 1 and long["skipped"] == 0
    room = 8 - len(tokenizer.prefix_ids)
    assert long["tokens_p"][-room:].tolist() == tokenizer.encode(long_prompt)[-room:]


def test_an_overlong_ranked_response_with_skip_weighs_nothing(tokenizer):
    spec = pipeline.SequenceSpec(max_len=16, max_prompt_len=8, max_responses=3, overlong="skip")
    long = " ".join(f"answer number {i}." for i in range(20))
    record = {"id": "r", "prompt": "Human: hi", "responses": [" a", long, " b"]}
    record["pairs"] = [(0, 1), (2, 1), (0, 2)]
    element = pipeline.TokenizeComparison(tokenizer, spec).map(record)
    assert element["skipped"] == 1
    assert not element["mask_kt"].any() and not element["valid_k"].any()
    assert not element["prefers_kk"].any()
    fits = pipeline.TokenizeComparison(tokenizer, spec).map({**record, "responses": [" a"] * 3})
    assert fits["skipped"] == 0 and fits["valid_k"].all() and fits["prefers_kk"].sum() == 3


def test_sequence_spec_and_dataset_arguments_are_checked(tokenizer):
    with pytest.raises(ValueError, match="overlong='drop'; expected one of"):
        pipeline.SequenceSpec(16, 8, overlong="drop")
    with pytest.raises(ValueError, match="max_prompt_len=16 must be in"):
        pipeline.SequenceSpec(16, 16)
    with pytest.raises(ValueError, match="max_responses=1 must be >= 2"):
        pipeline.SequenceSpec(16, 8, max_responses=1)
    transform = pipeline.TokenizeDemonstration(tokenizer, pipeline.SequenceSpec(16, 8))
    data = [{"prompt": "Human: hi", "response": " yo"}] * 4
    with pytest.raises(ValueError, match="batch_size=3 does not divide over 2 processes"):
        pipeline.make_dataset(
            data, transform, batch_size=3, seed=0, process_index=0, process_count=2
        )
    with pytest.raises(ValueError, match="The data source is empty"):
        pipeline.make_dataset([], transform, batch_size=4, seed=0)


# ---------------------------------------------------------------------------------------------
# Packing (pretraining text end to end in full rows)
# ---------------------------------------------------------------------------------------------


def test_packing_concatenates_documents_with_eos_in_seeded_order_and_drops_the_tail(tokenizer):
    from rlhf_jax.data import packing

    docs = [{"prompt": "", "response": f"Assistant: answer number {i}."} for i in range(30)]
    packed = packing.pack_documents(docs, tokenizer, max_len=16, seed=3)
    order = np.random.default_rng([3, 17]).permutation(len(docs))
    stream = []
    for i in order:
        stream += [*tokenizer.prefix_ids, *tokenizer.encode(docs[i]["response"]), tokenizer.eos_id]
    assert packed.tokens == len(stream) and packed.documents == 30
    assert packed.rows_nt.shape == (len(stream) // 16, 16) and packed.rows_nt.dtype == np.int32
    np.testing.assert_array_equal(packed.rows_nt.reshape(-1), stream[: len(packed) * 16])
    # Every document's end is marked, and nothing is padding.
    assert (packed.rows_nt == tokenizer.eos_id).sum() >= 30 - 2
    assert (
        packed.rows_nt.reshape(-1).tolist()
        != packing.pack_documents(docs, tokenizer, 16, seed=4).rows_nt.reshape(-1).tolist()
    )


def test_packed_rows_batch_like_demonstrations_with_every_token_a_target(tokenizer):
    from rlhf_jax.data import packing

    docs = [{"prompt": "Human: question 1?", "response": f" answer {i}"} for i in range(40)]
    packed = packing.pack_documents(docs, tokenizer, max_len=12, seed=0)
    batches = pipeline.make_dataset(packed, packing.RowToElement(), batch_size=4, seed=0)
    batch = batches[0]
    assert set(batch) == {"tokens_bt", "mask_bt", "loss_mask_bt", "truncated_b", "skipped_b"}
    assert batch["tokens_bt"].shape == (4, 12) and batch["mask_bt"].all()
    assert batch["loss_mask_bt"].all() and not batch["truncated_b"].any()
    # The rows of a batch are rows of the packing (shuffled), and batches repeat by index.
    rows = {tuple(r) for r in packed.rows_nt}
    assert all(tuple(r) in rows for r in batch["tokens_bt"])
    np.testing.assert_array_equal(batches[0]["tokens_bt"], batch["tokens_bt"])


def test_packing_too_little_text_for_one_row_is_an_error(tokenizer):
    from rlhf_jax.data import packing

    with pytest.raises(ValueError, match="fewer than one row of max_len=512"):
        packing.pack_documents([{"prompt": "", "response": "hi"}], tokenizer, 512, seed=0)


def _comparisons(n, seed=0):
    """n comparison records of 2-5 responses of varied lengths, with a ranking's pairs."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(2, 6))
        responses = [" answer" + " number" * int(rng.integers(0, 6)) + f" {i}." for _ in range(k)]
        out.append(
            {
                "id": f"c{i}",
                "prompt": "Human: question" + f" {i}?" * int(rng.integers(1, 4)) + " Assistant:",
                "responses": responses,
                "pairs": [[a, a + 1] for a in range(k - 1)],
            }
        )
    return out


def test_pack_comparisons_keeps_every_comparison_once_in_rows_that_fit(tokenizer):
    from rlhf_jax.data import packing

    spec = pipeline.SequenceSpec(max_len=48, max_prompt_len=24, max_responses=5)
    comparisons = _comparisons(200)
    lengths = [
        pipeline.shared_prompt_comparison(tokenizer, spec, 96, c).length for c in comparisons
    ]
    packed = packing.pack_comparisons(comparisons, tokenizer, spec, 96, per_row=4, seed=0)
    flat = sorted(i for group in packed.groups for i in group)
    assert flat == list(range(200)) and packed.count == 200
    assert all(1 <= len(g) <= 4 and sum(lengths[i] for i in g) <= 96 for g in packed.groups)
    assert packed.tokens == sum(lengths)
    # Best-fit decreasing fills over 90% of the slots; one comparison per row fills far less.
    one_per_row_fill = sum(lengths) / (200 * 96)
    assert packed.fill > 0.9 and packed.fill > one_per_row_fill + 0.3
    assert packed[0] == [comparisons[i] for i in packed.groups[0]]
    again = packing.pack_comparisons(comparisons, tokenizer, spec, 96, per_row=4, seed=0)
    assert again.groups == packed.groups
    one = packing.pack_comparisons(comparisons, tokenizer, spec, 96, per_row=1, seed=0)
    assert len(one) == 200 and all(len(g) == 1 for g in one.groups)
    with pytest.raises(ValueError, match="per_row"):
        packing.pack_comparisons(comparisons, tokenizer, spec, 96, per_row=0, seed=0)
    with pytest.raises(ValueError, match="No comparison"):
        packing.pack_comparisons([], tokenizer, spec, 96, per_row=2, seed=0)


def test_comparison_rows_hold_each_comparison_as_its_own_shared_prompt_row(tokenizer):
    from rlhf_jax.data import packing

    spec = pipeline.SequenceSpec(max_len=48, max_prompt_len=24, max_responses=5)
    comparisons = _comparisons(40, seed=1)
    packed = packing.pack_comparisons(comparisons, tokenizer, spec, 96, per_row=3, seed=0)
    transform = pipeline.TokenizeComparisonRow(tokenizer, spec, row_len=96, per_row=3)
    alone = pipeline.TokenizeComparisonSharedPrompt(tokenizer, spec, row_len=96)
    for group, records_of_row in zip(packed.groups, packed, strict=True):
        row = transform.map(records_of_row)
        for slot, index in enumerate(group):
            single = alone.map(comparisons[index])
            here = row["documents_t"] == slot
            n = int(single["mask_t"].sum())
            start = int(np.argmax(here))
            assert here.sum() == n and here[start : start + n].all()  # contiguous
            for name in ("tokens_t", "positions_t", "segments_t"):
                np.testing.assert_array_equal(row[name][here], single[name][:n])
            valid = single["valid_k"]
            np.testing.assert_array_equal(row["valid_ek"][slot], valid)
            np.testing.assert_array_equal(
                row["last_ek"][slot][valid], single["last_k"][valid] + start
            )
            np.testing.assert_array_equal(row["prefers_ekk"][slot], single["prefers_kk"])
        empty = slice(len(group), 3)
        assert not row["valid_ek"][empty].any() and not row["prefers_ekk"][empty].any()
        np.testing.assert_array_equal(row["mask_t"], row["documents_t"] >= 0)
    assert max(map(len, packed.groups)) > 1
    with pytest.raises(ValueError, match="do not fit one row"):
        transform.map(comparisons[:4])


def test_comparison_rows_count_skipped_and_truncated_comparisons(tokenizer):
    from rlhf_jax.data import packing

    long = {
        "prompt": "Human: question 1?",
        "responses": [" answer number" * 9] * 3,
        "pairs": [[0, 1]],
    }
    short = {"prompt": "Human: question 2?", "responses": [" answer 2.", " 2"], "pairs": [[1, 0]]}
    for policy, truncated, skipped in (("truncate", 1, 0), ("skip", 0, 1)):
        spec = pipeline.SequenceSpec(
            max_len=48, max_prompt_len=24, max_responses=3, overlong=policy
        )
        packed = packing.pack_comparisons([long, short], tokenizer, spec, 32, per_row=2, seed=0)
        transform = pipeline.TokenizeComparisonRow(tokenizer, spec, 32, 2)
        rows = [transform.map(r) for r in packed]
        assert sum(int(r["truncated"]) for r in rows) == truncated
        assert sum(int(r["skipped"]) for r in rows) == skipped
        assert sum(int(r["valid_ek"].any(axis=1).sum()) for r in rows) == 2 - skipped
    strict = pipeline.SequenceSpec(max_len=48, max_prompt_len=24, max_responses=3, overlong="error")
    with pytest.raises(records.RecordError, match="more than row_len=32"):
        packing.pack_comparisons([short, long], tokenizer, strict, 32, per_row=2, seed=0)


def _demonstrations(n, seed=0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "list", "sort", "answer"]
    return [
        {
            "id": f"d{i}",
            "prompt": "" if i % 3 == 0 else " ".join(rng.choice(words, rng.integers(1, 4))),
            "response": " " + " ".join(rng.choice(words, rng.integers(1, 6))),
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("loss_on_prompt", [False, True])
def test_demonstration_rows_hold_each_record_as_its_own_row(tokenizer, loss_on_prompt):
    """Packed demonstrations: every record exactly once, in rows that fit, each record's tokens
    and targets as in its own padded row (its first token never a target), positions restarting
    and one document index per record."""
    from rlhf_jax.data import packing

    spec = pipeline.SequenceSpec(max_len=32, max_prompt_len=16)
    records = _demonstrations(150)
    alone = pipeline.TokenizeDemonstration(tokenizer, spec, loss_on_prompt)
    lengths = [int(alone.map(r)["mask_t"].sum()) for r in records]
    packed = packing.pack_demonstrations(
        records, tokenizer, spec, 64, per_row=6, seed=0, loss_on_prompt=loss_on_prompt
    )
    assert sorted(i for g in packed.groups for i in g) == list(range(150)) and packed.count == 150
    assert all(1 <= len(g) <= 6 and sum(lengths[i] for i in g) <= 64 for g in packed.groups)
    assert packed.tokens == sum(lengths) and packed.fill > 0.9
    assert packed.fill > sum(lengths) / (150 * 32) + 0.3  # one padded row of 32 each
    transform = pipeline.TokenizeDemonstrationRow(tokenizer, spec, 64, 6, loss_on_prompt)
    for group, records_of_row in zip(packed.groups, packed, strict=True):
        row = transform.map(records_of_row)
        for slot, index in enumerate(group):
            single = alone.map(records[index])
            here = row["documents_t"] == slot
            n, start = lengths[index], int(np.argmax(here))
            assert here.sum() == n and here[start : start + n].all()
            np.testing.assert_array_equal(row["tokens_t"][here], single["tokens_t"][:n])
            np.testing.assert_array_equal(row["positions_t"][here], np.arange(n))
            expected_targets = single["loss_mask_t"][:n].copy()
            expected_targets[0] = False
            np.testing.assert_array_equal(row["loss_mask_t"][here], expected_targets)
        np.testing.assert_array_equal(row["mask_t"], row["documents_t"] >= 0)
        assert not row["loss_mask_t"][~row["mask_t"]].any()
        assert (row["tokens_t"][~row["mask_t"]] == tokenizer.pad_id).all()
    assert max(map(len, packed.groups)) > 2
    again = packing.pack_demonstrations(
        records, tokenizer, spec, 64, per_row=6, seed=0, loss_on_prompt=loss_on_prompt
    )
    assert again.groups == packed.groups
    assert packing.pack_demonstrations(records, tokenizer, spec, 64, 6, seed=1).groups != (
        packed.groups
    )
    with pytest.raises(ValueError, match="do not fit one row"):
        transform.map(records[:7])


def test_demonstration_rows_count_cut_records_and_refuse_bad_arguments(tokenizer):
    from rlhf_jax.data import packing

    long = {"id": "long", "prompt": "sort", "response": " alpha beta" * 30}
    short = {"id": "short", "prompt": "sort", "response": " alpha"}
    for policy, truncated, skipped in (("truncate", 1, 0), ("skip", 0, 1)):
        spec = pipeline.SequenceSpec(max_len=24, max_prompt_len=12, overlong=policy)
        packed = packing.pack_demonstrations([long, short], tokenizer, spec, 32, 2, seed=0)
        rows = [pipeline.TokenizeDemonstrationRow(tokenizer, spec, 32, 2).map(r) for r in packed]
        assert sum(int(r["truncated"]) for r in rows) == truncated
        assert sum(int(r["skipped"]) for r in rows) == skipped
        assert sum(int(r["mask_t"].sum()) for r in rows) == packed.tokens
    spec = pipeline.SequenceSpec(max_len=24, max_prompt_len=12, overlong="error")
    with pytest.raises(records.RecordError, match="record long"):
        packing.pack_demonstrations([short, long], tokenizer, spec, 32, 2, seed=0)
    with pytest.raises(ValueError, match="row_len=16 must be >= max_len=24"):
        packing.pack_demonstrations([short], tokenizer, spec, 16, 2, seed=0)
    with pytest.raises(ValueError, match="per_row"):
        packing.pack_demonstrations([short], tokenizer, spec, 32, 0, seed=0)
    with pytest.raises(ValueError, match="No demonstration"):
        packing.pack_demonstrations([], tokenizer, spec, 32, 2, seed=0)
